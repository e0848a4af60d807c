"""Kill a training process after a checkpoint, restart it: the result equals an uninterrupted run bitwise."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from agrepa.training import train
from test_dataset import data_paths, make_corpus, tiny_cfg
from test_train import _load, _tensors_equal
from test_workflow_support import DEFAULT_CONFIG

torch.set_num_threads(1)
STEPS = 120


def _cmd(cfg_path, paths, out, warm):
    return [sys.executable, "-m", "agrepa.cli", "train", "--config", str(DEFAULT_CONFIG), "--config",
            str(cfg_path), "--phase", "branch", "--method", "repa_l1_2", "--init", str(warm), "--seed", "3",
            "--manifest", str(paths["manifest"]), "--mels", str(paths["mels"]), "--tokens", str(paths["tokens"]),
            "--semantic", str(paths["semantic"]), "--acoustic", str(paths["acoustic"]), "--out", str(out),
            "--steps", str(STEPS)]


@pytest.fixture
def one_thread():
    """The reference runs in this process with the subprocesses' thread count (bitwise equality
    needs the same reduction order; other tests' CLIs may have changed the global setting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_sigkill_and_resume_is_exact(tmp_path, one_thread):
    # dropout on: the restored RNG states matter; the REPA heads, EMA and optimiser moments are all resumed
    cfg, cfg_path = tiny_cfg(tmp_path, {"model": {"dropout": 0.1},
                                        "train": {"checkpoint_every": 10, "log_every": 5,
                                                  "snapshot_fractions": [50 / STEPS, 100 / STEPS]}})
    paths = make_corpus(tmp_path / "data")
    kw = dict(data=data_paths(paths))
    warm = train.run(cfg, phase="warmup", out=tmp_path / "warm", seed=3, **kw)
    ref = train.run(cfg, phase="branch", method="repa_l1_2", init=warm, out=tmp_path / "ref", seed=3,
                    steps=STEPS, **kw)

    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen(_cmd(cfg_path, paths, out, warm), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None:
            if (out / "last.pt").exists() and _load(out / "last.pt")["step"] >= 20:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _load(out / "last.pt")["step"]
    assert 20 <= killed_at < STEPS and not (out / "final.pt").exists()

    (out / "metrics.csv").unlink()             # Snakemake deletes declared outputs before a retry
    res = subprocess.run(_cmd(cfg_path, paths, out, warm), env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming repa_l1_2 from {out / 'last.pt'} at step {killed_at}" in res.stderr
    a, b = _load(ref), _load(out / "final.pt")
    for key in ("model", "ema", "bitc", "repa", "optimizer", "scheduler", "sampler", "step"):
        assert _tensors_equal(a[key], b[key]), key
    assert _tensors_equal(_load(tmp_path / "ref" / "snapshots" / "step_000100.pt")["model"],
                          _load(out / "snapshots" / "step_000100.pt")["model"])
    steps = train.pd.read_csv(out / "metrics.csv")["step"].tolist()
    assert steps == list(range(5, STEPS + 1, 5))          # rows restored from last.pt, none duplicated or missing
    ref_rows = train.pd.read_csv(tmp_path / "ref" / "metrics.csv")
    assert ref_rows["loss"].tolist() == train.pd.read_csv(out / "metrics.csv")["loss"].tolist()
