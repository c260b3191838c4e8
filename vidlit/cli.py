"""``python -m vidlit``: LightningCLI with ``--strategy``, ``--backbone`` and ``--dataset``.

``fit|validate|test|predict`` are LightningCLI's own subcommands (``--config``, ``--print_config``,
``--seed_everything``, ``--trainer.*``, ``--model.*``, ``--data.*``). ``--strategy NAME`` picks the
LightningModule class, ``--dataset NAME`` the DataModule class (default ``folder``) and
``--backbone NAME`` is short for ``--model.backbone NAME``. Other commands: ``list``, ``sweep``,
``report``, ``bench``.
"""
from __future__ import annotations

import os
import re
import sys
import time
import warnings
from typing import Any, Optional

import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from vidlit.backbones import BACKBONES, PretrainedWeightsError
from vidlit.callbacks import default_callbacks
from vidlit.data.datamodule import DATAMODULES
from vidlit.data.records import DataError
from vidlit.data.video_io import VideoDecodeError
from vidlit.loggers import WandbOptions
from vidlit.registry import UnknownNameError
from vidlit.results import AtomicModelCheckpoint, HistoryCallback, build_results, print_table, write_results
from vidlit.strategy import STRATEGIES

SUBCOMMANDS = ("fit", "validate", "test", "predict")
USER_ERRORS = (DataError, UnknownNameError, PretrainedWeightsError, VideoDecodeError)
RUN_DIR_ENV = "VIDLIT_RUN_DIR"


class VidlitCLI(LightningCLI):
    """LightningCLI plus run directories, default callbacks and loggers, and results at the end of fit."""

    def __init__(self, strategy: str, dataset: str, args: list[str], start_time: float) -> None:
        self.strategy_name, self.dataset_name, self.start_time = strategy, dataset, start_time
        self.run_dir: Optional[str] = None
        super().__init__(
            model_class=STRATEGIES.get(strategy),
            datamodule_class=DATAMODULES.get(dataset),
            args=args,
            seed_everything_default=0,
            trainer_defaults={
                "use_distributed_sampler": False,  # the DataModule shards domain-balanced batches itself
                "max_epochs": 12,
                "log_every_n_steps": 5,
                "callbacks": [LearningRateMonitor(logging_interval="step")],
            },
            save_config_kwargs={"overwrite": True},
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--strategy", default=self.strategy_name, help=f"DG method: {', '.join(STRATEGIES.names())}")
        parser.add_argument("--dataset", default=self.dataset_name, help=f"dataset format: {', '.join(DATAMODULES.names())}")
        parser.add_lightning_class_args(AtomicModelCheckpoint, "checkpoint")
        parser.add_class_arguments(WandbOptions, "wandb")
        parser.set_defaults({
            "checkpoint.monitor": "val/acc", "checkpoint.mode": "max", "checkpoint.save_last": True,
            "checkpoint.filename": "best-{epoch:03d}", "checkpoint.auto_insert_metric_name": True,
        })
        parser.link_arguments("model.backbone", "data.backbone")
        parser.link_arguments("seed_everything", "data.seed", compute_fn=_seed)
        parser.link_arguments("seed_everything", "model.seed", compute_fn=_seed)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.num_domains", "model.num_domains", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        if cfg.get("ckpt_path") == "last" and not cfg.trainer.default_root_dir:
            raise ValueError("--ckpt_path last resumes a run: also pass --trainer.default_root_dir RUN_DIR (the run's folder, with checkpoints/last.ckpt)")
        self.run_dir = _resolve_run_dir(cfg.trainer.default_root_dir, self.strategy_name, self.dataset_name)
        cfg.trainer.default_root_dir = self.run_dir
        if cfg.checkpoint.dirpath is None:
            cfg.checkpoint.dirpath = os.path.join(self.run_dir, "checkpoints")
        if cfg.trainer.precision is None and _cuda_available():
            cfg.trainer.precision = "bf16-mixed"  # the GPU default needs no flag
        if cfg.trainer.accelerator in (None, "auto") and not _cuda_available():
            cfg.trainer.accelerator = "cpu"

    def instantiate_trainer(self, **kwargs: Any):
        cfg = self.config[self.subcommand]
        if cfg.trainer.logger in (None, True):
            from vidlit.loggers import build_loggers

            kwargs["logger"] = build_loggers(self.run_dir, self.config, self.subcommand)
        callbacks = self._get(self.config_init, "trainer", default={}).get("callbacks") or []  # instantiated ones
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if cfg.trainer.enable_progress_bar is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = callbacks + [RichProgressBar()]
        trainer = super().instantiate_trainer(**kwargs)
        if not trainer.loggers:  # --trainer.logger false: LearningRateMonitor would refuse to start
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
        self.history = HistoryCallback()
        trainer.callbacks.append(self.history)
        trainer.callbacks.extend(default_callbacks())
        return trainer

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.interrupted:
            return
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False)
        meta = {
            "strategy": self.strategy_name,
            "backbone": self.model.hparams.backbone,
            "dataset": self.dataset_name,
            "seed": self.config[self.subcommand].seed_everything,
            "run_dir": os.path.abspath(self.run_dir),
            "wall_time_s": round(time.time() - self.start_time, 2),
        }
        results = build_results(trainer, self.model, self.datamodule, self.history.history, best, meta)
        if trainer.is_global_zero:
            path = write_results(self.run_dir, results)
            print_table(results, path)
            from vidlit.loggers import finish_loggers

            finish_loggers(trainer, self.model, results)


def _seed(seed: Any) -> int:
    return int(seed) if not isinstance(seed, bool) else 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _resolve_run_dir(given: Optional[str], strategy: str, dataset: str) -> str:
    """``--trainer.default_root_dir`` is the run directory itself (reuse it to resume); without it,
    ``runs/<strategy>-<dataset>-<time>``, shared with DDP child processes through the environment."""
    if given:
        run_dir = str(given)
    elif os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(RUN_DIR_ENV):
        run_dir = os.environ[RUN_DIR_ENV]
    else:
        name = f"{strategy}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):  # a `wandb agent` run
            name += "-" + os.environ["WANDB_RUN_ID"]
        run_dir = os.path.join("runs", name)
    os.environ[RUN_DIR_ENV] = run_dir
    return run_dir


def _pop_flag(args: list[str], flag: str) -> tuple[Optional[str], list[str]]:
    """Remove ``--flag VALUE`` / ``--flag=VALUE`` from ``args``; return the value and the rest."""
    out, value, i = [], None, 0
    while i < len(args):
        a = args[i]
        if a == flag:
            if i + 1 >= len(args):
                raise UnknownNameError(f"{flag} needs a name")
            value, i = args[i + 1], i + 2
            continue
        if a.startswith(flag + "="):
            value = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    return value, out


def _from_configs(args: list[str], key: str) -> Optional[str]:
    """A top-level ``key`` (``strategy``/``dataset``/``backbone``) from ``--config`` files, last wins."""
    value = None
    for i, a in enumerate(args):
        path = args[i + 1] if a == "--config" and i + 1 < len(args) else (a.split("=", 1)[1] if a.startswith("--config=") else None)
        if path and os.path.isfile(path):
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
            if isinstance(data, dict) and key in data:
                value = data[key]
    return value


def run_cli(argv: list[str], start_time: Optional[float] = None) -> VidlitCLI:
    start_time = start_time or time.time()
    strategy, args = _pop_flag(list(argv), "--strategy")
    dataset, args = _pop_flag(args, "--dataset")
    backbone, args = _pop_flag(args, "--backbone")
    strategy = strategy or _from_configs(args, "strategy") or "erm"
    dataset = dataset or _from_configs(args, "dataset") or "folder"
    # a config file sets the backbone as model.backbone, which the parser handles itself
    STRATEGIES.get(strategy)
    DATAMODULES.get(dataset)
    if backbone is not None:
        BACKBONES.get(backbone)
        # right after the subcommand, so that a later --model.backbone or --config still overrides it
        args = args[:1] + ["--model.backbone", backbone] + args[1:]
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
    return VidlitCLI(strategy.lower(), dataset.lower(), args, start_time)


def print_registries() -> None:
    from vidlit.data.datamodule import DATAMODULES as datasets

    for name in STRATEGIES.names():
        doc = (STRATEGIES.get(name).__doc__ or "").strip().splitlines()[0]
        print(f"strategy  {name:14s} {doc}")
    for name in BACKBONES.names():
        spec = BACKBONES.get(name)
        print(f"backbone  {name:14s} {spec.family}, {spec.num_frames}x{spec.size}x{spec.size}, norm={spec.norm}")
    for name in datasets.names():
        doc = (datasets.get(name).__doc__ or "").strip().splitlines()[0]
        print(f"dataset   {name:14s} {doc}")


def _one_line(err: BaseException) -> str:
    """The user-facing message; for errors re-raised from a DataLoader worker, the original one."""
    text = str(err)
    if "Original Traceback" in text:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        text = re.sub(r"^[\w.]+Error: ", "", lines[-1]) if lines else text
    return text


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from vidlit import START_TIME

    start = START_TIME if argv is None or argv == sys.argv[1:] else time.time()
    command = argv[0] if argv else ""
    try:
        if command == "list":
            print_registries()
            return 0
        if command in ("sweep", "report", "bench"):
            import importlib

            return int(importlib.import_module(f"vidlit.{command}").main(argv[1:]) or 0)
        run_cli(argv, start)
        return 0
    except USER_ERRORS as err:
        print(f"vidlit: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except (ValueError, ImportError) as err:
        msg = _one_line(err)
        if msg.startswith("--") or "--model." in msg or "--data." in msg or "pip install" in msg:
            print(f"vidlit: error: {msg}", file=sys.stderr)
            return 2
        raise
