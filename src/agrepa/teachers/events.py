"""The embedded default's BEATs stand-in: a small audio-event encoder trained here.

Architecture (:class:`EventEncoder`), on the Vocos log-mel (``agrepa.audio.log_mel``)::

    mel [100, T] -> (mel - mean) / std               (scalar train-set statistics)
    -> Conv1d(k4, stride 2) -> GELU -> Conv1d(k4, stride 2) -> GELU -> Conv1d(k3) -> GELU
    -> + sinusoidal positions -> pre-norm Transformer encoder (n_layers) -> LayerNorm
    = frame features [T // 4, dim]                    (93.75 / 4 = 23.4375 frames/s)
    -> masked mean over real frames -> Linear -> label logits

Training (``agrepa teacher train``): the audio-domain clips of the train split,
multi-label binary cross-entropy over the label vocabulary (the sorted set of
the train clips' labels), AdamW with a one-cycle schedule, seeded. Batches are
length-bucketed (clips sorted by length, cut into batches, batch order
shuffled each epoch) so little compute goes to padding. Then frozen. The valid split's audio
clips are scored with:

* exact match: the predicted label set (sigmoid > threshold) equals the true set;
  chance = always predicting the train split's most frequent label set;
* top-1 accuracy: the arg-max label is one of the true labels; chance = always
  predicting the most frequent train label;
* per-label F1 and average precision (AP = mean of the precision at the rank of
  each positive); mAP over labels with a positive in valid; chance mAP = mean
  label prevalence (the expected AP of a random scorer).

Output directory: ``model.safetensors``, ``config.json`` (architecture, label
list, normalisation, audio front end), ``metrics.json``.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from .. import audio as A
from .. import io
from .base import Teacher

CONFIG_KEYS = ("audio", "teachers.acoustic")  # config sections this module reads

log = logging.getLogger(__name__)

DOWNSAMPLE = 4  # two stride-2 convolutions


def sinusoid(n: int, dim: int) -> Tensor:
    """Sinusoidal position table [n, dim]."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(n, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class EventEncoder(nn.Module):
    def __init__(self, n_mels: int, dim: int, n_layers: int, n_heads: int, n_labels: int,
                 dropout: float = 0.1, ff_mult: int = 2):
        super().__init__()
        self.register_buffer("mel_mean", torch.zeros(()))
        self.register_buffer("mel_std", torch.ones(()))
        self.conv = nn.Sequential(
            nn.Conv1d(n_mels, dim, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(dim, dim, 4, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(dim, dim, 3, padding=1), nn.GELU())
        layer = nn.TransformerEncoderLayer(dim, n_heads, dim * ff_mult, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_labels)
        self.dim = dim

    @staticmethod
    def frame_lengths(mel_lengths: Tensor) -> Tensor:
        return torch.div(mel_lengths, DOWNSAMPLE, rounding_mode="floor").clamp(min=1)

    def frames(self, mel: Tensor, mel_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """mel [B, n_mels, T] (T >= 4) -> frames [B, T // 4, dim] and the real-frame mask [B, T // 4]."""
        x = (mel - self.mel_mean) / self.mel_std
        x = self.conv(x).transpose(1, 2)
        n = self.frame_lengths(mel_lengths)
        mask = torch.arange(x.shape[1], device=x.device)[None] < n[:, None]
        x = x + sinusoid(x.shape[1], self.dim).to(x)
        x = self.transformer(x, src_key_padding_mask=~mask)
        return self.norm(x), mask

    def frames_batch(self, mels: list[Tensor]) -> list[Tensor]:
        """Real frames [T_i // 4, dim] of several unpadded mels [n_mels, T_i] in one call, each
        equal to :meth:`frames` of that mel alone: the normalised input and every conv layer's
        output are zeroed past the clip's own length (its conv then sees the zeros a one-clip
        conv pads with) and the transformer masks the padding frames as keys."""
        solo = [F.pad(m, (0, max(0, DOWNSAMPLE - m.shape[-1]))) for m in mels]  # as pad_mels does alone
        x, padded_len = pad_mels(solo)
        true_len = torch.tensor([m.shape[-1] for m in mels], device=x.device)
        padded_len = padded_len.to(x.device)

        def keep(h: Tensor, n: Tensor) -> Tensor:
            return h * (torch.arange(h.shape[-1], device=h.device)[None] < n[:, None])[:, None].to(h.dtype)

        h = keep((x - self.mel_mean) / self.mel_std, padded_len)
        n = padded_len
        for i in range(0, len(self.conv), 2):
            conv = self.conv[i]
            n = torch.div(n + 2 * conv.padding[0] - conv.kernel_size[0], conv.stride[0], rounding_mode="floor") + 1
            h = keep(self.conv[i + 1](conv(h)), n)
        h = h.transpose(1, 2)
        real = self.frame_lengths(true_len)
        mask = torch.arange(h.shape[1], device=h.device)[None] < real[:, None]
        h = h + sinusoid(h.shape[1], self.dim).to(h)
        h = self.norm(self.transformer(h, src_key_padding_mask=~mask))
        return [h[b, : int(real[b])] for b in range(len(mels))]

    def forward(self, mel: Tensor, mel_lengths: Tensor) -> Tensor:
        h, mask = self.frames(mel, mel_lengths)
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1)
        return self.head(pooled)


def pad_mels(mels: list[Tensor]) -> tuple[Tensor, Tensor]:
    """List of [n_mels, T_i] -> zero-padded [B, n_mels, max(T, 4)] and lengths."""
    lengths = torch.tensor([m.shape[-1] for m in mels])
    T = max(int(lengths.max()), DOWNSAMPLE)
    out = mels[0].new_zeros(len(mels), mels[0].shape[0], T)
    for i, m in enumerate(mels):
        out[i, :, : m.shape[-1]] = m
    return out, lengths


# ----------------------------------------------------------------------------- metrics
def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """AP = mean over positives of precision at that positive's rank (scores descending)."""
    n_pos = int(truth.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = truth[order].astype(float)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / n_pos)


def multilabel_metrics(probs: np.ndarray, truth: np.ndarray, labels: list[str], train_truth: np.ndarray,
                       threshold: float = 0.5) -> dict:
    """Exact match, top-1, per-label F1/AP, mAP and their chance levels (see module doc)."""
    pred = probs > threshold
    t = truth.astype(bool)
    exact = float((pred == t).all(1).mean())
    top1 = float(t[np.arange(len(t)), probs.argmax(1)].mean())
    # chance: constant predictions learnt from the train split
    sets, counts = np.unique(train_truth.astype(bool), axis=0, return_counts=True)
    majority_set = sets[counts.argmax()]
    chance_exact = float((t == majority_set[None]).all(1).mean())
    chance_top1 = float(t[:, train_truth.sum(0).argmax()].mean())
    per_label, aps, f1s, prevalence = {}, [], [], []
    for j, name in enumerate(labels):
        tp = float((pred[:, j] & t[:, j]).sum())
        fp = float((pred[:, j] & ~t[:, j]).sum())
        fn = float((~pred[:, j] & t[:, j]).sum())
        f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else float("nan")
        ap = average_precision(probs[:, j], t[:, j])
        per_label[name] = {"f1": f1, "ap": ap, "support": int(t[:, j].sum())}
        if t[:, j].any():
            aps.append(ap)
            f1s.append(f1)
            prevalence.append(float(t[:, j].mean()))
    return {"n": int(len(t)), "exact_match": exact, "chance_exact_match": chance_exact,
            "top1_accuracy": top1, "chance_top1_accuracy": chance_top1,
            "mAP": float(np.mean(aps)) if aps else float("nan"),
            "chance_mAP": float(np.mean(prevalence)) if prevalence else float("nan"),
            "macro_f1": float(np.mean(f1s)) if f1s else float("nan"),
            "threshold": threshold, "per_label": per_label}


# ----------------------------------------------------------------------------- data
def _clip_mels(manifest_path, rows, cfg: dict) -> list[Tensor]:
    from ..corpora.manifest import resolve_path

    sr = int(cfg["audio"]["sample_rate"])
    peak = cfg["audio"]["peak_normalize"]
    max_samples = int(float(cfg["audio"]["max_seconds"]) * sr)
    mels = []
    for _, row in tqdm(rows.iterrows(), total=len(rows), desc="mels", leave=False):
        wave = A.load_audio(resolve_path(manifest_path, row["path"]), sample_rate=sr, peak=peak,
                            resampler=cfg["audio"]["resample"])
        mels.append(A.log_mel(torch.from_numpy(wave[:max_samples]), cfg["audio"]))
    return mels


def _label_matrix(rows, labels: list[str]) -> np.ndarray:
    from ..corpora.manifest import split_labels

    index = {name: j for j, name in enumerate(labels)}
    y = np.zeros((len(rows), len(labels)), np.float32)
    for i, lab in enumerate(rows["labels"]):
        for name in split_labels(lab):
            if name in index:
                y[i, index[name]] = 1.0
    return y


@torch.no_grad()
def predict(model: EventEncoder, mels: list[Tensor], batch_size: int) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(mels), batch_size):
        x, n = pad_mels(mels[i: i + batch_size])
        out.append(torch.sigmoid(model(x, n)))
    return torch.cat(out).numpy()


def train_events(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, cfg: dict,
                 section: str = "teachers.acoustic.events") -> dict:
    """Train the event encoder on the manifest's audio train clips; write the
    model, its config and the valid metrics to ``out_dir``; return the metrics.

    ``section``: the config section with the hyper-parameters: the acoustic teacher's
    (``teachers.acoustic.events``) or the evaluation's event classifier
    (``eval.events.train``: another seed and width, so the classifier that scores
    generated audio is not the model the alignment was trained towards)."""
    from ..corpora.manifest import read_manifest, split_labels

    ecfg = cfg
    for key in section.split("."):
        ecfg = ecfg[key]
    seed = int(ecfg["seed"])
    torch.manual_seed(seed)
    manifest = read_manifest(manifest_path)
    audio = manifest[manifest["domain"] == "audio"]
    train, valid = audio[audio["split"] == "train"], audio[audio["split"] == "valid"]
    if train.empty:
        raise ValueError(f"{manifest_path}: no audio-domain clips in the train split to train the event teacher")
    if valid.empty:
        raise ValueError(f"{manifest_path}: no audio-domain clips in the valid split to score the event teacher")
    labels = sorted({name for lab in train["labels"] for name in split_labels(lab)})
    if len(labels) < 2:
        raise ValueError(f"{manifest_path}: the train audio clips carry {len(labels)} label(s); need >= 2")
    log.info("event teacher: %d train / %d valid clips, %d labels", len(train), len(valid), len(labels))

    t0 = time.time()
    train_mels = _clip_mels(manifest_path, train, cfg)
    valid_mels = _clip_mels(manifest_path, valid, cfg)
    y_train, y_valid = _label_matrix(train, labels), _label_matrix(valid, labels)
    cat = torch.cat([m.flatten() for m in train_mels])
    n_mels = int(train_mels[0].shape[0])
    arch = {"n_mels": n_mels, "dim": int(ecfg["dim"]), "n_layers": int(ecfg["n_layers"]),
            "n_heads": int(ecfg["n_heads"]), "n_labels": len(labels),
            "dropout": float(ecfg["dropout"]), "ff_mult": int(ecfg["ff_mult"])}
    model = EventEncoder(**arch)
    model.mel_mean.fill_(float(cat.mean()))
    model.mel_std.fill_(float(cat.std()))

    history = _fit(model, train_mels, torch.from_numpy(y_train), ecfg, seed)
    train_seconds = time.time() - t0

    threshold, bs = float(ecfg["threshold"]), int(ecfg["batch_size"])
    metrics = multilabel_metrics(predict(model, valid_mels, bs), y_valid, labels, y_train, threshold)
    train_fit = multilabel_metrics(predict(model, train_mels, bs), y_train, labels, y_train, threshold)
    metrics.update({"split": "valid", "labels": labels, "train_loss": history,
                    "train_exact_match": train_fit["exact_match"], "train_seconds": train_seconds,
                    "n_train": len(train_mels)})
    _write_teacher(Path(out_dir), model, metrics, {"arch": arch, "labels": labels, "downsample": DOWNSAMPLE,
                                                   "audio": dict(cfg["audio"]), "seed": seed,
                                                   "manifest_sha256": io.sha256_file(manifest_path)})
    log.info("event teacher: valid exact match %.3f (chance %.3f), mAP %.3f (chance %.3f), %.1f s",
             metrics["exact_match"], metrics["chance_exact_match"], metrics["mAP"], metrics["chance_mAP"],
             train_seconds)
    return metrics


def _fit(model: "EventEncoder", mels: list[Tensor], targets: Tensor, ecfg: dict, seed: int) -> list[float]:
    """Multi-label BCE training (AdamW + OneCycle, length-bucketed batches in a seeded
    order); returns the mean train loss of every epoch."""
    opt = torch.optim.AdamW(model.parameters(), lr=float(ecfg["lr"]), weight_decay=float(ecfg["weight_decay"]))
    epochs, bs = int(ecfg["epochs"]), int(ecfg["batch_size"])
    steps = epochs * math.ceil(len(mels) / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(ecfg["lr"]), total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    by_length = sorted(range(len(mels)), key=lambda i: (mels[i].shape[-1], i))
    batches = [by_length[i: i + bs] for i in range(0, len(by_length), bs)]
    history = []
    bar = tqdm(total=steps, desc="teacher train", leave=False)
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for b in torch.randperm(len(batches), generator=gen).tolist():
            idx = batches[b]
            x, n = pad_mels([mels[j] for j in idx])
            loss = F.binary_cross_entropy_with_logits(model(x, n), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            bar.update(1)
        history.append(total / len(mels))
        log.info("epoch %d/%d: train BCE %.4f", epoch + 1, epochs, history[-1])
    bar.close()
    return history


def _write_teacher(out: Path, model: "EventEncoder", metrics: dict, config: dict) -> None:
    """model.safetensors, config.json and metrics.json of a trained event teacher."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with io.atomic_path(out / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    io.write_json(out / "config.json", config)
    io.write_json(out / "metrics.json", metrics)


class EventsTeacher(Teacher):
    name = "events"

    def __init__(self, model: EventEncoder, meta: dict, weights_sha256: str, device: str = "cpu"):
        self.device = device
        self.model = model.to(device).eval()
        self.meta = meta
        self.cfg_audio = meta["audio"]
        self.sample_rate = int(self.cfg_audio["sample_rate"])
        self.frame_rate = A.frame_rate(self.cfg_audio) / meta["downsample"]
        self.dim = int(meta["arch"]["dim"])
        self.labels = list(meta["labels"])
        self._sha = weights_sha256

    @classmethod
    def load(cls, directory: str | os.PathLike, cfg_audio: dict | None = None,
             device: str = "cpu") -> "EventsTeacher":
        directory = Path(directory)
        weights, conf = directory / "model.safetensors", directory / "config.json"
        for p in (weights, conf):
            if not p.exists():
                raise FileNotFoundError(f"{p}: event teacher file missing (run `agrepa teacher train`)")
        meta = io.read_json(conf, required=("arch", "labels", "audio", "downsample"))
        if cfg_audio is not None:
            want = cfg_audio
            if int(want["sample_rate"]) != int(meta["audio"]["sample_rate"]) or \
                    int(want["n_mels"]) != int(meta["audio"]["n_mels"]):
                raise ValueError(f"{conf}: teacher trained on {meta['audio']['sample_rate']} Hz / "
                                 f"{meta['audio']['n_mels']} mels, the config asks for "
                                 f"{want['sample_rate']} Hz / {want['n_mels']} mels")
        model = EventEncoder(**meta["arch"])
        state = load_file(str(weights))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{weights}: does not match {conf} ({err})") from None
        return cls(model, meta, io.sha256_json({"weights": io.sha256_file(weights), "config": meta}),
                   device=device)

    def weights_sha256(self) -> str:
        return self._sha

    def settings(self) -> dict:
        return {"audio": self.cfg_audio, "downsample": self.meta["downsample"]}

    def frames(self, wave: Tensor) -> Tensor:
        mel = A.log_mel(wave.to(self.device), self.cfg_audio)
        x, n = pad_mels([mel])
        h, mask = self.model.frames(x, n.to(self.device))
        return h[0, : int(mask[0].sum())].cpu()

    def frames_batch(self, waves: list[Tensor]) -> list[Tensor]:
        mels = [A.log_mel(w.to(self.device), self.cfg_audio) for w in waves]
        return [h.cpu() for h in self.model.frames_batch(mels)]

    @torch.no_grad()
    def logits(self, wave: Tensor) -> Tensor:
        """Label logits [n_labels] of one mono waveform at ``self.sample_rate``."""
        mel = A.log_mel(wave.to(self.device), self.cfg_audio)
        x, n = pad_mels([mel])
        return self.model(x, n.to(self.device))[0].cpu()

    @torch.no_grad()
    def predict_proba(self, wave: Tensor) -> Tensor:
        mel = A.log_mel(wave.to(self.device), self.cfg_audio)
        x, n = pad_mels([mel])
        return torch.sigmoid(self.model(x, n.to(self.device)))[0].cpu()
