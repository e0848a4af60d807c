"""Synthetic speech with espeak-ng, driven in-process through ctypes.

The ``espeakng-loader`` wheel ships ``libespeak-ng`` and its voice data; we load
the library with :mod:`ctypes`, initialise it in synchronous mode
(``AUDIO_OUTPUT_SYNCHRONOUS``) and collect the 16-bit samples its synth callback
hands us -- no subprocess, no system package. espeak-ng's internal random
generator (used for voicing jitter) is re-seeded before every utterance so the
samples depend only on (text, voice, pitch, rate, seed) -- *in a fresh process*:
espeak-ng also keeps state in C statics that no API call resets (the pitch-flutter
phase and gain control in wavegen), so in one process the same call gives slightly
different samples the second time. :mod:`agrepa.corpora.synth` therefore speaks
every utterance in its own freshly forked worker.

A "speaker" is one combination of an espeak-ng language voice (``en-us``, ``en``),
a voice variant (``m1`` ... ``f5``: timbre, formants, base pitch), a pitch offset
(``espeakPITCH``) and a speaking rate (``espeakRATE``, words per minute).
"""
from __future__ import annotations

import ctypes
import itertools
import logging
import os
import threading
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger(__name__)

# espeak_AUDIO_OUTPUT / espeak_PARAMETER / flags, from speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_RATE = 1
ESPEAK_PITCH = 3
ESPEAK_CHARS_UTF8 = 1
POS_CHARACTER = 1
INITIALIZE_DONT_EXIT = 0x8000
EE_OK = 0


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an espeak-ng voice name plus pitch and rate."""

    id: str
    voice: str      # language voice, e.g. "en-us"
    variant: str    # voice variant, e.g. "f3"
    pitch: int      # espeakPITCH, 0-100
    rate: int       # espeakRATE, words per minute

    @property
    def voice_name(self) -> str:
        return f"{self.voice}+{self.variant}"

    def to_dict(self) -> dict:
        return asdict(self)


def make_speakers(n: int, cfg_speech: dict, rng: np.random.Generator) -> list[Speaker]:
    """``n`` distinct speakers drawn without repetition from voices x variants x pitches x rates.

    Variants are cycled first so that the speakers differ in timbre before they
    differ in pitch or rate.
    """
    voices, variants = list(cfg_speech["voices"]), list(cfg_speech["variants"])
    pitches, rates = list(cfg_speech["pitches"]), list(cfg_speech["rates"])
    combos = list(itertools.product(voices, pitches, rates))
    total = len(variants) * len(combos)
    if n > total:
        raise ValueError(f"data.synth.speech.n_speakers: {n} speakers asked for but only {total} "
                         "voice x variant x pitch x rate combinations are configured")
    var_order = [variants[int(i)] for i in rng.permutation(len(variants))]
    combo_order = [combos[int(i)] for i in rng.permutation(len(combos))]
    speakers = []
    for k in range(n):
        variant = var_order[k % len(var_order)]
        voice, pitch, rate = combo_order[(k // len(var_order) + k) % len(combo_order)]
        speakers.append(Speaker(f"spk{k:02d}", voice, variant, int(pitch), int(rate)))
    if len({(s.voice, s.variant, s.pitch, s.rate) for s in speakers}) != n:
        # fall back to a plain walk of the product (only for odd configs)
        all_combos = [(v, var, p, r) for var in var_order for (v, p, r) in combo_order]
        speakers = [Speaker(f"spk{k:02d}", *all_combos[k]) for k in range(n)]
    return speakers


class Espeak:
    """The espeak-ng library in synchronous mode (one per process; thread-locked)."""

    _instance: "Espeak | None" = None
    _lock = threading.Lock()

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as err:  # pragma: no cover - a dependency of the package
            raise RuntimeError("the espeakng-loader wheel is required for synthetic speech") from err
        lib_path, data_path = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as err:
            raise FileNotFoundError(f"{lib_path}: cannot load libespeak-ng ({err})") from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        sr = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), INITIALIZE_DONT_EXIT)
        if sr <= 0:
            raise RuntimeError(f"{data_path}: espeak_Initialize failed (returned {sr})")
        self.lib, self.sample_rate = lib, int(sr)
        self.spoke_in_pid: int | None = None  # the process that last synthesised (state owner)
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short),
                                         ctypes.c_int, ctypes.c_void_p)
        self._callback = callback_type(self._on_samples)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def get(cls) -> "Espeak":
        with cls._lock:
            if cls._instance is None:
                cls._instance = Espeak()
            return cls._instance

    def _on_samples(self, wav, n, events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0: continue synthesis

    def synth(self, text: str, speaker: Speaker, seed: int = 0) -> np.ndarray:
        """Speak ``text``; float32 samples in [-1, 1] at :attr:`sample_rate` (22050 Hz)."""
        with self._lock:
            rc = self.lib.espeak_SetVoiceByName(speaker.voice_name.encode())
            if rc != EE_OK:
                raise ValueError(f"data.synth.speech: espeak-ng has no voice {speaker.voice_name!r} "
                                 f"(error {rc})")
            self.lib.espeak_SetParameter(ESPEAK_RATE, int(speaker.rate), 0)
            self.lib.espeak_SetParameter(ESPEAK_PITCH, int(speaker.pitch), 0)
            self.lib.espeak_ng_SetRandSeed(int(seed))
            if self.spoke_in_pid is not None and self.spoke_in_pid != os.getpid():
                log.warning("espeak-ng state was inherited from process %d, which had already "
                            "spoken: samples will not be byte-reproducible", self.spoke_in_pid)
            self.spoke_in_pid = os.getpid()
            self._chunks = []
            data = text.encode("utf-8")
            rc = self.lib.espeak_Synth(data, len(data) + 1, 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8,
                                       None, None)
            if rc != EE_OK:
                raise RuntimeError(f"espeak_Synth failed with error {rc} for text {text!r}")
            chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return (np.concatenate(chunks).astype(np.float32) / 32768.0)


def trim_silence(wave: np.ndarray, sample_rate: int, threshold: float, margin_s: float) -> np.ndarray:
    """Cut leading/trailing samples below ``threshold x peak``, keeping ``margin_s`` seconds."""
    if wave.size == 0:
        return wave
    peak = float(np.max(np.abs(wave)))
    if peak <= 0:
        return wave[:0]
    loud = np.flatnonzero(np.abs(wave) >= threshold * peak)
    margin = int(round(margin_s * sample_rate))
    start = max(0, int(loud[0]) - margin)
    end = min(wave.size, int(loud[-1]) + 1 + margin)
    return wave[start:end]


def speak_utterance(job) -> tuple[str | None, np.ndarray | None, int]:
    """Worker: a sentence that lasts min..max seconds once trimmed, and its samples.

    ``job = (seed, stream, index, attempt, speaker, cfg)`` with ``cfg`` holding
    ``min_seconds, max_seconds, min_words, max_words, max_tries, trim_threshold,
    trim_margin``. Draws a target length, makes a sentence and speaks it; too
    short -> +2 words, too long -> -3 words, up to ``max_tries`` sentences, all
    from ``default_rng([seed, stream, index, attempt])``. Returns ``(text,
    samples at espeak's rate, espeak's rate)`` or ``(None, None, 0)``.
    """
    from .sentences import make_sentence

    seed, stream, index, attempt, speaker, sc = job
    engine = Espeak.get()
    rng = np.random.default_rng([seed, stream, index, attempt])
    lo, hi = float(sc["min_seconds"]), float(sc["max_seconds"])
    min_words, max_words = int(sc["min_words"]), int(sc["max_words"])
    target = int(rng.integers(min_words, max_words + 1))
    for _ in range(int(sc["max_tries"])):
        text = make_sentence(rng, target)
        raw = engine.synth(text, speaker, seed=int(rng.integers(1, 2**31 - 1)))
        raw = trim_silence(raw, engine.sample_rate, float(sc["trim_threshold"]), float(sc["trim_margin"]))
        dur = raw.size / engine.sample_rate
        if dur < lo:
            target = min(max_words + 8, target + 2)
        elif dur > hi:
            target = max(3, target - 3)
        else:
            return text, raw, engine.sample_rate
    return None, None, 0


def speak_text(job) -> tuple[np.ndarray, int]:
    """Worker: ``(text, speaker, seed)`` -> (samples at espeak's rate, espeak's rate)."""
    text, speaker, seed = job
    engine = Espeak.get()
    return engine.synth(text, speaker, seed=int(seed)), engine.sample_rate
