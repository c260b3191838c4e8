"""Checkpoints as data: safe loading, the metadata vidlit stamps into them, the settings of the run a checkpoint came from."""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import yaml

from vidlit.run.rundir import checkpoint_run_dir
from vidlit.utils.errors import VidlitError, unpickling_reason, unsafe_global


#: the key of vidlit's metadata in every checkpoint (strategy, dataset, class names, domains, version)
STAMP_KEY = "vidlit"
#: checkpoints written before 0.2 kept the strategy and dataset names under this key
LEGACY_NAMES_KEY = "vidlit_run"


def stamp(checkpoint: dict, meta: dict) -> None:
    """Write ``meta`` into ``checkpoint``'s vidlit metadata (merged with what is there)."""
    from vidlit import __version__

    checkpoint[STAMP_KEY] = {**(checkpoint.get(STAMP_KEY) or {}), **meta, "vidlit_version": __version__}


def read_stamp(state: Any) -> dict:
    """vidlit's metadata of a loaded checkpoint (also of checkpoints written before 0.2): ``strategy``,
    ``dataset``, ``class_names``, ``source_domains``, ``target_domains`` where known; ``{}`` if none."""
    if not isinstance(state, dict):
        return {}
    meta = dict(state.get(LEGACY_NAMES_KEY) or {})
    meta.update(state.get(STAMP_KEY) or {})
    return meta


def trained_run_info(path: str) -> dict:
    """``class_names`` and ``source_domains`` of a training run, from ``path``: a run folder, its
    ``results.json``, or a checkpoint (``<run>/checkpoints/*.ckpt``: the run's ``results.json``,
    else what :func:`stamp` stored in the checkpoint)."""
    from vidlit.utils.errors import DataError
    from vidlit.run.files import RESULTS_FILE

    candidates = []
    if os.path.isdir(path):
        candidates.append(os.path.join(path, RESULTS_FILE))
    elif path.endswith(".json"):
        candidates.append(path)
    elif os.path.isfile(path):
        candidates.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), RESULTS_FILE))
    else:
        raise DataError(f"--data.run {path}: no such run folder or checkpoint")
    for cand in candidates:
        if os.path.isfile(cand):
            with open(cand) as fh:
                res = json.load(fh)
            if res.get("class_names"):
                return {"class_names": list(res["class_names"]), "source_domains": list(res.get("source_domains") or [])}
    if os.path.isfile(path) and not path.endswith(".json"):
        # checkpoints are untrusted input: never unpickle arbitrary objects; a file that is not a
        # checkpoint, or would import code, is one line naming it
        ckpt = load_torch_file(path, "--data.run", "pass the run folder or one of its RUN/checkpoints/*.ckpt, or the classes "
                               "with --data.classes '[...]'", error=DataError, mmap=True)
        info = read_stamp(ckpt)
        if info.get("class_names"):
            return {"class_names": list(info["class_names"]), "source_domains": list(info.get("source_domains") or [])}
    raise DataError(f"--data.run {path}: no results.json with class_names next to it; pass the classes with --data.classes '[...]'")


def fill_run_from_ckpt(config: Any) -> None:
    """For ``predict --dataset files --ckpt_path X`` without ``--data.run``: use X as the run
    (a one-line hook for the CLI's ``before_instantiate_classes``; a no-op for other datasets)."""
    data = config.get("data") if hasattr(config, "get") else None
    if data is None or "run" not in data or data.get("run"):
        return
    ckpt = config.get("ckpt_path")
    if ckpt and ckpt not in ("last", "best") and os.path.isfile(str(ckpt)):
        data["run"] = str(ckpt)


#: what every file ``torch.save`` writes starts with: a zip archive (the default since torch 1.6),
#: or, in the legacy format, a pickle of torch's magic number (these are its bytes)
_ZIP_HEADER = b"PK\x03\x04"
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def torch_file_problem(path: str) -> Optional[str]:
    """Why ``path`` is not a file written by ``torch.save`` (read from its first bytes and, for a
    zip archive, its directory at the end; nothing is unpickled), or None when it looks like one."""
    import zipfile

    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head:
        return "the file is empty"
    if head.startswith(_ZIP_HEADER):
        if not zipfile.is_zipfile(path):
            return "a zip archive, as torch.save writes, but truncated or damaged"
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "a zip archive, as torch.save writes, but damaged"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "a TorchScript model (what `python -m vidlit export` writes), not a checkpoint"
        if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "a zip archive without the data.pkl that torch.save writes"
        return None
    if head.startswith(b"\x80") and _LEGACY_MAGIC in head[:32]:
        return None  # torch.save's legacy (non-zip) format
    return "it is neither the zip archive nor the legacy format that torch.save writes"


def load_torch_file(path: str, flag: str, instead: str, error: type = VidlitError, mmap: bool = False) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` (files are untrusted input: no
    arbitrary unpickling) with one-line errors of class ``error``, each naming ``flag``, the file and
    ``instead`` (what to pass): a file that ``torch.save`` did not write (random bytes, a truncated
    archive, another format) is "not a checkpoint"; a pickle that would import code is refused.
    Never advises loading with ``weights_only=False``. ``mmap``: map a zip archive's tensors."""
    import pickle
    import warnings

    import torch

    try:
        problem = torch_file_problem(path)
    except OSError as err:
        raise error(f"{flag}: cannot read '{path}' ({err.strerror or err}); {instead}") from None
    if problem:
        raise error(f"{flag}: '{path}' refused: it is not a checkpoint ({problem}); {instead}") from None
    try:
        with warnings.catch_warnings():  # the weights-only unpickler warns about odd pickle protocols
            warnings.simplefilter("ignore")
            with open(path, "rb") as fh:
                zipped = fh.read(4) == _ZIP_HEADER
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
    except pickle.UnpicklingError as err:
        if unsafe_global(err):
            raise error(f"{flag}: '{path}' refused (read with torch.load weights_only=True, which imports nothing): "
                        f"{unpickling_reason(err)}; {instead}") from None
        raise error(f"{flag}: '{path}' refused: it is not a checkpoint (damaged: {unpickling_reason(err)}); {instead}") from None
    except MemoryError:
        raise error(f"{flag}: '{path}' refused: it is not a checkpoint (damaged: it claims more memory than there is); {instead}") from None
    except Exception as err:  # noqa: BLE001 - torch raises many types on damaged files (RuntimeError, EOFError, KeyError, ...)
        raise error(f"{flag}: '{path}' refused: it is not a checkpoint (damaged: {unpickling_reason(err)}); {instead}") from None


#: what ``--ckpt_path`` takes, said when a file is refused
CKPT_INSTEAD = "pass a checkpoint written by `python -m vidlit fit` (RUN/checkpoints/best-epoch=N.ckpt or RUN/checkpoints/last.ckpt)"


def load_checkpoint(path: str, flag: str = "--ckpt_path") -> dict:
    """A Lightning checkpoint, unpickled with ``weights_only=True`` (checkpoints are untrusted input;
    everything vidlit stores in one is plain data); a file that is not a checkpoint, or not safe
    to load, is one line naming it and what to pass (:func:`load_torch_file`)."""
    state = load_torch_file(path, flag, CKPT_INSTEAD)
    if not isinstance(state, dict):
        raise VidlitError(f"{flag}: '{path}' refused: it is not a checkpoint (it holds a {type(state).__name__}, "
                          f"not a checkpoint's dict); {CKPT_INSTEAD}")
    return state


def training_finished(state: dict, trainer: Any) -> bool:
    """Whether the checkpoint was saved once training had reached the trainer's limits."""
    fit = state.get("loops", {}).get("fit_loop", {})
    processed = fit.get("epoch_progress", {}).get("current", {}).get("processed")  # epochs fully trained
    step = int(state.get("global_step", 0))
    if trainer.max_steps is not None and trainer.max_steps > 0 and step >= trainer.max_steps:
        return True
    max_epochs = trainer.max_epochs
    return processed is not None and max_epochs is not None and max_epochs >= 0 and processed >= max_epochs


def callback_state(state: dict, name: str) -> Optional[dict]:
    for key, value in (state.get("callbacks") or {}).items():
        if key == name or key.startswith(name + "{"):
            return value
    return None


def best_from_state(state: dict, checkpoint_dir: Optional[str]) -> str:
    """The best checkpoint recorded in a checkpoint's ModelCheckpoint state; when the run folder
    has moved since, the file of that name in this run's checkpoint folder."""
    for key, value in (state.get("callbacks") or {}).items():
        if "ModelCheckpoint" in key and isinstance(value, dict) and value.get("best_model_path"):
            path = str(value["best_model_path"])
            here = os.path.join(checkpoint_dir, os.path.basename(path)) if checkpoint_dir else path
            return here if os.path.isfile(here) else path
    return ""


def checkpoint_settings(ckpt: str) -> tuple[dict, str]:
    """The strategy, dataset, model and data settings of the run ``ckpt`` came from, and where
    they were read: the run's ``config.yaml`` (``CKPT/../../config.yaml``), else the checkpoint's
    hyperparameters."""
    run = checkpoint_run_dir(ckpt)
    state = load_checkpoint(ckpt)  # refused in one line if it is not safe to load
    path = os.path.join(run, "config.yaml")
    if os.path.isfile(path):
        try:
            with open(path) as fh:
                saved = yaml.safe_load(fh) or {}
        except (OSError, yaml.YAMLError) as err:
            raise VidlitError(f"--ckpt_path {ckpt}: cannot read its run's settings {path} ({err}); fix or remove that file") from None
        if isinstance(saved, dict):
            return {k: saved[k] for k in ("strategy", "dataset", "model", "data") if saved.get(k) is not None}, path
    found: dict = {}
    names = read_stamp(state)
    for key in ("strategy", "dataset"):
        if names.get(key):
            found[key] = names[key]
    for section, key in (("model", "hyper_parameters"), ("data", "datamodule_hyper_parameters")):
        hp = state.get(key)
        if isinstance(hp, dict) and hp:
            found[section] = {k: v for k, v in hp.items() if not k.startswith("_")}
    return found, f"{ckpt} (hyperparameters)"


# link targets (set from other keys when the classes are made): never passed as settings
LINKED = {"model": {"seed", "num_classes", "num_domains"}, "data": {"backbone", "seed"}}


