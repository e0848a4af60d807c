"""Frozen teachers: waveform -> frame features [T', D] and a pooled embedding [D].

A teacher owns its sample rate; :meth:`Teacher.embed` resamples the input to it.
The pooled embedding is the temporal mean over the teacher's *real* frames only,

    pooled = (1 / T') * sum_{t < T'} frames[t],

where T' counts the frames that cover the clip's real samples. Padding (a
batch's zero tail, or Whisper's 30 s window) never enters the mean: every
teacher crops its input to the real length first and returns real frames only.

Each teacher exposes ``name``, ``dim``, ``frame_rate`` (frames per second),
``granularity`` (frames per indivisible time step), ``sample_rate`` and
``fingerprint()`` (a hash of its weights and settings, the embedding cache's
invalidation key); :mod:`.registry` builds them by name.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torchaudio
from torch import Tensor

from .. import io


log = logging.getLogger(__name__)

ROLES = ("semantic", "acoustic")


class Teacher:
    """Base class. Subclasses set ``name``, ``dim``, ``frame_rate``, ``sample_rate``
    and implement :meth:`frames` (real frames of one unpadded waveform) and
    :meth:`settings` (everything besides the weights that changes the output)."""

    name: str = "teacher"
    dim: int = 0
    frame_rate: float = 0.0
    granularity: int = 1      # frames per indivisible time step (BEATs patches: 8 per 160 ms)
    sample_rate: int = 16000
    device: str = "cpu"

    # --- to implement -------------------------------------------------------
    def frames(self, wave: Tensor) -> Tensor:
        """Frame features [T', D] (float32, CPU) of one mono waveform [N] at
        ``self.sample_rate``; the waveform holds real samples only."""
        raise NotImplementedError

    def frames_batch(self, waves: list[Tensor]) -> list[Tensor]:
        """Real frames of several unpadded waveforms; teachers that can batch
        exactly override this (the default runs :meth:`frames` clip by clip)."""
        return [self.frames(w) for w in waves]

    def weights_sha256(self) -> str:
        raise NotImplementedError

    def settings(self) -> dict:
        return {}

    # --- shared -------------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 of (teacher name, weights hash, settings): changes whenever the
        teacher's output could change."""
        return io.sha256_json({"name": self.name, "weights": self.weights_sha256(),
                               "settings": self.settings(), "dim": self.dim,
                               "frame_rate": self.frame_rate, "granularity": self.granularity,
                               "sample_rate": self.sample_rate})

    def resample(self, wave: Tensor | np.ndarray, sample_rate: int) -> Tensor:
        wave = torch.as_tensor(np.asarray(wave, dtype=np.float32) if not torch.is_tensor(wave) else wave)
        wave = wave.float()
        if wave.dim() != 1:
            raise ValueError(f"{self.name}: expected a mono waveform [N], got shape {tuple(wave.shape)}")
        if sample_rate != self.sample_rate:
            wave = torchaudio.functional.resample(wave, sample_rate, self.sample_rate)
        return wave

    @torch.no_grad()
    def embed(self, wave: Tensor | np.ndarray, sample_rate: int) -> tuple[Tensor, Tensor]:
        """``(frames [T', D], pooled [D])`` of one unpadded waveform."""
        wave = self.resample(wave, sample_rate)
        if wave.numel() == 0:
            raise ValueError(f"{self.name}: empty waveform")
        frames = self.frames(wave).float().cpu()
        self._check_frames(frames)
        return frames, pool_frames(frames)

    @torch.no_grad()
    def embed_batch(self, waves: list, sample_rate: int) -> list[tuple[Tensor, Tensor]]:
        """:meth:`embed` of several unpadded waveforms of any lengths, run as one batch
        (:meth:`frames_batch`): each clip pools over its own real frames only."""
        waves = [self.resample(w, sample_rate) for w in waves]
        if any(w.numel() == 0 for w in waves):
            raise ValueError(f"{self.name}: empty waveform")
        out = []
        for frames in self.frames_batch(waves):
            frames = frames.float().cpu()
            self._check_frames(frames)
            out.append((frames, pool_frames(frames)))
        return out

    def _check_frames(self, frames: Tensor) -> None:
        if frames.dim() != 2 or frames.shape[1] != self.dim or frames.shape[0] < 1:
            raise RuntimeError(f"{self.name}: frames have shape {tuple(frames.shape)}, "
                               f"expected [T' >= 1, {self.dim}]")

    @torch.no_grad()
    def embed_padded(self, waves: Tensor, lengths: Tensor | list[int], sample_rate: int) -> list[tuple[Tensor, Tensor]]:
        """Embed a zero-padded batch [B, N] whose real lengths (in samples at
        ``sample_rate``) are ``lengths``; padding is cut off before the teacher
        sees the clip, so the result equals :meth:`embed` on the unpadded clip."""
        if waves.dim() != 2 or len(lengths) != waves.shape[0]:
            raise ValueError(f"{self.name}: expected waves [B, N] and B lengths, got "
                             f"{tuple(waves.shape)} and {len(lengths)} lengths")
        return self.embed_batch([waves[b, : int(n)] for b, n in enumerate(lengths)], sample_rate)

    def describe(self) -> dict:
        return {"teacher": self.name, "dim": self.dim, "frame_rate": self.frame_rate,
                "granularity": self.granularity, "sample_rate": self.sample_rate, "fingerprint": self.fingerprint()}


def pool_frames(frames: Tensor, n_real: int | None = None) -> Tensor:
    """Temporal mean over the first ``n_real`` (default: all) frames -> [D]."""
    n = frames.shape[0] if n_real is None else int(n_real)
    if n < 1:
        raise ValueError("pool_frames: no real frames to pool")
    return frames[:n].mean(0)
