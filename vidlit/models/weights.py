"""Where pretrained weights come from: published weights (downloaded once into the torch hub
cache, or taken from it offline), URLs, local files and vidlit checkpoints.

``--model.pretrained`` accepts:

- ``default``: the weights torchvision / pytorchvideo publish for the backbone. The file is looked
  up in the torch hub cache (``$TORCH_HOME/hub/checkpoints``, where torchvision and pytorchvideo
  keep it too) and downloaded there once when missing, with ``torch.hub.download_url_to_file``
  (atomic: a broken download never leaves a file behind; the SHA-256 prefix in torchvision's file
  names is checked). Every socket operation times out after ``VIDLIT_DOWNLOAD_TIMEOUT`` seconds
  (default 30). ``VIDLIT_OFFLINE=1`` never touches the network. ``VIDLIT_WEIGHTS_MIRROR=BASE_URL``
  downloads ``BASE_URL/<file name>`` instead of the publisher's URL (an internal mirror; the tests
  point it at a server on 127.0.0.1).
- ``imagenet_inflated`` (``r3d_18``, ``mc3_18``): torchvision's ImageNet ResNet-18, inflated to 3D
  (see :mod:`vidlit.inflate`).
- an ``http(s)://`` or ``file://`` URL: downloaded once into the same cache.
- a local file: a state dict, a pytorchvideo ``.pyth`` file, or a vidlit checkpoint
  (``RUN/checkpoints/best-epoch=N.ckpt``: its backbone, loaded strictly).

Every failure is a :class:`PretrainedWeightsError`: one line naming the file, the URL and what to do.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn

from vidlit.run.checkpoint import load_torch_file
from vidlit.utils.errors import VidlitError

#: values of ``--model.pretrained`` that mean "the backbone's published weights"
DEFAULT_NAMES = ("default", "true")
INFLATED = "imagenet_inflated"


class PretrainedWeightsError(VidlitError, RuntimeError):
    """Pretrained weights were asked for but cannot be had (missing, unreadable, not fitting)."""


class WeightsNotCachedError(PretrainedWeightsError):
    """The weights file is not in the cache and was not (or could not be) downloaded."""


@dataclass(frozen=True)
class WeightsInfo:
    """The published weights of a backbone and what they expect, from their own metadata."""

    url: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int  # crop size the weights were trained/evaluated at
    num_frames: int  # clip length of the published accuracy (2D weights: 1)
    source: str  # where these facts come from (shown by tests and docs)
    min_frames: int = 1


def torchvision_info(arch: str) -> WeightsInfo:
    """Metadata of torchvision's default weights for ``arch``: its transforms' mean/std/crop, the
    ``clip_len`` its published accuracy was measured with and ``min_temporal_size``."""
    from torchvision.models import get_model_weights

    w = get_model_weights(arch).DEFAULT
    t = w.transforms()
    m = re.search(r"clip_len=(\d+)", w.meta.get("_docs", ""))
    frames = int(m.group(1)) if m else 1
    return WeightsInfo(
        url=w.url, mean=tuple(float(v) for v in t.mean), std=tuple(float(v) for v in t.std),
        size=int(t.crop_size[0]), num_frames=frames, source=f"torchvision {w}",
        min_frames=int(w.meta.get("min_temporal_size", 1)),
    )  # fmt: skip


# --------------------------------------------------------------------------- environment
def offline() -> bool:
    return os.environ.get("VIDLIT_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download_timeout() -> float:
    raw = os.environ.get("VIDLIT_DOWNLOAD_TIMEOUT", "30")
    try:
        value = float(raw)
    except ValueError:
        raise PretrainedWeightsError(f"VIDLIT_DOWNLOAD_TIMEOUT must be a number of seconds, got '{raw}'") from None
    if value <= 0:
        raise PretrainedWeightsError(f"VIDLIT_DOWNLOAD_TIMEOUT must be > 0 seconds, got '{raw}'")
    return value


def is_url(text: str) -> bool:
    return bool(re.match(r"(https?|file)://", str(text), re.IGNORECASE))


def hub_checkpoint_path(url: str) -> str:
    """Where torch.hub (and torchvision, pytorchvideo) cache ``url``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url.split("?")[0]))


def _mirrored(url: str) -> str:
    base = os.environ.get("VIDLIT_WEIGHTS_MIRROR", "").strip()
    return f"{base.rstrip('/')}/{os.path.basename(url.split('?')[0])}" if base else url


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """urllib (under torch.hub) opens and reads sockets with the default timeout: bound both."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _reason(err: BaseException) -> str:
    code = getattr(err, "code", None)  # HTTPError
    if isinstance(code, int):
        return f"HTTP {code} {getattr(err, 'reason', '')}".strip()
    inner = getattr(err, "reason", None)  # URLError wraps the socket error
    text = str(inner if inner is not None else err).strip() or type(err).__name__
    if isinstance(inner, (socket.timeout, TimeoutError)) or isinstance(err, (socket.timeout, TimeoutError)):
        text = "timed out"
    return text.splitlines()[0][:200]


def cached_file(url: str, what: str, path: Optional[str] = None, check_hash: bool = True) -> str:
    """The local copy of ``url`` in the torch hub cache, downloaded once when missing (unless
    ``VIDLIT_OFFLINE=1``). ``what`` names the weights in messages."""
    path = path or hub_checkpoint_path(url)
    if os.path.isfile(path):
        return path
    where = f"download it where you have network and put it at {path}, or pass --model.pretrained /path/to/file"
    if offline():
        raise WeightsNotCachedError(f"{what}: file {os.path.basename(path)} is not in the cache and VIDLIT_OFFLINE=1: {where} (from {url})")
    source = _mirrored(url)
    m = torch.hub.HASH_REGEX.search(os.path.basename(path)) if check_hash else None
    timeout = download_timeout()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _socket_timeout(timeout):
            torch.hub.download_url_to_file(source, path, m.group(1) if m else None, progress=_progress())
    except Exception as err:  # noqa: BLE001 - any failure: the same one line with what to do
        reason = _reason(err)
        if "timed out" in reason:
            reason = f"no answer within {timeout:g} s (VIDLIT_DOWNLOAD_TIMEOUT)"
        elif "invalid hash" in reason:
            reason = f"the downloaded file is corrupt ({reason})"
        raise WeightsNotCachedError(f"{what}: could not download {source} ({reason}): {where}") from None
    return path


def _progress() -> bool:
    import sys

    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def resolve(pretrained: str, what: str, url: Optional[str]) -> str:
    """Local path of ``--model.pretrained`` (``default`` -> ``url``, a URL, or a file)."""
    text = str(pretrained)
    if text.lower() in DEFAULT_NAMES:
        if url is None:
            raise PretrainedWeightsError(f"--model.pretrained default: backbone '{what}' has no published weights; pass a weights file or a URL")
        return cached_file(url, f"pretrained weights for '{what}'")
    if is_url(text):
        if text.lower().startswith("file://"):
            local = text[len("file://"):]
            if not os.path.isfile(local):
                raise PretrainedWeightsError(f"--model.pretrained: file '{local}' does not exist")
            return local
        key = hashlib.sha256(text.encode()).hexdigest()[:10]
        name = os.path.basename(text.split("?")[0]) or "weights.pth"
        dst = os.path.join(torch.hub.get_dir(), "checkpoints", f"vidlit-url-{key}-{name}")
        return cached_file(text, "--model.pretrained", dst, check_hash=False)
    if not os.path.isfile(text):
        raise PretrainedWeightsError(
            f"--model.pretrained: file '{text}' does not exist; pass an existing .pth/.pt/.ckpt file, a URL, "
            f"'default' or '{INFLATED}'"
        )
    return text


# --------------------------------------------------------------------------- reading files
_LAST: dict[str, Any] = {}
#: what ``--model.pretrained`` takes, said when a file is refused
PRETRAINED_INSTEAD = (f"pass a weights file written by torch.save (a state dict, .pth/.pt) or a vidlit checkpoint "
                      f"(RUN/checkpoints/*.ckpt), a URL, 'default' or '{INFLATED}'")


def read_file(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors (the last file is memoised:
    build_backbone peeks at it before the builder loads it)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    if _LAST.get("key") == key:
        return _LAST["obj"]
    # weights files are untrusted input: never unpickle arbitrary objects (that can run code); a
    # file torch.save did not write, or one that would import code, is one line naming it
    obj = load_torch_file(path, "--model.pretrained", PRETRAINED_INSTEAD, error=PretrainedWeightsError)
    _LAST.clear()
    _LAST.update(key=key, obj=obj)
    return obj


def forget_file() -> None:
    """Drop the memoised file of :func:`read_file`."""
    _LAST.clear()


def is_vidlit_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and any(
        str(k).startswith("backbone.") for k in obj["state_dict"]
    )


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The network state dict in ``path`` (plain, pytorchvideo ``model_state``, or a Lightning
    checkpoint's ``backbone.net.*``)."""
    obj = read_file(path)
    if isinstance(obj, dict) and "state_dict" in obj:  # Lightning checkpoint (ours: 'backbone.net.')
        obj = {k.split("backbone.net.", 1)[1]: v for k, v in obj["state_dict"].items() if "backbone.net." in k}
    elif isinstance(obj, dict) and "model_state" in obj:  # pytorchvideo .pyth files
        obj = obj["model_state"]
    if not isinstance(obj, dict) or not obj:
        raise PretrainedWeightsError(f"weights file '{path}' holds no state dict")
    return obj


def _listing(keys: Sequence[str], own: dict, state: dict, limit: int = 6) -> str:
    def one(k: str) -> str:
        if k in own and k in state:
            return f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        return f"{k} ({'not in the file' if k in own else 'not in the backbone'})"

    shown = ", ".join(one(k) for k in keys[:limit])
    return shown + (f", ... and {len(keys) - limit} more" if len(keys) > limit else "")


def load_checkpoint_backbone(backbone: nn.Module, name: str, path: str) -> None:
    """Load a vidlit checkpoint's backbone (``backbone.*`` keys) strictly into ``backbone``."""
    obj = read_file(path)
    hp = obj.get("hyper_parameters") or {}
    trained = hp.get("backbone")
    if trained and str(trained).lower() != name.lower():
        raise PretrainedWeightsError(
            f"--model.pretrained: checkpoint '{path}' holds backbone '{trained}', not '{name}': pass --backbone {trained}"
        )
    state = {k[len("backbone."):]: v for k, v in obj["state_dict"].items() if k.startswith("backbone.")}
    if "renorm" in state and getattr(backbone, "renorm", None) is None:  # its weights' input normalisation
        backbone.register_buffer("renorm", state["renorm"].clone())
    own = backbone.state_dict()
    differ = sorted(set(own) ^ set(state) | {k for k in set(own) & set(state) if own[k].shape != state[k].shape})
    if differ:
        raise PretrainedWeightsError(
            f"--model.pretrained: checkpoint '{path}' does not fit backbone '{name}': {len(differ)} keys differ: "
            f"{_listing(differ, own, state)}"
        )
    backbone.load_state_dict(state, strict=True)


def load_head(head: nn.Module, path: str, num_classes: int) -> None:
    """Load a vidlit checkpoint's classifier (``head.*``) into ``head`` (for ``pretrained_head``);
    a different class count or layout is one error listing the keys that differ."""
    obj = read_file(path)
    if not is_vidlit_checkpoint(obj):
        raise PretrainedWeightsError(f"--model.pretrained_head: '{path}' is not a vidlit checkpoint (RUN/checkpoints/*.ckpt); it holds no head")
    hp = obj.get("hyper_parameters") or {}
    if hp.get("num_classes") not in (None, num_classes):
        raise PretrainedWeightsError(
            f"--model.pretrained_head: checkpoint '{path}' has {hp['num_classes']} classes, this data {num_classes}: "
            "drop --model.pretrained_head (a new head is trained)"
        )
    state = {k[len("head."):]: v for k, v in obj["state_dict"].items() if k.startswith("head.")}
    own = head.state_dict()
    differ = sorted(set(own) ^ set(state) | {k for k in set(own) & set(state) if own[k].shape != state[k].shape})
    if differ:
        raise PretrainedWeightsError(
            f"--model.pretrained_head: the head in '{path}' does not fit: {len(differ)} keys differ: {_listing(differ, own, state)}"
        )
    head.load_state_dict(state, strict=True)


def load_weights(
    net: nn.Module, name: str, pretrained: Optional[str], url: Optional[str], head_prefixes: Sequence[str]
) -> None:
    """Load ``pretrained`` (``default``, a URL or a file) into ``net`` before its head is stripped.

    Keys of the classification head may be missing or mismatched (a new head is trained); any other
    missing or mismatched key is an error listing them.
    """
    if pretrained is None:
        return
    path = resolve(pretrained, name, url)
    state = read_state_dict(path)
    own = net.state_dict()
    is_head = lambda k: any(k.startswith(p) for p in head_prefixes)  # noqa: E731
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not is_head(k) and not k.endswith("num_batches_tracked")]
    if missing:
        raise PretrainedWeightsError(
            f"weights file '{path}' does not fit backbone '{name}': {len(missing)} missing or mismatched "
            f"tensors: {_listing(missing, own, state)}"
        )
    net.load_state_dict(usable, strict=False)
