"""torch DDP and gradient accumulation (issue 24, item 2) on the CPU: 2 gloo processes (torchrun,
the real ``agrepa train`` path) with ``train.accumulate: 2`` against one process, and resuming at
another process layout.

Tolerance: the final weights (model, BiT-C and REPA heads) within atol 1e-5, rtol 1e-4 and the
logged loss terms and gradient norms within 1e-5 relative, fp32: the runs see the same global
batches and draws and every loss term is a mean over samples, so only the order of the floating-
point reductions differs (per-micro-step means averaged over micro-steps and processes instead of
one mean over the batch; DDP's bucketed all-reduce instead of one backward)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from agrepa import config as config_mod
from agrepa.training import distributed as dist_mod
from agrepa.training import train
from test_dataset import data_paths, make_corpus, tiny_cfg
from test_train import _load
from test_workflow_support import DEFAULT_CONFIG

torch.set_num_threads(1)

ATOL, RTOL, METRIC_RTOL = 1e-5, 1e-4, 1e-5
# the tiny corpus at global batch 4: with 2 processes x 2 micro-steps each process's micro-batch is
# ONE clip, so a micro-batch always lacks a domain (its BiT-C / REPA head gets no gradient from the
# loss: distributed.touch keeps it in DDP's static graph)
METHODS = {"rr_all": {"layers": [], "train": {"cfg_mode": "batch"}, "rr": {"when": "always"}}}


def _args(paths: dict) -> list[str]:
    return ["--manifest", str(paths["manifest"]), "--mels", str(paths["mels"]), "--tokens", str(paths["tokens"]),
            "--semantic", str(paths["semantic"]), "--acoustic", str(paths["acoustic"])]


def _overlay(tmp: Path, name: str, over: dict) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(over))
    return path


def _torchrun(configs: list[Path], paths: dict, out: Path, *extra: str) -> str:
    """``agrepa train`` in 2 gloo processes; returns its stderr."""
    conf = [a for c in [DEFAULT_CONFIG, *configs] for a in ("--config", str(c))]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "agrepa.cli", "train", *conf, "--seed", "0", "--out", str(out), *extra, *_args(paths)],
                         env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "DistributedDataParallel over 2 processes" in res.stderr and "2 micro-steps" in res.stderr
    return res.stderr


def _same_run(one: Path, two: Path, cols=("loss", "fm", "bitc", "grad_norm")) -> None:
    """metrics.csv and final.pt of two runs agree (module doc's tolerance)."""
    m1, m2 = pd.read_csv(one / "metrics.csv"), pd.read_csv(two / "metrics.csv")
    assert m1["step"].tolist() == m2["step"].tolist()
    for col in cols:
        assert ((m1[col] - m2[col]).abs() <= METRIC_RTOL * m1[col].abs()).all(), (col, m1[col], m2[col])
    a, b = _load(one / "final.pt"), _load(two / "final.pt")
    for part in ("model", "bitc", "repa"):
        assert a[part].keys() == b[part].keys()
        for k, v in a[part].items():
            assert torch.allclose(v, b[part][k], atol=ATOL, rtol=RTOL), (part, k, (v - b[part][k]).abs().max())


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    cfg, cfg_path = tiny_cfg(tmp, {"train": {"batch_size": 4, "checkpoint_every": 100}, "methods": METHODS})
    paths = make_corpus(tmp / "data")
    final = train.run(cfg, phase="warmup", out=tmp / "warm", seed=0, steps=2, data=data_paths(paths))
    return tmp, cfg, cfg_path, paths, final


@pytest.mark.parametrize("method", ["baseline", "repa_l2"])
def test_two_processes_accumulating_two_micro_steps_equal_one_process_on_the_global_batch(warm, method):
    tmp, cfg, cfg_path, paths, final = warm
    one = tmp / f"one_{method}"
    train.run(cfg, phase="branch", method=method, init=final, out=one, seed=0, steps=4, data=data_paths(paths))
    acc2 = _overlay(tmp, "acc2", {"train": {"accumulate": 2}})
    two = tmp / f"two_{method}"
    _torchrun([cfg_path, acc2], paths, two, "--phase", "branch", "--method", method, "--init", str(final),
              "--steps", "4")
    assert _load(two / "final.pt")["world_size"] == 2 and _load(two / "final.pt")["accumulate"] == 2
    _same_run(one, two, ("loss", "fm", "bitc", "grad_norm") + (("repa",) if method == "repa_l2" else ()))
    if method == "repa_l2":
        assert (pd.read_csv(two / "metrics.csv")["repa"] > 0).all()


def test_two_processes_accumulating_rr_equal_one_process_with_the_same_accumulate(warm):
    """Seed 003's RR term is a mean over the PAIRS of a batch's samples (B x B similarities), not a
    mean over samples: it is not additive over micro-batches, and a micro-step cannot see the other
    micro-steps' pooled states with their graphs (accumulation keeps one micro-batch's activations
    at a time). So with ``train.accumulate: A`` RR is computed over each micro-step's
    ``batch_size / A`` rows, gathered with gradient over the processes (the same rows at every
    world size: distributed.micro_slices), and 2 processes x 2 micro-steps equal ONE process with
    ``accumulate: 2``, by construction not one process on the whole batch (checked to differ)."""
    tmp, cfg, cfg_path, paths, final = warm
    acc2 = _overlay(tmp, "acc2", {"train": {"accumulate": 2}})
    cfg2 = config_mod.load([DEFAULT_CONFIG, cfg_path, acc2])
    one, whole = tmp / "one_rr", tmp / "whole_rr"
    train.run(cfg2, phase="branch", method="rr_all", init=final, out=one, seed=0, steps=4, data=data_paths(paths))
    train.run(cfg, phase="branch", method="rr_all", init=final, out=whole, seed=0, steps=4, data=data_paths(paths))
    two = tmp / "two_rr"
    _torchrun([cfg_path, acc2], paths, two, "--phase", "branch", "--method", "rr_all", "--init", str(final),
              "--steps", "4")
    _same_run(one, two, ("loss", "fm", "bitc", "rr", "grad_norm"))
    rr_one, rr_whole = pd.read_csv(one / "metrics.csv")["rr"], pd.read_csv(whole / "metrics.csv")["rr"]
    assert (rr_one > 0).all() and not ((rr_one - rr_whole).abs() <= METRIC_RTOL * rr_whole.abs()).all()


def test_one_process_accumulating_equals_the_global_batch(warm):
    """Accumulation alone (no DDP): 2 micro-steps of half the batch give the one-batch step."""
    tmp, cfg, cfg_path, paths, _ = warm
    acc2 = config_mod.load([DEFAULT_CONFIG, cfg_path, _overlay(tmp, "acc2", {"train": {"accumulate": 2}})])
    train.run(cfg, phase="warmup", out=tmp / "w1", seed=0, steps=3, data=data_paths(paths))
    train.run(acc2, phase="warmup", out=tmp / "w2", seed=0, steps=3, data=data_paths(paths))
    _same_run(tmp / "w1", tmp / "w2")


def test_micro_slices_and_the_divisibility_error(warm):
    tmp, cfg, cfg_path, paths, _ = warm
    assert dist_mod.micro_slices(8, 1, 1, 2) == [slice(4, 8)]
    assert dist_mod.micro_slices(8, 2, 0, 2) == [slice(0, 2), slice(4, 6)]
    assert dist_mod.micro_slices(8, 2, 1, 2) == [slice(2, 4), slice(6, 8)]
    assert dist_mod.micro_slices(8, 2, 0, 1) == [slice(0, 4), slice(4, 8)]   # micro-step k: the same rows
    with pytest.raises(ValueError, match=r"train.batch_size 4 .*world size 1.*train.accumulate 3"):
        dist_mod.micro_slices(4, 3, 0, 1)
    # a training job started by hand (torchrun at any world size) meets the same check in Loop.build
    loop_cfg = config_mod.deep_merge(cfg, {"train": {"accumulate": 2}})
    with pytest.raises(ValueError,
                       match=r"train.batch_size 4 is not divisible by the world size 4 .*train.accumulate 2"):
        train.Loop.build(loop_cfg, "warmup", 0, tmp / "bad", dist_mod.Dist(0, 4, 0), None, None, 1)


def test_resume_at_another_world_size_and_accumulate_continues_exactly(warm):
    """A last.pt of 2 processes x 2 micro-steps, resumed by 1 process x 1 micro-step (no dropout):
    the same final weights as the uninterrupted 2-process run."""
    tmp, cfg, cfg_path, paths, _ = warm
    every3 = _overlay(tmp, "every3", {"train": {"checkpoint_every": 3}})
    acc2 = _overlay(tmp, "acc2", {"train": {"accumulate": 2}})
    two = tmp / "two_warm"
    _torchrun([cfg_path, every3, acc2], paths, two, "--phase", "warmup", "--steps", "4")
    ck = _load(two / "last.pt")
    assert (ck["step"], ck["world_size"], ck["accumulate"]) == (3, 2, 2)
    resumed = tmp / "resumed_warm"
    shutil.copytree(two, resumed)
    (resumed / "final.pt").unlink()
    cfg1 = config_mod.load([DEFAULT_CONFIG, cfg_path, every3])
    train.run(cfg1, phase="warmup", out=resumed, seed=0, steps=4, data=data_paths(paths))
    assert _load(resumed / "final.pt")["world_size"] == 1
    _same_run(two, resumed)


def test_resume_at_another_layout_with_dropout_is_refused(tmp_path):
    """With dropout the per-process RNG streams cannot continue at another layout: refused, naming the keys."""
    cfg, cfg_path = tiny_cfg(tmp_path, {"model": {"dropout": 0.1}, "train": {"checkpoint_every": 3}})
    paths = make_corpus(tmp_path / "data")
    out = tmp_path / "run"
    train.run(cfg, phase="warmup", out=out, seed=0, steps=4, data=data_paths(paths))
    (out / "final.pt").unlink()
    acc2 = config_mod.load([DEFAULT_CONFIG, cfg_path, _overlay(tmp_path, "acc2", {"train": {"accumulate": 2}})])
    with pytest.raises(ValueError, match=r"last.pt: written by 1 process\(es\) with train.accumulate 1, this run has "
                                         r"1 process\(es\) .*resources.train.gpu.* train.accumulate 2: the model has "
                                         r"dropout"):
        train.run(acc2, phase="warmup", out=out, seed=0, steps=4, data=data_paths(paths))
    ck = _load(out / "last.pt")
    torch.save({**ck, "world_size": 2, "rng": ck["rng"] * 2}, out / "last.pt")
    with pytest.raises(ValueError, match=r"written by 2 process\(es\).*world size: resources.train.gpu"):
        train.run(cfg, phase="warmup", out=out, seed=0, steps=4, data=data_paths(paths))
    torch.save(ck, out / "last.pt")       # the same layout: resumes
    train.run(cfg, phase="warmup", out=out, seed=0, steps=4, data=data_paths(paths))
    assert _load(out / "final.pt")["step"] == 4


@pytest.mark.slow
def test_compiled_backbone_under_ddp_with_accumulation_equals_one_compiled_process(warm):
    """``train.compile`` composes with DDP: the compiled backbone runs inside DDP's forward (dynamo's
    DDPOptimizer splits it at the buckets); 2 processes x 2 micro-steps equal one compiled process
    within the module doc's tolerance. Slow: inductor builds C++ in every process (minutes on a CPU)."""
    tmp, cfg, cfg_path, paths, _ = warm
    comp = _overlay(tmp, "compile", {"train": {"compile": True}})
    acc2 = _overlay(tmp, "acc2", {"train": {"accumulate": 2}})
    one, two = tmp / "one_compiled", tmp / "two_compiled"
    train.run(config_mod.load([DEFAULT_CONFIG, cfg_path, comp]), phase="warmup", out=one, seed=0, steps=3,
              data=data_paths(paths))
    _torchrun([cfg_path, comp, acc2], paths, two, "--phase", "warmup", "--steps", "3")
    _same_run(one, two)


def test_config_refuses_a_batch_the_training_job_cannot_split():
    """The workflow's processes (resources.train.gpu x nodes) x train.accumulate must divide the global batch."""
    ok = config_mod.load([DEFAULT_CONFIG], ["train.accumulate=2", "resources.train.gpu=2"])
    assert ok["train"]["accumulate"] == 2
    with pytest.raises(ValueError, match=r"train.batch_size: 6 is not divisible .*resources.train.gpu x "
                                         r"resources.train.nodes = 4\) x train.accumulate 1"):
        config_mod.load([DEFAULT_CONFIG], ["resources.train.gpu=4", "train.batch_size=6"])
    with pytest.raises(ValueError, match=r"train.batch_size: 8 is not divisible .* = 4\) x train.accumulate 4"):
        config_mod.load([DEFAULT_CONFIG], ["resources.train.gpu=2", "resources.train.nodes=2", "train.accumulate=4"])
    with pytest.raises(ValueError, match=r"train.accumulate: must be >= 1"):
        config_mod.load([DEFAULT_CONFIG], ["train.accumulate=0"])
