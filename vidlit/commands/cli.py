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
import time
import warnings
from typing import Any, Optional

from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import (
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)

from vidlit.callbacks.checkpoint import AtomicModelCheckpoint, RunStampCallback
from vidlit.callbacks.defaults import default_callbacks
from vidlit.callbacks.history import HistoryCallback, WallClock
from vidlit.callbacks.loggers import WandbOptions
from vidlit.commands.args import resolve_selection, with_checkpoint_settings
from vidlit.data.datamodule import DATAMODULES
from vidlit.models.strategy import STRATEGIES
from vidlit.run.checkpoint import (
    CKPT_INSTEAD,
    best_from_state,
    callback_state,
    load_checkpoint,
    torch_file_problem,
    training_finished,
)
from vidlit.run.files import RESULTS_FILE
from vidlit.run.results import (
    best_epoch_from_path,
    build_results,
    epoch_selected,
    callback_lines,
    eval_results,
    print_table,
    results_head,
    test_evaluation,
    test_metrics,
    write_results,
)
from vidlit.run.rundir import RUN_DIR_ENV, check_writable, resolve_run_dir
from vidlit.utils.errors import VidlitError


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


#: callbacks with a flag group of their own, ``--KEY.ARG`` (LightningCLI's ``add_lightning_class_args``,
#: as ``--checkpoint.*``): ``(KEY, "module:Class")``, added to the Trainer of every subcommand. A class
#: whose defaults do nothing costs nothing; its arguments are typed and documented like a strategy's.
CALLBACK_GROUPS: tuple[tuple[str, str], ...] = (
    ("saliency", "vidlit.callbacks.saliency:ForegroundShare"),
    ("average", "vidlit.callbacks.averaging:WeightAveraging"),
    ("bgmix", "vidlit.callbacks.bgmix:BackgroundMix"),
    ("tta", "vidlit.callbacks.tta:TestTimeAdaptation"),
    ("finetune", "vidlit.callbacks.finetune:GradualUnfreeze"),
)


def callback_class(target: str) -> type:
    """The class named by ``"module:Class"`` (a :data:`CALLBACK_GROUPS` entry)."""
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


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
        self._args = list(args)
        self._new_dirs: list[str] = []  # the run folder and its parents, where this command creates them
        try:
            self._init(args)
        except Exception:
            self._remove_new_run_dir()  # a command that failed before training leaves no empty run folder
            raise

    def _init(self, args: list[str]) -> None:
        super().__init__(
            model_class=STRATEGIES.get(self.strategy_name),
            datamodule_class=DATAMODULES.get(self.dataset_name),
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

    def _remove_new_run_dir(self) -> None:
        """After a failed command: remove the run folder if this command created it and nothing was
        trained into it (no checkpoint, no training step), then its parents that it created and that
        are now empty. A folder that existed before (``--trainer.default_root_dir``, a resumed run)
        is never removed; neither is a run that trained (its checkpoints survive a later crash)."""
        import shutil

        if not self._new_dirs or os.environ.get("LOCAL_RANK", "0") != "0":
            return
        trainer = getattr(self, "trainer", None)
        if trainer is not None and (not trainer.is_global_zero or trainer.global_step > 0):
            return
        run_dir = self._new_dirs[0]
        for _, _, files in os.walk(run_dir):
            if any(f.endswith(".ckpt") for f in files):
                return
        if os.path.isdir(os.path.join(run_dir, "wandb")):
            import contextlib

            with contextlib.suppress(Exception):  # a W&B run started here: close it before its folder goes
                import wandb

                if wandb.run is not None:
                    wandb.finish(exit_code=1, quiet=True)
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in self._new_dirs[1:]:
            try:
                os.rmdir(parent)  # only when empty: another run may have been created there meanwhile
            except OSError:
                break

    def _wandb_requested(self) -> bool:
        """``validate``/``test``/``predict`` log to W&B only when asked: ``--trainer.logger true`` or
        a ``--wandb.*`` option (on the command line, or a ``wandb:`` value in a ``--config``)."""
        import dataclasses

        if any(a == "--wandb" or a.startswith(("--wandb.", "--wandb=")) for a in self._args):
            return True
        cfg = self.config[self.subcommand]
        if cfg.trainer.logger is True:
            return True
        given = cfg.get("wandb")
        given = given.as_dict() if hasattr(given, "as_dict") else dict(given or {})
        defaults = dataclasses.asdict(WandbOptions())
        return any(given.get(k, v) != v for k, v in defaults.items())

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
            self._new_dirs = _missing_dirs(given)
            check_writable(given)
        self.run_dir = resolve_run_dir(given, self.strategy_name, self.dataset_name)
        self._new_dirs = self._new_dirs or _missing_dirs(self.run_dir)
        ckpt = cfg.get("ckpt_path")
        if self.subcommand == "fit" and ckpt and ckpt not in ("last", "best", "hpc", "registry") and not os.path.isfile(str(ckpt)):
            # now, before a run folder, a logger or a W&B run exists
            raise VidlitError(f"--ckpt_path: no checkpoint file '{ckpt}'; pass a .ckpt file (e.g. RUN/checkpoints/last.ckpt), "
                              "or --ckpt_path last with --trainer.default_root_dir RUN to resume")
        where = os.path.join(cfg.checkpoint.dirpath or os.path.join(self.run_dir, "checkpoints"), "last.ckpt")
        if cfg.get("ckpt_path") == "last" and not os.path.isfile(where):  # Lightning: a warning mid-output, then from scratch
            raise VidlitError(f"--ckpt_path last: no checkpoint {where} in the run folder '{self.run_dir}'; "
                              "check --trainer.default_root_dir (the folder of the run to resume), or drop --ckpt_path last to start afresh")
        if self.subcommand == "fit":
            check_writable(self.run_dir)  # removed again if the command fails before training (_remove_new_run_dir)
        cfg.trainer.default_root_dir = self.run_dir
        if cfg.checkpoint.dirpath is None:
            cfg.checkpoint.dirpath = os.path.join(self.run_dir, "checkpoints")
        if cfg.trainer.precision is None:  # bf16-mixed on CUDA and on CPUs with native bf16, else fp32
            from vidlit.utils.precision import detect, print_choice

            choice = detect(use_cuda=_cuda_available() and cfg.trainer.accelerator not in ("cpu",))
            cfg.trainer.precision = choice.precision
            print_choice(choice)
        if cfg.trainer.accelerator in (None, "auto") and not _cuda_available():
            cfg.trainer.accelerator = "cpu"
        from vidlit.run.checkpoint import fill_run_from_ckpt

        fill_run_from_ckpt(cfg)  # predict --dataset files --ckpt_path X: class names from X's run

    def instantiate_trainer(self, **kwargs: Any):
        cfg = self.config[self.subcommand]
        if cfg.trainer.logger in (None, True):
            from vidlit.callbacks.loggers import build_loggers

            wandb = self.subcommand == "fit" or self._wandb_requested()  # eval commands: only when asked
            kwargs["logger"] = build_loggers(self.run_dir, self.config, self.subcommand, wandb=wandb)
        if self.subcommand == "fit" and cfg.get("ckpt_path"):  # resuming writes into the run's own checkpoints
            from vidlit.utils.quiet import expect_checkpoint_dir_warning

            expect_checkpoint_dir_warning(cfg.checkpoint.dirpath)
        callbacks = self._get(self.config_init, "trainer", default={}).get("callbacks") or []  # instantiated ones
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if cfg.trainer.enable_progress_bar is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            from vidlit.callbacks.progress import progress_bar

            kwargs["callbacks"] = callbacks + [progress_bar()]  # Rich on a terminal, plain lines in a log
        trainer = super().instantiate_trainer(**kwargs)
        if not trainer.loggers:  # --trainer.logger false: LearningRateMonitor would refuse to start
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, LearningRateMonitor)]
        self.history = HistoryCallback()
        trainer.callbacks.append(self.history)
        trainer.callbacks.extend(default_callbacks())
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, RunStampCallback)]
        trainer.callbacks.append(RunStampCallback(self.strategy_name, self.dataset_name))
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
            if training_finished(state, self.trainer):
                self.finished_checkpoint, self._finished_state = path, state
                return
        if kwargs.get("weights_only") is None:  # checkpoints are untrusted input: no arbitrary unpickling
            kwargs["weights_only"] = True
        if self.trainer.is_global_zero:
            from vidlit.run.sweep_record import record_wandb_agent_run

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
            best = best_from_state(state, getattr(trainer.checkpoint_callback, "dirpath", None))
            self.history.load_state_dict(callback_state(state, "HistoryCallback") or {})
            if trainer.is_global_zero:
                print(f"vidlit: training had finished ({self.finished_checkpoint}); testing the best checkpoint and writing results")
        else:
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        from vidlit.callbacks.averaging import find as find_averaging

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
            **results_head("fit", strategy=self.strategy_name, backbone=self.model.hparams.backbone,
                           dataset=self.dataset_name, run_dir=self.run_dir, datamodule=self.datamodule),
            "seed": self.config[self.subcommand].seed_everything,
            "wall_time_s": self.wall_clock.update(),
        }
        results = build_results(trainer, self.model, self.datamodule, self.history.history, best, meta)
        results.update(_plain_finetune_entry(self.datamodule))
        if averaging is not None:
            results.update(averaging.summary or {"average": {"method": averaging.method, "interrupted": True}})
            if not results["average"].get("interrupted"):
                results["average"] = {**results["average"], "evaluation": test_evaluation(trainer, self.datamodule),
                                      "unaveraged": epoch_selected(
                    self.history.history, best_epoch_from_path(selected) if selected else results.get("best_epoch"), tested_selected)}
        if trainer.is_global_zero:
            path = write_results(self.run_dir, results)
            from vidlit.run.sweep_record import record_wandb_agent_run

            record_wandb_agent_run(self.run_dir, "done")
            print_table(results, path, _plain_finetune_lines(results) + callback_lines(trainer, results))
            from vidlit.callbacks.loggers import finish_loggers

            finish_loggers(trainer, self.model, results)


    def _test_unlogged(self, ckpt: str) -> dict:
        """``trainer.test`` of ``ckpt`` as ``fit`` tests its best checkpoint, without logging (the
        loggers get the best checkpoint's test only); its accuracies, how it was tested
        (:func:`vidlit.run.results.test_evaluation`) and the checkpoint."""
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
        trainer = self.trainer
        if trainer.interrupted or not trainer.is_global_zero:
            return
        ckpt = self.config[self.subcommand].get("ckpt_path")
        head = results_head(subcommand, strategy=self.strategy_name, backbone=self.model.hparams.get("backbone"),
                            dataset=self.dataset_name, run_dir=self.run_dir, datamodule=self.datamodule)
        head.update(subcommand=subcommand,
                    checkpoint=os.path.abspath(ckpt) if ckpt and os.path.isfile(str(ckpt)) else ckpt,
                    checkpoint_run=os.path.abspath(self.checkpoint_run) if self.checkpoint_run else None)
        results = eval_results(subcommand, trainer, self.model, head)
        results["wall_time_s"] = round(time.time() - self.start_time, 2)
        results.update(_plain_finetune_entry(self.datamodule))
        path = write_results(self.run_dir, results, f"{subcommand}_results.json")
        for line in _plain_finetune_lines(results) + callback_lines(trainer, results):
            print(line, flush=True)
        print(f"results: {path}", flush=True)



def _missing_dirs(path: str) -> list[str]:
    """``path`` and its parents up to the first that exists, when ``path`` does not exist yet (the
    folders a command creates for its run folder); ``[]`` when it exists."""
    out, p = [], os.path.abspath(path)
    while not os.path.exists(p):
        out.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return out


def _plain_finetune_entry(datamodule: Any) -> dict:
    """``plain_finetune`` in the results of a run without held-out domain (``--data.target_domains
    '[]'``): the test fraction and the videos per split; ``{}`` otherwise."""
    if not getattr(datamodule, "plain_finetune", False):
        return {}
    return {"plain_finetune": {
        "test_fraction": datamodule.hparams.test_fraction,
        "videos": {k: len(getattr(datamodule, f"{k}_records", [])) for k in ("train", "val", "test")},
    }}


def _plain_finetune_lines(results: dict) -> list[str]:
    plain = results.get("plain_finetune")
    if not plain:
        return []
    n = plain["videos"]
    return [f"plain fine-tuning (--data.target_domains '[]'): no held-out domain; the test rows are each domain's "
            f"in-domain test split ({n['train']} train / {n['val']} val / {n['test']} test videos)"]


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


def _seed(seed: Any) -> int:
    return int(seed) if not isinstance(seed, bool) else 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_cli(argv: list[str], start_time: Optional[float] = None) -> VidlitCLI:
    start_time = start_time or time.time()
    argv, checkpoint_run = with_checkpoint_settings(list(argv))
    strategy, dataset, args = resolve_selection(argv)
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
    return VidlitCLI(strategy, dataset, args, start_time, checkpoint_run=checkpoint_run)



