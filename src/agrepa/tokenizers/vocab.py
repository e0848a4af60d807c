"""The unified token vocabulary, Config B interleaving, and frame-rate bookkeeping.

Vocabulary layout (ids the DiT's embedding table sees)::

    0                               padding (agrepa.config.PAD_ID)
    1 .. K_s                        speech codebook   (offset_speech = 1)
    1 + K_s .. K_s + K_a            audio codebook    (offset_audio  = 1 + K_s)
    1 + K_s + K_a .. + K_b          "BEATs" codebook  (offset_beats  = 1 + K_s + K_a; Config B only)

    vocab_size = 1 + K_s + K_a (+ K_b)

A stream's local code c becomes the global id ``offset_stream + c``.

Config B: a clip's primary tokens and its BEATs tokens are placed on one time
grid (:func:`agrepa.tokenizers.timing.pair_by_time`) and stored side by side as
``[N, 2]`` rows ``[primary_i, beats_i]``; the paper's 1:1 interleaved sequence
``[p_1, b_1, p_2, b_2, ...]`` is that tensor flattened row by row. The model
embeds both columns and fuses them position by position (the authors'
dual-codebook front end, :mod:`agrepa.model.tokens`).

Frame rates: a stream's tokens run at its tokenizer's rate (the teacher's frame
rate: 50 /s for Whisper, 23.4375 /s for the event teacher, 6.25 /s for BEATs
time frames or 50 /s for its patch sequence, 50 /s for S3). The mel spectrogram
runs at ``audio.sample_rate / audio.hop_length`` = 24000 / 256 = 93.75 frames/s.
Tokens are NOT resampled here: the model linearly interpolates each crop's tokens
to its mel frames, and :mod:`agrepa.tokenizers.timing` cuts tokens and mel to the
same time span (:func:`rate_summary` records the ratio).
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


def rate_summary(token_rate: float, cfg_audio: dict | None = None) -> dict:
    """Token rate vs the mel rate (``sample_rate / hop``): how many mel frames
    each token spans once the model interpolates tokens to the mel length."""
    from ..audio import frame_rate

    mel_rate = frame_rate(cfg_audio)
    return {"token_rate": float(token_rate), "mel_rate": mel_rate,
            "mel_frames_per_token": mel_rate / float(token_rate)}
