"""Run-folder rules: where a run lives, that it is writable, which run a checkpoint belongs to."""
from __future__ import annotations

import os
import time
from typing import Optional

from vidlit.utils.errors import VidlitError

RUN_DIR_ENV = "VIDLIT_RUN_DIR"


def check_writable(run_dir: str) -> None:
    """A run folder that cannot be written fails now, in one line, not after the first epoch."""
    import tempfile

    try:
        os.makedirs(run_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise VidlitError(f"--trainer.default_root_dir: cannot write the run folder '{run_dir}' ({err.strerror or err}); choose a writable folder") from None


def resolve_run_dir(given: Optional[str], strategy: str, dataset: str) -> str:
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


def checkpoint_run_dir(ckpt: str) -> str:
    """The run folder of a checkpoint: ``RUN`` for ``RUN/checkpoints/X.ckpt``, else its own folder."""
    folder = os.path.dirname(os.path.normpath(ckpt)) or "."
    if os.path.basename(os.path.abspath(folder)) == "checkpoints":
        return os.path.dirname(folder) or "." if folder != "." else ".."
    return folder
