"""Two processes (torchrun, gloo) train the same global batch as one process: same losses."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import torch

from agrepa.training import train
from test_dataset import data_paths, make_corpus, tiny_cfg
from test_train import _load
from test_workflow_support import DEFAULT_CONFIG

torch.set_num_threads(1)


def test_two_process_gloo_matches_single_process(tmp_path):
    cfg, cfg_path = tiny_cfg(tmp_path, {"train": {"batch_size": 4, "checkpoint_every": 3}})
    paths = make_corpus(tmp_path / "data")
    args = ["--manifest", str(paths["manifest"]), "--mels", str(paths["mels"]), "--tokens", str(paths["tokens"]),
            "--semantic", str(paths["semantic"]), "--acoustic", str(paths["acoustic"])]
    single = train.run(cfg, phase="warmup", out=tmp_path / "one", seed=0,
                       data=data_paths(paths))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "agrepa.cli", "train", "--config", str(DEFAULT_CONFIG), "--config", str(cfg_path),
                          "--phase", "warmup", "--seed", "0", "--out", str(tmp_path / "two"), *args],
                         env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rank 1/2 joined the gloo process group" in res.stderr
    one, two = pd.read_csv(tmp_path / "one" / "metrics.csv"), pd.read_csv(tmp_path / "two" / "metrics.csv")
    assert one["step"].tolist() == two["step"].tolist() == [1, 2, 3, 4, 5, 6]
    for col in ("loss", "fm", "bitc", "grad_norm"):
        assert abs(one[col][0] - two[col][0]) <= 1e-5 * abs(one[col][0]), col     # same batch, same weights
        assert ((one[col] - two[col]).abs() <= 1e-5 * one[col].abs()).all(), (col, one[col], two[col])
    a, b = _load(single), _load(tmp_path / "two" / "final.pt")
    assert b["world_size"] == 2 and len(b["rng"]) == 2
    for k, v in a["model"].items():
        assert torch.allclose(v, b["model"][k], atol=1e-5, rtol=1e-4), k


def test_two_process_rr_branch_matches_single_process(tmp_path):
    # RR on every sample of every step: the B x B similarities need the global batch, gathered with gradient
    methods = {"rr_all": {"layers": [], "train": {"cfg_mode": "batch"}, "rr": {"when": "always"}}}
    cfg, cfg_path = tiny_cfg(tmp_path, {"train": {"batch_size": 4, "checkpoint_every": 3}, "methods": methods})
    paths = make_corpus(tmp_path / "data")
    data = data_paths(paths)
    warm = train.run(cfg, phase="warmup", out=tmp_path / "warm", seed=0, data=data)
    single = train.run(cfg, phase="branch", method="rr_all", init=warm, out=tmp_path / "one", seed=0, steps=4,
                       data=data)
    args = ["--manifest", str(paths["manifest"]), "--mels", str(paths["mels"]), "--tokens", str(paths["tokens"]),
            "--semantic", str(paths["semantic"]), "--acoustic", str(paths["acoustic"])]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "agrepa.cli", "train", "--config", str(DEFAULT_CONFIG), "--config", str(cfg_path),
                          "--phase", "branch", "--method", "rr_all", "--init", str(warm), "--steps", "4",
                          "--seed", "0", "--out", str(tmp_path / "two"), *args],
                         env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    one, two = pd.read_csv(tmp_path / "one" / "metrics.csv"), pd.read_csv(tmp_path / "two" / "metrics.csv")
    assert one["step"].tolist() == two["step"].tolist() == [1, 2, 3, 4] and (one["rr"] > 0).all()
    for col in ("loss", "fm", "bitc", "rr", "grad_norm"):
        assert ((one[col] - two[col]).abs() <= 1e-5 * one[col].abs()).all(), (col, one[col], two[col])
    a, b = _load(single), _load(tmp_path / "two" / "final.pt")
    assert b["world_size"] == 2
    for k, v in a["model"].items():
        assert torch.allclose(v, b["model"][k], atol=1e-5, rtol=1e-4), k
