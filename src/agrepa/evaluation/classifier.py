"""Event classifier for generated general audio: top-1 accuracy, mAP and KL (``eval.events``).

The classifier is deliberately *not* the alignment teacher (a method aligned towards the teacher
could fool the teacher without sounding right). ``eval.events.classifier``:

``events`` (embedded default)
    A second event encoder (:mod:`agrepa.teachers.events`) trained by the workflow with
    ``eval.events.train`` (another seed and width than the acoustic teacher): ``agrepa teacher train
    --section eval.events.train``, read from ``--classifier DIR``.
``beats`` (paper scale)
    A BEATs checkpoint fine-tuned on AudioSet (official format, ``cfg.finetuned_model`` true, with a
    ``label_dict`` {class index: AudioSet mid}) at ``eval.events.checkpoint``; class names from
    ``eval.events.labels_csv`` (``class_labels_indices.csv``). Clip logits = the predictor applied to
    every patch of the encoder output, averaged (as the official ``BEATs.extract_features``).
``none``
    No event metrics (rows carry the reason).

Per generated audio clip with ground-truth labels (manifest ``labels``):

* ``event_top1``: 1 if the arg-max class is one of the clip's labels (clips whose labels the
  classifier does not know are skipped, with the count in the note);
* ``event_kl``: KL(p_ref || p_gen) with p = softmax(logits) of the ground-truth audio and of the
  generated audio (audiocraft's KL metric; :func:`agrepa.evaluation.metrics.kl_divergence`);
* ``event_map`` (set level): mAP over the classes with a positive among the scored clips, sigmoid
  scores, AP as :func:`agrepa.teachers.events.average_precision`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)
CONFIG_KEYS = ("eval.events", "audio")  # config sections this module reads


class EventClassifier:
    """``labels`` (class names) and :meth:`logits` (mono waveform -> [C])."""

    name = "classifier"
    labels: list[str] = []

    def logits(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class EventsClassifier(EventClassifier):
    """The second event encoder trained by the workflow."""

    def __init__(self, teacher, directory: str):
        self.teacher, self.directory = teacher, directory
        self.labels = list(teacher.labels)
        self.name = f"events classifier ({Path(directory).name}: dim {teacher.dim}, seed {teacher.meta.get('seed')})"

    def logits(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        w = self.teacher.resample(wave, sample_rate)
        return self.teacher.logits(w).double().numpy()


class BeatsClassifier(EventClassifier):
    """A fine-tuned BEATs checkpoint with its AudioSet label names."""

    def __init__(self, model, labels: list[str], source: str, device: str = "cpu"):
        self.model, self.labels, self.device = model.to(device).eval(), labels, device
        self.name = f"BEATs fine-tuned ({Path(source).name})"

    @torch.no_grad()
    def logits(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        import torch.nn.functional as F

        from ..audio import resample
        from ..teachers.beats import SAMPLE_RATE

        w = torch.from_numpy(resample(wave, sample_rate, SAMPLE_RATE)).to(self.device)
        fb = self.model.fbank(w)
        p = self.model.cfg.input_patch_size
        if fb.shape[0] < p:
            fb = F.pad(fb, (0, 0, 0, p - fb.shape[0]))
        x = self.model.extract_features(fb[None])[0]
        return self.model.predictor(x).mean(0).double().cpu().numpy()

    @classmethod
    def from_checkpoint(cls, path, labels_csv, device: str = "cpu") -> "BeatsClassifier":
        from ..corpora.audioset import read_label_indices
        from ..teachers.beats import load_checkpoint

        path = Path(path)
        model = load_checkpoint(path)
        if model.predictor is None:
            raise ValueError(f"{path}: not a fine-tuned BEATs checkpoint (cfg.finetuned_model is false: no "
                             f"classification head)")
        raw = torch.load(path, map_location="cpu", weights_only=True)
        label_dict = raw.get("label_dict")
        if not isinstance(label_dict, dict) or len(label_dict) != model.predictor.out_features:
            raise ValueError(f"{path}: needs a label_dict {{class index: AudioSet mid}} with "
                             f"{model.predictor.out_features} entries")
        if not labels_csv or not Path(labels_csv).exists():
            raise FileNotFoundError(f"eval.events.labels_csv: {labels_csv!r} (AudioSet class_labels_indices.csv) "
                                    f"not found")
        names = read_label_indices(labels_csv)
        unknown = sorted({str(m) for m in label_dict.values()} - set(names))
        if unknown:
            raise ValueError(f"{path}: label_dict mids not in {labels_csv}: {unknown[:5]}")
        labels = [names[str(label_dict[i])] for i in range(len(label_dict))]
        return cls(model, labels, str(path), device)


def build_classifier(cfg: dict, directory: str | os.PathLike | None = None) -> EventClassifier | None:
    """The classifier ``eval.events.classifier`` names (None for ``none``)."""
    from ..device import resolve_device

    ec = cfg["eval"]["events"]
    kind = ec["classifier"]
    device = str(resolve_device(cfg))
    if kind == "none":
        return None
    if kind == "events":
        from ..teachers.events import EventsTeacher

        if directory is None:
            raise ValueError("eval.events.classifier = events: pass --classifier DIR (the output of "
                             "`agrepa teacher train --section eval.events.train`)")
        return EventsClassifier(EventsTeacher.load(directory, cfg_audio=cfg["audio"], device=device), str(directory))
    if kind == "beats":
        if not ec["checkpoint"]:
            raise KeyError("eval.events.checkpoint: the beats classifier needs a fine-tuned BEATs checkpoint path")
        return BeatsClassifier.from_checkpoint(ec["checkpoint"], ec["labels_csv"], device)
    raise ValueError(f"eval.events.classifier: unknown classifier {kind!r} (events | beats | none)")


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def clip_scores(clf: EventClassifier, gen: np.ndarray, ref: np.ndarray, sample_rate: int,
                labels: list[str]) -> dict:
    """Per-clip ``event_top1`` (None when no label is known), ``event_kl`` and the sigmoid scores."""
    from .metrics import kl_divergence

    lg, lr = clf.logits(gen, sample_rate), clf.logits(ref, sample_rate)
    known = [l for l in labels if l in clf.labels]
    top1 = float(clf.labels[int(np.argmax(lg))] in known) if known else None
    return {"event_top1": top1, "event_kl": kl_divergence(softmax(lr), softmax(lg)),
            "scores": 1.0 / (1.0 + np.exp(-lg)), "labels": known}


def mean_average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """mAP over the classes with at least one positive (``truth`` [n, C] 0/1)."""
    from ..teachers.events import average_precision

    aps = [average_precision(scores[:, j], truth[:, j]) for j in range(truth.shape[1]) if truth[:, j].any()]
    if not aps:
        raise ValueError("mAP: no class has a positive clip")
    return float(np.mean(aps))
