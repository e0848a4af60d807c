"""Two-phase training: determinism, branching, REPA present/absent, checkpoints, errors."""
from __future__ import annotations

import json
import logging
import re

import pandas as pd
import pytest
import torch

from agrepa import config as config_mod
from agrepa.training import schedule, train
from agrepa.training.checkpoint import load_run
from agrepa.cli import main as cli_main
from test_dataset import data_paths, make_corpus, tiny_cfg
from test_workflow_support import DEFAULT_CONFIG

torch.set_num_threads(1)


def _kw(p):
    return dict(data=data_paths(p))


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _tensors_equal(a, b) -> bool:
    """Bitwise equality of two nested checkpoint structures."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    cfg, cfg_path = tiny_cfg(tmp, {"model": {"dropout": 0.1}})
    paths = make_corpus(tmp / "data")
    warm = train.run(cfg, phase="warmup", out=tmp / "warm0", seed=0, **_kw(paths))
    return tmp, cfg, cfg_path, paths, warm


def test_warmup_same_seed_identical_other_seed_differs(setup, caplog):
    tmp, cfg, _, paths, warm = setup
    caplog.set_level(logging.INFO, logger="agrepa.training.train")
    again = train.run(cfg, phase="warmup", out=tmp / "warm0b", seed=0, **_kw(paths))
    assert re.search(r"throughput: train warmup warmup: 6 steps in [\d.]+ s = [\d.]+ steps/s, [\d.]+ samples/s "
                     r"\(global batch \d+, 1 process\(es\)\)", caplog.text), caplog.text
    other = train.run(cfg, phase="warmup", out=tmp / "warm1", seed=1, **_kw(paths))
    a, b, c = _load(warm), _load(again), _load(other)
    for key in ("model", "ema", "bitc", "optimizer", "scheduler", "sampler", "rng"):
        assert _tensors_equal(a[key], b[key]), key
    assert not _tensors_equal(a["model"], c["model"]) and a["sampler"] != c["sampler"]
    # what a checkpoint holds
    assert a["step"] == 6 and a["phase"] == "warmup" and a["vocab_size"] == 40 and a["repa"] == {}
    assert a["config"]["model"]["dim"] == 32 and set(a["rng"][0]) == {"torch", "cuda", "numpy", "python"}
    m = pd.read_csv(tmp / "warm0" / "metrics.csv")
    assert list(m.columns) == train.METRIC_COLUMNS and m["step"].tolist() == [1, 2, 3, 4, 5, 6]
    assert m["repa"].isna().all() and (m["bitc"] > 0).all() and (m["samples_per_s"] > 0).all()
    assert (tmp / "warm0" / "config.resolved.yaml").exists() and (tmp / "warm0" / "last.pt").exists()


def test_branch_baseline_has_no_repa_and_same_data(setup):
    tmp, cfg, _, paths, warm = setup
    base = train.run(cfg, phase="branch", method="baseline", init=warm, out=tmp / "base", seed=0, **_kw(paths))
    repa = train.run(cfg, phase="branch", method="repa_l1_2", init=warm, out=tmp / "repa", seed=0, **_kw(paths))
    b, r = _load(base), _load(repa)
    no_layers = {"layers": [], "weights": []}
    assert b["repa"] == {} and b["plan"] == {"speech": no_layers, "audio": no_layers}
    n_opt = lambda ck: sum(len(g["params"]) for g in ck["optimizer"]["param_groups"])
    n_base = len(b["model"]) + len(b["bitc"])             # every model / BiT-C entry is a parameter
    assert n_opt(b) == n_base                                                  # no REPA parameters at all
    assert n_opt(r) == n_base + 2 * 2 * 4                  # 2 layers x 2 teachers x (2 weights + 2 biases)
    both = {"layers": [1, 2], "weights": [0.25, 0.25]}              # lambda = 0.5 split over the two layers
    assert {k.split(".")[1] for k in r["repa"]} == {"1", "2"} and r["plan"] == {"speech": both, "audio": both}
    mb, mr = pd.read_csv(tmp / "base" / "metrics.csv"), pd.read_csv(tmp / "repa" / "metrics.csv")
    assert mb["repa"].isna().all() and (mr["repa"] > 0).all()
    # identical start (warm-up weights) and identical batch: the first FM/BiT-C terms agree exactly
    assert mb["fm"][0] == mr["fm"][0] and mb["bitc"][0] == mr["bitc"][0]
    assert abs(mr["loss"][0] - (mr["fm"][0] + mr["bitc"][0] + mr["repa"][0])) < 1e-5
    assert sorted(p.name for p in (tmp / "base" / "snapshots").iterdir()) == ["step_000002.pt", "step_000004.pt",
                                                                             "step_000006.pt"]
    # the branch started from the warm-up EMA, not from scratch
    w = _load(warm)
    assert not _tensors_equal(b["model"], w["model"]) and b["init"] == str(warm)


def test_repa_loss_decreases(setup):
    tmp, cfg, _, paths, warm = setup
    restart = config_mod.deep_merge(cfg, {"train": {"branch_start": "restart"}})   # its own schedule over 40 steps
    train.run(restart, phase="branch", method="repa_l2", init=warm, out=tmp / "repa_long", seed=0, steps=40,
              **_kw(paths))
    m = pd.read_csv(tmp / "repa_long" / "metrics.csv")
    first, last = m["repa"][:5].mean(), m["repa"][-5:].mean()
    assert last < 0.7 * first, (first, last)


def test_selection_method_and_load_run(setup):
    tmp, cfg, _, paths, warm = setup
    sel = tmp / "foga.json"
    sel.write_text(json.dumps({"strategy": "foga", "mode": "per_domain",
                               "sets": {"speech": {"layers": [2, 1], "weights": [0.8, 0.2]},
                                        "audio": {"layers": [1], "weights": [1.0]}}}))
    with pytest.raises(ValueError, match="--selection"):
        train.run(cfg, phase="branch", method="ag_repa", init=warm, out=tmp / "ag_bad", seed=0, **_kw(paths))
    final = train.run(cfg, phase="branch", method="ag_repa", init=warm, selection=sel, out=tmp / "ag", seed=0,
                      steps=3, **_kw(paths))
    run = load_run(final)
    assert (run.method, run.step) == ("ag_repa", 3)
    assert run.plan == {"speech": {"layers": [2, 1], "weights": [0.4, 0.1]}, "audio": {"layers": [1], "weights": [0.5]}}
    assert not run.model.training and not run.bitc.training and run.vocab_size == 40
    ck = _load(final)
    assert all(torch.equal(v, ck["ema"]["model"][k]) for k, v in run.model.state_dict().items())
    raw = load_run(final, use_ema=False)
    assert all(torch.equal(v, ck["model"][k]) for k, v in raw.model.state_dict().items())
    assert any(not torch.equal(v, ck["ema"]["model"][k]) for k, v in raw.model.state_dict().items())
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_run(tmp / "nothing.pt")
    # a different method in a directory with last.pt is refused, not silently resumed
    with pytest.raises(ValueError, match="last.pt: method"):
        train.run(cfg, phase="branch", method="baseline", init=warm, out=tmp / "ag", seed=0, steps=3, **_kw(paths))


def test_nonfinite_loss_stops_with_clear_error(tmp_path):
    cfg, _ = tiny_cfg(tmp_path)
    paths = make_corpus(tmp_path / "data", 2, 2)
    from agrepa.store import Store, StoreWriter
    st = Store(paths["acoustic"])
    w = StoreWriter(tmp_path / "bad_ac", meta=st.meta)
    for k in st.keys():
        w.add(k, {"pooled": torch.full_like(st.get(k)["pooled"], float("nan"))})
    w.close()
    d = data_paths(paths)
    kw = dict(data=type(d)(d.manifest, d.mels, d.tokens, d.semantic, tmp_path / "bad_ac"))
    with pytest.raises(train.NonFiniteLoss, match=r"step 1: loss term 'bitc' is nan"):
        train.run(cfg, phase="warmup", out=tmp_path / "w", seed=0, **kw)
    assert not (tmp_path / "w" / "final.pt").exists()


def test_cli_train_runs_and_reports_bad_input(setup, tmp_path, capsys):
    tmp, cfg, cfg_path, paths, warm = setup
    common = ["--config", str(DEFAULT_CONFIG), "--config", str(cfg_path), "--manifest", str(paths["manifest"]),
              "--mels", str(paths["mels"]), "--tokens", str(paths["tokens"]), "--semantic", str(paths["semantic"]),
              "--acoustic", str(paths["acoustic"])]
    assert cli_main(["train", "--config", str(DEFAULT_CONFIG), "--phase", "warmup", "--steps", "2", "--out", str(tmp_path / "w"), *common]) == 0
    assert _load(tmp_path / "w" / "final.pt")["step"] == 2
    rc = cli_main(["train", "--config", str(DEFAULT_CONFIG), "--phase", "branch", "--method", "baseline", "--init", str(tmp_path / "missing.pt"),
                   "--out", str(tmp_path / "b"), *common])
    assert rc == 2 and "missing.pt: warm-up checkpoint (--init) not found" in capsys.readouterr().err


def test_lr_schedules():
    f = lambda s, total, kind: schedule.lr_factor(s, total, kind, 0.1, 25.0, 1e4)
    assert f(0, 100, "onecycle") == pytest.approx(1 / 25)
    assert f(10, 100, "onecycle") == pytest.approx(1.0)                  # peak after the warm-up fraction
    assert f(99, 100, "onecycle") == pytest.approx(1 / 25e4)             # the last step
    assert all(f(s, 100, "onecycle") >= f(s + 1, 100, "onecycle") for s in range(10, 99))
    assert f(0, 1, "onecycle") == pytest.approx(1 / 25) and f(0, 3, "onecycle") > 0   # tiny runs work
    assert [f(s, 20, "warmup_constant") for s in (0, 1, 5)] == [0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="train.schedule"):
        f(0, 10, "cosine")


def test_rerun_of_a_finished_run_restores_final_and_metrics(setup):
    """A retry after the last checkpoint (e.g. the job died while writing outputs) completes
    the run's outputs from last.pt without training again."""
    tmp, cfg, _, paths, warm = setup
    out = tmp / "warm0"
    before = _load(warm)
    (out / "final.pt").unlink()
    (out / "metrics.csv").unlink()
    train.run(cfg, phase="warmup", out=out, seed=0, **_kw(paths))
    assert _tensors_equal(_load(out / "final.pt")["model"], before["model"])
    assert pd.read_csv(out / "metrics.csv")["step"].tolist() == [1, 2, 3, 4, 5, 6]


def test_bitc_objective_per_token_config(tmp_path):
    """train.bitc_objective: `heads` trains the BiT-C heads but leaves the model as `none`
    (FM only) trains it, bitwise (gradient clipping off, so the heads' gradients cannot
    scale the model's); `full` trains the token embedding too. Config B reads its own entry."""
    paths = make_corpus(tmp_path / "data")
    runs = {}
    for objective in ("full", "heads", "none"):
        cfg, _ = tiny_cfg(tmp_path, {"train": {"grad_clip": 0.0, "bitc_objective": {"A": objective, "B": "full"}}})
        runs[objective] = _load(train.run(cfg, phase="warmup", out=tmp_path / objective, seed=0, steps=3,
                                          **_kw(paths)))
    full, heads, none = runs["full"], runs["heads"], runs["none"]
    assert _tensors_equal(heads["model"], none["model"])
    assert not _tensors_equal(heads["bitc"], none["bitc"]) and not _tensors_equal(full["model"], heads["model"])
    m = pd.read_csv(tmp_path / "none" / "metrics.csv")
    assert (m["bitc"] == 0).all() and (pd.read_csv(tmp_path / "heads" / "metrics.csv")["bitc"] > 0).all()
    # config B's entry is its own: B = none leaves an A run as full trains it
    cfg_b, _ = tiny_cfg(tmp_path, {"train": {"grad_clip": 0.0, "bitc_objective": {"A": "full", "B": "none"}}})
    a_run = _load(train.run(cfg_b, phase="warmup", out=tmp_path / "b_none", seed=0, steps=3, **_kw(paths)))
    assert _tensors_equal(a_run["model"], full["model"])


def test_checkpoint_with_the_affine_bitc_head_still_loads(tmp_path):
    """A warm-up of the affine head (train.bitc_head_affine: true, the form before the key)
    loads with its own head; a branch of the other form is refused naming the key."""
    paths = make_corpus(tmp_path / "data")
    cfg, _ = tiny_cfg(tmp_path, {"train": {"bitc_head_affine": True}})
    warm = train.run(cfg, phase="warmup", out=tmp_path / "warm", seed=0, steps=2, **_kw(paths))
    run = load_run(warm)
    assert run.bitc.affine and run.bitc.heads["semantic"][1].bias is not None
    assert all(torch.equal(v, _load(warm)["ema"]["bitc"][k]) for k, v in run.bitc.state_dict().items())
    plain, _ = tiny_cfg(tmp_path, {"train": {"bitc_head_affine": False}})
    with pytest.raises(ValueError, match="train.bitc_head_affine"):
        train.run(plain, phase="branch", method="baseline", init=warm, out=tmp_path / "b", seed=0, steps=1,
                  **_kw(paths))


def test_snapshots_hold_the_ema_only_and_read_as_the_full_state(setup):
    """A convergence snapshot holds the EMA weights (model + BiT-C) and the run's identity, at
    most 1.1 x the EMA's bytes; load_run reads the same EMA model from it as from the full
    state of that step (so held-out and convergence numbers are unchanged), and refuses the
    training weights, which only last.pt / final.pt hold."""
    import io as _io

    from agrepa.training.checkpoint import snapshot_dict

    tmp, cfg, _, paths, warm = setup
    final = train.run(cfg, phase="branch", method="baseline", init=warm, out=tmp / "snap", seed=0, **_kw(paths))
    snaps = sorted((tmp / "snap" / "snapshots").glob("step_*.pt"))
    last = snaps[-1]
    full = _load(final)
    assert _load(last)["step"] == full["step"]                       # the last snapshot is the final step

    def nbytes(obj) -> int:
        buf = _io.BytesIO()
        torch.save(obj, buf)
        return buf.tell()

    # the run's identity (its config, ~20 kB) is a constant; the weights are the EMA's, no more
    identity = nbytes({k: v for k, v in snapshot_dict(full).items() if k != "ema"})
    assert last.stat().st_size - identity <= 1.1 * nbytes(full["ema"])
    assert last.stat().st_size < 0.6 * final.stat().st_size
    assert _tensors_equal(_load(last), snapshot_dict(full))
    a, b = load_run(last), load_run(final)
    assert (a.step, a.method, a.seed, a.plan) == (b.step, b.method, b.seed, b.plan)
    for x, y in ((a.model, b.model), (a.bitc, b.bitc)):
        assert _tensors_equal(x.state_dict(), y.state_dict())
    with pytest.raises(ValueError, match="EMA-only convergence snapshot"):
        load_run(last, use_ema=False)
