"""Audio front end: loading, resampling and the Vocos log-mel spectrogram.

The mel front end is exactly the one the pretrained Vocos vocoder
(``charactr/vocos-mel-24khz``) was trained on, so mels we compute can be decoded
by it and mels a model generates are in the space Vocos expects:

* 24 kHz audio, STFT with ``n_fft = 1024``, ``hop = 256``, Hann window of 1024;
* centred frames (reflect-padded by ``n_fft // 2`` each side), so a clip of ``N``
  samples has ``T = 1 + N // hop`` frames -- 24000 / 256 = **93.75 frames per second**;
* 100 HTK mel bands from 0 Hz to Nyquist, no filter normalisation, magnitude (power 1);
* ``log(clamp(mel, 1e-7))``.

Audio at another rate (LibriSpeech: 16 kHz) is brought to 24 kHz for its mel with
``audio.resample`` (the authors' Kaiser-windowed sinc, width 6, rolloff 0.99).

All numbers come from the ``audio:`` section of the config.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import soundfile as sf
import torch
import torchaudio

def resample(wave: np.ndarray | torch.Tensor, orig_sr: int, new_sr: int,
             resampler: dict | None = None) -> np.ndarray:
    """Band-limited (windowed-sinc) resampling along the last axis, float32 out.

    ``resampler``: ``{method, lowpass_filter_width, rolloff}`` for
    ``torchaudio.functional.resample`` (``audio.resample``, the mel path); None:
    torchaudio's default (Hann window, width 6, rolloff 0.99).
    """
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    if int(orig_sr) != int(new_sr):
        kw = {} if resampler is None else {"resampling_method": str(resampler["method"]),
                                           "lowpass_filter_width": int(resampler["lowpass_filter_width"]),
                                           "rolloff": float(resampler["rolloff"])}
        # oneDNN off: it caches one convolution primitive per input length, and a corpus of clips of
        # every length grew a mels job's memory by ~100 MiB over 1.3 k clips (the native kernel is
        # as fast here and bitwise equal; docs/architecture.md, "Memory of the per-clip stages")
        with torch.backends.mkldnn.flags(enabled=False):
            x = torchaudio.functional.resample(x, int(orig_sr), int(new_sr), **kw)
    return x.numpy().astype(np.float32, copy=False)


def peak_normalize(wave: np.ndarray, peak: float | None) -> np.ndarray:
    """Scale so that ``max |wave| == peak`` (no-op for silence or ``peak=None``)."""
    if peak is None:
        return wave
    top = float(np.max(np.abs(wave))) if wave.size else 0.0
    if top <= 0.0:
        return wave
    return (wave * (peak / top)).astype(np.float32, copy=False)


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a file with soundfile as float32 ``[frames, channels]`` and its sample rate.

    Raises ``ValueError("<path>: ...")`` if the file cannot be decoded.
    """
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: audio file not found") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: audio file not found") from None
        raise ValueError(f"{path}: unreadable or corrupt audio ({err})") from None
    return data, int(sr)


def load_audio(path: str | os.PathLike, sample_rate: int = 24000,
               peak: float | None = 0.95, resampler: dict | None = None) -> np.ndarray:
    """Load a wav/flac/ogg file as mono float32 ``[N]`` at ``sample_rate``.

    Channels are averaged, the signal is resampled with
    ``torchaudio.functional.resample`` (``resampler``, see :func:`resample`) and
    peak-normalised to ``peak``
    (the config's ``audio.peak_normalize``; ``None`` keeps the level).
    Raises ``ValueError("<path>: ...")`` for unreadable/corrupt files, empty
    files and files with NaN/inf samples; ``FileNotFoundError`` if it is absent.
    """
    data, sr = read_audio(path)
    if data.shape[0] == 0:
        raise ValueError(f"{path}: empty audio file (zero samples)")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{path}: audio contains NaN or infinite samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    mono = resample(mono, sr, sample_rate, resampler)
    return peak_normalize(mono, peak)


def write_wav(path: str | os.PathLike, wave: np.ndarray, sample_rate: int,
              subtype: str = "PCM_16") -> None:
    """Write mono audio atomically as a WAV file (values clipped to [-1, 1])."""
    from . import io

    wave = np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0)
    with io.atomic_path(path) as tmp:
        sf.write(str(tmp), wave, int(sample_rate), subtype=subtype, format="WAV")


@functools.lru_cache(maxsize=8)
def _mel_transform(sample_rate: int, n_fft: int, hop_length: int, win_length: int,
                   n_mels: int, power: float, center: bool,
                   device: str) -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, win_length=win_length,
        n_mels=n_mels, power=power, center=center).to(device)


def log_mel(wave: torch.Tensor | np.ndarray, cfg_audio: dict) -> torch.Tensor:
    """Log-mel spectrogram ``[..., n_mels, T]`` of ``wave [..., N]`` (Vocos front end).

    ``mel = MelFilterbank(|STFT(wave)|^power)``, ``out = log(clamp(mel, log_clamp))``,
    with the STFT centred so ``T = frames_for(N)``. ``wave`` must already be at
    ``audio.sample_rate``.
    """
    c = cfg_audio
    x = torch.as_tensor(wave, dtype=torch.float32)
    mel = _mel_transform(int(c["sample_rate"]), int(c["n_fft"]), int(c["hop_length"]),
                         int(c["win_length"]), int(c["n_mels"]), float(c["power"]),
                         bool(c["center"]), str(x.device))(x)
    return torch.log(torch.clamp(mel, min=float(c["log_clamp"])))


def frames_for(n_samples: int, cfg_audio: dict) -> int:
    """Number of mel frames :func:`log_mel` gives for ``n_samples`` samples.

    Centred: ``1 + N // hop`` (93.75 frames/s at 24 kHz, hop 256);
    not centred: ``1 + (N - n_fft) // hop``.
    """
    c = cfg_audio
    hop, n_fft = int(c["hop_length"]), int(c["n_fft"])
    if bool(c["center"]):
        return 1 + int(n_samples) // hop
    return max(0, 1 + (int(n_samples) - n_fft) // hop)


def frame_rate(cfg_audio: dict) -> float:
    """Mel frames per second: ``sample_rate / hop_length`` (93.75 for Vocos)."""
    c = cfg_audio
    return float(c["sample_rate"]) / float(c["hop_length"])
