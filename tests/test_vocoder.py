"""Vocoders (agrepa.generation.vocoder): Griffin-Lim inversion of the Vocos mel and Vocos loading from a directory."""
import copy

import numpy as np
import pytest
import torch

from agrepa import audio, config

from agrepa.generation import vocoder
from test_workflow_support import DEFAULT_CONFIG


def _tone(sr=24000, seconds=0.5, f=440.0):
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def test_griffinlim_resynthesis_keeps_the_spectrum_and_is_deterministic():
    cfg = config.load(DEFAULT_CONFIG)
    cfg["sample"]["griffinlim_iters"] = 16
    voc = vocoder.build_vocoder(cfg)
    wave = _tone()
    mel = audio.log_mel(wave, cfg["audio"]).T  # [T, 100]
    out = voc(mel)
    assert out.dtype == np.float32 and abs(len(out) - len(wave)) <= cfg["audio"]["hop_length"]
    assert np.array_equal(out, voc(mel))
    remel = audio.log_mel(out, cfg["audio"]).T
    n = min(len(mel), len(remel))
    # Griffin-Lim cannot recover phase exactly, but the mel of its output is close to the input mel
    err = (remel[:n] - mel[:n]).abs()[:, :40].mean()
    assert float(err) < 1.0
    # the 440 Hz bin dominates in the resynthesis as in the input
    spec = np.abs(np.fft.rfft(out))
    assert abs(np.argmax(spec) * 24000 / len(out) - 440.0) < 10.0


def test_griffinlim_rejects_bad_mel():
    voc = vocoder.GriffinLimVocoder(config.load(DEFAULT_CONFIG)["audio"], n_iter=2)
    with pytest.raises(ValueError, match=r"\[T, 100\]"):
        voc(torch.zeros(10, 80))


def test_vocos_loads_from_directory_in_the_published_layout(tmp_path):
    from vocos import Vocos

    spec = copy.deepcopy(vocoder.VOCOS_MEL_24KHZ)
    spec["backbone"]["init_args"].update(dim=32, intermediate_dim=48, num_layers=1)
    spec["head"]["init_args"]["dim"] = 32
    cfg_file = tmp_path / "spec.yaml"
    import yaml
    cfg_file.write_text(yaml.safe_dump(spec))
    torch.manual_seed(0)
    model = Vocos.from_hparams(str(cfg_file))
    vocoder.save_vocos(model, tmp_path / "vocos", spec)
    cfg = config.load(DEFAULT_CONFIG)
    cfg["sample"].update(vocoder="vocos", vocos_model=str(tmp_path / "vocos"))
    voc = vocoder.build_vocoder(cfg)
    mel = torch.randn(20, 100)
    out = voc(mel)
    with torch.no_grad():
        ref = model.eval().decode(mel.T[None])[0].numpy()
    assert out.shape == ((20 - 1) * 256,) and np.allclose(out, ref, atol=1e-6)
    # a directory without weights is a clear error naming the file
    (tmp_path / "vocos" / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        vocoder.build_vocoder(cfg)


def test_vocos_refuses_foreign_classes(tmp_path):
    spec = copy.deepcopy(vocoder.VOCOS_MEL_24KHZ)
    spec["head"]["class_path"] = "os.system"
    d = tmp_path / "evil"
    d.mkdir()
    import yaml
    (d / "config.yaml").write_text(yaml.safe_dump(spec))
    torch.save({}, d / "pytorch_model.bin")
    with pytest.raises(ValueError, match="vocos package"):
        vocoder.VocosVocoder.from_directory(d)
