"""The default numeric precision, chosen by the hardware.

bf16 mixed precision pays only where the hardware computes in bf16: on CUDA GPUs with bf16 units
(Ampere and later) and on CPUs with AVX-512 BF16 or AMX. On other CPUs (AVX2 only) oneDNN has no
bf16 convolution kernels and a bf16 step is 30 to 60 times *slower* than fp32 (docs/PERFORMANCE.md,
"precision" and "Precision chosen by the hardware"). So the default, when ``--trainer.precision``
is not given, is:

* ``bf16-mixed`` on a CUDA device that supports bf16, and on a CPU that reports ``avx512_bf16`` or
  ``amx_bf16``;
* ``32-true`` everywhere else.

:func:`default_precision` is the decision (pure: it only reads its arguments, so both answers are
testable on any machine); :func:`detect` gathers what this machine reports and returns the choice
with its reason, which ``fit``/``validate``/``test``/``predict`` print in one line at start.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional

#: CPU flags (as /proc/cpuinfo and ``torch.cpu.get_capabilities()`` name them) that mean native bf16
#: arithmetic, with the name printed for each
NATIVE_BF16_FLAGS: dict[str, str] = {"avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX"}

BF16, FP32 = "bf16-mixed", "32-true"
#: a machine-wide default instead of the detected one (a cluster's job script; the test suite pins
#: fp32 so its results do not depend on the CPU it runs on); ``--trainer.precision`` still wins
PRECISION_ENV = "VIDLIT_PRECISION"


def default_precision(cuda: bool, cpu_flags: Iterable[str], cuda_bf16: bool = True) -> str:
    """``bf16-mixed`` when the run uses a CUDA device (``cuda``) that supports bf16 (``cuda_bf16``:
    Ampere or later), or runs on a CPU whose flags include AVX-512 BF16 or AMX (``avx512_bf16``,
    ``amx_bf16``); else ``32-true``."""
    if cuda:
        return BF16 if cuda_bf16 else FP32
    return BF16 if set(cpu_flags) & set(NATIVE_BF16_FLAGS) else FP32


def native_bf16_names(cpu_flags: Iterable[str]) -> list[str]:
    """The printed names of the native-bf16 features among ``cpu_flags`` (e.g. ``["AVX-512 BF16"]``)."""
    flags = set(cpu_flags)
    return [name for flag, name in NATIVE_BF16_FLAGS.items() if flag in flags]


def reason(precision: str, cuda: bool, cpu_flags: Iterable[str], device_name: str = "") -> str:
    """Why :func:`default_precision` chose ``precision`` (for the one-line message)."""
    if cuda:
        gpu = f"CUDA device{' ' + device_name if device_name else ''}"
        return f"{gpu} with bf16" if precision == BF16 else f"{gpu} without native bf16"
    names = native_bf16_names(cpu_flags)
    if precision == BF16:
        return f"CPU has {' and '.join(names)}"
    return "CPU without AVX-512 BF16 or AMX: bf16 would run slower than fp32"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags this machine reports: those ``torch.cpu.get_capabilities()`` (torch >=
    2.9) marks true, and the ``flags`` line of ``/proc/cpuinfo`` (Linux; absent elsewhere)."""
    flags: set[str] = set()
    try:
        import torch

        caps = getattr(torch.cpu, "get_capabilities", None)
        if caps is not None:
            flags |= {str(k) for k, v in caps().items() if v is True}
    except Exception:  # noqa: BLE001 - a detector never fails the run: fewer flags, fp32
        pass
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                if line.startswith("flags") and ":" in line:
                    flags |= set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return flags


def cuda_bf16() -> tuple[bool, str]:
    """(the first CUDA device supports bf16 natively, its name); (False, "") without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return False, ""
    try:
        ok = bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no including_emulation argument
        ok = bool(torch.cuda.is_bf16_supported())
    return ok, torch.cuda.get_device_name(0)


@dataclass(frozen=True)
class Choice:
    precision: str
    reason: str
    cuda: bool
    cpu_flags: frozenset[str]

    def line(self, prefix: str = "vidlit: ") -> str:
        """``vidlit: precision bf16-mixed (CPU has AVX-512 BF16; --trainer.precision to change)``."""
        return f"{prefix}precision {self.precision} ({self.reason}; --trainer.precision to change)"


def detect(use_cuda: Optional[bool] = None, flags: Optional[Iterable[str]] = None) -> Choice:
    """The default precision for this machine. ``use_cuda``: whether the run uses a CUDA device
    (default: whether one is available); ``flags``: the CPU flags (default: :func:`cpu_flags`).
    ``$VIDLIT_PRECISION``, when set, is the answer."""
    forced = os.environ.get(PRECISION_ENV, "").strip()
    if forced:
        return Choice(forced, f"{PRECISION_ENV}={forced}", bool(use_cuda), frozenset())
    if use_cuda is None:
        import torch

        use_cuda = torch.cuda.is_available()
    ok, name = cuda_bf16() if use_cuda else (False, "")
    cuda = bool(use_cuda)
    found = frozenset(cpu_flags() if flags is None else flags)
    precision = default_precision(cuda, found, cuda_bf16=ok)
    return Choice(precision, reason(precision, cuda, found, name), cuda, found)


def print_choice(choice: Choice) -> None:
    """The one line at start (stderr), on the first process of a run only (not on DDP children)."""
    import sys

    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(choice.line(), file=sys.stderr, flush=True)
