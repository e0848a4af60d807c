"""Token error rate (TER): re-tokenise audio with the conditioning tokenizers and compare.

Does the generated audio still carry the tokens it was conditioned on? Each stream's fitted
tokenizer (:func:`agrepa.tokenizers.load_tokenizer`) reads its teacher's frames exactly as the
workflow's ``teacher embed`` + ``tokens encode`` did (audio resampled to the teacher's rate and
peak-normalised to ``audio.peak_normalize``, as :func:`agrepa.audio.load_audio` does; the S3 ONNX
tokenizer reads 16 kHz audio): the speech stream on the semantic teacher's frames, the audio and
BEATs streams on the acoustic teacher's. The reference sequence is the clip's conditioning tokens
from the token store (Config A: the primary stream ``[N]``; Config B: the two columns of its
``[N, 2]`` rows), and the re-tokenised streams are paired on the same time grid as the store's
(:func:`agrepa.tokenizers.timing.pair_by_time`) before comparison. Per stream::

    TER = Levenshtein(ref, hyp) / len(ref)        pooled over clips: sum(edits) / sum(len(ref))

Metrics ``ter`` (the clip's primary stream: speech tokens for speech, audio tokens for audio) and,
for Config B, ``ter_beats``. The original audio against its own tokens gives 0 (the pipeline is the
one that made the tokens); the vocoded ground truth gives the floor; noise gives about 1.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..config import DOMAINS

log = logging.getLogger(__name__)
CONFIG_KEYS = ("audio.peak_normalize",)  # config sections this module reads

FEATURE_ROLE = {"speech": "semantic", "audio": "acoustic", "beats": "acoustic"}


class TokenScorer:
    """Fitted tokenizers (``speech``, ``audio`` and, for Config B, ``beats``) with their teachers."""

    def __init__(self, tokenizers: dict, teachers: dict, peak: float | None):
        from ..tokenizers.vocab import Vocab

        self.tokenizers, self.teachers, self.peak = tokenizers, teachers, peak
        self.vocab = Vocab({s: t.k for s, t in tokenizers.items()})
        for stream, tok in tokenizers.items():
            if tok.stream != stream:
                raise ValueError(f"{tok.directory}: a {tok.stream} tokenizer given as the {stream} tokenizer")
            if tok.input == "frames":
                want = (tok.conf.get("features") or {}).get("fingerprint")
                teacher = teachers[FEATURE_ROLE[stream]]
                if want and teacher.fingerprint() != want:
                    raise ValueError(f"{tok.directory}: fitted on teacher features {want[:12]}, but the "
                                     f"{FEATURE_ROLE[stream]} teacher here is {teacher.fingerprint()[:12]}")

    @property
    def interleaved(self) -> bool:
        return "beats" in self.tokenizers

    def describe(self) -> str:
        parts = [f"{s}: {t.kind} k={t.k} on {FEATURE_ROLE[s]} ({self.teachers[FEATURE_ROLE[s]].name})"
                 for s, t in self.tokenizers.items()]
        return "TER: " + "; ".join(parts)

    def _codes(self, stream: str, load, cache: dict) -> torch.Tensor:
        tok = self.tokenizers[stream]
        if tok.input == "audio":
            return tok.encode_wave(load(16000)).long()
        role = FEATURE_ROLE[stream]
        if role not in cache:
            teacher = self.teachers[role]
            w = np.ascontiguousarray(load(teacher.sample_rate), np.float32)
            cache[role] = teacher.embed(torch.from_numpy(w), teacher.sample_rate)[0]
        return tok.encode_frames(cache[role]).long()

    def _streams(self, load, domain: str) -> dict[str, np.ndarray]:
        from ..tokenizers.timing import pair_by_time

        cache: dict = {}
        primary = self._codes(domain, load, cache)
        if not self.interleaved:
            return {"primary": primary.numpy()}
        rows, _ = pair_by_time(primary, self._codes("beats", load, cache), self.tokenizers[domain].frame_rate,
                               self.tokenizers["beats"].frame_rate)
        return {"primary": rows[:, 0].numpy(), "beats": rows[:, 1].numpy()}

    def streams(self, wave: np.ndarray, sample_rate: int, domain: str) -> dict[str, np.ndarray]:
        """Local codes of a waveform's streams: ``{"primary": ...}`` (+ ``"beats"``, paired by time)."""
        from ..audio import peak_normalize, resample

        return self._streams(lambda sr: peak_normalize(resample(wave, sample_rate, sr), self.peak), domain)

    def streams_of_file(self, path: str | os.PathLike, domain: str) -> dict[str, np.ndarray]:
        """:meth:`streams` of an audio file, loaded exactly as the teacher cache loads it."""
        from ..audio import load_audio

        return self._streams(lambda sr: load_audio(path, sr, peak=self.peak), domain)

    def conditioning(self, tokens: torch.Tensor, domain: str, store_vocab) -> dict[str, np.ndarray]:
        """Local codes of a clip's stored conditioning tokens (global ids of ``store_vocab``)."""
        ids = tokens.long()
        want = 2 if self.interleaved else 1
        if ids.dim() != want or (want == 2 and ids.shape[1] != 2):
            raise ValueError(f"conditioning tokens of shape {tuple(ids.shape)}, expected "
                             f"{'[N, 2] (Config B)' if self.interleaved else '[N] (Config A)'} for these tokenizers")
        if self.interleaved:
            parts = {"primary": (domain, ids[:, 0]), "beats": ("beats", ids[:, 1])}
        else:
            parts = {"primary": (domain, ids)}
        out = {}
        for key, (stream, x) in parts.items():
            off, k = store_vocab.offsets[stream], store_vocab.sizes[stream]
            if x.numel() and (int(x.min()) < off or int(x.max()) >= off + k):
                raise ValueError(f"conditioning tokens of a {domain} clip are not all {stream} ids "
                                 f"[{off}, {off + k}) (is the token store of another token config?)")
            out[key] = (x - off).numpy()
        return out


def ter_counts(ref: dict[str, np.ndarray], hyp: dict[str, np.ndarray]) -> dict[str, tuple[int, int]]:
    """``{metric: (edits, len(ref))}`` per stream: ``ter`` (primary) and ``ter_beats``."""
    from .metrics import token_edits

    out = {}
    for key, name in (("primary", "ter"), ("beats", "ter_beats")):
        if key in ref:
            if len(ref[key]) == 0:
                raise ValueError("TER: empty reference token sequence")
            out[name] = (token_edits(ref[key], hyp[key]), len(ref[key]))
    return out


def build_token_scorer(cfg: dict, tokenizer_dirs: dict[str, str | os.PathLike], teachers: dict):
    """A :class:`TokenScorer` from fitted tokenizer directories and built teachers (by role)."""
    from ..device import cpu_threads
    from ..tokenizers.streams import load_tokenizer

    missing = [s for s in DOMAINS if s not in tokenizer_dirs]   # the primary streams are named as the domains
    if missing:
        raise ValueError(f"TER: no tokenizer directory for stream(s) {missing}")
    toks = {s: load_tokenizer(Path(d), cpu_threads()) for s, d in tokenizer_dirs.items()}
    return TokenScorer(toks, teachers, cfg["audio"]["peak_normalize"])
