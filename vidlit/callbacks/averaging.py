"""Weight averaging for every strategy: SWAD and EMA, one Lightning callback (``--average.*``).

``--average.method swad`` (Cha et al., NeurIPS 2021) averages the weights densely, after every
optimizer step, over the stretch of training where the source-validation loss (``val/loss``) is
flat; ``--average.method ema`` keeps an exponential moving average of the weights. After training
the averaged weights are loaded into the model, the BatchNorm statistics are recomputed on source
training clips, the averaged model is validated (its ``val/acc`` and ``val/loss`` go to
``results.json``), saved as ``checkpoints/best-averaged.ckpt`` and that file is what ``fit`` tests
and reports as its best checkpoint. ``--average.method none`` (default) does nothing.

The SWAD window (:class:`SwadWindow`, the paper's rule with evaluations as the time unit). With
``L_i`` the source-validation loss at evaluation ``i`` and segment ``i`` the optimizer steps since
evaluation ``i-1`` up to evaluation ``i``:

* start ``s = min{i : L_i = min(L_i, ..., L_{i+N_s-1})}``: the first evaluation followed by
  ``N_s - 1`` others without improvement (``--average.swad_patience N_s``, default 3);
* threshold ``r x mean(L_s, ..., L_{s+N_s-1})`` (``--average.swad_tolerance r``, default 1.3);
* end ``e = min{i >= s : min(L_i, ..., L_{i+N_e-1}) > threshold}`` (exclusive): ``N_e`` evaluations
  in a row above the threshold (``--average.swad_overfit_patience N_e``, default 6);
* the average is the mean of the weights after every optimizer step of segments ``s .. e-1``.

When training ends before the rule has decided, the same formulas run on the shorter tail (the
minima over fewer evaluations): a loss that improved until the last evaluation gives the last
segment only; segments that are all above the threshold up to the end are left out. Steps after
the last evaluation are never averaged (their loss is unknown). Only a bounded buffer is kept: the
last ``N_s`` segment means before the start, then at most ``N_e`` segments not yet confirmed, each
a copy of the parameters on the CPU, plus the running mean of the window and of the current
segment.

EMA: ``ema_t = d_t ema_{t-1} + (1 - d_t) w_t`` after every optimizer step, from ``ema_0 = w_0`` (the
weights after the first step), with the warmup ``d_t = min(ema_decay, (1 + t) / (10 + t))`` so a
short run is not dominated by its first steps.

Averaged: every floating-point parameter of the LightningModule (the strategy's extra modules too);
buffers are the trained model's, then BatchNorm running statistics are recomputed (momentum None:
the exact mean over ``bn_batches`` training batches) for every BatchNorm that trains (frozen ones,
``--model.freeze``/``--model.freeze_bn``, keep theirs). Under DDP every rank holds the same average
(parameters are identical across ranks); each rank recomputes BatchNorm statistics on its own shard
of the training clips and the statistics are then averaged over ranks, so every rank evaluates the
same model; rank 0 writes the checkpoint. The running average is part of the callback's state in
every checkpoint, so ``--ckpt_path last`` resumes it exactly (checkpoints grow by up to
``N_e + 2`` copies of the parameters with SWAD, one with EMA).
"""
from __future__ import annotations

import math
import os
from typing import Any, Literal, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from vidlit.models.averaging import RunningMean, SwadWindow, recompute_bn
from vidlit.run.files import AVERAGED_CHECKPOINT
from vidlit.utils.errors import VidlitError


# --------------------------------------------------------------------------- the callback
class WeightAveraging(Callback):
    """Weight averaging for any strategy: SWAD (dense averaging over the flat stretch of the
    source-validation loss) or an EMA; the averaged model, BatchNorm statistics recomputed on
    source training clips, is what ``fit`` validates, checkpoints as best and tests.

    Args:
        method: ``none`` (default: nothing, no cost), ``swad`` or ``ema``.
        ema_decay: EMA decay per optimizer step (with a warmup ``min(decay, (1+t)/(10+t))``).
        swad_patience: N_s, evaluations in a row without improvement that start the window
            (counting the minimum itself, as in the paper).
        swad_overfit_patience: N_e, evaluations in a row above the threshold that end the window.
        swad_tolerance: r, the threshold is r x the mean loss of the N_s evaluations from the start.
        bn_batches: source training batches used to recompute BatchNorm statistics of the averaged
            model (None: one whole pass over the training loader).
    """

    def __init__(
        self,
        method: Literal["none", "swad", "ema"] = "none",
        ema_decay: float = 0.999,
        swad_patience: int = 3,
        swad_overfit_patience: int = 6,
        swad_tolerance: float = 1.3,
        bn_batches: Optional[int] = 50,
    ) -> None:
        if method not in ("none", "swad", "ema"):
            raise VidlitError(f"--average.method must be none, swad or ema, got '{method}'")
        if not 0.0 <= ema_decay < 1.0:
            raise VidlitError(f"--average.ema_decay must be in [0, 1), got {ema_decay}")
        if bn_batches is not None and bn_batches < 1:
            raise VidlitError(f"--average.bn_batches must be >= 1 or null (a whole pass), got {bn_batches}")
        self.method, self.ema_decay, self.bn_batches = method, ema_decay, bn_batches
        self.window = SwadWindow(swad_patience, swad_overfit_patience, swad_tolerance)
        self.segment = RunningMean()  # SWAD: the steps since the last evaluation
        self.segment_start = 0
        self.average = RunningMean()  # SWAD: the window's mean; EMA: the EMA (count = updates)
        self.names: Optional[list[str]] = None
        self._last_step = -1
        self.summary: dict = {}

    @property
    def active(self) -> bool:
        return self.method != "none"

    # ----------------------------------------------------------------- parameters
    @staticmethod
    def _params(module: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
        named = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
        return [n for n, _ in named], [p for _, p in named]

    def update(self, module: nn.Module, step: int) -> None:
        """One optimizer step's snapshot (the callback calls it after every training batch whose
        optimizer step advanced ``global_step``; benchmarks call it directly)."""
        names, params = self._params(module)
        if self.names is None:
            self.names = names
        elif self.names != names:
            raise VidlitError("--average.method: the model's parameters changed during training; averaging needs a fixed set")
        if self.method == "swad":
            if self.window.end is not None:
                return  # the window has closed: nothing more is averaged
            if self.segment.count == 0:
                self.segment_start = step
            self.segment.to(params[0].device).add(params)
        elif self.method == "ema":
            t = self.average.count
            if t == 0 or self.average.tensors is None:
                self.average.tensors = [p.detach().clone() for p in params]
            else:
                d = min(self.ema_decay, (1.0 + t) / (10.0 + t))
                self.average.to(params[0].device)
                torch._foreach_lerp_(self.average.tensors, [p.detach() for p in params], 1.0 - d)
            self.average.count = t + 1

    def evaluation(self, loss: float, step: int) -> None:
        """SWAD: the current segment ends with this source-validation loss."""
        if self.method != "swad" or self.window.end is not None:
            return
        seg = self.segment.cpu_copy()
        for admitted in self.window.add(loss, seg):
            self.average.merge(admitted)
        self.segment = RunningMean()

    def averaged(self) -> Optional[list[torch.Tensor]]:
        """The final averaged parameters (SWAD: after :meth:`SwadWindow.finish`), or None."""
        if self.method == "swad":
            for admitted in self.window.finish():
                self.average.merge(admitted)
            if self.average.count == 0 and self.segment.count > 0:  # no evaluation at all: the whole run
                self.average.merge(self.segment)
        return self.average.tensors if self.average.count > 0 else None

    # ----------------------------------------------------------------- Lightning hooks
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.active or trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        self.update(pl_module, trainer.global_step)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        loss = trainer.callback_metrics.get("val/loss")
        self.evaluation(float(loss) if loss is not None else math.inf, trainer.global_step)

    def state_dict(self) -> dict:
        if not self.active:
            return {}
        return {"method": self.method, "names": self.names, "last_step": self._last_step,
                "segment": self.segment.state(), "segment_start": self.segment_start,
                "average": self.average.state(), "window": self.window.state()}

    def load_state_dict(self, state_dict: dict) -> None:
        if not self.active or not state_dict:
            return
        if state_dict.get("method") != self.method:
            raise VidlitError(f"--average.method {self.method}: the checkpoint was trained with --average.method "
                              f"{state_dict.get('method')}; resume with the same method")
        self.names = state_dict.get("names")
        self._last_step = int(state_dict.get("last_step", -1))
        self.segment = RunningMean.from_state(state_dict["segment"])
        self.segment_start = int(state_dict.get("segment_start", 0))
        self.average = RunningMean.from_state(state_dict["average"])
        self.window.load(state_dict["window"])

    # ----------------------------------------------------------------- after fit
    def finalize(self, trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any, checkpoint_dir: str) -> Optional[str]:
        """Load the averaged weights into ``module``, recompute BatchNorm statistics on source
        training clips, validate it (``summary``), save ``checkpoint_dir/best-averaged.ckpt`` and
        return its path (None when there is nothing to average)."""
        if not self.active:
            return None
        tensors = self.averaged()
        if tensors is None:
            return None
        names, params = self._params(module)
        if self.names is not None and names != self.names:
            raise VidlitError("--average.method: the averaged parameters do not match the model; resume with the same --strategy and --model.* settings")
        device = trainer.strategy.root_device
        module.to(device)
        with torch.no_grad():
            for p, t in zip(params, tensors):
                p.copy_(t.to(p.device, p.dtype))
        n_bn = recompute_bn(module, self._bn_batches(trainer, module, datamodule, device))
        if n_bn and trainer.world_size > 1:  # the mean over ranks: every rank evaluates the same model
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                    m.running_mean.copy_(trainer.strategy.reduce(m.running_mean.clone(), reduce_op="mean"))
                    m.running_var.copy_(trainer.strategy.reduce(m.running_var.clone(), reduce_op="mean"))
        path = os.path.join(checkpoint_dir, AVERAGED_CHECKPOINT)
        # the weights (no optimizer, no callback states: no copy of the running average), plus what
        # callbacks add to every checkpoint (class names, run names: predict/export need them)
        from lightning.pytorch.trainer import call

        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=True)
        call._call_callbacks_on_save_checkpoint(trainer, checkpoint)
        trainer.strategy.save_checkpoint(checkpoint, path + ".tmp")
        trainer.strategy.barrier("vidlit.averaging.save")
        if trainer.is_global_zero:
            os.replace(path + ".tmp", path)
        trainer.strategy.barrier("vidlit.averaging")
        loggers = trainer.loggers
        trainer.loggers = []  # the averaged model's validation is in results.json, not a logged epoch
        try:
            trainer.validate(module, datamodule=datamodule, ckpt_path=path, verbose=False, weights_only=True)
        finally:
            trainer.loggers = loggers
        m = trainer.callback_metrics
        val = lambda k: None if m.get(k) is None else round(float(m[k]), 6)  # noqa: E731
        names_val = getattr(module, "domain_names", {}).get("val", [])
        info: dict[str, Any] = {"method": self.method, "n_averaged": int(self.average.count), "bn_recomputed": n_bn,
                                "bn_batches": self.bn_batches}
        if self.method == "swad":
            w = self.window
            info.update({"window": [w.start, w.end], "threshold": w.threshold, "losses": w.losses,
                         "patience": w.patience, "overfit_patience": w.overfit_patience, "tolerance": w.tolerance})
        else:
            info["ema_decay"] = self.ema_decay
        self.summary = {"average": info, "val_acc": val("val/acc"), "val_loss": val("val/loss"),
                        "val_acc_per_domain": {d: val(f"val/acc/{d}") for d in names_val}}
        if trainer.is_global_zero:  # read back when a run killed while testing is completed (`resume`)
            import json

            with open(path + ".json.tmp", "w") as fh:
                json.dump(self.summary, fh, indent=2)
            os.replace(path + ".json.tmp", path[: -len(".ckpt")] + ".json")
        return path

    def resume(self, checkpoint_dir: str) -> Optional[str]:
        """A finished run completed after a kill (training done, not tested): the averaged
        checkpoint and its summary that the killed process wrote, or None."""
        if not self.active:
            return None
        path = os.path.join(checkpoint_dir, AVERAGED_CHECKPOINT)
        summary = path[: -len(".ckpt")] + ".json"
        if not (os.path.isfile(path) and os.path.isfile(summary)):
            return None
        import json

        with open(summary) as fh:
            self.summary = json.load(fh)
        return path

    def _bn_batches(self, trainer: pl.Trainer, module: pl.LightningModule, datamodule: Any, device: torch.device):
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
            return
        loader = datamodule.train_dataloader()
        for i, batch in enumerate(loader):
            if self.bn_batches is not None and i >= self.bn_batches:
                break
            video = batch["video"] if isinstance(batch, dict) else batch[0]
            video = video.to(device)
            yield module.normalize(video) if hasattr(module, "normalize") and video.dtype == torch.uint8 else video


def find(trainer: pl.Trainer) -> Optional[WeightAveraging]:
    """The trainer's active :class:`WeightAveraging` callback, if any."""
    return next((c for c in trainer.callbacks if isinstance(c, WeightAveraging) and c.active), None)
