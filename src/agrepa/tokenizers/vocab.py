"""The unified token vocabulary, Config B interleaving, and frame-rate bookkeeping.

Vocabulary layout (ids the DiT's embedding table sees)::

    0                               padding (agrepa.model.dit.PAD_ID)
    1 .. K_s                        speech codebook   (offset_speech = 1)
    1 + K_s .. K_s + K_a            audio codebook    (offset_audio  = 1 + K_s)
    1 + K_s + K_a .. + K_b          "BEATs" codebook  (offset_beats  = 1 + K_s + K_a; Config B only)

    vocab_size = 1 + K_s + K_a (+ K_b)

A stream's local code c becomes the global id ``offset_stream + c``.

Config B: a clip's primary tokens p (speech or audio stream) and its BEATs
tokens b are first brought to the same length -- the shorter sequence is
stretched to the longer by nearest-index interpolation,
``short[floor((i + 0.5) * n_short / n_long)]`` for i < n_long -- and then
interleaved 1:1 as ``[p_1, b_1, p_2, b_2, ...]`` (:func:`interleave`;
:func:`deinterleave` inverts it exactly).

Frame rates: tokens are stored at their own rate (the teacher's frame rate:
50 /s for Whisper, 23.4375 /s for the event teacher, 6.25 /s for BEATs;
an interleaved Config B sequence runs at twice the rate of its longer stream).
The mel spectrogram runs at ``audio.sample_rate / audio.hop_length`` = 24000 /
256 = 93.75 frames/s. Tokens are NOT resampled here: the model linearly
interpolates each clip's tokens to its mel length (``agrepa.model.dit.interpolate_tokens``),
so the ratio ``mel_rate / token_rate`` only needs to be recorded
(:func:`rate_summary`), never enforced.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..config import PAD_ID

STREAMS = ("speech", "audio", "beats")


@dataclass
class Vocab:
    """Codebook sizes per stream (in :data:`STREAMS` order) and their offsets."""
    sizes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        unknown = set(self.sizes) - set(STREAMS)
        if unknown:
            raise ValueError(f"vocab: unknown stream(s) {sorted(unknown)} (known: {STREAMS})")
        for s, k in self.sizes.items():
            if int(k) < 1:
                raise ValueError(f"vocab: stream {s!r} has codebook size {k}")

    @property
    def offsets(self) -> dict[str, int]:
        out, nxt = {}, PAD_ID + 1
        for s in STREAMS:
            if s in self.sizes:
                out[s] = nxt
                nxt += int(self.sizes[s])
        return out

    @property
    def vocab_size(self) -> int:
        return PAD_ID + 1 + sum(int(k) for k in self.sizes.values())

    def to_global(self, stream: str, codes: Tensor) -> Tensor:
        if stream not in self.sizes:
            raise KeyError(f"vocab: no {stream!r} stream (have {sorted(self.sizes)})")
        codes = codes.long()
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.sizes[stream]):
            raise ValueError(f"vocab: {stream} codes outside [0, {self.sizes[stream]})")
        return codes + self.offsets[stream]

    def to_local(self, ids: Tensor) -> tuple[list[str], Tensor]:
        """Stream name and local code of every id (padding -> ('pad', -1))."""
        names, codes = [], torch.full_like(ids, -1)
        for i, v in enumerate(ids.tolist()):
            if v == PAD_ID:
                names.append("pad")
                continue
            for s, off in self.offsets.items():
                if off <= v < off + self.sizes[s]:
                    names.append(s)
                    codes[i] = v - off
                    break
            else:
                raise ValueError(f"vocab: id {v} outside the vocabulary (size {self.vocab_size})")
        return names, codes

    def to_meta(self) -> dict:
        return {"vocab_size": self.vocab_size, "offsets": self.offsets, "sizes": dict(self.sizes),
                "pad_id": PAD_ID}

    @classmethod
    def from_meta(cls, meta: dict) -> "Vocab":
        if "sizes" not in meta:
            raise KeyError("token store meta: missing 'sizes'")
        v = cls({s: int(k) for s, k in meta["sizes"].items()})
        if "vocab_size" in meta and int(meta["vocab_size"]) != v.vocab_size:
            raise ValueError(f"token store meta: vocab_size {meta['vocab_size']} != {v.vocab_size} from sizes")
        return v


def stretch(x: Tensor, n: int) -> Tensor:
    """Nearest-index interpolation of a 1-D sequence to length ``n``:
    ``out[i] = x[floor((i + 0.5) * len(x) / n)]``."""
    if x.numel() == 0:
        raise ValueError("stretch: empty sequence")
    idx = torch.div((torch.arange(n) * 2 + 1) * x.numel(), 2 * n, rounding_mode="floor")
    return x[idx.clamp(max=x.numel() - 1)]


def align_lengths(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Stretch the shorter of two 1-D sequences to the longer one's length."""
    n = max(a.numel(), b.numel())
    return (a if a.numel() == n else stretch(a, n)), (b if b.numel() == n else stretch(b, n))


def interleave(a: Tensor, b: Tensor) -> Tensor:
    """``[a_1, b_1, a_2, b_2, ...]`` of two equal-length 1-D sequences."""
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"interleave: need two 1-D sequences of equal length, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)} (align_lengths first)")
    return torch.stack([a, b], dim=1).reshape(-1)


def deinterleave(x: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`interleave`: the even and the odd positions."""
    if x.dim() != 1 or x.numel() % 2:
        raise ValueError(f"deinterleave: need a 1-D sequence of even length, got {tuple(x.shape)}")
    return x[0::2].clone(), x[1::2].clone()


def rate_summary(token_rate: float, cfg_audio: dict | None = None) -> dict:
    """Token rate vs the mel rate (``sample_rate / hop``): how many mel frames
    each token spans once the model interpolates tokens to the mel length."""
    from ..audio import frame_rate

    mel_rate = frame_rate(cfg_audio)
    return {"token_rate": float(token_rate), "mel_rate": mel_rate,
            "mel_frames_per_token": mel_rate / float(token_rate)}
