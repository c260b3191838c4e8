"""Old module paths (vidlit 0.1's flat layout) keep working: ``import vidlit.cli``, ``from
vidlit.strategy import Strategy``, ``from vidlit.results import RESULTS_FILE``.

A module moved whole is the new module under its old name; a module split in several is a module
whose names resolve to their new homes on first use. Nothing here is imported unless an old path
is: new code imports from the layered packages (see docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from typing import Union

#: old module -> new module, or (the new module of the rest, {name: "new.module" or "new.module:new_name"})
MOVED: dict[str, Union[str, tuple[str, dict[str, str]]]] = {
    "vidlit.errors": "vidlit.utils.errors",
    "vidlit.registry": "vidlit.utils.registry",
    "vidlit.quiet": "vidlit.utils.quiet",
    "vidlit.precision": "vidlit.utils.precision",
    "vidlit.metrics": "vidlit.models.metrics",
    "vidlit.backbones": "vidlit.models.backbones",
    "vidlit.weights": "vidlit.models.weights",
    "vidlit.inflate": "vidlit.models.inflate",
    "vidlit.strategy": "vidlit.models.strategy",
    "vidlit.losses": "vidlit.models.losses",
    "vidlit.mixstyle": "vidlit.models.mixstyle",
    "vidlit.averaging": ("vidlit.callbacks.averaging", {"RunningMean": "vidlit.models.averaging", "SwadWindow": "vidlit.models.averaging", "recompute_bn": "vidlit.models.averaging", "swad_window": "vidlit.models.averaging", "AVERAGED_CHECKPOINT": "vidlit.run.files"}),
    "vidlit.bgmix": "vidlit.callbacks.bgmix",
    "vidlit.finetune": "vidlit.callbacks.finetune",
    "vidlit.tta": "vidlit.callbacks.tta",
    "vidlit.progress": "vidlit.callbacks.progress",
    "vidlit.loggers": "vidlit.callbacks.loggers",
    "vidlit.tables": "vidlit.callbacks.tables",
    "vidlit.adapt": "vidlit.commands.adapt",
    "vidlit.report": "vidlit.commands.report",
    "vidlit.bench": "vidlit.commands.bench",
    "vidlit.sweep": ("vidlit.commands.sweep", {"SWEEP_FILE": "vidlit.run.files", "WANDB_GRID_PARAMS": "vidlit.run.sweep_record", "record_wandb_agent_run": "vidlit.run.sweep_record", "_write_json": "vidlit.utils.io:write_json"}),
    "vidlit.saliency": ("vidlit.inference.gradcam", {"ForegroundShare": "vidlit.callbacks.saliency", "foreground_line": "vidlit.callbacks.saliency", "saliency_results": "vidlit.callbacks.saliency"}),
    "vidlit.explain": ("vidlit.commands.explain", {"_captioned": "vidlit.inference.render", "_enlarge": "vidlit.inference.render", "heat_colours": "vidlit.inference.render", "overlay": "vidlit.inference.render", "write_curve": "vidlit.inference.render", "write_strip": "vidlit.inference.render"}),
    "vidlit.export": ("vidlit.commands.export", {"ClipClassifier": "vidlit.inference.trained", "Trained": "vidlit.inference.trained", "_state_names": "vidlit.inference.trained", "eager_logits": "vidlit.inference.trained", "example_clips": "vidlit.inference.trained", "load_trained": "vidlit.inference.trained", "video_clip": "vidlit.inference.trained"}),
    "vidlit.results": ("vidlit.run.results", {"AtomicModelCheckpoint": "vidlit.callbacks.checkpoint", "HistoryCallback": "vidlit.callbacks.history", "WallClock": "vidlit.callbacks.history", "RESULTS_FILE": "vidlit.run.files", "WALL_TIME_FILE": "vidlit.run.files", "_fsync": "vidlit.utils.io:fsync"}),
    "vidlit.predictions": ("vidlit.callbacks.predictions", {"RunInfoCallback": "vidlit.callbacks.checkpoint:RunStampCallback", "fill_run_from_ckpt": "vidlit.run.checkpoint", "trained_run_info": "vidlit.run.checkpoint", "PREDICTIONS_FILE": "vidlit.run.files"}),
    "vidlit.cli": ("vidlit.commands.cli", {"RunNamesCallback": "vidlit.callbacks.checkpoint:RunStampCallback", "EVAL_COMMANDS": "vidlit.commands.args", "SUBCOMMANDS": "vidlit.commands.args", "_config_keys": "vidlit.commands.args", "_flag_value": "vidlit.commands.args", "_last_flag": "vidlit.commands.args", "resolve_selection": "vidlit.commands.args", "with_checkpoint_settings": "vidlit.commands.args", "print_registries": "vidlit.commands.listing", "COMMANDS": "vidlit.commands.main", "_one_line": "vidlit.commands.main", "_user_error": "vidlit.commands.main", "command_list": "vidlit.commands.main", "main": "vidlit.commands.main", "_LINKED": "vidlit.run.checkpoint:LINKED", "_accepted_args": "vidlit.utils.registry:init_arg_names", "_best_from_state": "vidlit.run.checkpoint:best_from_state", "_callback_state": "vidlit.run.checkpoint:callback_state", "_training_finished": "vidlit.run.checkpoint:training_finished", "checkpoint_settings": "vidlit.run.checkpoint", "load_checkpoint": "vidlit.run.checkpoint", "RUN_DIR_ENV": "vidlit.run.rundir", "_check_writable": "vidlit.run.rundir:check_writable", "_resolve_run_dir": "vidlit.run.rundir:resolve_run_dir", "checkpoint_run_dir": "vidlit.run.rundir"}),
}


class _SplitModule(types.ModuleType):
    """An old module whose names now live in several modules."""

    def __init__(self, name: str, rest: str, names: dict[str, str]) -> None:
        super().__init__(name, f"Moved: see {rest} (vidlit/_compat.py lists where each name went).")
        self._rest, self._names = rest, names

    def __getattr__(self, attr: str):
        target = self._names.get(attr)
        module, _, new = (target or self._rest).partition(":")
        value = getattr(importlib.import_module(module), new or attr)
        setattr(self, attr, value)
        return value

    def __dir__(self):
        return sorted(set(self._names) | set(dir(importlib.import_module(self._rest))))


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        target = MOVED[spec.name]
        if isinstance(target, str):
            return importlib.import_module(target)
        return _SplitModule(spec.name, *target)

    def exec_module(self, module) -> None:
        pass


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old module paths of :data:`MOVED`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.machinery.ModuleSpec(fullname, _Loader())
        return None


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())  # before the path finders: an old file left over by an upgrade loses
