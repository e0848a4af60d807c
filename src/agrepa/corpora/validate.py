"""Bad-input checks shared by every loader: data preparation never dies on one bad file.

:func:`check_audio_file` decides whether a file may enter a manifest. A file is
rejected (with the reason that goes to ``rejects.csv``) when it is

* missing, unreadable or corrupt (a text file named ``.wav``, a truncated flac);
* empty (zero samples) or shorter than ``audio.min_seconds``;
* at a sample rate below ``audio.min_sample_rate`` (default 16 kHz: an 8 kHz
  telephone-band file cannot supply the 24 kHz target's upper band, so it is
  rejected with "sample rate 8000 Hz below the minimum 16000 Hz") or above
  ``audio.max_sample_rate`` (192 kHz);
* with more than ``audio.max_channels`` channels (mono/stereo are mixed to mono);
* containing NaN or infinite samples;
* silent: peak below ``audio.silence_peak``.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

_DEFAULTS = {"min_seconds": 0.5, "silence_peak": 1.0e-4, "min_sample_rate": 16000,
             "max_sample_rate": 192000, "max_channels": 2}


def _limits(cfg_audio: dict | None) -> dict:
    cfg_audio = cfg_audio or {}
    if "audio" in cfg_audio and isinstance(cfg_audio["audio"], dict):
        cfg_audio = cfg_audio["audio"]
    return {k: cfg_audio.get(k, v) for k, v in _DEFAULTS.items()}


def check_waveform(wave: np.ndarray, sample_rate: int, cfg_audio: dict | None) -> str | None:
    """The reason a decoded signal ``[frames]`` or ``[frames, channels]`` is bad, or None."""
    lim = _limits(cfg_audio)
    wave = np.asarray(wave)
    n = wave.shape[0]
    if n == 0:
        return "empty (zero-length audio)"
    if not np.all(np.isfinite(wave)):
        return "contains NaN or infinite samples"
    dur = n / float(sample_rate)
    if dur < float(lim["min_seconds"]):
        return f"too short ({dur:.3f} s < minimum {float(lim['min_seconds']):g} s)"
    peak = float(np.max(np.abs(wave)))
    if peak < float(lim["silence_peak"]):
        return f"silent (peak {peak:.3g} below {float(lim['silence_peak']):g})"
    return None


def check_audio_file(path: str | os.PathLike, cfg_audio: dict | None) -> tuple[bool, str, dict[str, Any]]:
    """Inspect and decode one file. Returns ``(ok, reason, info)``.

    ``reason`` is "" when ok; ``info`` has whatever could be learnt:
    ``sample_rate``, ``channels``, ``frames``, ``duration`` (s), ``peak``, ``format``.
    """
    lim = _limits(cfg_audio)
    path = Path(path)
    info: dict[str, Any] = {}
    if not path.exists():
        return False, "file not found", info
    if path.stat().st_size == 0:
        return False, "empty file (zero bytes)", info
    try:
        meta = sf.info(str(path))
    except Exception as err:  # libsndfile raises several types for garbage input
        return False, f"unreadable or corrupt audio ({_short(err)})", info
    info.update(sample_rate=int(meta.samplerate), channels=int(meta.channels),
                frames=int(meta.frames), format=str(meta.format))
    info["duration"] = info["frames"] / info["sample_rate"] if info["sample_rate"] > 0 else 0.0
    if info["frames"] <= 0:
        return False, "empty (zero-length audio)", info
    if info["sample_rate"] < int(lim["min_sample_rate"]):
        return False, (f"sample rate {info['sample_rate']} Hz below the minimum "
                       f"{int(lim['min_sample_rate'])} Hz"), info
    if info["sample_rate"] > int(lim["max_sample_rate"]):
        return False, (f"sample rate {info['sample_rate']} Hz above the maximum "
                       f"{int(lim['max_sample_rate'])} Hz"), info
    if info["channels"] > int(lim["max_channels"]):
        return False, f"{info['channels']} channels (at most {int(lim['max_channels'])} allowed)", info
    try:
        data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        return False, f"corrupt audio, decoding failed ({_short(err)})", info
    if data.shape[0] < info["frames"]:
        return False, f"truncated (decoded {data.shape[0]} of {info['frames']} frames)", info
    info["peak"] = float(np.max(np.abs(data))) if data.size and np.all(np.isfinite(data)) else float("nan")
    reason = check_waveform(data, info["sample_rate"], lim)
    if reason:
        return False, reason, info
    return True, "", info


def _short(err: Exception) -> str:
    text = str(err).strip().replace("\n", " ")
    return text[:200] if text else type(err).__name__


def summarize(rejects: Iterable, n_ok: int, what: str) -> dict[str, int]:
    """Log how many files were kept and rejected (by reason kind); return the counts."""
    rejects = list(rejects)
    kinds = Counter(_reason_kind(r[1] if not isinstance(r, dict) else r["reason"]) for r in rejects)
    log.info("%s: %d kept, %d rejected%s", what, n_ok, len(rejects),
             "" if not kinds else " (" + ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) + ")")
    return {"kept": int(n_ok), "rejected": len(rejects), **{f"rejected: {k}": v for k, v in kinds.items()}}


def _reason_kind(reason: str) -> str:
    """The leading words of a reason, without the numbers (for counting)."""
    head = reason.split("(")[0]
    return " ".join(w for w in head.split() if not any(ch.isdigit() for ch in w)).strip() or reason
