"""Seed 003's Tables R1, R2 and Figure R3 from synthetic metrics (agrepa.reports.rr, no torch)."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from agrepa import config as config_mod
from agrepa.reports import rr
from agrepa.reports.tables import METRIC_COLUMNS
from test_workflow_support import DEFAULT_CONFIG


@pytest.fixture(scope="module")
def cfg():
    return config_mod.load(DEFAULT_CONFIG)


def _rows(method, seed, values, tc="A", input_="generated"):
    return [{"experiment": "tiny", "token_config": tc, "seed": seed, "method": method, "domain": d, "metric": m,
             "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "n": 8, "model": "emb", "note": "", "input": input_,
             "source": "x"} for (d, m), v in values.items()]


def synthetic_metrics(cfg, shift=None):
    """Every R1 / R2 run: WER, TERs, FADs, event accuracy / KL, RSA and MOS per seed; each method = baseline + its shift."""
    runs = config_mod.rr_runs(cfg)
    shift = shift or {}
    g = np.random.default_rng(0)
    rows = []
    for method in runs["methods"]:
        for seed in (0, 1, 2):
            base = {("speech", "wer"): 90 + 3 * seed, ("speech", "fad"): 100 + seed, ("audio", "fad"): 80.0,
                    ("speech", "rsa"): 0.1 + 0.05 * seed, ("audio", "rsa"): 0.2, ("speech", "mos_ovrl"): 2.0,
                    ("speech", "ter"): 60.0 + seed, ("audio", "ter"): 70.0, ("audio", "event_top1"): 0.3,
                    ("audio", "event_kl"): 1.5}
            vals = {k: v + shift.get(method, 0.0) + 1e-3 * g.normal() for k, v in base.items()}
            rows += _rows(method, seed, vals)
            rows += _rows(method, seed, {("speech", "rsa_gt"): 0.5 + 0.1 * seed, ("audio", "rsa_gt"): 0.4},
                          input_="ground_truth")
    rows += [{**r, "token_config": "", "seed": math.nan, "method": "reference", "input": "resynthesis"}
             for r in _rows("reference", 0, {("speech", "wer"): 20.0, ("speech", "fad"): 1.0, ("audio", "fad"): 2.0,
                                               ("speech", "mos_ovrl"): 3.0})]
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def test_labels_and_settings_follow_the_catalogue(cfg):
    assert [rr.rr_label(cfg, m) for m in cfg["report"]["rr"]["r1"]["methods"]] == \
        ["Baseline", "RR-max", "RR-mean", "RR-max (every step)", "AG-REPA", "AG-REPA + RR-max"]
    s = rr.branch_settings(cfg, "rr_lam0p3_cfg0p05")
    assert (s["cfg_mode"], s["cfg_drop_tokens"], s["rr"]["lambda"], s["rr"]["pool"]) == ("batch", 0.05, 0.3, "max")
    assert rr.branch_settings(cfg, "baseline") == {"cfg_mode": "sample", "cfg_drop_tokens": 0.1, "rr": None}


def test_paired_delta_recovers_a_known_shift():
    a, b = {0: 1.5, 1: 2.6, 2: 3.4}, {0: 1.0, 1: 2.0, 2: 3.0}
    d, lo, hi, n = rr.paired_delta(a, b, 0.95)
    assert d == pytest.approx(0.5) and lo < 0.5 < hi and n == 3 and lo > 0
    assert rr.fmt_delta(d, lo, hi, 2).endswith("*")
    d, lo, hi, n = rr.paired_delta(b, b, 0.95)
    assert d == 0 and n == 3 and rr.fmt_delta(d, lo, hi, 2) == "+0.00 [+0.00, +0.00]"
    d, lo, hi, n = rr.paired_delta({0: 2.0, 3: 1.0}, b, 0.95)          # only seed 0 in common
    assert (d, n) == (1.0, 1) and math.isnan(lo) and rr.fmt_delta(d, lo, hi, 1) == "+1.0"


def test_table_r1(cfg):
    shift = {"rr_max": -2.0, "rr_ag_repa_max": 1.0}
    t = rr.table_r1(synthetic_metrics(cfg, shift), cfg)
    assert list(t["method"]) == cfg["report"]["rr"]["r1"]["methods"] + ["reference"]
    r = t.set_index("method")
    assert r.loc["rr_max", "speech_wer_delta"] == pytest.approx(-2.0, abs=0.01)
    assert r.loc["rr_max", "Speech WER Δ"].endswith("*") and r.loc["rr_max", "versus"] == "rr_baseline"
    assert r.loc["rr_mean", "speech_wer_delta"] == pytest.approx(0.0, abs=0.01)
    assert r.loc["rr_mean", "speech_wer_delta_ci_low"] < 0 < r.loc["rr_mean", "speech_wer_delta_ci_high"]
    assert r.loc["rr_baseline", "Speech WER"] == "93.00 ± 3.00" and r.loc["rr_baseline", "n_seeds"] == 3
    assert r.loc["rr_max", "cfg_mode"] == "batch" and r.loc["rr_max", "rr_lambda"] == 3.0
    assert r.loc["rr_baseline", "rr_lambda"] == 0.0 and r.loc["rr_max_always", "rr_when"] == "always"
    # the floor: the reference evaluation, and RSA of the ground-truth audio (one per seed)
    assert r.loc["reference", "speech_wer_mean"] == 20.0
    assert r.loc["reference", "speech_rsa_mean"] == pytest.approx(0.6)
    assert "CLAP not computed" in r.loc["rr_max", "notes"]
    # a column whose metric the evaluation lacks says so
    cols = config_mod.deep_merge(cfg, {"report": {"rr": {"columns": {"Speaker sim": {"domain": "speech",
                                                                                      "metric": "spk_sim"}}}}})
    t = rr.table_r1(synthetic_metrics(cols), cols).set_index("method")
    assert t.loc["rr_max", "Speaker sim"] == "n/a" and "speech/spk_sim not in the evaluation" in t.loc["rr_max", "notes"]
    assert r.loc["rr_max", "Event KL Δ"].endswith("*") and r.loc["rr_max", "speech_ter_delta"] == pytest.approx(-2.0, abs=0.01)
    with pytest.raises(ValueError, match="method 'rr_mean'"):
        m = synthetic_metrics(cfg)
        rr.table_r1(m[m["method"] != "rr_mean"], cfg)


def test_table_r2_reads_lambda_and_rate_from_each_method(cfg):
    t = rr.table_r2(synthetic_metrics(cfg), cfg)
    assert list(t["method"]) == config_mod.rr_runs(cfg)["r2"]["methods"]
    r = t.set_index("method")
    assert (r.loc["rr_lam10_cfg0p2", "λ"], r.loc["rr_lam10_cfg0p2", "CFG rate"]) == (10.0, 0.2)
    assert (r.loc["rr_max", "λ"], r.loc["rr_max", "CFG rate"]) == (3.0, 0.1)
    assert (r.loc["rr_baseline", "λ"], r.loc["rr_baseline", "CFG rate"]) == (0.0, 0.1)
    assert r.loc["rr_max", "Audio FAD"].startswith("80.00 [79.90, 80.10]")       # one seed: value [CI]
    assert len(t) == 4 * 3 + 1


def r3_evals(cfg, root):
    """Evaluation JSONs of Figure R3's methods at every scale of report.rr.r3 (WER falls with the scale)."""
    paths = []
    for method in cfg["report"]["rr"]["r3"]["methods"]:
        for scale in cfg["report"]["rr"]["r3"]["scales"]:
            p = root / f"cfg{scale}" / "A" / "seed0" / f"{method}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            rows = [{"domain": "speech", "metric": "wer", "value": 100 - 10 * scale, "ci_low": 90 - 10 * scale,
                     "ci_high": 110 - 10 * scale, "n": 8},
                    {"domain": "audio", "metric": "event_kl", "value": None, "note": "no audio clips", "n": 0}]
            p.write_text(json.dumps({"run": {"sample_meta": {"cfg_scale": scale}}, "metrics": rows}))
            paths.append(p)
    return paths


def test_figure_r3_from_evaluations(cfg, tmp_path):
    paths = r3_evals(cfg, tmp_path)
    frame = rr.figure_r3_frame(paths, cfg)
    assert set(frame["scale"]) == {1.0, 2.0, 3.0} and set(frame["label"]) == {"Speech WER", "Event KL"}
    wer = frame[(frame["label"] == "Speech WER") & (frame["method"] == "rr_max")].sort_values("scale")
    assert wer["value"].tolist() == [90.0, 80.0, 70.0]
    out = tmp_path / "figure_r3.png"
    rr.figure_r3(frame, cfg, out)
    assert out.stat().st_size > 1000
    bad = tmp_path / "bad" / "A" / "seed0" / "rr_max.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps({"run": {}, "metrics": []}))
    with pytest.raises(ValueError, match="no run.sample_meta.cfg_scale"):
        rr.figure_r3_frame([bad], cfg)
