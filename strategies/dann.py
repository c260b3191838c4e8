"""``dann``: domain-adversarial training (Ganin & Lempitsky 2015) in its DG form, and CDANN.

A domain discriminator D classifies which source domain a clip's pooled feature comes from; a
gradient reversal layer between the backbone and D makes the backbone maximise D's loss while D
minimises it, so one optimizer trains backbone, head and D together (plain DDP works: every
parameter receives a gradient every step).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vidlit.models.losses import Schedule, grad_reverse, grl_lambda
from vidlit.models.strategy import Strategy, register_strategy
from vidlit.utils.errors import VidlitError


def build_mlp(in_dim: int, width: int, depth: int, out_dim: int, dropout: float = 0.0, batchnorm: bool = False) -> nn.Sequential:
    """``depth`` Linear layers (``depth - 1`` hidden layers of ``width`` with ReLU); (N, in) -> (N, out)."""
    if depth < 1:
        raise VidlitError(f"--model.disc_depth must be >= 1, got {depth}")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(depth - 1):
        layers += [nn.Linear(dim, width)] + ([nn.BatchNorm1d(width)] if batchnorm else []) + [nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        dim = width
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


@register_strategy("dann")
class DANN(Strategy):
    """Domain-adversarial training: CE + a gradient-reversed domain discriminator (CDANN with conditional).

    Loss: ``CE(F(G(x)), y) + CE(D(GRL_lambda(G(x))), d)``; through the GRL the backbone G gets
    ``grad CE - lambda * grad L_dom``. Logs ``lambda``, ``disc_loss`` and ``disc_acc`` (which should
    drift toward chance, 1/K, when the features become domain-invariant).

    Args:
        lambda_schedule: ``constant`` (lambda = lambda_value), ``ganin`` (lambda_value *
            (2 / (1 + exp(-lambda_gamma * p)) - 1), p = optimizer step / total steps) or ``warmstart``
            (from lambda_lo to lambda_value over lambda_max_iters steps, rate lambda_alpha).
        lambda_value: the constant lambda, and the final value of the other two schedules.
        lambda_gamma: ``ganin`` steepness.
        lambda_lo: ``warmstart`` start value.
        lambda_alpha: ``warmstart`` rate.
        lambda_max_iters: ``warmstart`` horizon in optimizer steps (also ``ganin``'s when the
            number of training steps is unknown).
        disc_width: hidden width of the discriminator MLP.
        disc_depth: number of Linear layers of the discriminator.
        disc_dropout: dropout after each hidden layer.
        disc_batchnorm: BatchNorm1d after each hidden Linear.
        conditional: CDANN: a learned class embedding is added to the feature before D (true label
            for source clips, the detached softmax prediction for unlabeled target clips).
        class_balance: weight each labelled clip's domain loss by 1 / (its class's count in the batch).
        target_domain_class: D gets one more class (index K) for unlabeled target clips
            (``target_video`` in the batch; they feed D only). None: on when the DataModule's
            ``--data.unlabeled_target`` is.
        disc_lr_mult: the discriminator's (and class embedding's) lr = lr x this.
        disc_weight_decay: the discriminator's weight decay (DomainBed: 0).
        betas: Adam (beta1, beta2) of every parameter group; (0.5, 0.9) as in DomainBed's
            adversarial methods (the default (0.9, 0.999) lets the discriminator's gradients,
            reversed into the backbone, build up momentum and collapse training at short budgets).
        **kwargs: the base :class:`~vidlit.models.strategy.Strategy` arguments (lr, backbone, freeze, ...).
    """

    SEARCH_SPACE = {  # DomainBed's DANN space, lambda narrowed from 10^U(-2, 2)
        "lambda_value": "loguniform:0.01:10",
        "disc_weight_decay": "loguniform:1e-6:1e-2",
        "disc_lr_mult": "loguniform:0.3:3",
        "disc_width": "choice:64,128,256,512,1024",
        "disc_depth": "choice:2,3,4",
        "disc_dropout": "choice:0,0.1,0.5",
    }

    def __init__(
        self,
        lambda_schedule: Schedule = "ganin",
        lambda_value: float = 1.0,
        lambda_gamma: float = 10.0,
        lambda_lo: float = 0.0,
        lambda_alpha: float = 1.0,
        lambda_max_iters: int = 1000,
        disc_width: int = 256,
        disc_depth: int = 3,
        disc_dropout: float = 0.0,
        disc_batchnorm: bool = False,
        conditional: bool = False,
        class_balance: bool = False,
        target_domain_class: Optional[bool] = None,
        disc_lr_mult: float = 1.0,
        disc_weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.5, 0.9),
        **kwargs: Any,
    ) -> None:
        super().__init__(betas=betas, **kwargs)
        grl_lambda(lambda_schedule, 0, 1)  # fail early on an unknown schedule
        if self.hparams.num_domains < 1:
            raise VidlitError("dann needs num_domains >= 1 (set from the data)")
        dim = self.backbone.out_dim
        self.class_embed = nn.Embedding(self.hparams.num_classes, dim) if conditional else None
        self.discriminator = self._build_discriminator(bool(target_domain_class))

    def _build_discriminator(self, with_target: bool) -> nn.Sequential:
        h = self.hparams
        out = h.num_domains + (1 if with_target else 0)
        return build_mlp(self.backbone.out_dim, h.disc_width, h.disc_depth, out, h.disc_dropout, h.disc_batchnorm)

    def param_groups(self) -> list[dict[str, Any]]:
        """Backbone and head as in the base; the adversary (discriminator, class embedding) in a group
        of its own with ``disc_lr_mult`` and ``disc_weight_decay``."""
        groups = super().param_groups()
        adv = {id(p) for m in (self.discriminator, self.class_embed) if m is not None for p in m.parameters()}
        head = next(g for g in groups if g["name"] == "head")
        head["params"] = [p for p in head["params"] if id(p) not in adv]
        adversary = [p for p in self.parameters() if p.requires_grad and id(p) in adv]
        h = self.hparams
        groups.append({"params": adversary, "lr": h.lr * h.disc_lr_mult, "weight_decay": h.disc_weight_decay, "name": "discriminator"})
        return groups

    @property
    def disc_classes(self) -> int:
        return self.discriminator[-1].out_features

    # ----------------------------------------------------------------- target-domain class
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.hparams.target_domain_class is None:
            dm_hparams = getattr(getattr(self.trainer, "datamodule", None), "hparams", None)
            wanted = bool(dm_hparams.get("unlabeled_target", False)) if hasattr(dm_hparams, "get") else False
            if wanted and self.disc_classes == self.hparams.num_domains:
                # before configure_optimizers and the move to the device: the new layer is trained and checkpointed
                self.discriminator = self._build_discriminator(True)
            self.hparams.target_domain_class = wanted

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a checkpoint trained with (or without) unlabeled target clips can still be evaluated
        key = f"discriminator.{len(self.discriminator) - 1}.weight"
        stored = checkpoint.get("state_dict", {}).get(key)
        if stored is None or stored.shape[0] == self.disc_classes:
            return
        if self._trainer is not None and self.trainer.state.fn == "fit":
            raise VidlitError("resuming a dann run needs the same --data.unlabeled_target setting it was trained with")
        self.discriminator = self._build_discriminator(stored.shape[0] > self.hparams.num_domains)
        self.hparams.target_domain_class = stored.shape[0] > self.hparams.num_domains

    # ----------------------------------------------------------------- loss
    def grl_lambda(self) -> float:
        h = self.hparams
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else h.lambda_max_iters
        total = int(total) if math.isfinite(total) else h.lambda_max_iters  # unbounded training: a fixed horizon
        return grl_lambda(h.lambda_schedule, self.global_step, total, h.lambda_value, h.lambda_gamma, h.lambda_lo, h.lambda_alpha, h.lambda_max_iters)

    def domain_loss(
        self, feats: torch.Tensor, domain: torch.Tensor, class_probs: Optional[torch.Tensor], weight: Optional[torch.Tensor], lambd: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Discriminator loss and accuracy. feats: (N, D); domain: (N,) in [0, disc_classes);
        class_probs: (N, num_classes) class distribution (CDANN only); weight: (N,) or None."""
        z = grad_reverse(feats, lambd)
        if self.class_embed is not None:
            z = z + class_probs.to(z.dtype) @ self.class_embed.weight.to(z.dtype)
        logits = self.discriminator(z)
        per_clip = F.cross_entropy(logits, domain, reduction="none")
        loss = (per_clip * weight).sum() / weight.sum() if weight is not None else per_clip.mean()
        acc = (logits.argmax(1) == domain).float().mean()
        return loss, acc

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        video, label, domain = batch["video"], batch["label"], batch["domain"]
        target = batch.get("target_video")
        b = video.shape[0]
        if target is not None and self.disc_classes == self.hparams.num_domains:
            raise VidlitError("the batch holds target_video but dann was built without a target-domain class (--data.unlabeled_target true, or --model.target_domain_class true)")
        feats = self.features(video if target is None else torch.cat([video, target]))
        logits = self.head(feats)
        cls_loss = F.cross_entropy(logits[:b], label, label_smoothing=self.hparams.label_smoothing)

        dom = domain
        probs = None
        if self.class_embed is not None:
            probs = F.one_hot(label, self.hparams.num_classes).float()
        if target is not None:
            n_t = target.shape[0]
            dom = torch.cat([domain, domain.new_full((n_t,), self.hparams.num_domains)])
            if probs is not None:
                probs = torch.cat([probs, logits[b:].detach().float().softmax(1)])
        weight = None
        if self.hparams.class_balance:
            counts = torch.bincount(label, minlength=self.hparams.num_classes).float()
            w_src = 1.0 / counts[label]
            weight = w_src * (b / w_src.sum())  # mean weight 1 over the labelled clips
            if target is not None:
                weight = torch.cat([weight, weight.new_ones(target.shape[0])])

        lambd = self.grl_lambda()
        disc_loss, disc_acc = self.domain_loss(feats, dom, probs, weight, lambd)
        loss = cls_loss + disc_loss
        extra = {"cls_loss": cls_loss.detach(), "disc_loss": disc_loss.detach(), "disc_acc": disc_acc, "lambda": feats.new_tensor(lambd).float()}
        return loss, extra
