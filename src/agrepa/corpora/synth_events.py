"""Procedurally synthesised sound events: the embedded stand-in for AudioSet.

Each class is a small generator ``f(rng, sample_rate, n_samples) -> (wave, words)``
with randomised parameters (frequencies, rates, bandwidths, decay times); ``words``
is a short descriptive phrase used in the caption (e.g. "a high rising chirp").
Every event gets 5 ms raised-cosine fades so no class is identifiable by a click
at its edges. Two-event mixtures add a second event of another class at a random
offset and relative level.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import signal

Event = Callable[[np.random.Generator, int, int], tuple[np.ndarray, str]]


def _t(n: int, sr: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) / sr


def _fade(x: np.ndarray, sr: int, seconds: float = 0.005) -> np.ndarray:
    k = min(len(x) // 2, int(seconds * sr))
    if k > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, k))
        x[:k] *= ramp
        x[-k:] *= ramp[::-1]
    return x


def _height(f: float) -> str:
    return "low" if f < 400 else ("high" if f > 1500 else "mid-pitched")


def _bandpass(x: np.ndarray, sr: int, lo: float, hi: float, order: int = 4) -> np.ndarray:
    hi = min(hi, 0.45 * sr)
    lo = min(max(lo, 20.0), hi * 0.8)
    sos = signal.butter(order, [lo, hi], btype="bandpass", fs=sr, output="sos")
    return signal.sosfilt(sos, x)


def tone_burst(rng, sr, n):
    """Repeated sine beeps: frequency f, beep length and gap drawn at random."""
    f = float(rng.uniform(300, 3000))
    beep, gap = float(rng.uniform(0.05, 0.25)), float(rng.uniform(0.05, 0.3))
    t = _t(n, sr)
    on = (np.mod(t, beep + gap) < beep).astype(np.float64)
    env = signal.lfilter([0.02], [1, -0.98], on)  # smoothed gate, no clicks
    return np.sin(2 * np.pi * f * t) * env / max(env.max(), 1e-9), f"{_height(f)} beeping tone bursts"


def _chirp(rng, sr, n, up: bool):
    f0, f1 = float(rng.uniform(150, 800)), float(rng.uniform(2000, 7000))
    if not up:
        f0, f1 = f1, f0
    t = _t(n, sr)
    x = signal.chirp(t, f0=f0, t1=t[-1] if n > 1 else 1.0, f1=f1, method="logarithmic")
    return x


def chirp_up(rng, sr, n):
    """Logarithmic sweep from a low (150-800 Hz) to a high (2-7 kHz) frequency."""
    return _chirp(rng, sr, n, up=True), "a rising chirp"


def chirp_down(rng, sr, n):
    """Logarithmic sweep from a high (2-7 kHz) to a low (150-800 Hz) frequency."""
    return _chirp(rng, sr, n, up=False), "a falling chirp"


def noise_burst(rng, sr, n):
    """Band-pass filtered white noise with an attack-decay envelope."""
    centre = float(rng.uniform(300, 6000))
    width = float(rng.uniform(0.3, 1.0)) * centre
    x = _bandpass(rng.standard_normal(n), sr, centre - width / 2, centre + width / 2)
    t = _t(n, sr)
    attack = float(rng.uniform(0.01, 0.2))
    env = np.minimum(t / attack, 1.0) * np.exp(-t / float(rng.uniform(0.3, 2.0)))
    return x * env, f"a {_height(centre)} burst of noise"


def click_train(rng, sr, n):
    """Periodic clicks (5-40 per second) of short filtered impulses."""
    rate = float(rng.uniform(5, 40))
    x = np.zeros(n)
    x[(np.arange(0, n / sr, 1.0 / rate) * sr).astype(int)] = 1.0
    x = _bandpass(x, sr, 1000, float(rng.uniform(4000, 10000)), order=2)
    return x, ("a fast" if rate > 20 else "a slow") + " train of clicks"


def am_tone(rng, sr, n):
    """Sine carrier with sinusoidal amplitude modulation (2-12 Hz, depth 0.5-1)."""
    fc, fm, depth = float(rng.uniform(200, 2500)), float(rng.uniform(2, 12)), float(rng.uniform(0.5, 1.0))
    t = _t(n, sr)
    x = (1 - depth / 2 + depth / 2 * np.sin(2 * np.pi * fm * t)) * np.sin(2 * np.pi * fc * t)
    return x, f"a {_height(fc)} pulsating tone"


def fm_tone(rng, sr, n):
    """Sine carrier with frequency modulation: vibrato rate 3-10 Hz, depth 2-15 % of fc."""
    fc, fm = float(rng.uniform(300, 2500)), float(rng.uniform(3, 10))
    dev = float(rng.uniform(0.02, 0.15)) * fc
    t = _t(n, sr)
    x = np.sin(2 * np.pi * fc * t + (dev / fm) * np.sin(2 * np.pi * fm * t))
    return x, f"a {_height(fc)} warbling tone"


def harmonic_stack(rng, sr, n):
    """A sustained harmonic tone: f0 80-500 Hz, 4-12 harmonics with 1/k^p roll-off."""
    f0, k_max, p = float(rng.uniform(80, 500)), int(rng.integers(4, 13)), float(rng.uniform(0.5, 1.5))
    t = _t(n, sr)
    x = np.zeros(n)
    for k in range(1, k_max + 1):
        if k * f0 < 0.45 * sr:
            x += np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k ** p
    env = np.minimum(t / 0.05, 1.0)
    return x * env, f"a {_height(f0)} humming harmonic tone"


def rain(rng, sr, n):
    """Rain-like texture: a Poisson shower of tiny decaying droplets over soft band noise."""
    density = float(rng.uniform(20, 200))  # drops per second
    drops = np.zeros(n)
    n_drops = rng.poisson(density * n / sr)
    drops[rng.integers(0, n, size=n_drops)] = rng.uniform(0.2, 1.0, size=n_drops)
    drop_len = int(0.004 * sr)
    kernel = np.exp(-np.arange(drop_len) / (0.001 * sr)) * rng.standard_normal(drop_len)
    x = np.convolve(drops, kernel)[:n]
    x = _bandpass(x, sr, 800, 9000, order=2) + 0.1 * _bandpass(rng.standard_normal(n), sr, 500, 6000)
    return x, ("heavy" if density > 100 else "light") + " rain"


def impact(rng, sr, n):
    """Struck object: a noise transient plus 2-4 exponentially decaying modes (60-1200 Hz)."""
    t = _t(n, sr)
    n_hits = int(rng.integers(1, 4))
    x = np.zeros(n)
    for _ in range(n_hits):
        start = int(rng.uniform(0, 0.6) * n)
        tt = t[: n - start]
        hit = np.zeros(n - start)
        for _m in range(int(rng.integers(2, 5))):
            f, tau = float(rng.uniform(60, 1200)), float(rng.uniform(0.05, 0.6))
            hit += np.sin(2 * np.pi * f * tt) * np.exp(-tt / tau) * rng.uniform(0.3, 1.0)
        hit += rng.standard_normal(len(tt)) * np.exp(-tt / 0.005)
        x[start:] += hit
    return x, ("a single impact" if n_hits == 1 else "repeated impacts")


#: class label -> generator; label names are what goes into the manifest.
EVENTS: dict[str, Event] = {
    "tone burst": tone_burst, "chirp up": chirp_up, "chirp down": chirp_down,
    "noise burst": noise_burst, "click train": click_train, "am tone": am_tone,
    "fm tone": fm_tone, "harmonic stack": harmonic_stack, "rain": rain, "impact": impact,
}


def render(label: str, rng: np.random.Generator, sample_rate: int, n_samples: int) -> tuple[np.ndarray, str]:
    """One event of class ``label``: unit-peak float32 ``[n_samples]`` and its caption phrase."""
    try:
        fn = EVENTS[label]
    except KeyError:
        raise KeyError(f"data.synth.audio.classes: unknown event class {label!r} "
                       f"(known: {', '.join(EVENTS)})") from None
    x, words = fn(rng, sample_rate, n_samples)
    x = _fade(np.asarray(x, dtype=np.float64).copy(), sample_rate)
    peak = np.max(np.abs(x))
    if peak > 0:
        x = x / peak
    return x.astype(np.float32), words


def mix(first: np.ndarray, second: np.ndarray, gain: float, offset: int) -> np.ndarray:
    """``first`` with ``gain x second`` added from sample ``offset`` on (clipped to first's length)."""
    out = first.astype(np.float64).copy()
    seg = second[: max(0, len(out) - offset)]
    out[offset: offset + len(seg)] += gain * seg
    peak = np.max(np.abs(out))
    return (out / peak if peak > 0 else out).astype(np.float32)
