"""Gradual unfreezing (``--finetune.*``): train the head alone for N epochs, then the backbone too,
at its own (lower) learning rate. A subclass of Lightning's ``BaseFinetuning``.

``--finetune.unfreeze_at_epoch N`` (0, the default, is off): before training, every backbone
parameter the model trains (``--model.freeze`` decides which: with ``all_but_2`` only the last two
stages are ever trained, and those are what is unfrozen) is frozen (``requires_grad`` False) and
the backbone's BatchNorm layers keep their running statistics, as under ``--model.freeze
backbone``; epochs 0 .. N-1 train the head (and any other module of the strategy). At the start of
epoch N the backbone is made trainable again and its parameters join the one optimizer as the
groups the model's own :meth:`vidlit.models.strategy.Strategy.param_groups` gives them: ``--model.lr`` x
``--model.backbone_lr_mult`` (0.1 with pretrained weights, else 1), one group per stage with
``--model.llrd``. There is no second learning-rate setting: the callback only decides when the
backbone's groups join. The step-wise schedule (warmup, then cosine) goes on from where it is: a
joining group starts at its base lr x the schedule's current factor, and follows it.

Lightning's ``BaseFinetuning`` keeps the optimizer's groups in the callback's state, so a run resumed
with ``--ckpt_path last`` after the unfreeze epoch gets the same groups (and its optimizer state
loads into them); the backbone is made trainable again at the first epoch after the resume.

Not under DDP with more than one process: PyTorch's DistributedDataParallel fixes the set of
parameters it synchronises when it wraps the model, so a parameter that starts frozen would never
have its gradient averaged (the run stops with an error instead).
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer

from vidlit.utils.errors import VidlitError

_BN = nn.modules.batchnorm._BatchNorm


class GradualUnfreeze(BaseFinetuning):
    """Freeze the backbone for the first ``unfreeze_at_epoch`` epochs, then train it at the lr the
    model gives it (``--model.backbone_lr_mult``, ``--model.llrd``).

    Args:
        unfreeze_at_epoch: the first epoch (counting from 0) that trains the backbone; 0: off (the
            backbone trains from the start, as without this callback).
    """

    def __init__(self, unfreeze_at_epoch: int = 0) -> None:
        super().__init__()
        if unfreeze_at_epoch < 0:
            raise VidlitError(f"--finetune.unfreeze_at_epoch must be >= 0 (0: off), got {unfreeze_at_epoch}")
        self.unfreeze_at_epoch = int(unfreeze_at_epoch)
        self._frozen: list[str] = []  # names of the backbone parameters this callback froze
        self._frozen_bn: list[nn.Module] = []

    @property
    def active(self) -> bool:
        return self.unfreeze_at_epoch > 0

    # ----------------------------------------------------------------- BaseFinetuning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.active or str(getattr(stage, "value", stage)) != "fit":
            return
        if trainer.world_size > 1:
            raise VidlitError("--finetune.unfreeze_at_epoch: not with DDP over several processes (DistributedDataParallel fixes "
                              "the trained parameters when it wraps the model); use --model.freeze or one device")
        if not hasattr(pl_module, "backbone"):
            raise VidlitError("--finetune.unfreeze_at_epoch: the model has no 'backbone' to freeze")
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        """Freeze what the model would train in the backbone; its BatchNorms keep their statistics."""
        backbone = pl_module.backbone
        self._frozen = [f"backbone.{n}" for n, p in backbone.named_parameters() if p.requires_grad]
        for p in backbone.parameters():
            p.requires_grad_(False)
        self._frozen_bn = [m for m in backbone.modules() if isinstance(m, _BN) and m not in pl_module._frozen_modules]
        pl_module._frozen_modules = list(pl_module._frozen_modules) + self._frozen_bn  # eval in train() (Strategy.train)
        for m in pl_module._frozen_modules:  # also those the freeze policy froze (nothing else has put them in eval yet)
            m.eval()

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if epoch < self.unfreeze_at_epoch or not self._frozen_bn and not self._frozen:
            self._sync_scheduler(pl_module, optimizer)
            return
        named = dict(pl_module.named_parameters())
        params = [named[n] for n in self._frozen if n in named]
        for p in params:
            p.requires_grad_(True)
        frozen_bn, self._frozen_bn = self._frozen_bn, []
        pl_module._frozen_modules = [m for m in pl_module._frozen_modules if all(m is not f for f in frozen_bn)]
        for m in frozen_bn:
            m.train(pl_module.training and not pl_module.hparams.get("freeze_bn", False))
        self._frozen = []
        in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if not all(id(p) in in_opt for p in params):  # not a resume after the unfreeze (the groups are restored)
            factor = self._schedule_factor(pl_module, optimizer)
            for group in pl_module.param_groups():
                new = [p for p in group["params"] if id(p) not in in_opt]
                if not new:
                    continue
                group = {**group, "params": new}
                if isinstance(optimizer, torch.optim.SGD):
                    group.pop("betas", None)
                group["initial_lr"] = group["lr"]
                group["lr"] = group["lr"] * factor
                for p in new:
                    p.grad = None
                optimizer.add_param_group(group)
                in_opt |= {id(p) for p in new}
        self._sync_scheduler(pl_module, optimizer)

    # ----------------------------------------------------------------- the lr schedule
    @staticmethod
    def _schedulers(pl_module: pl.LightningModule, optimizer: Optimizer) -> list[Any]:
        trainer = pl_module.trainer
        return [c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]

    def _schedule_factor(self, pl_module: pl.LightningModule, optimizer: Optimizer) -> float:
        """The schedule's current factor: lr / base lr of the first group."""
        for sched in self._schedulers(pl_module, optimizer):
            base = sched.base_lrs[0]
            return optimizer.param_groups[0]["lr"] / base if base else 1.0
        return 1.0

    def _sync_scheduler(self, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        """A LambdaLR made before groups joined knows only the first ones: give it the new groups'
        base lrs and the first group's lambda (also after a resume, whose scheduler state carries
        the base lrs but not the lambdas)."""
        for sched in self._schedulers(pl_module, optimizer):
            n = len(optimizer.param_groups)
            lambdas = getattr(sched, "lr_lambdas", None)
            if len(sched.base_lrs) < n:
                sched.base_lrs = list(sched.base_lrs) + [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups[len(sched.base_lrs):]]
            if lambdas is not None and len(lambdas) < n:
                sched.lr_lambdas = list(lambdas) + [lambdas[0]] * (n - len(lambdas))
            if hasattr(sched, "_last_lr") and len(sched._last_lr) < n:
                sched._last_lr = [g["lr"] for g in optimizer.param_groups]


def find(trainer: pl.Trainer) -> "GradualUnfreeze | None":
    for cb in trainer.callbacks:
        if isinstance(cb, GradualUnfreeze) and cb.active:
            return cb
    return None
