"""``<run_dir>/sweep.json`` of a run made by a ``wandb agent`` (read by ``report``)."""
from __future__ import annotations

import json
import os
from typing import Any

from vidlit.run.files import SWEEP_FILE
from vidlit.utils.io import write_json

#: the W&B sweep parameters that place a run in the grid (not hyperparameter draws)
WANDB_GRID_PARAMS = ("strategy", "data.target_domains", "seed_everything")


def record_wandb_agent_run(run_dir: str, status: str) -> bool:
    """Under ``wandb agent`` (``WANDB_SWEEP_ID`` set by the agent), ``<run_dir>/sweep.json`` names
    the W&B sweep, this run (the draw: ``WANDB_RUN_ID``) and the hyperparameters the agent chose
    (its parameter file ``WANDB_SWEEP_PARAM_PATH``, less the grid's strategy/target/seed), so
    ``report`` selects among the draws of that sweep only. False (nothing written) outside an
    agent, or in a run of ``vidlit sweep`` (which keeps its own record)."""
    sweep_id = os.environ.get("WANDB_SWEEP_ID")
    path = os.path.join(run_dir, SWEEP_FILE)
    if not sweep_id:
        return False
    old: dict = {}
    if os.path.isfile(path):
        try:
            with open(path) as fh:
                old = json.load(fh)
        except (OSError, ValueError):
            old = {}
        if "wandb_sweep" not in old:
            return False  # a vidlit sweep's own record
    hparams: dict[str, Any] = {}
    try:
        import yaml

        with open(os.environ.get("WANDB_SWEEP_PARAM_PATH", "")) as fh:
            params = yaml.safe_load(fh) or {}
        hparams = {k: (v.get("value") if isinstance(v, dict) else v) for k, v in params.items()
                   if k not in WANDB_GRID_PARAMS and not k.startswith("_")}
    except (OSError, ValueError, AttributeError):
        hparams = dict(old.get("hparams") or {})
    write_json(path, {**old, "wandb_sweep": sweep_id, "hparams_draw": os.environ.get("WANDB_RUN_ID") or old.get("hparams_draw") or "?",
                       "hparams": hparams, "status": status})
    return True
