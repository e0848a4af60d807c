"""Speaker similarity (speech): cosine between speaker embeddings of a generated clip and its prompt.

``spk_sim = cos(e(generated), e(prompt clip))`` where ``e`` is a speaker encoder and the prompt
clip is the full reference utterance the sampler prompted with (its ``prompt_id``).

Encoders (``eval.speaker``; a registry, :func:`register_speaker_encoder`):

``resemblyzer``
    The GE2E d-vector encoder of the ``resemblyzer`` wheel (pin ``resemblyzer==0.1.4``; its
    pretrained weights ship inside the wheel, so it runs offline). Audio is resampled to 16 kHz,
    volume-normalised and silence-trimmed by ``resemblyzer.preprocess_wav``, and embedded with
    ``VoiceEncoder.embed_utterance`` (L2-normalised 256-d).
``none``
    Speaker similarity is not computed (``None`` with a note).
"""
from __future__ import annotations

from typing import Callable

import numpy as np


CONFIG_KEYS = ("eval.speaker",)  # config sections this module reads

SPEAKER_ENCODERS: dict[str, Callable[[dict], "SpeakerEncoder"]] = {}


def register_speaker_encoder(name: str):
    def deco(fn):
        SPEAKER_ENCODERS[name] = fn
        return fn
    return deco


class SpeakerEncoder:
    name = "speaker"

    def embed(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name

    def similarity(self, a: np.ndarray, sr_a: int, b: np.ndarray, sr_b: int) -> float:
        return cosine(self.embed(a, sr_a), self.embed(b, sr_b))


def cosine(x: np.ndarray, y: np.ndarray) -> float:
    """Cosine similarity of two vectors (ValueError for a zero vector)."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx == 0 or ny == 0:
        raise ValueError("speaker similarity: zero embedding (silent clip?)")
    return float(x @ y / (nx * ny))


class ResemblyzerEncoder(SpeakerEncoder):
    name = "resemblyzer"

    def __init__(self, device: str = "cpu"):
        import importlib.metadata as md

        from resemblyzer import VoiceEncoder

        self.version = md.version("resemblyzer")
        self.encoder = VoiceEncoder(device=device, verbose=False)

    def describe(self) -> str:
        return f"resemblyzer {self.version} (GE2E d-vector)"

    def embed(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        from resemblyzer import preprocess_wav

        w = np.asarray(wave, dtype=np.float32)
        if w.ndim != 1 or w.size == 0:
            raise ValueError(f"speaker: expected a non-empty mono waveform, got shape {w.shape}")
        x = preprocess_wav(w, source_sr=sample_rate)
        if x.size == 0:  # everything was trimmed as silence: embed the raw (resampled) clip
            from ..audio import resample
            x = resample(w, sample_rate, 16000)
        return self.encoder.embed_utterance(x)


@register_speaker_encoder("resemblyzer")
def _resemblyzer(cfg: dict) -> SpeakerEncoder:
    return ResemblyzerEncoder("cpu")


def build_speaker_encoder(cfg: dict) -> SpeakerEncoder | None:
    name = cfg["eval"]["speaker"]
    if name in (None, "none"):
        return None
    if name not in SPEAKER_ENCODERS:
        raise KeyError(f"eval.speaker: unknown speaker encoder {name!r} (known: {sorted(SPEAKER_ENCODERS)} or none)")
    return SPEAKER_ENCODERS[name](cfg)
