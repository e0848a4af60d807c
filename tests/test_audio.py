"""agrepa.audio: the Vocos log-mel front end, frame counts and audio loading."""
import numpy as np
import pytest
import soundfile as sf
import torch

from agrepa import audio, config
from test_workflow_support import DEFAULT_CONFIG


def test_log_mel_matches_vocos_feature_extractor():
    from vocos.feature_extractors import MelSpectrogramFeatures

    torch.manual_seed(0)
    wave = torch.rand(2, 24000 + 1234) * 2 - 1
    cfg_audio = config.load(DEFAULT_CONFIG)["audio"]
    ours = audio.log_mel(wave, cfg_audio)
    theirs = MelSpectrogramFeatures(sample_rate=24000, n_fft=1024, hop_length=256, n_mels=100,
                                    padding="center")(wave)
    assert ours.shape == theirs.shape == (2, 100, audio.frames_for(wave.shape[-1], cfg_audio))
    assert (ours - theirs).abs().max().item() < 1e-4
    # silence hits the clamp exactly as Vocos's safe_log does
    quiet = audio.log_mel(torch.zeros(4096), config.load(DEFAULT_CONFIG)["audio"])
    assert torch.allclose(quiet, torch.full_like(quiet, float(np.log(1e-7))))


def test_frames_for_and_frame_rate():
    cfg = config.load(DEFAULT_CONFIG)["audio"]
    assert audio.frame_rate(cfg) == 93.75
    for n in (600, 1024, 1280, 24000, 48001):  # reflect padding needs n > n_fft / 2
        assert audio.frames_for(n, cfg) == audio.log_mel(torch.randn(n), cfg).shape[-1]
    assert audio.frames_for(24000, cfg) == 1 + 24000 // 256
    assert audio.frames_for(24000, {**cfg, "center": False}) == 1 + (24000 - 1024) // 256


def test_load_audio_mixes_resamples_and_normalises(tmp_path):
    sr = 48000
    t = np.arange(sr) / sr
    left = 0.2 * np.sin(2 * np.pi * 440 * t)
    right = 0.1 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], 1), sr)
    wave = audio.load_audio(path, 24000, peak=0.95)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert wave.shape[0] == 24000
    assert abs(float(np.abs(wave).max()) - 0.95) < 1e-6
    # the 440 Hz tone survives resampling: its FFT peak is at 440 Hz
    spec = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spec) * 24000 / len(wave) - 440) <= 1.0
    raw = audio.load_audio(path, 48000, peak=None)
    assert np.allclose(raw, (left + right) / 2, atol=1e-4)  # mono = channel mean


def test_load_audio_bad_files_name_the_path(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio")
    with pytest.raises(ValueError, match=r"notes\.wav: unreadable or corrupt"):
        audio.load_audio(bad)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        audio.load_audio(tmp_path / "missing.wav")
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(1000, np.nan, dtype=np.float32), 24000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"nan\.wav: .*NaN"):
        audio.load_audio(nan)


def test_mel_path_resampler_is_the_authors_kaiser_sinc():
    """audio.resample (Kaiser window, width 6, rolloff 0.99) is what the mel path uses; it is not
    torchaudio's default Hann window, and it changes the top mel bands of 16 kHz speech."""
    import torchaudio

    cfg = config.load(DEFAULT_CONFIG)["audio"]
    assert cfg["resample"] == {"method": "sinc_interp_kaiser", "lowpass_filter_width": 6, "rolloff": 0.99}
    rng = np.random.default_rng(0)
    x = rng.standard_normal(16000).astype(np.float32) * 0.1
    got = audio.resample(x, 16000, 24000, cfg["resample"])
    ref = torchaudio.functional.resample(torch.from_numpy(x), 16000, 24000, resampling_method="sinc_interp_kaiser",
                                         lowpass_filter_width=6, rolloff=0.99).numpy()
    assert np.array_equal(got, ref)
    hann = audio.resample(x, 16000, 24000)
    assert not np.allclose(got, hann, atol=1e-4)
    top = lambda w: audio.log_mel(torch.from_numpy(w), cfg)[80:].mean()   # bands above ~8.5 kHz
    assert abs(float(top(got) - top(hann))) > 0.1
