"""LSAC plans (agrepa.caching.selection, agrepa.caching.plan): stable-from steps, tau by bisection to a
budget, refresh, the three controls at the same budget, plan JSON; `agrepa lsac-select`."""
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agrepa import cli
from agrepa.caching import selection as lsac
from agrepa.caching.plan import CachePlan, read_plan, write_plan
from test_workflow_support import DEFAULT_CONFIG


def probe_rows(r_cond: np.ndarray, r_uncond: np.ndarray | None = None, domains=("speech", "audio")) -> pd.DataFrame:
    rows = []
    L, S = r_cond.shape
    for d in domains:                               # causal freezing at S/4, S/2, 3S/4: deeper layers cost less
        for l in range(L):
            for k in (S // 4, S // 2, 3 * S // 4):
                rows.append({"config": "A", "seed": 0, "domain": d, "branch": "baseline", "layer": l + 1, "step": k,
                             "t": k / S, "metric": "freeze_mel_snr", "score": 20.0 + 2 * l + k})
    for d in domains:
        for half, r in (("cond", r_cond), ("uncond", r_uncond if r_uncond is not None else r_cond)):
            for l in range(L):
                for i in range(1, S):
                    rows.append({"config": "A", "seed": 0, "domain": d, "branch": "baseline", "layer": l + 1,
                                 "step": i, "t": i / S, "metric": f"rel_change_{half}", "score": float(r[l, i])})
    return pd.DataFrame(rows)


def test_stable_from_is_the_first_step_after_which_r_stays_below_tau():
    r = np.array([np.nan, 0.5, 0.05, 0.3, 0.04, 0.02])
    assert lsac.stable_from(r, 0.1) == 4          # 0.3 at step 3 breaks the run that starts at 2
    assert lsac.stable_from(r, 0.4) == 2
    assert lsac.stable_from(r, 1.0) == 1
    assert lsac.stable_from(r, 0.01) == 6          # never: S
    assert lsac.reuse_steps(4, 6, None) == [4, 5]
    assert lsac.reuse_steps(2, 8, 3) == [2, 3, 5, 6]   # recompute at 4 and 7: every 3rd step from k-1 = 1
    with pytest.raises(ValueError, match="lsac.refresh"):
        lsac.reuse_steps(2, 8, 1)


def test_change_matrix_is_the_max_over_domains_and_halves():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 5)), rng.random((3, 5))
    df = probe_rows(a, b)
    df.loc[df["domain"] == "audio", "score"] *= 0.5
    r = lsac.change_matrix(df)
    assert np.isnan(r[:, 0]).all()
    assert np.allclose(r[:, 1:], np.maximum(a, b)[:, 1:])
    with pytest.raises(ValueError, match="layer 2 at step 3"):
        lsac.change_matrix(df[~((df["layer"] == 2) & (df["step"] == 3))])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), budget=st.sampled_from([0.1, 0.25, 0.4, 0.5]),
       refresh=st.sampled_from([None, 2, 3]))
def test_bisection_reaches_the_budget_with_the_smallest_tau(seed, budget, refresh):
    r = np.random.default_rng(seed).lognormal(-3, 1, size=(6, 10))
    p = lsac.lsac_plan(r, budget, refresh)
    reach = sum(len(lsac.reuse_steps(1, 10, refresh)) for _ in range(6)) / 60
    if reach < budget:
        assert p.attention_savings() == pytest.approx(reach)
        return
    assert p.attention_savings() >= budget
    tau = p.info["tau"]
    below = sum(len(s) for s in lsac._lsac_reuse(r, tau * (1 - 1e-9), refresh)[0].values()) / 60
    assert below < budget                          # any smaller tau misses the budget
    for l, k in p.info["stable_from"].items():
        assert p.reuse["attn"].get(int(l), []) == lsac.reuse_steps(k, 10, refresh)


def test_controls_match_the_lsac_plan():
    r = np.full((4, 8), 1.0)
    r[:, 0] = np.nan
    r[1, 3:] = 0.01                                # layer 2 settles from step 3, layer 4 from step 5
    r[3, 5:] = 0.02
    plans = {p.strategy: p for p in lsac.plans_for_budget(r, 0.25, None, ["lsac", "random", "pab", "deepcache"],
                                                          seed=3)}
    with pytest.raises(ValueError, match="causal strategy needs"):
        lsac.plans_for_budget(r, 0.25, None, ["causal"], seed=3)
    p = plans["lsac"]
    assert p.reuse["attn"] == {2: [3, 4, 5, 6, 7], 4: [5, 6, 7]} and p.attention_savings() == 0.25
    rnd = plans["random"]
    assert rnd.cells() == p.cells()
    assert sorted(map(len, rnd.reuse["attn"].values())) == [3, 5]
    pab = plans["pab"]
    assert pab.reuse["attn"] == {l: [4, 6] for l in range(1, 5)} and "mlp" not in pab.reuse   # round(8 / 4) = 2 steps
    dc = plans["deepcache"]
    assert dc.reuse["attn"] == dc.reuse["mlp"] == pab.reuse["attn"]
    assert dc.attention_savings() == pab.attention_savings() == 0.25


def test_plan_json_round_trip_and_validation(tmp_path):
    p = CachePlan("lsac_f0.25", "lsac", 8, 4, {"attn": {2: [5, 3]}, "mlp": {}}, 0.25, {"tau": 0.1})
    write_plan(tmp_path / "p.json", p)
    q = read_plan(tmp_path / "p.json")
    assert q.reuse == {"attn": {2: [3, 5]}, "mlp": {}} and q.info["tau"] == 0.1 and q.budget == 0.25
    assert json.loads((tmp_path / "p.json").read_text())["attention_savings"] == pytest.approx(2 / 32)
    with pytest.raises(ValueError, match="step 0 always computes"):
        CachePlan("x", "lsac", 8, 4, {"attn": {2: [0, 3]}})
    with pytest.raises(ValueError, match="layer 5 outside"):
        CachePlan("x", "lsac", 8, 4, {"attn": {5: [3]}})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "strategy": "lsac", "steps": 8, "n_layers": 4,
                               "reuse": {"attn": {"1": [9]}}}))
    with pytest.raises(ValueError, match="bad.json: invalid cache plan"):
        read_plan(bad)
    with pytest.raises(ValueError, match="L=4, S=8"):
        p.check_model(6, 8)


def test_lsac_select_cli_writes_every_plan_and_the_index_last(tmp_path):
    rng = np.random.default_rng(1)
    r = rng.lognormal(-3, 1, size=(12, 16))
    probe = tmp_path / "probe.csv"
    probe_rows(r).to_csv(probe, index=False)
    out = tmp_path / "plans"
    rc = cli.main(["lsac-select", "--config", str(DEFAULT_CONFIG), "--probe", str(probe), "--seed", "0",
                   "--out-dir", str(out)])
    assert rc == 0
    index = json.loads((out / "index.json").read_text())
    assert len(index["plans"]) == 4 * 5
    for name in index["plans"]:
        plan = read_plan(out / f"{name}.json")
        assert plan.steps == 16 and plan.n_layers == 12
    assert read_plan(out / "lsac_f0.25.json").attention_savings() >= 0.25
    rc = cli.main(["lsac-select", "--config", str(DEFAULT_CONFIG), "--probe", str(probe), "--seed", "0",
                   "--out-dir", str(out), "--set", "sample.steps=32"])
    assert rc == 2                                  # probed 16 steps, sampler set to 32


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), budget=st.sampled_from([0.1, 0.25, 0.4]))
def test_causal_plan_no_combination_with_as_many_cells_loses_less(seed, budget):
    import itertools

    rng = np.random.default_rng(seed)
    S, L, grid = 8, 4, (2, 4, 6)
    freeze = {l: dict(zip(grid, sorted(rng.lognormal(-8, 2, 3), reverse=True))) for l in range(1, L + 1)}
    p = lsac.causal_plan(freeze, S, L, budget)
    assert p.attention_savings() >= budget
    chosen = {int(l): k for l, k in p.info["freeze_from"].items()}
    for l, k in chosen.items():
        assert p.reuse["attn"].get(l, []) == ([] if k is None else list(range(k + 1, S)))
    cost = sum(freeze[l][k] for l, k in chosen.items() if k is not None)
    assert p.info["predicted_distortion"] == pytest.approx(cost)
    cells = p.cells()["attn"]
    for combo in itertools.product([None, *grid], repeat=L):
        c = sum(S - 1 - k for k in combo if k is not None)
        if c >= cells:
            assert sum(freeze[l + 1][k] for l, k in enumerate(combo) if k is not None) >= cost * (1 - 1e-9)


def test_freeze_distortion_takes_the_worst_domain():
    df = pd.DataFrame([{"domain": d, "layer": 1, "step": 4, "metric": "freeze_mel_snr", "score": s}
                       for d, s in (("speech", 30.0), ("audio", 20.0))]
                      + [{"domain": "speech", "layer": 2, "step": 4, "metric": "freeze_mel_snr", "score": np.inf}])
    assert lsac.freeze_distortion(df) == {1: {4: pytest.approx(0.01)}, 2: {4: 0.0}}
    with pytest.raises(ValueError, match="causal freezing"):
        lsac.freeze_distortion(df.assign(metric="rel_change_cond"))


def test_lsac_runs_on_the_first_n_seeds_and_a_bad_count_names_the_key():
    from agrepa import config as config_mod

    cfg = config_mod.load(DEFAULT_CONFIG, ["seeds=[5, 6]", "lsac.n_seeds=2"])   # any seeds: no second list to edit
    assert cfg["lsac"]["n_seeds"] == 2
    with pytest.raises(ValueError, match=r"lsac\.n_seeds: 3 must lie in 0\.\.2"):
        config_mod.load(DEFAULT_CONFIG, ["seeds=[5, 6]", "lsac.n_seeds=3"])
