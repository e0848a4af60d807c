"""Table 4 from cached results: paired differences, the table, its comparison with the paper, the figure."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from agrepa import config as config_mod
from agrepa.cli import main as cli_main
from agrepa.reports import table4 as t4
from test_workflow_support import DEFAULT_CONFIG


def _eval(path, wer_clips, mos_clips, fad):
    """An evaluation JSON as `agrepa evaluate` writes it: metric rows and per-clip records."""
    clips = [{"id": f"s{i}", "domain": "speech", "input": "generated", "wer": w, "wer_errors": w / 100 * 4,
              "wer_words": 4.0, "ref_norm": "a b c d", "mos_ovrl": m}
             for i, (w, m) in enumerate(zip(wer_clips, mos_clips))]
    errors = sum(w / 100 * 4 for w in wer_clips)
    metrics = [{"domain": "speech", "metric": "wer", "value": 100 * errors / (4 * len(clips)), "input": "generated"},
               {"domain": "speech", "metric": "fad", "value": fad, "input": "generated"},
               {"domain": "speech", "metric": "mos_ovrl", "value": float(np.mean(mos_clips)), "input": "generated"}]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run": {}, "metrics": metrics, "clips": clips}))
    return path


def _probes(path, L, best):
    rows = [{"config": "A", "seed": 0, "domain": d, "probe": "foga", "layer": l, "t": t,
             "score": (2.0 if l == best[d] else 1.0 / l), "spread": math.nan, "n": 4}
            for d in ("speech", "audio") for l in range(1, L + 1) for t in (0.25, 0.75)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def results(tmp_path):
    cfg = config_mod.load([DEFAULT_CONFIG])
    cfg = config_mod.deep_merge(cfg, {"report": {"table4": {"architectures": ["dit", "f5"], "seeds": [0, 1]},
                                                 "paired": {"bootstrap": 200, "permutations": 200}}})
    res = tmp_path / "results"
    evals, probes, sels = [], [], []
    for arch, prefix in (("dit", res / "eval"), ("f5", res / "eval" / "f5")):
        for seed in (0, 1):
            evals.append(f"{arch}:" + str(_eval(prefix / "A" / f"seed{seed}" / "baseline.json",
                                                [50, 25, 75, 50], [2.0, 2.2, 2.1, 1.9], 3.0 + seed)))
            evals.append(f"{arch}:" + str(_eval(prefix / "A" / f"seed{seed}" / "ag_repa.json",
                                                [25, 0, 50, 25], [2.3, 2.4, 2.5, 2.2], 2.5 + seed)))
            pdir = res / "probes" / ("" if arch == "dit" else arch) / "A" / f"seed{seed}" / "probes.csv"
            probes.append(f"{arch}:" + str(_probes(pdir, 12, {"speech": 3, "audio": 1})))
            sel = res / "selection" / arch / "A" / f"seed{seed}" / "foga.json"
            sel.parent.mkdir(parents=True, exist_ok=True)
            sel.write_text(json.dumps({"strategy": "foga", "mode": "per_domain", "sets": {
                "speech": {"layers": [3, 1, 2], "weights": [0.5, 0.3, 0.2]},
                "audio": {"layers": [1, 2, 3], "weights": [0.5, 0.3, 0.2]}}}))
            sels.append(f"{arch}:{sel}")
    return cfg, evals, probes, sels


def test_table4_rows_paired_deltas_and_top_foga(results):
    cfg, evals, probes, sels = results
    table = t4.table4(t4.load_evals(t4.split_tagged(evals, "eval")),
                      t4.read_tagged_probes(t4.split_tagged(probes, "probes")),
                      t4.read_tagged_selections(t4.split_tagged(sels, "selection")), cfg)
    assert list(table["arch"]) == ["dit", "dit", "f5", "f5"]
    assert list(table["Method"]) == ["DiT", "+ AG-REPA", "F5-TTS-style", "+ AG-REPA"]
    ag = table[table["method"] == "ag_repa"].set_index("arch")
    # WER: 12 of 32 words wrong -> 8 of 32 words wrong on the same clips: -25 points (corpus WER in %)
    assert ag.loc["f5", "WER_delta"] == pytest.approx(-25.0) and ag.loc["f5", "WER_ci_high"] < 0
    assert ag.loc["f5", "WER_n_units"] == 8 and ag.loc["f5", "WER_resolved"] and "*" in ag.loc["f5", "Δ WER"]
    assert ag.loc["f5", "WER_p_value"] < 0.05 and ag.loc["f5", "WER_note"] == "paired by seed and clip"
    assert ag.loc["f5", "MOS_delta"] == pytest.approx(0.3) and ag.loc["f5", "MOS_ci_low"] > 0
    assert ag.loc["f5", "FAD_delta"] == pytest.approx(-0.5) and ag.loc["f5", "FAD_note"] == "paired by seed (a set statistic)"
    assert ag.loc["f5", "FAD_n_units"] == 2                                  # one unit per seed
    assert ag.loc["f5", "FAD"] == "3.00 ± 0.71"
    assert ag.loc["f5", "Top-3 FoG-A (speech)"] == "L3 (block1), L1 (text1), L2 (text2)"   # units 1-2: text
    assert ag.loc["dit", "Top-3 FoG-A (audio)"].startswith("L1 (block1)")
    assert ag.loc["f5", "AG-REPA layers"] == "speech L3, L1, L2 / audio L1, L2, L3"
    vs = t4.table4_vs_paper(table, cfg)
    row = vs[(vs.arch == "f5") & (vs.metric == "FAD")].iloc[0]
    assert row.paper_baseline == 1.45 and row.paper_ag_repa == 1.15 and row.same_direction
    assert row.ours_rel_pct == pytest.approx(100 * (3.0 - 3.5) / 3.5)


def test_report_cli_writes_table_vs_paper_and_figure(results, tmp_path):
    cfg, evals, probes, sels = results
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(json.dumps({"report": cfg["report"], "eval": cfg["eval"]}))
    out = tmp_path / "results" / "table4.csv"
    assert cli_main(["report", "table4", "--config", str(DEFAULT_CONFIG), "--config", str(cfg_path),
                     "--eval", *evals, "--probes", *probes, "--selection", *sels, "--out", str(out),
                     "--vs-paper", str(tmp_path / "results" / "table4_vs_paper.csv")]) == 0
    assert len(pd.read_csv(out)) == 4 and len(pd.read_csv(tmp_path / "results" / "table4_vs_paper.csv")) == 6
    fig = tmp_path / "fig.png"
    assert cli_main(["report", "table4-figure", "--config", str(DEFAULT_CONFIG), "--table",
                     str(tmp_path / "results" / "table4_vs_paper.csv"), "--out", str(fig)]) == 0
    assert fig.stat().st_size > 0
    assert cli_main(["report", "table4", "--config", str(DEFAULT_CONFIG), "--eval", "unet:x.json",
                     "--probes", *probes, "--out", str(out), "--vs-paper", str(tmp_path / "v.csv")]) == 2


def test_a_set_statistic_with_one_seed_has_a_difference_but_no_ci(results):
    cfg, evals, _, _ = results
    runs = t4.load_evals(t4.split_tagged(evals, "eval"))
    fad = {"domain": "speech", "metric": "fad"}
    one = t4.delta_of(runs, "f5", [1], "baseline", "ag_repa", fad, cfg)
    assert one["delta"] == pytest.approx(-0.5) and math.isnan(one["ci_low"]) and not one["resolved"]
    assert one["note"].startswith("one seed")
    none = t4.delta_of(runs, "f5", [7], "baseline", "ag_repa", fad, cfg)
    assert math.isnan(none["delta"]) and none["note"] == "no finite values"
    # a per-clip metric of a seed with no evaluation: no paired clips
    assert t4.delta_of(runs, "f5", [7], "baseline", "ag_repa", {"domain": "speech", "metric": "wer"},
                       cfg)["note"] == "no paired clips"
