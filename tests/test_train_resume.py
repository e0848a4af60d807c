"""Kill a training process after a checkpoint, restart it: the result equals an uninterrupted run bitwise."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from agrepa.training import checkpoint, train
from test_dataset import data_paths, make_corpus, tiny_cfg
from test_train import _load, _tensors_equal
from test_workflow_support import DEFAULT_CONFIG

torch.set_num_threads(1)
STEPS = 120


def _cmd(cfg_path, paths, out, warm, attempt):
    return [sys.executable, "-m", "agrepa.cli", "train", "--config", str(DEFAULT_CONFIG), "--config",
            str(cfg_path), "--phase", "branch", "--method", "repa_l1_2", "--init", str(warm), "--seed", "3",
            "--manifest", str(paths["manifest"]), "--mels", str(paths["mels"]), "--tokens", str(paths["tokens"]),
            "--semantic", str(paths["semantic"]), "--acoustic", str(paths["acoustic"]), "--out", str(out),
            "--steps", str(STEPS), "--attempt", str(attempt)]


def _step(last):
    """The step of a checkpoint being written by another process; -1 while there is none
    (or only the stale file the test left)."""
    try:
        data = last.read_bytes()            # written atomically: absent, stale or complete
    except FileNotFoundError:
        return -1
    return -1 if data == b"stale" else _load(io.BytesIO(data))["step"]


@pytest.fixture
def one_thread():
    """The reference runs in this process with the subprocesses' thread count (bitwise equality
    needs the same reduction order; other tests' CLIs may have changed the global setting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_sigkill_and_resume_is_exact(tmp_path, one_thread):
    # dropout on: the restored RNG states matter; the REPA heads, EMA and optimiser moments are all resumed.
    # The killed and resumed runs read through 2 DataLoader workers, the reference in-process (0 workers)
    cfg, cfg_path = tiny_cfg(tmp_path, {"model": {"dropout": 0.1},
                                        "train": {"checkpoint_every": 10, "log_every": 5, "num_workers": 2,
                                                  "snapshot_fractions": [50 / STEPS, 100 / STEPS]}})
    paths = make_corpus(tmp_path / "data")
    kw = dict(data=data_paths(paths))
    cfg = {**cfg, "train": {**cfg["train"], "num_workers": 0}}
    warm = train.run(cfg, phase="warmup", out=tmp_path / "warm", seed=3, **kw)
    ref = train.run(cfg, phase="branch", method="repa_l1_2", init=warm, out=tmp_path / "ref", seed=3,
                    steps=STEPS, **kw)

    out = tmp_path / "killed"
    (out / "snapshots").mkdir(parents=True)      # left by an earlier run: attempt 1 starts fresh
    (out / "last.pt").write_bytes(b"stale")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen(_cmd(cfg_path, paths, out, warm, 1), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None:
            if _step(out / "last.pt") >= 20:
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
    res = subprocess.run(_cmd(cfg_path, paths, out, warm, 2), env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "attempt 2: Snakemake retries an interrupted job: resuming from" in res.stderr
    assert f"resuming repa_l1_2 from {out / 'last.pt'} at step {killed_at}" in res.stderr
    a, b = _load(ref), _load(out / "final.pt")
    for key in ("model", "ema", "bitc", "repa", "optimizer", "scheduler", "sampler", "step"):
        assert _tensors_equal(a[key], b[key]), key
    assert _tensors_equal(_load(tmp_path / "ref" / "snapshots" / "step_000100.pt")["ema"],
                          _load(out / "snapshots" / "step_000100.pt")["ema"])
    steps = train.pd.read_csv(out / "metrics.csv")["step"].tolist()
    assert steps == list(range(5, STEPS + 1, 5))          # rows restored from last.pt, none duplicated or missing
    ref_rows = train.pd.read_csv(tmp_path / "ref" / "metrics.csv")
    assert ref_rows["loss"].tolist() == train.pd.read_csv(out / "metrics.csv")["loss"].tolist()


# -- resume or start fresh (agrepa train --attempt N; agrepa.training.checkpoint.prepare_resume) --

def _leftovers(out):
    out.mkdir(parents=True, exist_ok=True)
    (out / "last.pt").write_bytes(b"old")
    (out / "snapshots").mkdir(exist_ok=True)
    (out / "snapshots" / "step_000003.pt").write_bytes(b"old")


def test_first_attempt_outside_slurm_starts_fresh(tmp_path):
    _leftovers(tmp_path)
    assert checkpoint.prepare_resume(tmp_path, 1, environ={}) is False
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "snapshots").exists()
    assert not (tmp_path / checkpoint.JOB_FILE).exists()


def test_retry_resumes(tmp_path):
    _leftovers(tmp_path)
    assert checkpoint.prepare_resume(tmp_path, 2, environ={"SLURM_JOB_ID": "12"}) is True
    assert (tmp_path / "last.pt").read_bytes() == b"old" and (tmp_path / "snapshots").exists()
    assert checkpoint.resume_reason(tmp_path, 2, environ={}) == "attempt 2: Snakemake retries an interrupted job"


def test_requeued_slurm_job_resumes_and_a_new_job_starts_fresh(tmp_path):
    env = {"SLURM_JOB_ID": "41", "SLURM_CLUSTER_NAME": "c"}
    _leftovers(tmp_path)
    assert checkpoint.prepare_resume(tmp_path, 1, environ=env) is False        # job 41 starts: fresh, and says so
    assert not (tmp_path / "last.pt").exists()
    assert checkpoint.io.read_json(tmp_path / checkpoint.JOB_FILE) == {"cluster": "c", "job_id": "41"}
    _leftovers(tmp_path)                                            # job 41 wrote last.pt, then was requeued
    assert checkpoint.resume_reason(tmp_path, 1, environ=env) == "SLURM job 41 was requeued"
    assert checkpoint.prepare_resume(tmp_path, 1, environ=env) is True
    assert (tmp_path / "last.pt").exists()
    # a forced rerun is a new job (new id), on this or another cluster with the same id
    for other in ({"SLURM_JOB_ID": "42", "SLURM_CLUSTER_NAME": "c"}, {"SLURM_JOB_ID": "41", "SLURM_CLUSTER_NAME": "d"}):
        assert checkpoint.resume_reason(tmp_path, 1, environ=other) is None
    assert checkpoint.prepare_resume(tmp_path, 1, environ={}) is False          # a local run after a SLURM one
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / checkpoint.JOB_FILE).exists()


def test_attempt_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="--attempt"):
        checkpoint.resume_reason(tmp_path, 0)
