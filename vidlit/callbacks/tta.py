"""Test-time adaptation on the target domains, unlabelled: AdaBN and Tent (``--tta.*``).

A Lightning callback, in the Trainer of every command; it acts on ``test`` only (the test that
``fit`` runs on its best checkpoint, and ``python -m vidlit test --ckpt_path CKPT``), never on
training, validation or ``predict``. Each target domain is adapted on its own: the test batches are
split by their ``domain`` index and every domain has its own adapted state. No label is read (the
batches go on to the strategy's ``test_step`` unchanged, which scores them as without adaptation).
After the test every parameter and buffer of the model, its train/eval flags and ``requires_grad``
are put back as they were: the checkpoint and the model that ``fit`` goes on with are untouched.

``--tta.method adabn`` (Li et al. 2016, "Revisiting Batch Normalization for practical domain
adaptation"): before the test, one pass over the test clips (in the ``--tta.order`` stream, below) computes,
per target domain and per BatchNorm layer, the mean and (unbiased) variance of that layer's input over every clip of the
domain (all views of a multi-view test video; pooled exactly over batches: sums and sums of
squares in float64, so batch sizes do not matter). The layers normalise with their batch
statistics in that pass (as ``torch.optim.swa_utils.update_bn`` does), so the first BatchNorm's
statistics are exactly its input's over the domain, and deeper layers' are exact when the domain
fits in one batch (``--data.eval_batch_size``); with smaller batches they are the mean over
batches normalised by their own statistics. The pass reads the domain in a random order by
default, like Tent (on the embedded data the class-sorted order gave mean accuracies within 0.6
points of it: docs/TRANSFER.md). The test then runs in eval mode with the domain's
statistics in every BatchNorm. Under DDP the sums are added over ranks (every rank uses the same
statistics).

``--tta.method tent`` (Wang et al., ICLR 2021, "Tent: fully test-time adaptation by entropy
minimization"): only the affine parameters (weight, bias) of the BatchNorm layers are trained;
BatchNorms normalise with each batch's own statistics (running statistics neither used nor
changed). For every batch of a domain's stream: forward, mean Shannon entropy of the softmax over
the batch's clips, one optimizer step (``--tta.steps``), and the batch's videos are scored with the
predictions of that forward (made before the update, as in the paper's online setting). The
stream (``--tta.order``): ``shuffled`` (default) is each target domain's test videos in a random
order (``--tta.seed``), in batches of the test loader's size, adapted before the test loop, whose
batches then take each video's online prediction; the i.i.d. stream the paper assumes. vidlit
stores a domain's test videos sorted by path, i.e. by class, and Tent on class-sorted batches
fits the BatchNorm batch statistics and the affine parameters to one class at a time. ``loader``
adapts on the test loader's own batches in their order (a deployment stream whose order is the
point). Adam with lr 1e-3,
betas (0.9, 0.999), no weight decay by default (the paper's setting for CIFAR; ``--tta.optimizer
sgd --tta.lr 2.5e-4`` is its ImageNet one, momentum 0.9). ``--tta.episodic true`` resets the
parameters and the optimizer after every batch. Tent needs gradients while Lightning tests under
``torch.inference_mode``: the adaptation step runs inside ``torch.inference_mode(False)`` and
``torch.enable_grad()`` on a copy of the clips, so ``--trainer.inference_mode`` can stay at its
default. Under DDP each rank adapts on its own shard of the test batches.

A model without BatchNorm (``mvit_v2_s``, ``swin3d_t``: LayerNorm) has nothing to adapt: the
methods are then an error naming the backbone.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from vidlit.utils.errors import VidlitError

_BN = nn.modules.batchnorm._BatchNorm


def batchnorms(module: nn.Module) -> list[tuple[str, _BN]]:
    """Every BatchNorm layer of ``module`` with its name, in module order."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, _BN)]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits) per row: (N, K) -> (N,)."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def _split_by_domain(batch: dict) -> list[tuple[int, dict]]:
    """``[(domain, sub_batch)]``: the batch's items grouped by their ``domain`` index, in order of
    first appearance (every tensor or list of the batch's length is split; other values shared)."""
    domain = batch["domain"]
    n = int(domain.shape[0])
    values = domain.tolist()
    order = list(dict.fromkeys(values))
    if len(order) == 1:
        return [(int(order[0]), batch)]
    out = []
    for d in order:
        idx = [i for i, v in enumerate(values) if v == d]
        index = torch.tensor(idx, device=domain.device)
        sub = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n:
                sub[k] = v.index_select(0, index.to(v.device))
            elif isinstance(v, (list, tuple)) and len(v) == n:
                sub[k] = type(v)(v[i] for i in idx) if isinstance(v, tuple) else [v[i] for i in idx]
            else:
                sub[k] = v
        out.append((int(d), sub))
    return out


def _batch_stats_guard(module: nn.Module, inputs: tuple) -> None:
    """Forward pre-hook of an adapting BatchNorm: an input with one value per channel (a single
    clip whose feature map is 1x1x1) has no batch statistics; that forward uses the running ones."""
    x = inputs[0]
    module.training = x.numel() // max(1, x.shape[1]) > 1


def _clips(video: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) or (B, V, C, T, H, W) -> (N, C, T, H, W) clips."""
    return video.flatten(0, 1) if video.dim() == 6 else video


class TestTimeAdaptation(Callback):
    """Test-time adaptation on each target domain, without labels: AdaBN or Tent.

    Args:
        method: ``none`` (default: nothing, no cost), ``adabn`` (BatchNorm statistics recomputed
            on each target domain's test clips) or ``tent`` (entropy minimisation of the
            BatchNorm affine parameters, online, per batch).
        lr: Tent's learning rate (the paper: 1e-3 with Adam, 2.5e-4 with SGD on ImageNet).
        optimizer: Tent's optimizer, ``adam`` (betas 0.9, 0.999) or ``sgd`` (momentum 0.9).
        steps: Tent's optimizer steps per test batch (the paper: 1).
        episodic: Tent: reset the parameters and the optimizer after every batch (no memory
            across batches) instead of adapting online through the domain's batches.
        order: the stream Tent adapts on and AdaBN's statistics pass reads: ``shuffled`` (each
            domain's test videos in a random order, batches of the test loader's size; Tent needs
            a map-style test dataset of single videos with an ``index``, as vidlit's) or
            ``loader`` (the test loader's batches, in order).
        seed: the order of the ``shuffled`` stream.
    """

    def __init__(
        self,
        method: Literal["none", "adabn", "tent"] = "none",
        lr: float = 1e-3,
        optimizer: Literal["adam", "sgd"] = "adam",
        steps: int = 1,
        episodic: bool = False,
        order: Literal["shuffled", "loader"] = "shuffled",
        seed: int = 0,
    ) -> None:
        if method not in ("none", "adabn", "tent"):
            raise VidlitError(f"--tta.method must be none, adabn or tent, got '{method}'")
        if optimizer not in ("adam", "sgd"):
            raise VidlitError(f"--tta.optimizer must be adam or sgd, got '{optimizer}'")
        if order not in ("shuffled", "loader"):
            raise VidlitError(f"--tta.order must be shuffled or loader, got '{order}'")
        if not lr > 0:
            raise VidlitError(f"--tta.lr must be > 0, got {lr}")
        if steps < 1:
            raise VidlitError(f"--tta.steps must be >= 1, got {steps}")
        self.method, self.lr, self.optimizer, self.steps, self.episodic = method, float(lr), optimizer, int(steps), bool(episodic)
        self.order, self.seed = order, int(seed)
        self.summary: Optional[dict] = None
        #: Tent: mean entropy of each adapted batch's predictions (before its update), per domain name
        self.entropies: dict[str, list[float]] = {}
        #: the adapted state of each domain at the end of the test (BatchNorm statistics for AdaBN,
        #: affine parameters for Tent), on the CPU, for inspection
        self.adapted: dict[str, dict[str, torch.Tensor]] = {}
        self._saved: Optional[dict] = None

    @property
    def active(self) -> bool:
        return self.method != "none"

    # ----------------------------------------------------------------- save / restore
    def _save(self, pl_module: pl.LightningModule) -> None:
        with torch.inference_mode(False), torch.no_grad():
            state = {k: v.detach().clone() for k, v in pl_module.state_dict(keep_vars=True).items()}
        self._saved = {
            "state": state,
            "training": {n: m.training for n, m in pl_module.named_modules()},
            "requires_grad": {n: p.requires_grad for n, p in pl_module.named_parameters()},
            "track": {n: m.track_running_stats for n, m in batchnorms(pl_module)},
            "test_step": pl_module.__dict__.get("test_step"),
            "video_probs": pl_module.__dict__.get("_video_probs"),
        }

    def _restore(self, pl_module: pl.LightningModule) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        for h in getattr(self, "_handles", []):
            h.remove()
        self._handles = []
        for key, attr in (("test_step", "test_step"), ("video_probs", "_video_probs")):
            if saved[key] is None:
                pl_module.__dict__.pop(attr, None)
            else:
                pl_module.__dict__[attr] = saved[key]
        with torch.inference_mode(False), torch.no_grad():
            current = pl_module.state_dict(keep_vars=True)
            for k, v in saved["state"].items():
                current[k].copy_(v)
        for n, p in pl_module.named_parameters():
            p.requires_grad_(saved["requires_grad"].get(n, p.requires_grad))
            p.grad = None
        for n, m in batchnorms(pl_module):
            m.track_running_stats = saved["track"].get(n, m.track_running_stats)
        for n, m in pl_module.named_modules():
            m.training = saved["training"].get(n, m.training)

    # ----------------------------------------------------------------- hooks
    @property
    def test_adaptation(self) -> Optional[str]:
        """The method that adapts the model during test (read by :func:`vidlit.run.results.test_evaluation`), None when off."""
        return self.method if self.active else None

    def results_entries(self, trainer: pl.Trainer, stage: str) -> dict:
        """``tta``: how the last test adapted (method, settings, clips per domain); nothing when off."""
        return tta_results(trainer) if stage in ("fit", "test") else {}

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active:
            return
        bns = batchnorms(pl_module)
        if not bns:
            raise VidlitError(f"--tta.method {self.method}: the model (backbone '{pl_module.hparams.get('backbone')}') has no "
                              "BatchNorm layer to adapt; use --tta.method none")
        self.entropies, self.adapted = {}, {}
        self._trainer = trainer
        self._save(pl_module)
        names = list(getattr(pl_module, "domain_names", {}).get("test", [])) or ["target"]
        self._names = names
        self._clip_counts = [0] * len(names)
        original_step = type(pl_module).test_step.__get__(pl_module)
        if self.method == "adabn":
            self._adabn_prepare(trainer, pl_module, bns, len(names))
        else:
            self._tent_prepare(pl_module, bns, len(names))
            if self.order == "shuffled":
                self._tent_stream(trainer, pl_module)
        callback = self

        def test_step(batch: dict, batch_idx: int, *args: Any, **kwargs: Any) -> Any:
            out = None
            for d, sub in _split_by_domain(batch):
                callback._activate(pl_module, d)
                callback._batch_index = sub.get("index")
                out = original_step(sub, batch_idx, *args, **kwargs)
            return out

        pl_module.__dict__["test_step"] = test_step

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finish(pl_module)

    def finish(self, pl_module: pl.LightningModule) -> None:
        """End the adaptation of this test: keep each domain's adapted state (:attr:`adapted`),
        put the model back as it was and write :attr:`summary`. Called at ``on_test_end``, and
        earlier by callbacks that need the unadapted model at the end of the test whatever the
        order of the callbacks (:func:`finish_adaptation`); a no-op once done."""
        if not self.active or self._saved is None:
            return
        if self.method == "tent":
            self._tent_store(pl_module, self._current)  # the last domain's live parameters
            self.adapted = {self._names[d]: {k: v.cpu() for k, v in s.items()} for d, s in self._tent_states.items()}
        self._restore(pl_module)
        self.summary = {
            "tta": {
                "method": self.method,
                **({"lr": self.lr, "optimizer": self.optimizer, "steps": self.steps, "episodic": self.episodic, "order": self.order,
                    "seed": self.seed}
                   if self.method == "tent" else {}),
                "clips_per_domain": {n: self._clip_counts[i] for i, n in enumerate(self._names)},
            }
        }

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore(pl_module)  # an interrupted test leaves the model as it was too

    # ----------------------------------------------------------------- AdaBN
    def _loader(self, trainer: pl.Trainer) -> list[Any]:
        """The test loaders, as fresh DataLoaders over the same datasets and samplers (iterating
        the loop's own loader a second time would reset its persistent workers' iterator)."""
        loaders = trainer.test_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        out = []
        for dl in loaders:
            if not isinstance(dl, torch.utils.data.DataLoader):
                out.append(dl)
                continue
            kw: dict[str, Any] = dict(num_workers=dl.num_workers, collate_fn=dl.collate_fn, pin_memory=dl.pin_memory,
                                      worker_init_fn=dl.worker_init_fn, multiprocessing_context=dl.multiprocessing_context,
                                      timeout=dl.timeout)
            if dl.num_workers:
                kw["prefetch_factor"] = dl.prefetch_factor
            if dl.batch_sampler is not None:
                kw["batch_sampler"] = dl.batch_sampler
            else:
                kw.update(sampler=dl.sampler, batch_size=None)
            out.append(torch.utils.data.DataLoader(dl.dataset, **kw))
        return out

    @staticmethod
    def _can_shuffle(trainer: pl.Trainer) -> bool:
        loaders = trainer.test_dataloaders
        if isinstance(loaders, (list, tuple)):
            if len(loaders) != 1:
                return False
            loaders = loaders[0]
        return isinstance(loaders, torch.utils.data.DataLoader) and loaders.batch_size is not None

    def _adabn_prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, bns: list, n_domains: int) -> None:
        dev = pl_module.device
        sums = {n: torch.zeros(n_domains, m.num_features, dtype=torch.float64, device=dev) for n, m in bns}
        sqs = {n: torch.zeros_like(s) for n, s in sums.items()}
        counts = {n: torch.zeros(n_domains, dtype=torch.float64, device=dev) for n, _ in bns}
        current = [0]

        def hook(name: str) -> Callable:
            def pre(module: nn.Module, inputs: tuple) -> None:
                _batch_stats_guard(module, inputs)
                x = inputs[0].detach().double()
                dims = [0] + list(range(2, x.dim()))
                sums[name][current[0]] += x.sum(dims)
                sqs[name][current[0]] += (x * x).sum(dims)
                counts[name][current[0]] += x.numel() / x.shape[1]
            return pre

        handles = [m.register_forward_pre_hook(hook(n)) for n, m in bns]
        for _, m in bns:  # batch statistics in this pass, running statistics untouched
            m.train()
            m.track_running_stats = False
        dm = getattr(trainer, "datamodule", None)
        try:
            shuffled = self.order == "shuffled" and self._can_shuffle(trainer)
            for loader in ([self._shuffled_loader()[0]] if shuffled else self._loader(trainer)):
                for batch_idx, batch in enumerate(loader):
                    if trainer.limit_test_batches is not None and isinstance(trainer.limit_test_batches, int) \
                            and batch_idx >= trainer.limit_test_batches:
                        break
                    batch = pl_module.transfer_batch_to_device(batch, dev, 0)
                    batch = pl_module.on_after_batch_transfer(batch, 0)
                    for d, sub in _split_by_domain(batch):
                        current[0] = d
                        clips = _clips(sub["video"])
                        self._clip_counts[d] += int(clips.shape[0])
                        chunk = int(getattr(dm, "eval_batch_size", 0) or clips.shape[0])
                        with trainer.precision_plugin.forward_context():
                            for part in clips.split(chunk):
                                pl_module(part)
        finally:
            for h in handles:
                h.remove()
        if trainer.world_size > 1 and not shuffled:  # each rank's shard (the shuffled stream is the whole set on every rank)
            for table in (sums, sqs, counts):
                for n in table:
                    table[n] = trainer.strategy.reduce(table[n], reduce_op="sum")
            counts_clips = trainer.strategy.reduce(torch.tensor(self._clip_counts, dtype=torch.float64, device=dev), reduce_op="sum")
            self._clip_counts = [int(c) for c in counts_clips.tolist()]
        self._adabn_stats: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        for d in range(n_domains):
            per = {}
            for n, m in bns:
                c = counts[n][d]
                if c < 2:
                    continue  # no clip of this domain: its layers keep the source statistics
                mean = sums[n][d] / c
                var = (sqs[n][d] - c * mean * mean).clamp_min(0) / (c - 1)  # unbiased, as BatchNorm keeps it
                per[n] = (mean.to(m.running_mean.dtype), var.to(m.running_var.dtype))
            self._adabn_stats[d] = per
        for n, m in bns:
            m.track_running_stats = self._saved["track"][n]
            m.eval()
        self._bns = dict(bns)
        self._current = -1
        self.adapted = {self._names[d]: {f"{n}.running_{w}": t.cpu() for n, (mu, var) in s.items()
                                         for w, t in (("mean", mu), ("var", var))}
                        for d, s in self._adabn_stats.items() if s}

    # ----------------------------------------------------------------- Tent
    def _tent_prepare(self, pl_module: pl.LightningModule, bns: list, n_domains: int) -> None:
        params: list[tuple[str, nn.Parameter]] = []
        for n, m in bns:
            if m.weight is not None:
                params.append((f"{n}.weight", m.weight))
            if m.bias is not None:
                params.append((f"{n}.bias", m.bias))
        if not params:
            raise VidlitError("--tta.method tent: the model's BatchNorm layers have no affine parameters to adapt; use adabn")
        for p in pl_module.parameters():
            p.requires_grad_(False)
        for _, p in params:
            p.requires_grad_(True)
        for _, m in bns:
            m.train()  # batch statistics, running statistics left alone
            m.track_running_stats = False
        self._handles = [m.register_forward_pre_hook(_batch_stats_guard) for _, m in bns]
        self._tent_params = params
        with torch.inference_mode(False), torch.no_grad():
            self._tent_initial = {n: p.detach().clone() for n, p in params}
        self._tent_states: dict[int, dict[str, torch.Tensor]] = {}
        self._tent_opts: dict[int, torch.optim.Optimizer] = {}
        self._current = -1
        self._online: Optional[torch.Tensor] = None
        self._batch_index: Any = None
        callback = self

        def video_probs(video: torch.Tensor) -> torch.Tensor:
            if callback._online is not None:  # the shuffled stream's prediction of each video
                index = callback._batch_index
                if not isinstance(index, torch.Tensor):
                    raise VidlitError("--tta.order shuffled: the test batches have no 'index'; use --tta.order loader")
                return callback._online[index.cpu()].to(video.device)
            return callback._tent_step(pl_module, video)

        pl_module.__dict__["_video_probs"] = video_probs

    def _new_optimizer(self) -> torch.optim.Optimizer:
        ps = [p for _, p in self._tent_params]
        if self.optimizer == "sgd":
            return torch.optim.SGD(ps, lr=self.lr, momentum=0.9)
        return torch.optim.Adam(ps, lr=self.lr, betas=(0.9, 0.999), weight_decay=0.0)

    def _tent_store(self, pl_module: pl.LightningModule, d: int) -> None:
        if d < 0:
            return
        with torch.inference_mode(False), torch.no_grad():
            self._tent_states[d] = {n: p.detach().clone() for n, p in self._tent_params}

    def _tent_load(self, values: dict[str, torch.Tensor]) -> None:
        with torch.inference_mode(False), torch.no_grad():
            for n, p in self._tent_params:
                p.copy_(values[n])

    def _shuffled_loader(self) -> tuple[torch.utils.data.DataLoader, int]:
        """``order shuffled``: a DataLoader over the test dataset giving each target domain's videos
        in a seeded random order, in batches of the test loader's size (a batch holds one domain);
        and the dataset's length."""
        trainer = self._trainer
        loaders = trainer.test_dataloaders
        dl = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        ds = getattr(dl, "dataset", None)
        bs = getattr(dl, "batch_size", None)
        if not isinstance(dl, torch.utils.data.DataLoader) or bs is None or not hasattr(ds, "__len__") \
                or (isinstance(loaders, (list, tuple)) and len(loaders) > 1):
            raise VidlitError("--tta.order shuffled: needs one test DataLoader of single videos (batch_size set); "
                              "use --tta.order loader")
        domain_ids = getattr(ds, "domain_ids", None)
        if domain_ids is None:
            domain_ids = [int(ds[i]["domain"]) for i in range(len(ds))]
        domain_ids = torch.as_tensor(domain_ids).reshape(-1)
        g = torch.Generator().manual_seed(self.seed)
        batches: list[list[int]] = []
        for d in domain_ids.unique().tolist():
            idx = torch.nonzero(domain_ids == d).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)].tolist()
            batches += [idx[i : i + bs] for i in range(0, len(idx), bs)]
        kw: dict[str, Any] = dict(num_workers=dl.num_workers, collate_fn=dl.collate_fn, pin_memory=dl.pin_memory,
                                  worker_init_fn=dl.worker_init_fn, multiprocessing_context=dl.multiprocessing_context)
        return torch.utils.data.DataLoader(ds, batch_sampler=batches, **kw), len(ds)

    def _tent_stream(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``order shuffled``: Tent online over each target domain's test videos in a seeded random
        order (batches of the test loader's size); every video's prediction is kept for the test."""
        loader, n = self._shuffled_loader()
        online = None
        for batch in loader:
            if "index" not in batch:
                raise VidlitError("--tta.order shuffled: the test dataset's items have no 'index'; use --tta.order loader")
            batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
            batch = pl_module.on_after_batch_transfer(batch, 0)
            for d, sub in _split_by_domain(batch):
                self._activate(pl_module, d)
                with trainer.precision_plugin.forward_context():
                    probs = self._tent_step(pl_module, sub["video"]).cpu()
                if online is None:
                    online = torch.full((n, probs.shape[-1]), float("nan"))
                online[sub["index"].cpu()] = probs
        self._online = online

    def _tent_step(self, pl_module: pl.LightningModule, video: torch.Tensor) -> torch.Tensor:
        """Tent on one batch of one domain: the view-averaged probabilities of the forward before
        the update; ``steps`` entropy-minimisation steps of the BatchNorm affine parameters."""
        b = video.shape[0]
        d = self._current
        opt = self._tent_opts.setdefault(d, self._new_optimizer())
        probs = None
        with torch.inference_mode(False), torch.enable_grad():
            x = _clips(video).clone()  # a normal tensor (the test's batch is an inference tensor)
            if pl_module.hparams.get("channels_last"):
                x = x.contiguous(memory_format=torch.channels_last_3d)
            for step in range(self.steps):
                logits = pl_module(x)  # one forward over the batch's clips: BatchNorm batch statistics
                loss = entropy(logits).mean()
                if step == 0:
                    probs = logits.detach().float().softmax(-1)
                    self.entropies.setdefault(self._names[d], []).append(float(loss.detach()))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            opt.zero_grad(set_to_none=True)
        if self.episodic:
            self._tent_load(self._tent_initial)
            self._tent_opts[d] = self._new_optimizer()
        self._clip_counts[d] += int(x.shape[0])
        return probs.view(b, -1, probs.shape[-1]).mean(1) if video.dim() == 6 else probs

    # ----------------------------------------------------------------- per-domain state
    def _activate(self, pl_module: pl.LightningModule, d: int) -> None:
        """Put domain ``d``'s adapted state into the model (a no-op when it is already there)."""
        if d == self._current:
            return
        if self.method == "adabn":
            with torch.inference_mode(False), torch.no_grad():
                for n, m in self._bns.items():
                    mean, var = self._adabn_stats.get(d, {}).get(n, (None, None))
                    if mean is None:  # no statistics for this domain: the trained ones
                        mean, var = self._saved["state"][f"{n}.running_mean"], self._saved["state"][f"{n}.running_var"]
                    m.running_mean.copy_(mean)
                    m.running_var.copy_(var)
        else:
            self._tent_store(pl_module, self._current)
            self._tent_load(self._tent_states.get(d, self._tent_initial))
        self._current = d


def finish_adaptation(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Optional[str]:
    """Restore the unadapted model now if a :class:`TestTimeAdaptation` of the trainer still holds
    it adapted (at the end of a test, before its own ``on_test_end``); returns the method that
    adapted this test (``adabn``/``tent``), or None."""
    method = None
    for cb in trainer.callbacks:
        if isinstance(cb, TestTimeAdaptation) and cb.active:
            if cb._saved is not None or cb.summary is not None:
                method = cb.method
            cb.finish(pl_module)
    return method


def tta_results(trainer: pl.Trainer) -> dict:
    """``{"tta": {...}}`` for a results file when the trainer's :class:`TestTimeAdaptation` adapted
    the last test (method, Tent's settings, clips per domain); else ``{}``."""
    for cb in trainer.callbacks:
        if isinstance(cb, TestTimeAdaptation) and cb.active and cb.summary:
            return dict(cb.summary)
    return {}
