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
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from vidlit.backbones import BACKBONES
from vidlit.callbacks import default_callbacks
from vidlit.data.datamodule import DATAMODULES
from vidlit.errors import VidlitError, load_torch_file, torch_file_problem
from vidlit.loggers import WandbOptions
from vidlit.registry import UnknownNameError
from vidlit.results import (
    RESULTS_FILE, AtomicModelCheckpoint, HistoryCallback, WallClock, best_epoch_from_path, build_results, epoch_selected, print_table,
    test_evaluation, test_metrics, write_results,
)
from vidlit.strategy import STRATEGIES

SUBCOMMANDS = ("fit", "validate", "test", "predict")
RUN_DIR_ENV = "VIDLIT_RUN_DIR"


class RunConfigCallback(SaveConfigCallback):
    """Saves ``config.yaml`` as an experiment that ``fit --config RUN/config.yaml`` reruns: the
    strategy, dataset and every setting, without where this run lived (``trainer.default_root_dir``,
    the derived ``checkpoint.dirpath`` and ``ckpt_path`` are left empty, so a rerun gets a run
    folder of its own instead of writing into, or resuming, this one)."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        import copy

        original = self.config
        config = copy.deepcopy(original)
        run_dir = config.trainer.default_root_dir
        if run_dir and config.get("checkpoint") is not None and config.checkpoint.dirpath == os.path.join(run_dir, "checkpoints"):
            config.checkpoint.dirpath = None
        config.trainer.default_root_dir = None
        if "ckpt_path" in config:
            config.ckpt_path = None
        stage_name = str(getattr(stage, "value", stage))
        if stage_name != "fit":  # validate/test/predict: not a run's config.yaml (`report` takes that for a run)
            self.config_filename = f"{stage_name}_config.yaml"
        self.config = config
        try:
            super().setup(trainer, pl_module, stage)
        finally:
            self.config = original


COMMANDS = (
    ("fit", "train a strategy on the source domains, test the best checkpoint on the held-out ones (results.json)"),
    ("validate", "evaluate a checkpoint on the source validation split and held-out domains (--ckpt_path CKPT)"),
    ("test", "evaluate a checkpoint on the held-out domains (--ckpt_path CKPT)"),
    ("predict", "write predictions.csv for a checkpoint on videos (--ckpt_path CKPT)"),
    ("list", "list the strategies, backbones and dataset formats"),
    ("sweep", "run a grid of strategies x held-out domains x seeds (and hyperparameter draws)"),
    ("report", "tables of the results.json files under a folder (DomainBed style)"),
    ("bench", "measure data loading and training speed"),
    ("export", "write a checkpoint as a TorchScript or ONNX model that takes uint8 clips (--ckpt_path CKPT)"),
    ("explain", "Grad-CAM saliency over space and time of a checkpoint on clips: mp4, PNG strips, per-frame curves"),
    ("adapt", "few-shot: fine-tune a run's checkpoint on K labelled videos per class of its target, test on the rest"),
)
#: commands that are a module of their own: ``python -m vidlit NAME ...`` calls ``vidlit.NAME.main(argv)``
MODULE_COMMANDS = ("sweep", "report", "bench", "export", "explain", "adapt")

#: callbacks with a flag group of their own, ``--KEY.ARG`` (LightningCLI's ``add_lightning_class_args``,
#: as ``--checkpoint.*``): ``(KEY, "module:Class")``, added to the Trainer of every subcommand. A class
#: whose defaults do nothing costs nothing; its arguments are typed and documented like a strategy's.
CALLBACK_GROUPS: tuple[tuple[str, str], ...] = (
    ("saliency", "vidlit.saliency:ForegroundShare"),
    ("average", "vidlit.averaging:WeightAveraging"),
    ("bgmix", "vidlit.bgmix:BackgroundMix"),
    ("tta", "vidlit.tta:TestTimeAdaptation"),
    ("finetune", "vidlit.finetune:GradualUnfreeze"),
)


def callback_class(target: str) -> type:
    """The class named by ``"module:Class"`` (a :data:`CALLBACK_GROUPS` entry)."""
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def command_list() -> str:
    """What ``python -m vidlit --help`` (and ``-h``, and no arguments) prints."""
    lines = ["usage: python -m vidlit COMMAND [options]", "", "commands:"]
    lines += [f"  {name:9s} {text}" for name, text in COMMANDS]
    lines += ["", "python -m vidlit COMMAND --help lists the options of COMMAND "
              "(fit --strategy NAME --help: with that strategy's options)."]
    return "\n".join(lines)


class VidlitArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with one-line errors: an unknown flag names the closest real ones and
    the command that lists them all, instead of 100 lines of usage. Flags are never matched by
    prefix (``allow_abbrev=False``, inherited by the subcommand parsers)."""

    def error(self, message: str, ex: Optional[Exception] = None):
        if not self.exit_on_error:
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        raise VidlitError(_parse_error_line(parser, message))


def _parse_error_line(parser: Any, message: str) -> str:
    import difflib

    subcommand = getattr(parser, "subcommand", None) or ""
    sel = getattr(parser, "_vidlit_selection", ("erm", "folder"))
    extra = "".join(f" --{k} {v}" for k, v, d in (("strategy", sel[0], "erm"), ("dataset", sel[1], "folder")) if v != d)
    see = f"python -m vidlit {subcommand}{extra} --help".replace("  ", " ")
    m = re.match(r"unrecognized arguments: (.*)$", message.strip(), re.I | re.S)
    if m:
        flags = [a.split("=", 1)[0] for a in m.group(1).split() if a.startswith("-")]
        if flags:
            options = sorted({o for o in getattr(parser, "_option_string_actions", {}) if o.startswith("--")})
            parts = []
            for flag in flags:
                # names the flag is a prefix of first (an abbreviation), then the most similar ones
                close = [o for o in options if o.startswith(flag)][:3]
                close += [o for o in difflib.get_close_matches(flag, options, n=3, cutoff=0.6) if o not in close]
                close = close[:3]
                hint = f" (did you mean {' or '.join(close)}?)" if close else ""
                parts.append(f"{flag}{hint}")
            return f"unknown option {', '.join(parts)}; every option: {see}"
    key = re.match(r'Parser key "([^"]+)":', message.strip())
    expected = re.findall(r"Expected a <class '([\w.]+)'>", message)
    given = re.search(r"Given value: (.*)", message)
    if key and expected and given:  # a value of the wrong type
        names = ["null" if e == "NoneType" else e for e in expected]
        return f"--{key.group(1)}: expected {' or '.join(names)}, got '{given.group(1).strip()}' (options: {see})"
    text = "; ".join(ln.strip() for ln in message.strip().splitlines() if ln.strip())
    return f"{text} (options: {see})"


class VidlitCLI(LightningCLI):
    """LightningCLI plus run directories, default callbacks and loggers, and results at the end of fit."""

    def __init__(self, strategy: str, dataset: str, args: list[str], start_time: float,
                 checkpoint_run: Optional[str] = None) -> None:
        self.strategy_name, self.dataset_name, self.start_time = strategy, dataset, start_time
        # validate/test/predict --ckpt_path CKPT: the run folder CKPT came from (its settings are in args)
        self.checkpoint_run = checkpoint_run
        self.run_dir: Optional[str] = None
        self.finished_checkpoint: Optional[str] = None  # set when --ckpt_path names a finished run
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
            save_config_callback=RunConfigCallback,
            save_config_kwargs={"overwrite": True},
            parser_class=VidlitArgumentParser,
            # no prefix matching (--trainer.max_ep is not --trainer.max_epochs); subcommands inherit it
            parser_kwargs={"allow_abbrev": False, "prog": "python -m vidlit"},
        )

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        parser._vidlit_selection = (self.strategy_name, self.dataset_name)  # named in error lines
        return parser

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads the hyperparameters of a ``--ckpt_path`` file (with
        ``weights_only=True``); a file that is not a checkpoint, or not safe to load, is a one-line
        error naming it (:func:`load_checkpoint`)."""
        import pickle

        if self.checkpoint_run is not None:
            # the run's settings are already in the arguments, before the user's flags (which win);
            # Lightning would merge the checkpoint's hyperparameters over the user's --model.* flags
            load_checkpoint(self.config[self.config.subcommand].get("ckpt_path"))  # refused in one line if unsafe
            return
        path = self.config[self.config.subcommand].get("ckpt_path") if self.config.get("subcommand") else None
        if path and os.path.isfile(str(path)):
            problem = torch_file_problem(str(path))  # random bytes, a truncated file: said before torch reads it
            if problem:
                raise VidlitError(f"--ckpt_path: '{path}' refused: it is not a checkpoint ({problem}); {CKPT_INSTEAD}")
        try:
            super()._parse_ckpt_path()
        except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, ValueError, KeyError, IndexError, AttributeError):
            if path and os.path.isfile(str(path)):
                load_checkpoint(str(path))  # the one-line reason (an unsafe pickle, a damaged archive)
            raise

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--strategy", default=self.strategy_name, help=f"DG method: {', '.join(STRATEGIES.names())}")
        parser.add_argument("--dataset", default=self.dataset_name, help=f"dataset format: {', '.join(DATAMODULES.names())}")
        parser.add_lightning_class_args(AtomicModelCheckpoint, "checkpoint")
        parser.add_class_arguments(WandbOptions, "wandb")
        for key, target in CALLBACK_GROUPS:
            parser.add_lightning_class_args(callback_class(target), key)
        parser.set_defaults({
            "checkpoint.monitor": "val/acc", "checkpoint.mode": "max", "checkpoint.save_last": True,
            "checkpoint.filename": "best-{epoch:03d}", "checkpoint.auto_insert_metric_name": True,
            # an epoch re-run after a kill rewrites its own best file instead of adding a '-v1' twin
            "checkpoint.enable_version_counter": False,
        })
        parser.link_arguments("model.backbone", "data.backbone")
        parser.link_arguments("seed_everything", "data.seed", compute_fn=_seed)
        parser.link_arguments("seed_everything", "model.seed", compute_fn=_seed)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.num_domains", "model.num_domains", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        # the classes actually trained (a --config file's strategy:/dataset: may have been overridden later)
        cfg.strategy, cfg.dataset = self.strategy_name, self.dataset_name
        if cfg.get("ckpt_path") == "last" and not cfg.trainer.default_root_dir:
            raise VidlitError("--ckpt_path last resumes a run: also pass --trainer.default_root_dir RUN_DIR (the run's folder, with checkpoints/last.ckpt)")
        given = cfg.trainer.default_root_dir
        if not given and self.checkpoint_run is not None and not (os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(RUN_DIR_ENV)):
            # evaluating a checkpoint: a folder of its own inside the checkpoint's run, never a new runs/... run
            given = os.path.join(self.checkpoint_run, "eval", f"{self.subcommand}-{time.strftime('%Y%m%d-%H%M%S')}")
            _check_writable(given)
        self.run_dir = _resolve_run_dir(given, self.strategy_name, self.dataset_name)
        where = os.path.join(cfg.checkpoint.dirpath or os.path.join(self.run_dir, "checkpoints"), "last.ckpt")
        if cfg.get("ckpt_path") == "last" and not os.path.isfile(where):  # Lightning: a warning mid-output, then from scratch
            raise VidlitError(f"--ckpt_path last: no checkpoint {where} in the run folder '{self.run_dir}'; "
                              "check --trainer.default_root_dir (the folder of the run to resume), or drop --ckpt_path last to start afresh")
        if self.subcommand == "fit":
            _check_writable(self.run_dir)
        cfg.trainer.default_root_dir = self.run_dir
        if cfg.checkpoint.dirpath is None:
            cfg.checkpoint.dirpath = os.path.join(self.run_dir, "checkpoints")
        if cfg.trainer.precision is None:  # bf16-mixed on CUDA and on CPUs with native bf16, else fp32
            from vidlit.precision import detect, print_choice

            choice = detect(use_cuda=_cuda_available() and cfg.trainer.accelerator not in ("cpu",))
            cfg.trainer.precision = choice.precision
            print_choice(choice)
        if cfg.trainer.accelerator in (None, "auto") and not _cuda_available():
            cfg.trainer.accelerator = "cpu"
        from vidlit.predictions import fill_run_from_ckpt

        fill_run_from_ckpt(cfg)  # predict --dataset files --ckpt_path X: class names from X's run

    def instantiate_trainer(self, **kwargs: Any):
        cfg = self.config[self.subcommand]
        if cfg.trainer.logger in (None, True):
            from vidlit.loggers import build_loggers

            kwargs["logger"] = build_loggers(self.run_dir, self.config, self.subcommand)
        callbacks = self._get(self.config_init, "trainer", default={}).get("callbacks") or []  # instantiated ones
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if cfg.trainer.enable_progress_bar is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            from vidlit.progress import progress_bar

            kwargs["callbacks"] = callbacks + [progress_bar()]  # Rich on a terminal, plain lines in a log
        trainer = super().instantiate_trainer(**kwargs)
        if not trainer.loggers:  # --trainer.logger false: LearningRateMonitor would refuse to start
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
        self.history = HistoryCallback()
        trainer.callbacks.append(self.history)
        trainer.callbacks.extend(default_callbacks())
        trainer.callbacks.append(RunNamesCallback(self.strategy_name, self.dataset_name))
        self.wall_clock = WallClock(self.run_dir, self.start_time, resume=bool(cfg.get("ckpt_path")))
        trainer.callbacks.append(self.wall_clock)
        return trainer

    def fit(self, model: Any, datamodule: Any = None, ckpt_path: Optional[str] = None, **kwargs: Any) -> None:
        """``trainer.fit``, except on a run that has already finished training (``--ckpt_path``
        naming a checkpoint at ``max_epochs``/``max_steps``): then nothing is trained (Lightning
        would re-enter the last epoch) and :meth:`after_fit` completes the run if needed."""
        path = _resolve_ckpt_path(ckpt_path, self.trainer)
        if path is not None:
            state = load_checkpoint(path)
            if _training_finished(state, self.trainer):
                self.finished_checkpoint, self._finished_state = path, state
                return
        if kwargs.get("weights_only") is None:  # checkpoints are untrusted input: no arbitrary unpickling
            kwargs["weights_only"] = True
        if self.trainer.is_global_zero:
            from vidlit.sweep import record_wandb_agent_run

            record_wandb_agent_run(self.run_dir, "running")  # a `wandb agent` draw: report pools it with its sweep
        self.trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.interrupted:
            return
        results_path = os.path.join(self.run_dir, RESULTS_FILE)
        if self.finished_checkpoint is not None:
            state = self._finished_state
            if os.path.isfile(results_path):
                if trainer.is_global_zero:
                    print(f"vidlit: run already finished ({state.get('epoch', 0) + 1} epochs, {self.finished_checkpoint}); "
                          f"nothing trained, results unchanged: {results_path}")
                return
            # killed after training (while testing or writing results): complete the run from its checkpoints
            best = _best_from_state(state, getattr(trainer.checkpoint_callback, "dirpath", None))
            self.history.load_state_dict(_callback_state(state, "HistoryCallback") or {})
            if trainer.is_global_zero:
                print(f"vidlit: training had finished ({self.finished_checkpoint}); testing the best checkpoint and writing results")
        else:
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        from vidlit.averaging import find as find_averaging

        averaging = find_averaging(trainer)  # --average.method swad|ema: the averaged model is the best checkpoint
        selected = best  # the epoch-selected checkpoint: the run without averaging
        tested_selected = None
        if averaging is not None:
            ckpt_dir = getattr(trainer.checkpoint_callback, "dirpath", None) or os.path.join(self.run_dir, "checkpoints")
            if self.finished_checkpoint is None:
                best = averaging.finalize(trainer, self.model, self.datamodule, ckpt_dir) or best
            else:
                best = averaging.resume(ckpt_dir) or best
            if best != selected and selected and os.path.isfile(selected):
                # the run without averaging, tested exactly as the averaged model is below (the same
                # --data.test_views and --tta.*), so that the paired gain compares like with like
                tested_selected = self._test_unlogged(selected)
        trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False, weights_only=True)
        meta = {
            "strategy": self.strategy_name,
            "backbone": self.model.hparams.backbone,
            "dataset": self.dataset_name,
            "seed": self.config[self.subcommand].seed_everything,
            "run_dir": os.path.abspath(self.run_dir),
            "wall_time_s": self.wall_clock.update(),
        }
        results = build_results(trainer, self.model, self.datamodule, self.history.history, best, meta)
        if averaging is not None:
            results.update(averaging.summary or {"average": {"method": averaging.method, "interrupted": True}})
            if not results["average"].get("interrupted"):
                results["average"] = {**results["average"], "evaluation": test_evaluation(trainer, self.datamodule),
                                      "unaveraged": epoch_selected(
                    self.history.history, best_epoch_from_path(selected) if selected else results.get("best_epoch"), tested_selected)}
        from vidlit.tta import tta_results

        results.update(tta_results(trainer))  # --tta.method adabn|tent: how the test adapted
        if trainer.is_global_zero:
            path = write_results(self.run_dir, results)
            from vidlit.sweep import record_wandb_agent_run

            record_wandb_agent_run(self.run_dir, "done")
            print_table(results, path)
            from vidlit.loggers import finish_loggers

            finish_loggers(trainer, self.model, results)


    def _test_unlogged(self, ckpt: str) -> dict:
        """``trainer.test`` of ``ckpt`` as ``fit`` tests its best checkpoint, without logging (the
        loggers get the best checkpoint's test only); its accuracies, how it was tested
        (:func:`vidlit.results.test_evaluation`) and the checkpoint."""
        trainer = self.trainer
        loggers = trainer.loggers
        trainer.loggers = []
        try:
            trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt, verbose=False, weights_only=True)
        finally:
            trainer.loggers = loggers
        return {**test_metrics(trainer, self.datamodule), "evaluation": test_evaluation(trainer, self.datamodule),
                "checkpoint": os.path.abspath(ckpt)}

    def validate(self, **kwargs: Any) -> Any:
        return self._evaluate("validate", **kwargs)

    def test(self, **kwargs: Any) -> Any:
        return self._evaluate("test", **kwargs)

    def predict(self, **kwargs: Any) -> Any:
        return self._evaluate("predict", **kwargs)

    def _evaluate(self, subcommand: str, **kwargs: Any) -> Any:
        """``trainer.validate|test|predict``: checkpoints loaded with ``weights_only=True``, and a
        checkpoint whose weights do not fit the model is one line naming both."""
        if kwargs.get("weights_only") is None:  # checkpoints are untrusted input
            kwargs["weights_only"] = True
        try:
            return getattr(self.trainer, subcommand)(**kwargs)
        except RuntimeError as err:
            if "Error(s) in loading state_dict" not in str(err):
                raise
            first = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), "")
            raise VidlitError(f"--ckpt_path {kwargs.get('ckpt_path')}: its weights do not fit --strategy {self.strategy_name} "
                              f"with these settings ({first[:160]}); use the strategy and model settings it was trained with") from None

    def after_validate(self) -> None:
        self._write_eval_results("validate")

    def after_test(self) -> None:
        self._write_eval_results("test")

    def _write_eval_results(self, subcommand: str) -> None:
        """``validate``/``test``: ``<run_dir>/<subcommand>_results.json`` (the per-domain accuracies;
        never the fit's ``results.json``), its path printed under the per-domain table."""
        trainer, dm = self.trainer, self.datamodule
        if trainer.interrupted or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        names = getattr(self.model, "domain_names", {})
        cfg = self.config[self.subcommand]
        ckpt = cfg.get("ckpt_path")
        results = {
            "subcommand": subcommand,
            "strategy": self.strategy_name,
            "backbone": self.model.hparams.get("backbone"),
            "dataset": self.dataset_name,
            "checkpoint": os.path.abspath(ckpt) if ckpt and os.path.isfile(str(ckpt)) else ckpt,
            "checkpoint_run": os.path.abspath(self.checkpoint_run) if self.checkpoint_run else None,
            "run_dir": os.path.abspath(self.run_dir),
            "source_domains": list(getattr(dm, "source_domains", [])),
            "target_domains": list(getattr(dm, "target_domains", [])),
            "class_names": list(getattr(dm, "class_names", [])),
        }
        prefixes = {"validate": (("val", "val", "val"), ("target", "val_target", "test")), "test": (("test", "test", "test"),)}
        for key, prefix, role in prefixes[subcommand]:
            results[f"{key}_acc"] = _metric(m, f"{prefix}/acc")
            results[f"{key}_acc_per_domain"] = {d: _metric(m, f"{prefix}/acc/{d}") for d in names.get(role, [])}
        if subcommand == "validate":
            results["val_loss"] = _metric(m, "val/loss")
        from vidlit.tta import tta_results

        results.update(tta_results(trainer))  # --tta.method adabn|tent (test only)
        from vidlit.saliency import foreground_line, saliency_results

        if subcommand == "test":  # Grad-CAM mass inside the object mask per target domain (null without masks)
            results.update(saliency_results(trainer))
        results["wall_time_s"] = round(time.time() - self.start_time, 2)
        os.makedirs(self.run_dir, exist_ok=True)
        path = os.path.join(self.run_dir, f"{subcommand}_results.json")
        with open(path + ".tmp", "w") as fh:
            import json

            json.dump(results, fh, indent=2)
        os.replace(path + ".tmp", path)
        if results.get("foreground_share"):
            print(foreground_line(results["foreground_share"]), flush=True)
        print(f"results: {path}", flush=True)


class RunNamesCallback(Callback):
    """Stores the strategy and dataset names in every checkpoint (key ``vidlit_run``), so that
    ``validate``/``test``/``predict --ckpt_path`` know them for a checkpoint without its run's
    ``config.yaml``."""

    KEY = "vidlit_run"

    def __init__(self, strategy: str, dataset: str) -> None:
        self.strategy, self.dataset = strategy, dataset

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
        checkpoint[self.KEY] = {"strategy": self.strategy, "dataset": self.dataset}


def _metric(metrics: dict, key: str) -> Optional[float]:
    value = metrics.get(key)
    return None if value is None else round(float(value), 6)


#: what ``--ckpt_path`` takes, said when a file is refused
CKPT_INSTEAD = "pass a checkpoint written by `python -m vidlit fit` (RUN/checkpoints/best-epoch=N.ckpt or RUN/checkpoints/last.ckpt)"


def load_checkpoint(path: str, flag: str = "--ckpt_path") -> dict:
    """A Lightning checkpoint, unpickled with ``weights_only=True`` (checkpoints are untrusted input;
    everything vidlit stores in one is plain data); a file that is not a checkpoint, or not safe
    to load, is one line naming it and what to pass (:func:`vidlit.errors.load_torch_file`)."""
    state = load_torch_file(path, flag, CKPT_INSTEAD)
    if not isinstance(state, dict):
        raise VidlitError(f"{flag}: '{path}' refused: it is not a checkpoint (it holds a {type(state).__name__}, "
                          f"not a checkpoint's dict); {CKPT_INSTEAD}")
    return state


def _resolve_ckpt_path(ckpt_path: Optional[str], trainer: Any) -> Optional[str]:
    if not ckpt_path:
        return None
    if ckpt_path == "last":
        cb = trainer.checkpoint_callback
        dirpath = getattr(cb, "dirpath", None) if cb is not None else None
        path = os.path.join(dirpath, "last.ckpt") if dirpath else None
        return path if path and os.path.isfile(path) else None
    if ckpt_path in ("best", "hpc", "registry"):
        return None
    if not os.path.isfile(ckpt_path):
        raise VidlitError(f"--ckpt_path: no checkpoint file '{ckpt_path}'")
    return ckpt_path


def _training_finished(state: dict, trainer: Any) -> bool:
    """Whether the checkpoint was saved once training had reached the trainer's limits."""
    fit = state.get("loops", {}).get("fit_loop", {})
    processed = fit.get("epoch_progress", {}).get("current", {}).get("processed")  # epochs fully trained
    step = int(state.get("global_step", 0))
    if trainer.max_steps is not None and trainer.max_steps > 0 and step >= trainer.max_steps:
        return True
    max_epochs = trainer.max_epochs
    return processed is not None and max_epochs is not None and max_epochs >= 0 and processed >= max_epochs


def _callback_state(state: dict, name: str) -> Optional[dict]:
    for key, value in (state.get("callbacks") or {}).items():
        if key == name or key.startswith(name + "{"):
            return value
    return None


def _best_from_state(state: dict, checkpoint_dir: Optional[str]) -> str:
    """The best checkpoint recorded in a checkpoint's ModelCheckpoint state; when the run folder
    has moved since, the file of that name in this run's checkpoint folder."""
    for key, value in (state.get("callbacks") or {}).items():
        if "ModelCheckpoint" in key and isinstance(value, dict) and value.get("best_model_path"):
            path = str(value["best_model_path"])
            here = os.path.join(checkpoint_dir, os.path.basename(path)) if checkpoint_dir else path
            return here if os.path.isfile(here) else path
    return ""


def _check_writable(run_dir: str) -> None:
    """A run folder that cannot be written fails now, in one line, not after the first epoch."""
    import tempfile

    try:
        os.makedirs(run_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise VidlitError(f"--trainer.default_root_dir: cannot write the run folder '{run_dir}' ({err.strerror or err}); choose a writable folder") from None


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


def _flag_value(args: list[str], i: int, flag: str) -> tuple[Optional[str], int]:
    """If ``args[i]`` is ``flag VALUE`` or ``flag=VALUE``: (VALUE, index after it); else (None, i)."""
    a = args[i]
    if a == flag:
        if i + 1 >= len(args) or args[i + 1].startswith("--"):
            raise UnknownNameError(f"{flag} needs a name")
        return args[i + 1], i + 2
    if a.startswith(flag + "="):
        return a.split("=", 1)[1], i + 1
    return None, i


def _config_keys(path: str) -> dict:
    """Top-level ``strategy``/``dataset`` of a ``--config`` file (empty when it is not a file:
    the parser then reports it)."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return {k: data[k] for k in ("strategy", "dataset") if isinstance(data, dict) and data.get(k) is not None}


def resolve_selection(argv: list[str]) -> tuple[str, str, list[str]]:
    """The strategy and dataset a command line selects, and the arguments for the parser.

    Arguments are read left to right and the last one wins, as for every other flag: ``--strategy``
    and ``--dataset`` (removed here: they pick the classes), the ``strategy:``/``dataset:`` keys of
    each ``--config`` file at that file's position, and ``--backbone NAME``, rewritten in place as
    ``--model.backbone NAME`` so that a ``--config`` before it loses and one after it wins. The
    chosen names are passed last (``--strategy S --dataset D``), so ``--print_config`` and the
    saved ``config.yaml`` name the classes actually trained."""
    strategy, dataset = "erm", "folder"
    out: list[str] = []
    i = 0
    while i < len(argv):
        value, j = _flag_value(argv, i, "--strategy")
        if value is not None:
            strategy, i = value, j
            continue
        value, j = _flag_value(argv, i, "--dataset")
        if value is not None:
            dataset, i = value, j
            continue
        value, j = _flag_value(argv, i, "--backbone")
        if value is not None:
            BACKBONES.get(value)
            out += ["--model.backbone", value]
            i = j
            continue
        a = argv[i]
        path = argv[i + 1] if a == "--config" and i + 1 < len(argv) else (a.split("=", 1)[1] if a.startswith("--config=") else None)
        if path is not None:
            keys = _config_keys(path)
            strategy, dataset = keys.get("strategy", strategy), keys.get("dataset", dataset)
            out += argv[i : i + (2 if a == "--config" else 1)]
            i += 2 if a == "--config" else 1
            continue
        out.append(a)
        i += 1
    strategy, dataset = str(strategy).lower(), str(dataset).lower()
    STRATEGIES.get(strategy)
    DATAMODULES.get(dataset)
    if out and out[0] in SUBCOMMANDS:
        out += ["--strategy", strategy, "--dataset", dataset]
    return strategy, dataset, out


EVAL_COMMANDS = ("validate", "test", "predict")
# link targets (set from other keys when the classes are made): never passed as settings
_LINKED = {"model": {"seed", "num_classes", "num_domains"}, "data": {"backbone", "seed"}}


def _last_flag(argv: list[str], flag: str) -> Optional[str]:
    value = None
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def checkpoint_run_dir(ckpt: str) -> str:
    """The run folder of a checkpoint: ``RUN`` for ``RUN/checkpoints/X.ckpt``, else its own folder."""
    folder = os.path.dirname(os.path.normpath(ckpt)) or "."
    if os.path.basename(os.path.abspath(folder)) == "checkpoints":
        return os.path.dirname(folder) or "." if folder != "." else ".."
    return folder


def _accepted_args(cls: type) -> set[str]:
    """Constructor argument names of ``cls``, following ``**kwargs`` into its base classes."""
    import inspect

    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters.values()
        names |= {p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


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
    names = state.get(RunNamesCallback.KEY) or {}
    for key in ("strategy", "dataset"):
        if names.get(key):
            found[key] = names[key]
    for section, key in (("model", "hyper_parameters"), ("data", "datamodule_hyper_parameters")):
        hp = state.get(key)
        if isinstance(hp, dict) and hp:
            found[section] = {k: v for k, v in hp.items() if not k.startswith("_")}
    return found, f"{ckpt} (hyperparameters)"


def with_checkpoint_settings(argv: list[str]) -> tuple[list[str], Optional[str]]:
    """``validate|test|predict --ckpt_path CKPT``: the arguments with the settings of CKPT's run put
    first (strategy, dataset, model and data), so that every flag given overrides them; and the
    run folder. Other command lines are returned as they are."""
    if not argv or argv[0] not in EVAL_COMMANDS:
        return argv, None
    ckpt = _last_flag(argv, "--ckpt_path")
    if not ckpt or ckpt in ("last", "best", "hpc", "registry") or "--help" in argv or "-h" in argv:
        return argv, None
    if not os.path.isfile(ckpt):
        if any(a.split("=", 1)[0] == "--print_config" for a in argv):
            return argv, None  # the configuration as given (a documented command with an example path)
        raise VidlitError(f"--ckpt_path: no checkpoint file '{ckpt}'; pass a .ckpt file (e.g. RUN/checkpoints/last.ckpt)")
    found, source = checkpoint_settings(ckpt)
    head = [argv[0]] + [x for k in ("strategy", "dataset") if found.get(k) for x in (f"--{k}", str(found[k]))]
    # the classes the user's flags select in the end (their --strategy/--dataset/--config win)
    strategy, dataset, _ = resolve_selection(head + argv[1:])
    sections = {}
    for section, cls in (("model", STRATEGIES.get(strategy)), ("data", DATAMODULES.get(dataset))):
        values = found.get(section)
        if isinstance(values, dict):
            ok = _accepted_args(cls) - _LINKED[section]
            if section == "data" and found.get("dataset") and str(found["dataset"]).lower() != dataset:
                # another dataset format (e.g. predict --dataset files): the clip settings, not which videos
                ok -= {"root", "source_domains", "target_domains", "classes", "videos", "run"}
            sections[section] = {k: v for k, v in values.items() if k in ok}
    if sections:
        head += ["--config", yaml.safe_dump(sections, default_flow_style=True, width=1 << 30).strip()]
    keys = [f"strategy {found.get('strategy', strategy)}", f"backbone {(found.get('model') or {}).get('backbone', '?')}",
            f"dataset {found.get('dataset', dataset)}"]
    print(f"vidlit: {argv[0]} with the settings of {source} ({', '.join(keys)}); flags given override them", file=sys.stderr)
    return head + argv[1:], checkpoint_run_dir(ckpt)


def run_cli(argv: list[str], start_time: Optional[float] = None) -> VidlitCLI:
    start_time = start_time or time.time()
    argv, checkpoint_run = with_checkpoint_settings(list(argv))
    strategy, dataset, args = resolve_selection(argv)
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
    return VidlitCLI(strategy, dataset, args, start_time, checkpoint_run=checkpoint_run)


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
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        text = err.args[0]  # KeyError's str() adds quotes
    if "Original Traceback" in text:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        text = re.sub(r"^[\w.]+Error: ", "", lines[-1]) if lines else text
    return text


def _user_error(err: BaseException) -> Optional[BaseException]:
    """The :class:`VidlitError` behind ``err``: itself, or the one a DataLoader worker raised
    (PyTorch re-raises a worker's exception as the same class when it can, else wraps it)."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, VidlitError):
            return err
        err = err.__cause__ or err.__context__
        seen += 1
    return None


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from vidlit import START_TIME

    start = START_TIME if argv is None or argv == sys.argv[1:] else time.time()
    command = argv[0] if argv else ""
    if command in ("-h", "--help"):
        print(command_list())
        return 0
    if not argv:  # a command is required: the list, and exit status 2 (as for any usage error)
        print(command_list(), file=sys.stderr)
        print("vidlit: error: no command given", file=sys.stderr)
        return 2
    try:
        if not command.startswith("-") and command not in {name for name, _ in COMMANDS}:
            import difflib

            close = difflib.get_close_matches(command, [name for name, _ in COMMANDS], n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise VidlitError(f"unknown command '{command}'{hint}; the commands: python -m vidlit --help")
        if command == "list":
            print_registries()
            return 0
        if command in MODULE_COMMANDS:
            import importlib

            return int(importlib.import_module(f"vidlit.{command}").main(argv[1:]) or 0)
        run_cli(argv, start)
        return 0
    except Exception as err:  # noqa: BLE001 -- user errors are one line; anything else is a bug: traceback
        user = _user_error(err)
        if user is None:
            raise
        print(f"vidlit: error: {_one_line(user)}", file=sys.stderr)
        return 2
