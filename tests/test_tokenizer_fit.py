"""Tokenizer fits at scale (issue 23 item 5): RepCodec trains on a bounded, seeded sample of windows of
the configured length, read clip by clip; k-means samples frames the same way."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from agrepa import config as C
from agrepa.corpora.manifest import make_manifest, write_manifest
from agrepa.store import Store, StoreWriter
from agrepa.tokenizers import repcodec as R
from agrepa.tokenizers.kmeans import sample_frames
from agrepa.tokenizers.streams import fit_stream
from test_workflow_support import DEFAULT_CONFIG

torch.set_num_threads(1)

WINDOW, GRAN, DIM = 16, 4, 6
LENGTHS = [5, 9, 16, 23, 40, 64, 7, 33]     # frames per audio train clip: shorter and longer than WINDOW


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An acoustic store (granularity 4) whose audio train clips are shorter and longer than the window."""
    root = tmp_path_factory.mktemp("fit")
    gen = torch.Generator().manual_seed(0)
    rows = []
    w = StoreWriter(root / "acoustic", meta={"role": "acoustic", "teacher": "synthetic", "fingerprint": "fp",
                                             "frame_rate": 50.0, "granularity": GRAN, "dim": DIM})
    for i, n in enumerate(LENGTHS):
        cid = f"audio{i}"
        rows.append({"id": cid, "path": f"{cid}.wav", "duration": n / 50, "sample_rate": 24000,
                     "domain": "audio", "split": "train", "labels": "x"})
        f = torch.randn(n, DIM, generator=gen) * 2
        w.add(cid, {"frames": f, "pooled": f.mean(0)})
    w.close()
    write_manifest(make_manifest(rows), root / "manifest.csv")
    return root


def cfg(**audio) -> dict:
    sets = {"k": 8, "dim": 8, "hidden": 16, "steps": 6, "batch_size": 4, "window": WINDOW, "fit_windows": 12,
            "restart_every": 3, **audio}
    return C.load(DEFAULT_CONFIG, [f"tokens.audio.{k}={v}" for k, v in sets.items()] + ["device=cpu"])


def fit(store, out, **audio) -> dict:
    return fit_stream(cfg(**audio), "audio", store / "manifest.csv", out, features=store / "acoustic")


def test_fit_trains_on_windows_of_the_configured_length(store, tmp_path, monkeypatch, caplog):
    """Every batch the model sees is [batch, WINDOW, D] (never the shortest clip's 5 frames); windows of
    clips shorter than WINDOW are zero-padded and their padding is masked out."""
    seen = []
    forward = R.RepCodec.forward

    def spy(self, x, commitment, mask=None):
        seen.append((tuple(x.shape), None if mask is None else mask.sum(1).tolist()))
        return forward(self, x, commitment, mask)

    monkeypatch.setattr(R.RepCodec, "forward", spy)
    with caplog.at_level(logging.INFO, logger="agrepa.tokenizers.streams"):
        metrics = fit(store, tmp_path / "tok")
    train = seen[:6]                                    # 6 steps, then the usage pass over the sample
    assert {s for s, _ in train} == {(4, WINDOW, DIM)}
    assert metrics["batch_shapes"] == [[4, WINDOW, DIM]] and metrics["window"] == WINDOW
    assert metrics["short_clips"] == sum(n < WINDOW for n in LENGTHS) == 3
    real = [r for _, rs in seen for r in rs]
    assert set(real) <= {5, 7, 9, WINDOW} and max(real) == WINDOW
    assert "3 clips shorter than the window" in caplog.text
    assert json.loads((tmp_path / "tok" / "metrics.json").read_text())["windows"] == 12


def test_padding_does_not_enter_the_loss():
    """The same real frames with different padding give the same losses (mask), and the sampled
    windows start on step boundaries inside their clip."""
    torch.manual_seed(0)
    model = R.RepCodec(DIM, 16, 8, 8).eval()
    x = torch.randn(2, WINDOW, DIM)
    mask = torch.ones(2, WINDOW, dtype=torch.bool)
    mask[1, 9:] = False
    noisy = x.clone()
    noisy[1, 9:] = 100.0
    a, b = model(x, 1.0, mask), model(noisy, 1.0, mask)
    assert torch.equal(a["loss"], b["loss"]) and torch.equal(a["codes"], b["codes"])
    assert a["codes"].numel() == WINDOW + 9
    # frame r of clip c holds 1000 c + r: a window names its clip and start
    clips = [(1000 * c + torch.arange(n, dtype=torch.float32))[:, None].expand(n, DIM) for c, n in enumerate(LENGTHS)]
    w, m, info = R.sample_windows(LENGTHS, clips.__getitem__, 50, WINDOW, seed=1, granularity=GRAN)
    assert w.shape == (50, WINDOW, DIM)
    for j in range(50):
        c, start = divmod(int(w[j, 0, 0]), 1000)
        assert start % GRAN == 0 and int(m[j].sum()) == min(WINDOW, LENGTHS[c])
        assert start + int(m[j].sum()) <= LENGTHS[c]
    assert info["padded_windows"] == int((~m[:, -1]).sum()) > 0


def test_sample_size_bounds_what_is_read(store, tmp_path, monkeypatch):
    """fit_windows = 2 reads at most 2 clips' frames; k-means with max_frames = 10 reads at most 10."""
    loads = []
    load = Store.load

    def spy(self, name, keys=None):
        loads.append(list(keys))
        return load(self, name, keys)

    monkeypatch.setattr(Store, "load", spy)
    metrics = fit(store, tmp_path / "tok", fit_windows=2)
    assert len(loads) == metrics["clips_read"] <= 2 and all(len(k) == 1 for k in loads)
    assert metrics["n_frames"] <= 2 * WINDOW
    loads.clear()
    clips = [torch.randn(n, DIM) for n in LENGTHS]
    x, info = sample_frames(LENGTHS, lambda i: loads.append(i) or clips[i], 10, seed=0)
    assert x.shape == (10, DIM) and len(loads) == info["clips_read"] <= 10
    # the sample is the earlier in-memory rule's: randperm over the concatenated frames
    allx = torch.cat(clips)
    assert torch.equal(x, allx[torch.randperm(len(allx), generator=torch.Generator().manual_seed(0))[:10]])
    x_all, _ = sample_frames(LENGTHS, clips.__getitem__, None, seed=0)
    assert torch.equal(x_all, allx)


def fitted_codebook(store, out, seed: int = 0) -> torch.Tensor:
    c = cfg()
    c["tokens"]["seed"] = seed
    fit_stream(c, "audio", store / "manifest.csv", out, features=store / "acoustic")
    return R.RepCodec.load(out, json.loads((out / "config.json").read_text())["arch"]).codebook.embed


def test_same_seed_same_codebook(store, tmp_path):
    one = fitted_codebook(store, tmp_path / "a")
    assert torch.equal(one, fitted_codebook(store, tmp_path / "b"))
    assert not torch.equal(one, fitted_codebook(store, tmp_path / "c", seed=1))


def test_every_clip_shorter_than_the_window_still_fits(store, tmp_path):
    """A window longer than every clip (the paper's 496 patches on a miniature of short clips):
    every window is padded, the fit still trains on the configured length."""
    metrics = fit(store, tmp_path / "tok", window=128)
    assert metrics["short_clips"] == len(LENGTHS) and metrics["padded_windows"] == 12
    assert metrics["batch_shapes"] == [[4, 128, DIM]] and metrics["used_codes"] >= 1
