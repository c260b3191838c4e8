"""``predict`` output: ``predictions.csv``, one row per video (or segment).

:class:`PredictionWriter` is a Lightning prediction writer (one of
:func:`vidlit.callbacks.default_callbacks`): during ``trainer.predict`` it maps each item back to
its record through the prediction dataset (the ``index`` every :class:`vidlit.data.clips.ClipDataset`
item carries) and writes, at the end, ``<default_root_dir>/predictions.csv`` (or ``path``) with

``video, start_frame, end_frame, domain, predicted, probability, class_1, prob_1, ... class_5,
prob_5, label, correct``

``label``/``correct`` are empty when the true label is unknown (``--dataset files``). Multi-view
testing (``--data.test_views``) applies: the probabilities are the view-averaged softmax.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

PREDICTIONS_FILE = "predictions.csv"


def _dataloaders(trainer: pl.Trainer) -> list:
    loaders = trainer.predict_dataloaders
    if loaders is None:
        return []
    if isinstance(loaders, dict):
        return list(loaders.values())
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]


class PredictionWriter(BasePredictionWriter):
    """Writes ``predictions.csv`` (see the module docstring) on global rank 0 at the end of
    ``predict`` and prints its path. Evaluation loaders are not sharded, so rank 0 has every
    video. ``path``: a file, or a folder to write ``predictions.csv`` into (default: the trainer's
    ``default_root_dir``); ``top_k``: classes listed per video."""

    def __init__(self, path: Optional[str] = None, top_k: int = 5) -> None:
        super().__init__(write_interval="batch")
        self.path, self.top_k = path, top_k
        self.rows: list[dict] = []
        self.written: Optional[str] = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rows, self.written = [], None

    def write_on_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any, batch_indices: Optional[Sequence[int]],
        batch: Any, batch_idx: int, dataloader_idx: int,
    ) -> None:
        if not isinstance(prediction, dict) or "probs" not in prediction:
            return  # not a vidlit strategy's predict_step: nothing we know how to write
        loaders = _dataloaders(trainer)
        dataset = getattr(loaders[dataloader_idx], "dataset", None) if dataloader_idx < len(loaders) else None
        records = getattr(dataset, "records", None)
        index = prediction.get("index")
        if index is None and isinstance(batch, dict):
            index = batch.get("index")
        if index is None and batch_indices is not None:
            index = list(batch_indices)
        if records is None or index is None:
            raise RuntimeError("predictions.csv: the predict dataset has no records (or items no 'index'): use a vidlit DataModule")
        index = [int(i) for i in (index.tolist() if isinstance(index, torch.Tensor) else index)]
        probs = prediction["probs"].detach().float().cpu()
        labels = prediction.get("label", batch.get("label") if isinstance(batch, dict) else None)
        labels = labels.tolist() if isinstance(labels, torch.Tensor) else (list(labels) if labels is not None else [-1] * len(index))
        domains = prediction.get("domain", batch.get("domain") if isinstance(batch, dict) else None)
        domains = domains.tolist() if isinstance(domains, torch.Tensor) else [None] * len(index)
        classes = list(getattr(dataset, "classes", None) or getattr(trainer.datamodule, "class_names", []))
        domain_names = list(getattr(dataset, "domains", []))
        k = min(self.top_k, probs.shape[1])
        top_p, top_i = probs.topk(k, dim=1)
        for row, i in enumerate(index):
            rec = records[i]
            names = [classes[c] if c < len(classes) else str(c) for c in top_i[row].tolist()]
            label = int(labels[row])
            d = domains[row]
            out = {
                "video": rec.path,
                "start_frame": "" if rec.start_frame is None else rec.start_frame,
                "end_frame": "" if rec.end_frame is None else rec.end_frame,
                "domain": domain_names[d] if d is not None and 0 <= d < len(domain_names) else rec.domain,
                "predicted": names[0],
                "probability": round(float(top_p[row, 0]), 6),
            }
            for j in range(self.top_k):
                out[f"class_{j + 1}"] = names[j] if j < k else ""
                out[f"prob_{j + 1}"] = round(float(top_p[row, j]), 6) if j < k else ""
            known = 0 <= label < len(classes)
            out["label"] = classes[label] if known else ""
            out["correct"] = int(names[0] == classes[label]) if known else ""
            self.rows.append(out)

    def output_path(self, trainer: pl.Trainer) -> str:
        path = self.path or trainer.default_root_dir
        if not path.endswith(".csv"):
            path = os.path.join(path, PREDICTIONS_FILE)
        return path

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self.rows:
            return
        path = self.output_path(trainer)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path + ".tmp", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(self.rows[0]))
            w.writeheader()
            w.writerows(self.rows)
        os.replace(path + ".tmp", path)
        self.written = path

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Prints the path after the progress bar has drawn its last frame."""
        if stage != "predict" or self.written is None:
            return
        known = [r for r in self.rows if r["correct"] != ""]
        acc = f"; accuracy {100 * sum(r['correct'] for r in known) / len(known):.1f}% on the {len(known)} labelled" if known else ""
        print(f"predictions: {self.written} ({len(self.rows)} videos{acc})", flush=True)


def trained_run_info(path: str) -> dict:
    """``class_names`` and ``source_domains`` of a training run, from ``path``: a run folder, its
    ``results.json``, or a checkpoint (``<run>/checkpoints/*.ckpt``: the run's ``results.json``,
    else what :class:`RunInfoCallback` stored in the checkpoint)."""
    from vidlit.data.records import DataError
    from vidlit.results import RESULTS_FILE

    candidates = []
    if os.path.isdir(path):
        candidates.append(os.path.join(path, RESULTS_FILE))
    elif path.endswith(".json"):
        candidates.append(path)
    elif os.path.isfile(path):
        candidates.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), RESULTS_FILE))
    else:
        raise DataError(f"--data.run {path}: no such run folder or checkpoint")
    for cand in candidates:
        if os.path.isfile(cand):
            with open(cand) as fh:
                res = json.load(fh)
            if res.get("class_names"):
                return {"class_names": list(res["class_names"]), "source_domains": list(res.get("source_domains") or [])}
    if os.path.isfile(path) and not path.endswith(".json"):
        from vidlit.errors import load_torch_file

        # checkpoints are untrusted input: never unpickle arbitrary objects; a file that is not a
        # checkpoint, or would import code, is one line naming it
        ckpt = load_torch_file(path, "--data.run", "pass the run folder or one of its RUN/checkpoints/*.ckpt, or the classes "
                               "with --data.classes '[...]'", error=DataError, mmap=True)
        info = (ckpt.get(RunInfoCallback.KEY) or {}) if isinstance(ckpt, dict) else {}
        if info.get("class_names"):
            return {"class_names": list(info["class_names"]), "source_domains": list(info.get("source_domains") or [])}
    raise DataError(f"--data.run {path}: no results.json with class_names next to it; pass the classes with --data.classes '[...]'")


class RunInfoCallback(pl.Callback):
    """Stores the class names and source domains in every checkpoint (key ``vidlit``), so that
    ``predict --dataset files`` can name the classes of a checkpoint moved away from its run."""

    KEY = "vidlit"

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "class_names"):
            return
        checkpoint[self.KEY] = {
            "class_names": [str(c) for c in dm.class_names],
            "source_domains": [str(d) for d in getattr(dm, "source_domains", [])],
            "target_domains": [str(d) for d in getattr(dm, "target_domains", [])],
        }


def fill_run_from_ckpt(config: Any) -> None:
    """For ``predict --dataset files --ckpt_path X`` without ``--data.run``: use X as the run
    (a one-line hook for the CLI's ``before_instantiate_classes``; a no-op for other datasets)."""
    data = config.get("data") if hasattr(config, "get") else None
    if data is None or "run" not in data or data.get("run"):
        return
    ckpt = config.get("ckpt_path")
    if ckpt and ckpt not in ("last", "best") and os.path.isfile(str(ckpt)):
        data["run"] = str(ckpt)
