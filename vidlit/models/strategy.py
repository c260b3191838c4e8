"""The shared base of every strategy (DG method): backbone + head, fine-tuning policies,
optimizer and schedule, per-domain metrics.

A strategy is one file in ``strategies/`` that subclasses :class:`Strategy`, registers itself
and overrides :meth:`Strategy.compute_loss`::

    @register_strategy("my_method")
    class MyMethod(Strategy):
        def compute_loss(self, batch):
            feats = self.features(batch["video"])
            loss = F.cross_entropy(self.head(feats), batch["label"])
            return loss, {"cls_loss": loss}
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Literal, Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from vidlit.run.metric_names import acc_key, class_mean_key
from vidlit.models.backbones import BACKBONES, NORM_PRESETS, build_backbone
from vidlit.models.metrics import PerDomainAccuracy, PerDomainConfusion, class_mean_accuracy
from vidlit.utils.registry import Registry, init_arg_names
from vidlit.utils.errors import VidlitError

STRATEGIES: Registry[type] = Registry("strategy", "--strategy")
STRATEGIES.scan("strategies")


def register_strategy(name: str) -> Callable[[type], type]:
    return STRATEGIES.register(name)


class Strategy(pl.LightningModule):
    """Fine-tuning (ERM) on a registered backbone; subclasses change the training loss.

    Batches are dicts with ``video`` (B, C, T, H, W) uint8 (normalised here, on the device),
    ``label`` (B,) and ``domain`` (B,) (index of the source domain in training and validation,
    of the target domain in test).

    Args:
        num_classes: set from the data.
        num_domains: number of source domains, set from the data.
        backbone: registered backbone name (``python -m vidlit list``); also ``--backbone``.
        pretrained: None (random init), a weights file, a URL, ``default`` (the published weights:
            torch hub cache, downloaded once unless VIDLIT_OFFLINE=1), ``imagenet_inflated``, or a
            vidlit checkpoint (its backbone; see docs/TRANSFER.md).
        pretrained_head: also load the head from the vidlit checkpoint given as ``pretrained``
            (same classes required).
        freeze: ``none`` (full fine-tune), ``backbone`` (linear probe) or ``all_but_N``
            (train only the last N backbone stages).
        freeze_bn: keep every BatchNorm in eval mode (frozen statistics) while training.
        lr: learning rate of the head (and of any other new module).
        backbone_lr_mult: backbone lr = lr x this (default 0.1 when pretrained, else 1).
        llrd: layer-wise lr decay: backbone stage k from the top (k = 1 for the last stage) gets
            lr x backbone_lr_mult x llrd^(k-1), one optimizer group per stage (``backbone.<stage>``);
            parameters outside the listed stages take the first stage's. None: one backbone group.
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9, nesterov).
        betas: AdamW's (beta1, beta2) (ignored by ``sgd``).
        weight_decay: decoupled weight decay.
        warmup_epochs: linear warmup length, then cosine decay to 0 at the last step.
        label_smoothing: cross-entropy label smoothing.
        dropout: dropout before the head.
        channels_last: use ``channels_last_3d`` memory format for 5-D inputs.
        compile: ``torch.compile`` the backbone.
        seed: seed of the randomness inside training steps (see :meth:`step_generator`).
    """

    #: hyperparameter search space of this class's own arguments (``vidlit sweep --n_hparams``), in
    #: the sweep's ``--hparam`` syntax (``loguniform:LOW:HIGH``, ``uniform:LOW:HIGH``, ``int:LOW:HIGH``,
    #: ``choice:A,B``); :meth:`search_space` merges it with every base class's.
    SEARCH_SPACE: dict[str, str] = {
        "lr": "loguniform:3e-4:1e-2",
        "weight_decay": "loguniform:1e-3:0.2",
        "dropout": "choice:0,0.1,0.5",
    }

    @classmethod
    def search_space(cls) -> dict[str, str]:
        """``{"model.NAME": SPACE}``: the shared base space plus this strategy's own entries."""
        space: dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            space.update(klass.__dict__.get("SEARCH_SPACE", {}))
        return {f"model.{k}": v for k, v in space.items()}

    @classmethod
    def hparam_names(cls) -> set[str]:
        """Every ``--model.NAME`` this strategy accepts (its and its bases' ``__init__`` arguments)."""
        return init_arg_names(cls, stop=pl.LightningModule)

    def __init__(
        self,
        num_classes: int = 0,
        num_domains: int = 0,
        backbone: str = "tiny3d",
        pretrained: Optional[str] = None,
        pretrained_head: bool = False,
        freeze: str = "none",
        freeze_bn: bool = False,
        lr: float = 2e-3,
        backbone_lr_mult: Optional[float] = None,
        llrd: Optional[float] = None,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.05,
        warmup_epochs: float = 1.0,
        label_smoothing: float = 0.0,
        dropout: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if llrd is not None and not 0 < llrd <= 1:
            raise VidlitError(f"--model.llrd must be in (0, 1] (lr x llrd per stage down from the top), got {llrd}")
        if num_classes < 2:
            raise VidlitError(f"num_classes must be >= 2 (got {num_classes}); it is normally set from the data")
        spec = BACKBONES.get(backbone)
        self.backbone = build_backbone(backbone, pretrained)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.out_dim, num_classes))
        if pretrained_head:
            from vidlit.models.weights import load_head, resolve

            if pretrained is None:
                raise VidlitError("--model.pretrained_head true needs --model.pretrained RUN/checkpoints/best-epoch=N.ckpt")
            load_head(self.head, resolve(pretrained, backbone, None), num_classes)
        mean, std = NORM_PRESETS[spec.norm]
        self.register_buffer("_mean", torch.tensor(mean).view(1, 3, 1, 1, 1) * 255, persistent=False)
        self.register_buffer("_std", torch.tensor(std).view(1, 3, 1, 1, 1) * 255, persistent=False)
        self._frozen_modules = self._apply_freeze(freeze)
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last_3d)
        if compile:  # in place: parameters and checkpoint keys stay under 'backbone.' (no aliased submodule)
            self.backbone.compile()
        self.domain_names: dict[str, list[str]] = {}

    # ----------------------------------------------------------------- model
    def _apply_freeze(self, policy: str) -> list[nn.Module]:
        """Set requires_grad per the freeze policy; return the BatchNorms to keep in eval mode."""
        stages = self.backbone.stages()
        if policy == "none":
            return []
        if policy == "backbone":
            keep: list[nn.Module] = []
        elif (m := re.fullmatch(r"all_but_(\d+)", policy)) is not None:
            n = int(m.group(1))
            if n > len(stages):
                raise VidlitError(f"--model.freeze {policy}: backbone has only {len(stages)} stages ({', '.join(self.backbone.stage_names)})")
            keep = stages[len(stages) - n :]
        else:
            raise VidlitError(f"--model.freeze must be none, backbone or all_but_N (N stages trained), got '{policy}'")
        trainable = {id(p) for s in keep for p in s.parameters()}
        for p in self.backbone.parameters():
            p.requires_grad_(id(p) in trainable)
        return [
            mod for mod in self.backbone.modules()
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in mod.parameters())
        ]

    def on_validation_model_train(self) -> None:
        """Lightning restores each module's own training flag after validation, which would put
        frozen BatchNorms back in train mode: re-apply the freeze policy instead."""
        if self._trainer is not None and self.trainer.state.fn == "fit":
            self.train()
        else:
            super().on_validation_model_train()

    def on_train_start(self) -> None:
        """Lightning does not call ``train()`` when fit starts (only after a validation): apply the
        freeze policy now, or a run without a sanity check would update frozen BatchNorm statistics."""
        self.train()

    def train(self, mode: bool = True) -> "Strategy":
        super().train(mode)
        if mode:  # frozen layers (and every BatchNorm under freeze_bn) keep their running statistics
            for mod in self._frozen_modules:
                mod.eval()
            if self.hparams.freeze_bn:
                for mod in self.modules():
                    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                        mod.eval()
        return self

    def normalize(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) uint8 -> float, normalised with the backbone's preset."""
        x = (video.float() - self._mean) / self._std
        if self.hparams.channels_last and x.dim() == 5:  # (B, V, C, T, H, W) views: per chunk in _video_probs
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalise every uint8 clip tensor of the batch (keys ``video`` or ``*_video``) on the device."""
        if isinstance(batch, dict):
            batch = {
                k: self.normalize(v) if k.endswith("video") and isinstance(v, torch.Tensor) and v.dtype == torch.uint8 else v
                for k, v in batch.items()
            }
        return batch

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) normalised float -> (B, D)."""
        return self.backbone(video)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) normalised float -> logits (B, num_classes)."""
        return self.head(self.features(video))

    def step_generator(self) -> torch.Generator:
        """A generator for random draws inside a training step, seeded by (seed, optimizer step,
        training batch, rank): every micro-batch of an optimizer step under
        ``--trainer.accumulate_grad_batches N`` draws its own numbers, the same ones on every call
        within the batch, and a resumed run draws what an uninterrupted one does (the batch counter
        is the fit loop's, restored from the checkpoint)."""
        import numpy as np

        batch = 0
        if self._trainer is not None:
            batch = int(self.trainer.fit_loop.epoch_loop.batch_progress.total.ready)
        key = [int(self.hparams.seed), int(self.global_step), batch, int(self.global_rank)]
        g = torch.Generator(device="cpu")
        g.manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
        return g

    # ----------------------------------------------------------------- the one method to override
    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss of one batch and extra values to log (under ``train/``). ERM: CE."""
        logits = self(batch["video"])
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.hparams.label_smoothing)
        return loss, {}

    # ----------------------------------------------------------------- loop hooks
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        k = self.hparams.num_domains
        self.domain_names = {
            "val": list(getattr(dm, "source_domains", [str(i) for i in range(k)])),
            "test": list(getattr(dm, "target_domains", ["target"])),
        }
        self.val_acc = PerDomainAccuracy(len(self.domain_names["val"]))
        self.val_target_acc = PerDomainAccuracy(len(self.domain_names["test"]))
        self.test_acc = PerDomainAccuracy(len(self.domain_names["test"]))
        # per-domain confusion matrices (counts on the device, summed across DDP ranks): per-class and
        # class-mean accuracy; after each epoch the counts are kept on the CPU in ``confusion_matrices``
        c = self.hparams.num_classes
        self.val_confusion = PerDomainConfusion(len(self.domain_names["val"]), c)
        self.val_target_confusion = PerDomainConfusion(len(self.domain_names["test"]), c)
        self.test_confusion = PerDomainConfusion(len(self.domain_names["test"]), c)
        self.confusion_matrices: dict[str, torch.Tensor] = {}
        from torchmetrics import SumMetric

        self.bad_videos = SumMetric()

    def _match_confusion(self, name: str, acc: PerDomainAccuracy) -> None:
        """The confusion metric ``name`` with the domains of its accuracy metric (code that replaces
        the accuracy metric after :meth:`setup`, e.g. for other test domains, gets a matching one)."""
        if getattr(self, name).num_domains != acc.num_domains:
            setattr(self, name, PerDomainConfusion(acc.num_domains, self.hparams.num_classes).to(self.device))

    def on_validation_epoch_start(self) -> None:
        self._match_confusion("val_confusion", self.val_acc)
        self._match_confusion("val_target_confusion", self.val_target_acc)

    def on_test_epoch_start(self) -> None:
        self._match_confusion("test_confusion", self.test_acc)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, extra = self.compute_loss(batch)
        bs = batch["label"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for key, value in extra.items():
            self.log(f"train/{key}", value, batch_size=bs)
        if "bad" in batch:
            self.bad_videos.update(batch["bad"].sum())
        return loss

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        logits = self(batch["video"])
        metric = self.val_acc if dataloader_idx == 0 else self.val_target_acc
        metric.update(logits, batch["label"], batch["domain"])
        (self.val_confusion if dataloader_idx == 0 else self.val_target_confusion).update(logits, batch["label"], batch["domain"])
        if dataloader_idx == 0:
            loss = F.cross_entropy(logits, batch["label"])
            self.log("val/loss", loss, batch_size=batch["label"].shape[0], add_dataloader_idx=False)

    def _log_domains(self, prefix: str, metric: PerDomainAccuracy, names: list[str]) -> None:
        acc = metric.compute().reshape(-1)  # torchmetrics squeezes a single domain to 0-d
        for name, value in zip(names, acc):
            self.log(acc_key(prefix, name), value.float(), add_dataloader_idx=False)
        self.log(acc_key(prefix), acc.float().nanmean(), prog_bar=prefix == "val", add_dataloader_idx=False)
        metric.reset()

    def _log_class_mean(self, prefix: str, metric: PerDomainConfusion, names: list[str]) -> None:
        """``<prefix>/class_mean_acc`` (the classes' mean accuracy over the videos of every domain
        pooled) and ``<prefix>/class_mean_acc/<domain>``; the counts kept in ``confusion_matrices[prefix]``."""
        counts = metric.compute()
        per_domain = class_mean_accuracy(counts)
        for name, value in zip(names, per_domain):
            self.log(class_mean_key(prefix, name), value.float(), add_dataloader_idx=False)
        self.log(class_mean_key(prefix), class_mean_accuracy(counts.sum(0)).float(), add_dataloader_idx=False)
        self.confusion_matrices[prefix] = counts.cpu()  # once per epoch, not per batch
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_domains("val", self.val_acc, self.domain_names["val"])
        if self.val_confusion.update_called:
            self._log_class_mean("val", self.val_confusion, self.domain_names["val"])
        if self.val_target_acc.update_called:
            self._log_domains("val_target", self.val_target_acc, self.domain_names["test"])
            self._log_class_mean("val_target", self.val_target_confusion, self.domain_names["test"])
        # per-epoch count (reset after logging): HistoryCallback keeps each epoch's, results.json the sum
        # no training batch since the last reset (sanity check, validate): 0, without computing an empty metric
        bad = self.bad_videos.compute().float() if self.bad_videos.update_called else torch.zeros((), device=self.device)
        self.log("data/bad_videos", bad, add_dataloader_idx=False)
        self.bad_videos.reset()

    def _video_probs(self, video: torch.Tensor) -> torch.Tensor:
        """Class probabilities per video: (B, C, T, H, W) -> softmax (B, K); (B, V, C, T, H, W)
        (V test views) -> softmax averaged over the views (B, K), the model running on at most
        the DataModule's ``eval_batch_size`` clips at a time to bound memory."""
        if video.dim() == 5:
            return self(video).float().softmax(-1)
        b, v = video.shape[:2]
        flat = video.flatten(0, 1)
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        chunk = int(getattr(dm, "eval_batch_size", 0) or flat.shape[0])
        probs = []
        for part in flat.split(chunk):
            if self.hparams.channels_last:
                part = part.contiguous(memory_format=torch.channels_last_3d)
            probs.append(self(part).float().softmax(-1))
        return torch.cat(probs).view(b, v, -1).mean(1)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        probs = self._video_probs(batch["video"])
        self.test_acc.update(probs, batch["label"], batch["domain"])
        self.test_confusion.update(probs, batch["label"], batch["domain"])

    def on_test_epoch_end(self) -> None:
        self._log_class_mean("test", self.test_confusion, self.domain_names["test"])
        self.test_confusion_matrix = self.confusion_matrices["test"].sum(0)  # (C, C) over the target domains
        self._log_domains("test", self.test_acc, self.domain_names["test"])

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Per video: view-averaged class probabilities, true label (-1: unknown), domain index, and
        ``index`` (the record index in the predict dataset, for :mod:`vidlit.predictions`)."""
        out = {"probs": self._video_probs(batch["video"]), "label": batch["label"], "domain": batch["domain"]}
        if "index" in batch:
            out["index"] = batch["index"]
        return out

    # ----------------------------------------------------------------- optimisation
    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: the backbone (lr x ``backbone_lr_mult``) and every other
        trainable parameter (head and any module a strategy adds). A strategy that needs its own lr,
        betas or weight decay for a module returns more groups (one optimizer keeps plain DDP)."""
        h = self.hparams
        mult = h.backbone_lr_mult if h.backbone_lr_mult is not None else (0.1 if h.pretrained else 1.0)
        bb_ids = {id(p) for p in self.backbone.parameters()}
        backbone_params = [p for p in self.backbone.parameters() if p.requires_grad]
        other = [p for p in self.parameters() if p.requires_grad and id(p) not in bb_ids]
        head = {"params": other, "lr": h.lr, "name": "head"}
        if h.get("llrd") is None:
            return [{"params": backbone_params, "lr": h.lr * mult, "name": "backbone"}, head]
        stages, names = self.backbone.stages(), self.backbone.stage_names
        in_stage = [{id(p) for p in s.parameters()} for s in stages]
        groups = [{"params": [p for p in backbone_params if id(p) in ids], "lr": h.lr * mult * h.llrd ** (len(stages) - 1 - i),
                   "name": f"backbone.{name}"} for i, (name, ids) in enumerate(zip(names, in_stage))]
        staged = set().union(*in_stage)
        groups[0]["params"] += [p for p in backbone_params if id(p) not in staged]
        return groups + [head]

    def configure_optimizers(self) -> Any:
        h = self.hparams
        groups = [g for g in self.param_groups() if g["params"]]
        if h.optimizer == "sgd":
            for g in groups:
                g.pop("betas", None)
            opt = torch.optim.SGD(groups, lr=h.lr, momentum=0.9, nesterov=True, weight_decay=h.weight_decay)
        else:
            opt = torch.optim.AdamW(groups, lr=h.lr, betas=tuple(h.betas), weight_decay=h.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = int(h.warmup_epochs * total / epochs)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
