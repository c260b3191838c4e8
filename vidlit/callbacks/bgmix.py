"""Background mixing: a video DG augmentation against appearance shift, usable with every strategy.

After Background Erasing (BE; Wang et al., CVPR 2021, "Removing the Background by Adding the
Background"): one frame ``s`` of a clip is repeated over time and blended into every frame of a
training clip,

    ``x'_t = (1 - lam) * x_t + lam * s``  for every frame t,

so a static image is added that carries nothing about the motion. BE's official code
(``SpatialMixup`` in FingerRec/BE, ``augment/basic_augmentation/mixup_methods.py``) draws
``lam ~ U(0, 0.3)`` and the static frame from the same clip (its positive view) or from another clip
of the batch. The DG form here draws it by default from a clip of *another source domain* in the
same batch, so each domain's scenes, colours and camera appear under the other domains' labels
and motions: the static appearance stops predicting the class.

The blend is convex, so mixing the normalised clips the Strategy sees equals mixing the uint8
pixels and normalising afterwards (normalisation is affine per channel). Labels, domains and every
other key of the batch are untouched; unlabeled ``target_video`` clips (``--data.unlabeled_target``)
are neither mixed nor used as static frames.

It is a Lightning callback (``--bgmix.*`` flags of ``python -m vidlit fit``) that replaces
``batch["video"]`` in ``on_train_batch_start``, after the batch is on the device and normalised and
before ``training_step``: every strategy's ``compute_loss`` (including those that split the batch by
domain: dann, mldg, fish, mixup) receives the mixed clips. Validation, test and predict batches are
never mixed. Draws come from a generator seeded by (strategy seed, optimizer step, training batch,
rank), as :meth:`vidlit.models.strategy.Strategy.step_generator`, plus a constant of its own so they do not
repeat the strategy's own draws: runs are reproducible and a resumed run mixes as an uninterrupted one.
"""
from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from vidlit.models.losses import cross_domain_partners
from vidlit.utils.errors import VidlitError

Source = Literal["other_domain", "any", "same_clip"]
_STREAM = 0xB61  # keeps this callback's random stream apart from Strategy.step_generator's


def static_partners(domain: torch.Tensor, source: Source, generator: torch.Generator) -> torch.Tensor:
    """(B,) index of the clip that gives each clip its static frame.

    ``other_domain``: a clip of another domain of the batch, uniformly (when the batch holds one
    domain only, any *other* clip, as :func:`vidlit.models.losses.cross_domain_partners`; a batch of one
    clip uses itself); ``any``: any other clip of the batch; ``same_clip``: the clip itself (BE's
    intra-video form)."""
    b = domain.shape[0]
    if source == "same_clip" or b == 1:
        return torch.arange(b, device=domain.device)
    if source == "other_domain":
        return cross_domain_partners(domain, generator)
    if source == "any":
        return cross_domain_partners(torch.arange(b), generator).to(domain.device)
    raise VidlitError(f"--bgmix.source must be other_domain, any or same_clip, got '{source}'")


def mix_background(video: torch.Tensor, partner: torch.Tensor, frame: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``(1 - lam_i) * video[i] + lam_i * video[partner[i], :, frame[i]]`` (the static frame repeated
    over time). video: (B, C, T, H, W); partner, frame: (B,) long; lam: (B,) (0 leaves a clip as it
    is). Computed in float32, returned in ``video.dtype``."""
    static = video[partner, :, frame.to(video.device)].float()  # (B, C, H, W)
    w = lam.to(video.device, torch.float32).view(-1, 1, 1, 1, 1)
    return ((1 - w) * video.float() + w * static.unsqueeze(2)).to(video.dtype)


class BackgroundMix(Callback):
    """Background mixing of training clips (BE, Wang et al. 2021, in a cross-domain DG form).

    Each training clip, with probability ``prob``, becomes ``(1 - lam) * x + lam * s`` with ``s`` one
    random frame of the ``source`` clip repeated over time and ``lam ~ U(min_weight, max_weight)``
    drawn per clip. Off (``prob 0``) the batch is left exactly as it is.

    Args:
        prob: probability that a training clip is mixed (0: off, the default; 1: every clip, as BE).
        min_weight: lower end of the uniform mixing weight lam.
        max_weight: upper end of lam (0.3: BE's official code, ``lam ~ U(0, 0.3)``).
        source: where the static frame comes from: ``other_domain`` (a clip of another source
            domain in the batch; any other clip when the batch holds one domain), ``any`` (any other
            clip of the batch) or ``same_clip`` (the clip itself, BE's intra-video form).
    """

    def __init__(self, prob: float = 0.0, min_weight: float = 0.0, max_weight: float = 0.3, source: Source = "other_domain") -> None:
        if not 0 <= prob <= 1:
            raise VidlitError(f"--bgmix.prob must be in [0, 1], got {prob}")
        if not 0 <= min_weight <= max_weight <= 1:
            raise VidlitError(f"--bgmix.min_weight and --bgmix.max_weight need 0 <= min <= max <= 1, got {min_weight} and {max_weight}")
        if source not in ("other_domain", "any", "same_clip"):
            raise VidlitError(f"--bgmix.source must be other_domain, any or same_clip, got '{source}'")
        self.prob, self.min_weight, self.max_weight, self.source = float(prob), float(min_weight), float(max_weight), source

    def generator(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Generator:
        """Seeded by (seed, optimizer step, training batch counter, rank, this callback's stream)."""
        hparams = getattr(pl_module, "hparams", None)
        seed = int(hparams.get("seed", 0) or 0) if hasattr(hparams, "get") else 0
        batch = int(trainer.fit_loop.epoch_loop.batch_progress.total.ready)
        key = [seed, int(trainer.global_step), batch, int(trainer.global_rank), _STREAM]
        g = torch.Generator(device="cpu")
        g.manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
        return g

    def draw(self, domain: torch.Tensor, frames: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per clip: (partner, frame index, lam), lam 0 for the clips left unmixed."""
        b = domain.shape[0]
        partner = static_partners(domain, self.source, generator)
        frame = torch.randint(frames, (b,), generator=generator)
        lam = self.min_weight + (self.max_weight - self.min_weight) * torch.rand(b, generator=generator)
        mixed = torch.rand(b, generator=generator) < self.prob
        return partner, frame, torch.where(mixed, lam, torch.zeros_like(lam))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.prob <= 0 or not isinstance(batch, dict) or not isinstance(batch.get("video"), torch.Tensor):
            return
        video = batch["video"]
        if video.dim() != 5 or not video.is_floating_point():
            raise VidlitError("--bgmix needs training batches with a normalised float 'video' (B, C, T, H, W); "
                              f"got {tuple(video.shape)} {video.dtype} (is the model a vidlit Strategy?)")
        domain = batch.get("domain")
        if not isinstance(domain, torch.Tensor):
            domain = torch.zeros(video.shape[0], dtype=torch.long)
        partner, frame, lam = self.draw(domain, video.shape[2], self.generator(trainer, pl_module))
        batch["video"] = mix_background(video, partner.to(video.device), frame, lam)
