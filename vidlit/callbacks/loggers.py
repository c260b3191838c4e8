"""Default loggers of a run: CSV always (``<run_dir>/metrics.csv``) and Weights & Biases.

``fit`` always logs to W&B (unless disabled); ``validate``, ``test`` and ``predict`` only when
asked, with ``--trainer.logger true`` or any ``--wandb.*`` option (e.g. ``--wandb.project NAME``).

W&B mode, decided once per run by :func:`wandb_mode`:

* ``WANDB_MODE=disabled`` (or ``--trainer.logger false``, which drops every default logger): off;
* ``WANDB_MODE=offline``: local only;
* otherwise online when credentials exist (``WANDB_API_KEY``, or the ``~/.netrc`` entry that
  ``wandb login`` writes), else offline. Offline runs print one line saying how to upload later.

Nothing here ever prompts for a login: online mode is only tried with credentials, and an online
start that fails or times out (``--wandb.init_timeout``) falls back to offline. The run id is kept
in ``<run_dir>/wandb_run_id``, so a resumed run (``--ckpt_path last``) continues the same W&B run.
"""
from __future__ import annotations

import contextlib
import csv
import json
import netrc
import os
import secrets
import shutil
import string
import sys
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlparse

import lightning.pytorch as pl
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from vidlit.run.files import RESULTS_FILE
from vidlit.utils.io import write_text

WANDB_ID_FILE = "wandb_run_id"
DEFAULT_PROJECT = "vidlit"


@dataclass
class WandbOptions:
    """Weights & Biases run settings (``--wandb.*``). ``fit`` logs to W&B unless
    ``WANDB_MODE=disabled``; ``validate``, ``test`` and ``predict`` only when one of these options
    (or ``--trainer.logger true``) is given.

    Args:
        project: W&B project (default: ``$WANDB_PROJECT`` or ``vidlit``).
        entity: W&B user or team (default: ``$WANDB_ENTITY`` or your default entity).
        tags: run tags.
        group: run group (a sweep sets it to the sweep's name).
        name: run name (default: the run directory's name).
        clips_per_domain: sample clips logged per domain, with true and predicted labels.
        init_timeout: seconds to wait for the W&B server before falling back to offline.
    """

    project: Optional[str] = None
    entity: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    group: Optional[str] = None
    name: Optional[str] = None
    clips_per_domain: int = 2
    init_timeout: float = 60.0


class VidlitWandbLogger(WandbLogger):
    """:class:`WandbLogger` that also carries the run's :class:`WandbOptions` (read by
    :class:`vidlit.callbacks.media.WandbMediaCallback`)."""

    def __init__(self, options: Optional[WandbOptions] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._wandb_init.pop("anonymous", None)  # deprecated in wandb: passing even None warns
        self.options = options or WandbOptions()


def has_wandb_credentials() -> bool:
    """Whether W&B credentials are configured: ``WANDB_API_KEY``, an identity token file, or a
    netrc entry for the W&B host (what ``wandb login`` writes). Never prompts, never connects."""
    if os.environ.get("WANDB_API_KEY", "").strip() or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), "_netrc" if os.name == "nt" else ".netrc")
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def wandb_mode() -> str:
    """``disabled``, ``offline`` or ``online`` (see the module docstring)."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env == "disabled" or os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled"
    if env in ("offline", "dryrun"):
        return "offline"
    return "online" if has_wandb_credentials() else "offline"


def wandb_run_id(run_dir: str) -> str:
    """The W&B run id of ``run_dir``: ``$WANDB_RUN_ID`` (set by ``wandb agent``), else the one saved
    in ``<run_dir>/wandb_run_id``, else a new one, which is saved there (atomically)."""
    path = os.path.join(run_dir, WANDB_ID_FILE)
    saved = None
    if os.path.isfile(path):
        with open(path) as fh:
            saved = fh.read().strip() or None
    run_id = os.environ.get("WANDB_RUN_ID", "").strip() or saved
    if not run_id:
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    if saved != run_id:
        write_text(path, run_id + "\n")
    return run_id


def resolved_config(config: Any, subcommand: str) -> dict:
    """The subcommand's parsed configuration as plain JSON-able values (for the W&B run config)."""
    cfg = config[subcommand] if subcommand in config else config
    data = cfg.as_dict() if hasattr(cfg, "as_dict") else dict(cfg)
    return json.loads(json.dumps(data, default=str))


def _options(config: Any, subcommand: str) -> WandbOptions:
    cfg = config[subcommand] if subcommand in config else config
    opts = cfg.get("wandb") if hasattr(cfg, "get") else None
    if opts is None:
        return WandbOptions()
    return opts if isinstance(opts, WandbOptions) else WandbOptions(**(opts.as_dict() if hasattr(opts, "as_dict") else dict(opts)))


class _RunCSVWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing ``metrics.csv`` is appended to when ``append``
    (a resumed run, or ``validate``/``test`` on a trained run) and silently replaced otherwise.
    Lightning's own writer deletes it whenever the folder is not empty."""

    def __init__(self, log_dir: str, append: bool) -> None:
        self.append = append
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        if not self.append:
            self._fs.rm_file(self.metrics_file_path)
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
            self.metrics_keys = next(csv.reader(fh), [])


class RunCSVLogger(CSVLogger):
    """``<run_dir>/metrics.csv`` (and ``hparams.yaml``), written at every logging step so that a
    killed run keeps its rows; see :class:`_RunCSVWriter` for ``append``."""

    def __init__(self, run_dir: str, append: bool = False) -> None:
        super().__init__(save_dir=run_dir, name="", version="", flush_logs_every_n_steps=1)
        self._append = append

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _RunCSVWriter(self.log_dir, self._append)
        return self._experiment


def build_loggers(run_dir: str, config: Any, subcommand: str, wandb: bool = True) -> list[Logger]:
    """Loggers used when ``--trainer.logger`` is not given: CSV, plus W&B unless disabled or
    ``wandb`` is false (``validate``/``test``/``predict`` without a ``--wandb.*`` flag)."""
    cfg = config[subcommand] if subcommand in config else config
    append = subcommand != "fit" or cfg.get("ckpt_path") is not None
    loggers: list[Logger] = [RunCSVLogger(run_dir, append=append)]
    mode = wandb_mode()
    if mode != "disabled" and wandb:
        loggers.append(build_wandb_logger(run_dir, _options(config, subcommand), resolved_config(config, subcommand), mode))
    return loggers


def build_wandb_logger(run_dir: str, opts: WandbOptions, config: dict, mode: str) -> WandbLogger:
    """A :class:`WandbLogger` for ``run_dir``. On global rank 0 the W&B run starts here (so a
    failing online start can fall back to offline before training); other ranks never start one."""
    if rank_zero_only.rank != 0:
        return VidlitWandbLogger(opts, save_dir=run_dir, offline=True)
    import wandb

    run_id = wandb_run_id(run_dir)
    kwargs = dict(
        save_dir=run_dir, id=run_id, project=opts.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        entity=opts.entity or os.environ.get("WANDB_ENTITY") or None, tags=list(opts.tags) or None,
        group=opts.group, name=opts.name or os.path.basename(os.path.abspath(run_dir)), config=config,
    )
    sync = f"wandb sync {os.path.join(run_dir, 'wandb', 'offline-run-*')}"
    if mode == "online":
        logger = VidlitWandbLogger(opts, settings=wandb.Settings(init_timeout=opts.init_timeout), **kwargs)
        try:
            _start(logger)
            return logger
        except Exception as err:  # noqa: BLE001 - wandb raises many types for network and auth problems
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            wandb.teardown()  # the failed attempt keeps the run id "in use" inside the W&B service
            reason = f"could not start the online run ({first})"
    elif os.environ.get("WANDB_MODE", "").strip().lower() in ("offline", "dryrun"):
        reason = "WANDB_MODE=offline"
    else:
        reason = "no credentials (set WANDB_API_KEY or run `wandb login` to log online)"
    logger = VidlitWandbLogger(opts, offline=True, settings=wandb.Settings(silent=True), **kwargs)
    _start(logger)
    print(f"W&B: {reason}; logging offline, upload later with: {sync}", file=sys.stderr, flush=True)
    return logger


def _start(logger: WandbLogger) -> None:
    """Start the W&B run now. A run id stays "in use" in a wandb-core service shared through
    ``WANDB_SERVICE`` (set by a parent process that uses W&B, or ``wandb beta core start``) when
    the process that logged to it was killed; resuming that run then needs a service of its own."""
    import wandb

    if wandb.run is not None:  # a run left over in this process (an earlier CLI call): not ours to reuse
        with contextlib.suppress(Exception):
            wandb.finish()
    inherited = os.environ.get("WANDB_SERVICE")
    try:
        _ = logger.experiment
    except Exception:  # noqa: BLE001 - wandb raises many types
        if not inherited or os.environ.get("WANDB_SERVICE") != inherited:
            raise
        os.environ.pop("WANDB_SERVICE")
        wandb.teardown()
        logger._experiment = None
        _ = logger.experiment


def wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
    """The trainer's W&B loggers."""
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def _summary(results: dict) -> dict:
    """``results.json`` as a W&B summary: everything but the per-epoch history (already charted)."""
    return {k: v for k, v in results.items() if k != "history"}


def finish_loggers(trainer: pl.Trainer, module: pl.LightningModule, results: dict) -> None:
    """Called on rank 0 after ``results.json`` is written: the results become the W&B run summary
    (and ``results.json`` a run file), other loggers get them as hyperparameters."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            run.summary.update(_summary(results))
            path = os.path.join(results.get("run_dir") or trainer.default_root_dir, RESULTS_FILE)
            if os.path.isfile(path) and getattr(run, "dir", None):  # files in run.dir are uploaded with the run
                shutil.copyfile(path, os.path.join(run.dir, RESULTS_FILE))
            run.finish()
        else:
            logger.log_hyperparams({"results/" + k: v for k, v in results.items() if isinstance(v, (int, float, str)) and v is not None})
            logger.save()


def read_wandb_file(path: str) -> list[Any]:
    """The records of a run's ``.wandb`` transaction log (``wandb_internal_pb2.Record`` protobufs),
    e.g. ``<run_dir>/wandb/offline-run-*/run-<id>.wandb``, to check offline what a run logged.

    The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB
    blocks of chunks, each with a 7-byte header (masked CRC32, length, type: full, first, middle,
    last); one record may span several chunks."""
    import struct
    import zlib

    from wandb.proto import wandb_internal_pb2 as pb

    block, header = 32768, 7
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < header:  # created, then killed before W&B flushed anything
        return []
    ident, _magic, _version = struct.unpack("<4sHB", data[:header])
    if ident != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log (header {data[:4]!r})")
    records, parts, pos = [], b"", header
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        if kind == 0 and length == 0:  # zero padding up to the next block
            pos += left
            continue
        chunk = data[pos + header : pos + header + length]
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            break  # a torn last write (the process was killed): the records before it are complete
        pos += header + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(parts)
            records.append(rec)
            parts = b""
    return records
