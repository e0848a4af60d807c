"""agrepa data mels: the log-mel store and its train-split statistics."""
import logging
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from agrepa import audio, cli, config, io
from agrepa.corpora import manifest as mf
from agrepa.corpora.mels import load_stats
from agrepa.store import Store, StoreWriter
from test_workflow_support import DEFAULT_CONFIG


def _corpus(tmp_path):
    """Train clips: white noise; valid/test clips: loud low tones (very different spectra)."""
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(["train", "train", "train", "valid", "test", "test"]):
        sr = 24000 if i % 2 == 0 else 16000  # also exercises resampling
        n = int(sr * (0.6 + 0.1 * i))
        if split == "train":
            x = 0.2 * rng.standard_normal(n)
        else:
            x = 0.9 * np.sin(2 * np.pi * 150 * np.arange(n) / sr)
        sf.write(tmp_path / f"c{i}.wav", x, sr)
        rows.append({"id": f"c{i}", "path": f"c{i}.wav", "duration": n / sr, "sample_rate": sr,
                     "domain": "audio", "split": split, "labels": "x", "caption": "x"})
    return mf.write_manifest(mf.make_manifest(rows), tmp_path / "manifest.csv")


def test_mel_store_and_train_only_stats(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    man = _corpus(tmp_path)
    out = tmp_path / "mels"
    assert cli.main(["data", "mels", "--config", str(DEFAULT_CONFIG), "--manifest", str(man), "--out", str(out)]) == 0
    assert re.search(r"throughput: mels: \d+ clips in [\d.]+ s = [\d.]+ clips/s", caplog.text)   # the job's rate
    cfg = config.load(DEFAULT_CONFIG)
    store = Store(out / "index.json")
    assert sorted(store.keys()) == [f"c{i}" for i in range(6)]
    mels = {}
    for row in mf.read_manifest(man).itertuples():
        wave = audio.load_audio(tmp_path / row.path, 24000, peak=cfg["audio"]["peak_normalize"],
                                resampler=cfg["audio"]["resample"])
        expected = audio.log_mel(torch.from_numpy(wave), cfg["audio"]).T
        got = store.get(row.id)["mel"]
        assert got.dtype == torch.float32 and got.shape == (audio.frames_for(len(wave), cfg["audio"]), 100)
        assert torch.allclose(got, expected)
        mels[row.id] = (row.split, got.double())
    train = torch.cat([m for s, m in mels.values() if s == "train"])
    every = torch.cat([m for _, m in mels.values()])
    mean, std = load_stats(out)   # the default: global scalars, as the authors' mel_mean / mel_std
    assert mean.shape == std.shape == (100,) and mean.dtype == torch.float32
    assert store.meta["stats"]["normalization"] == "global"
    assert torch.allclose(mean.double(), train.mean().expand(100), atol=1e-4)
    assert torch.allclose(std.double(), train.std(unbiased=False).expand(100), atol=1e-4)
    assert abs(float(mean[0]) - float(every.mean())) > 1e-3  # valid/test did not leak in
    per_bin = tmp_path / "mels_per_bin"
    assert cli.main(["data", "mels", "--config", str(DEFAULT_CONFIG), "--manifest", str(man), "--out", str(per_bin),
                     "--set", "data.mels.normalization=per_bin"]) == 0
    mean, std = load_stats(per_bin)
    assert torch.allclose(mean.double(), train.mean(0), atol=1e-4)
    assert torch.allclose(std.double(), train.std(0, unbiased=False).clamp_min(1e-3), atol=1e-4)
    assert not torch.allclose(mean.double(), every.mean(0), atol=1e-2)  # valid/test did not leak in
    meta = store.meta
    assert meta["manifest_sha256"] == io.sha256_file(man)
    assert meta["audio"]["n_mels"] == 100 and meta["frame_rate"] == 93.75
    assert meta["stats"]["n_clips"] == 3 and meta["stats"]["n_frames"] == train.shape[0]


def test_mel_errors(tmp_path, capsys):
    man = _corpus(tmp_path)
    df = mf.read_manifest(man)
    mf.write_manifest(df.assign(split="test"), tmp_path / "no_train.csv")
    assert cli.main(["data", "mels", "--config", str(DEFAULT_CONFIG), "--manifest", str(tmp_path / "no_train.csv"), "--out", str(tmp_path / "m")]) == 2
    assert "no_train.csv: no train clips" in capsys.readouterr().err
    (tmp_path / "c4.wav").write_text("gone bad")
    assert cli.main(["data", "mels", "--config", str(DEFAULT_CONFIG), "--manifest", str(man), "--out", str(tmp_path / "m")]) == 2
    assert "c4.wav: unreadable or corrupt audio" in capsys.readouterr().err
    assert not (tmp_path / "m" / "index.json").exists()  # nothing that looks complete
    w = StoreWriter(tmp_path / "other")
    w.add("a", {"x": torch.zeros(2)})
    w.close()
    with pytest.raises(KeyError, match="no stats.mean"):
        load_stats(tmp_path / "other")
