"""The event teacher (embedded BEATs stand-in): trains on 8 synthetic classes well above chance."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agrepa import audio as A
from agrepa import config as C
from agrepa.cli import main
from agrepa.corpora.manifest import make_manifest, write_manifest
from agrepa.teachers.registry import build_teacher
from agrepa.teachers.events import EventsTeacher, average_precision, multilabel_metrics
from test_workflow_support import DEFAULT_CONFIG

torch.set_num_threads(1)

CLASSES = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"]


def event_clip(k: int, rng: np.random.Generator, sr: int = 24000) -> np.ndarray:
    """Class k: a tone at 250 * 1.6^k Hz (+-3 %), AM-modulated for odd k, in light noise."""
    n = int(rng.uniform(0.5, 0.8) * sr)
    t = np.arange(n) / sr
    f = 250 * 1.6 ** k * rng.uniform(0.97, 1.03)
    x = np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28))
    if k % 2:
        x = x * (0.55 + 0.45 * np.sin(2 * np.pi * 6 * t))
    x = x + 0.05 * rng.standard_normal(n)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def event_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("events")
    rng = np.random.default_rng(0)
    rows = []
    for split, per_class in (("train", 6), ("valid", 3)):
        for k, name in enumerate(CLASSES):
            for i in range(per_class):
                cid = f"{split}_{name}_{i}"
                wave = event_clip(k, rng)
                A.write_wav(root / f"{cid}.wav", wave, 24000)
                rows.append({"id": cid, "path": f"{cid}.wav", "duration": len(wave) / 24000,
                             "sample_rate": 24000, "domain": "audio", "split": split, "labels": name})
    rows.append({"id": "spk0", "path": "train_c0_0.wav", "duration": 0.5, "sample_rate": 24000,
                 "domain": "speech", "split": "train", "text": "not used"})
    manifest = root / "manifest.csv"
    write_manifest(make_manifest(rows), manifest)
    return manifest


SMALL = ["teachers.acoustic.events.dim=32", "teachers.acoustic.events.n_layers=1",
         "teachers.acoustic.events.epochs=30", "teachers.acoustic.events.batch_size=8",
         "teachers.acoustic.events.lr=3.0e-3", "teachers.acoustic.events.dropout=0.0"]


def test_event_teacher_trains_well_above_chance(event_corpus, tmp_path):
    out = tmp_path / "teacher"
    args = ["teacher", "train", "--config", str(DEFAULT_CONFIG), "--threads", "1", "--manifest", str(event_corpus), "--out", str(out)]
    for s in SMALL:
        args += ["--set", s]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    conf = json.loads((out / "config.json").read_text())
    assert conf["labels"] == CLASSES and (out / "model.safetensors").exists()
    assert metrics["n"] == 24 and metrics["split"] == "valid"
    assert metrics["chance_exact_match"] == pytest.approx(1 / 8)
    assert metrics["chance_mAP"] == pytest.approx(1 / 8)
    assert metrics["exact_match"] >= 0.75, metrics
    assert metrics["mAP"] >= 0.9, metrics
    assert set(metrics["per_label"]) == set(CLASSES)
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]

    # frozen teacher: frame features at mel rate / 4, pooled over real frames
    cfg = C.load(DEFAULT_CONFIG, overrides=SMALL)
    teacher = build_teacher(cfg, "acoustic", teacher_dir=out)
    assert isinstance(teacher, EventsTeacher)
    assert teacher.frame_rate == pytest.approx(93.75 / 4) and teacher.dim == 32
    wave = torch.from_numpy(event_clip(3, np.random.default_rng(5)))
    frames, pooled = teacher.embed(wave, 24000)
    assert frames.shape == (A.frames_for(len(wave), cfg["audio"]) // 4, 32)
    padded = torch.cat([wave, torch.zeros(12000)])[None]
    (_, pooled_p), = teacher.embed_padded(padded, [len(wave)], 24000)
    assert torch.equal(pooled, pooled_p)
    assert CLASSES[int(teacher.predict_proba(wave).argmax())] == "c3"

    # deterministic for a seed
    out2 = tmp_path / "teacher2"
    assert main([str(out2) if a == str(out) else a for a in args]) == 0
    assert (out / "model.safetensors").read_bytes() == (out2 / "model.safetensors").read_bytes()


def test_event_teacher_needs_valid_clips(tmp_path):
    A.write_wav(tmp_path / "a.wav", np.zeros(12000, np.float32) + 0.1, 24000)
    rows = [{"id": f"a{i}", "path": "a.wav", "duration": 0.5, "sample_rate": 24000, "domain": "audio",
             "split": "train", "labels": "x" if i else "y"} for i in range(2)]
    write_manifest(make_manifest(rows), tmp_path / "m.csv")
    rc = main(["teacher", "train", "--config", str(DEFAULT_CONFIG), "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o")])
    assert rc == 2
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        EventsTeacher.load(tmp_path / "o")


def test_average_precision_and_chance():
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)
    truth = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], np.float32)
    probs = np.array([[0.9, 0.1], [0.2, 0.7], [0.6, 0.3], [0.4, 0.2]])
    m = multilabel_metrics(probs, truth, ["a", "b"], truth)
    assert m["exact_match"] == pytest.approx(0.75)       # row 4 predicts nothing
    assert m["chance_exact_match"] == pytest.approx(0.75)  # majority set {a}
    assert m["top1_accuracy"] == 1.0 and m["mAP"] == 1.0
    assert m["chance_mAP"] == pytest.approx((0.75 + 0.25) / 2)
