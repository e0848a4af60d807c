"""Tables 2 and 3, metrics.csv and the *_vs_paper.csv files from small synthetic results."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from agrepa import cli
from agrepa import config as agrepa_config
from agrepa.reports import figures, tables
from test_workflow_support import DEFAULT_CONFIG

METHODS = ["baseline", "repa_l4", "ag_repa", "sel_random"]
# speech FAD per method and seed (seed 0, seed 1)
SPEECH_FAD = {"baseline": (2.0, 2.2), "repa_l4": (1.8, 1.9), "ag_repa": (1.5, 1.7), "sel_random": (1.9, 2.1)}


def small_cfg():
    cfg = agrepa_config.load(DEFAULT_CONFIG)
    cfg["name"] = "unit"
    cfg["seeds"] = [0, 1]
    cfg["token_configs"] = ["A"]
    cfg["selection"]["strategies"] = ["random", "foga"]
    cfg["report"]["table2"]["methods"] = ["baseline", "repa_l4", "ag_repa"]
    cfg["eval"]["convergence"]["threshold"] = None
    cfg["eval"]["convergence"]["metric"] = "fad"      # the synthetic curves are FAD curves
    cfg["report"]["table2"]["wer_percent"] = True     # the synthetic JSONs store WER as a fraction
    return cfg


FM_SHIFT = {"baseline": 0.0, "repa_l4": 0.0, "ag_repa": -0.05, "sel_random": 0.01}


def clip_records(method, seed):
    """Per-clip records as `agrepa evaluate` writes them: held-out losses (clip difficulty shared by
    every method of a seed, the pairing) and WER counts of generated clips."""
    rng = np.random.default_rng(100 * seed + METHODS.index(method))
    base = np.random.default_rng(seed).uniform(0.8, 1.2, 10)
    recs = [{"id": f"v{i}", "domain": "speech" if i % 2 else "audio", "input": "heldout",
             "fm_loss": float(b + FM_SHIFT[method] + rng.normal(0, 0.005))} for i, b in enumerate(base)]
    recs += [{"id": f"s{i}", "domain": "speech", "input": "generated", "wer_errors": float(i % 3),
              "wer_words": 6.0, "wer": 100 * (i % 3) / 6} for i in range(4)]
    return recs


def eval_json(method, seed):
    fad = SPEECH_FAD[method][seed]
    return {"run": {"method": method, "seed": seed}, "clips": clip_records(method, seed),
            "metrics": [
                {"domain": "speech", "metric": "wer", "value": 0.05 + 0.01 * seed + (0.02 if method == "baseline" else 0),
                 "ci_low": 0.03, "ci_high": 0.08, "n": 12, "model": "tiny.en", "note": ""},
                {"domain": "speech", "metric": "fad", "value": fad, "ci_low": None, "ci_high": None, "n": 12,
                 "model": "whisper-encoder", "note": ""},
                {"domain": "audio", "metric": "fad", "value": fad + 1.0, "ci_low": None, "ci_high": None, "n": 10,
                 "model": "whisper-encoder", "note": ""},
                {"domain": "speech", "metric": "mos_ovrl", "value": 3.0 + 0.1 * seed, "ci_low": 2.9, "ci_high": 3.2,
                 "n": 12, "model": "dnsmos", "note": ""},
                {"domain": "audio", "metric": "mos_ovrl", "value": None, "ci_low": None, "ci_high": None, "n": 0,
                 "model": "", "note": "no audio MOS predictor configured"},
            ]}


@pytest.fixture
def results(tmp_path):
    """A tiny results tree: eval JSONs, convergence CSVs, selection JSONs, a reference eval."""
    evals, convs, sels = [], [], []
    for seed in (0, 1):
        for m in METHODS:
            p = tmp_path / "eval" / "A" / f"seed{seed}" / f"{m}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(eval_json(m, seed)))
            evals.append(p)
            c = tmp_path / "convergence" / "A" / f"seed{seed}" / f"{m}.csv"
            c.parent.mkdir(parents=True, exist_ok=True)
            final = SPEECH_FAD[m][seed]
            pd.DataFrame({"step": [100, 200, 300] * 2, "domain": ["speech"] * 3 + ["audio"] * 3,
                          "fad": [final + 1.0, final + 0.3, final, final + 2, final + 1.5, final + 1],
                          "n": 8, "embedding": "whisper-encoder"}).to_csv(c, index=False)
            convs.append(c)
        for strategy, layers in (("random", [2, 5, 9]) if seed == 0 else ("random", [3, 5, 7]), ("foga", [1, 2, 3])):
            s = tmp_path / "selection" / "A" / f"seed{seed}" / f"{strategy}.json"
            s.parent.mkdir(parents=True, exist_ok=True)
            one = {"layers": layers, "weights": [1 / 3] * 3, "scores": {}}
            sets = {"speech": one, "audio": dict(one, layers=[1, 4, 2]), "merged": one}
            mode = "merged" if strategy == "random" else "per_domain"   # Table 3 shows what training used
            s.write_text(json.dumps({"strategy": strategy, "k": 3, "mode": mode, "sets": sets, "seed": seed}))
            sels.append(s)
    ref = tmp_path / "eval" / "reference.json"
    ref.write_text(json.dumps({"run": {}, "metrics": [{"domain": "speech", "metric": "wer", "value": 0.02,
                                                       "n": 12, "model": "tiny.en"}]}))
    return {"evals": evals, "convs": convs, "sels": sels, "ref": ref, "root": tmp_path}


def test_metrics_frame_is_tidy_long_with_runs_from_paths(results):
    df = tables.metrics_frame(results["evals"], results["ref"], experiment="unit")
    assert list(df.columns) == tables.METRIC_COLUMNS
    assert len(df) == 2 * len(METHODS) * 5 + 1
    row = df[(df["method"] == "ag_repa") & (df["seed"] == 1) & (df["metric"] == "fad") & (df["domain"] == "speech")]
    assert row["value"].item() == pytest.approx(1.7)
    assert row["token_config"].item() == "A"
    ref = df[df["method"] == tables.REFERENCE_METHOD]
    assert len(ref) == 1 and math.isnan(ref["seed"].item())
    audio_mos = df[(df["metric"] == "mos_ovrl") & (df["domain"] == "audio")]
    assert audio_mos["value"].isna().all()
    assert (audio_mos["note"] == "no audio MOS predictor configured").all()


def test_eval_path_without_run_layout_is_a_clear_error(tmp_path):
    p = tmp_path / "loose.json"
    p.write_text(json.dumps({"metrics": []}))
    with pytest.raises(ValueError, match="loose.json"):
        tables.metrics_frame([p])
    bad = tmp_path / "A" / "seed0" / "m.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps({"metrics": [{"domain": "speech", "value": 1.0}]}))
    with pytest.raises(ValueError, match=r"m.json: metrics\[0\] has no 'metric'"):
        tables.metrics_frame([bad])


def test_table2_mean_std_over_seeds_and_provenance(results):
    cfg = small_cfg()
    df = tables.metrics_frame(results["evals"], results["ref"], experiment="unit")
    t2 = tables.table2(df, cfg)
    assert list(t2["method"]) == ["baseline", "repa_l4", "ag_repa", "reference"]
    ref = t2[t2["method"] == "reference"].iloc[0]
    assert ref["speech_wer_mean"] == pytest.approx(2.0) and ref["Speech FAD"] == "n/a"
    ag = t2[t2["method"] == "ag_repa"].iloc[0]
    assert ag["speech_fad_mean"] == pytest.approx(1.6)
    assert ag["speech_fad_std"] == pytest.approx(np.std([1.5, 1.7], ddof=1))
    assert ag["Speech FAD"] == "1.60 ± 0.14"
    # WER shown in percent: mean of 0.05, 0.06 -> 5.5 %
    assert ag["speech_wer_mean"] == pytest.approx(5.5)
    assert ag["Audio MOS"] == "n/a"
    assert "no audio MOS predictor configured" in ag["notes"]
    assert ag["n_seeds"] == 2 and ag["seeds"] == "0 1" and ag["experiment"] == "unit"
    assert ag["asr_model"] == "tiny.en" and ag["fad_embedding"] == "whisper-encoder"
    assert ag["mos_model"] == "dnsmos"
    assert ag["n_clips"] == "audio=10; speech=12"
    assert t2[t2["method"] == "repa_l4"]["Method"].item() == "REPA @ Layer 4"


def test_table2_missing_method_names_it(results):
    cfg = small_cfg()
    cfg["report"]["table2"]["methods"] = ["baseline", "repa_l8"]
    df = tables.metrics_frame(results["evals"])
    with pytest.raises(ValueError, match="repa_l8"):
        tables.table2(df, cfg)


def test_table2_vs_paper_relative_changes(results):
    cfg = small_cfg()
    df = tables.metrics_frame(results["evals"])
    t2 = tables.table2(df, cfg)
    vs = tables.table2_vs_paper(t2, cfg)
    row = vs[(vs["method"] == "ag_repa") & (vs["metric"] == "Speech FAD")].iloc[0]
    assert row["paper"] == pytest.approx(1.29)
    assert row["paper_vs_baseline_pct"] == pytest.approx(100 * (1.29 - 1.84) / 1.84)
    assert row["ours_vs_baseline_pct"] == pytest.approx(100 * (1.6 - 2.1) / 2.1)
    assert bool(row["same_direction"]) is True
    mos = vs[(vs["method"] == "baseline") & (vs["metric"] == "Speech MOS")].iloc[0]
    assert mos["paper"] == pytest.approx(3.62) and mos["paper_std"] == pytest.approx(0.08)


def test_table3_gain_convergence_and_reused_foga_run(results):
    cfg = small_cfg()
    df = tables.metrics_frame(results["evals"])
    conv = tables.convergence_frame(results["convs"])
    sels = tables.read_selections(results["sels"])
    t3 = tables.table3(df, conv, sels, cfg)
    assert list(t3["strategy"]) == ["baseline", "random", "foga"]
    foga = t3[t3["strategy"] == "foga"].iloc[0]
    assert foga["method"] == "ag_repa"          # FoG-A row reuses the AG-REPA run
    assert foga["Top-3 Layers"] == "speech L1, L2, L3 / audio L1, L4, L2"
    assert foga["rel_gain_pct"] == pytest.approx(100 * (2.1 - 1.6) / 2.1)
    assert foga["Rel. Gain"] == "+23.8%"
    # threshold (null) = baseline's final speech FAD, mean over seeds = 2.1;
    # ag_repa curves at steps 100/200/300, linear interpolation between snapshots:
    # seed0 [2.5, 1.8, 1.5] -> 100 + 100 * 0.4 / 0.7; seed1 [2.7, 2.0, 1.7] -> 100 + 100 * 0.6 / 0.7
    assert foga["threshold"] == pytest.approx(2.1)
    assert foga["convergence_mean"] == pytest.approx((100 + 400 / 7 + 100 + 600 / 7) / 2)
    rnd = t3[t3["strategy"] == "random"].iloc[0]
    assert rnd["Top-3 Layers"] == "seed 0: L2, L5, L9 | seed 1: L3, L5, L7"
    # random: seed0 [2.9, 2.2, 1.9] -> 200 + 100 * 0.1 / 0.3; seed1 [3.1, 2.4, 2.1] -> 300
    assert rnd["convergence_mean"] == pytest.approx((200 + 100 / 3 + 300) / 2)
    base = t3[t3["strategy"] == "baseline"].iloc[0]
    assert base["Rel. Gain"] == "—" and base["Training steps"] == 300     # the last snapshot of the curves
    # a fixed threshold that nobody reaches -> N/A
    cfg["eval"]["convergence"]["threshold"] = 0.5
    t3b = tables.table3(df, conv, sels, cfg)
    assert (t3b["Convergence"] == "N/A").all()
    vs = tables.table3_vs_paper(t3)
    g = vs[(vs["strategy"] == "foga") & (vs["metric"] == "Rel. Gain")].iloc[0]
    assert g["paper"] == pytest.approx(29.9) and g["ours"] == pytest.approx(foga["rel_gain_pct"])


def test_steps_to_threshold_interpolates_between_snapshots():
    curve = pd.DataFrame({"step": [300, 100, 200], "value": [1.0, 3.0, 1.4]})
    # (100, 3.0) -> (200, 1.4) crosses 1.5 at 100 + 100 * (3.0 - 1.5) / (3.0 - 1.4)
    assert tables.steps_to_threshold(curve, 1.5) == pytest.approx(193.75)
    assert tables.steps_to_threshold(curve, 3.0) == 100
    assert math.isnan(tables.steps_to_threshold(curve, 0.5))


def test_paper_reference_has_tables_2_and_3():
    ref = tables.paper_reference()
    t2 = ref[ref["table"] == "table2"]
    assert len(t2) == 8 * 5
    assert t2[(t2["method"] == "ag_repa") & (t2["metric"] == "Speech WER")]["value"].item() == pytest.approx(3.45)
    t3 = ref[ref["table"] == "table3"]
    assert set(t3["method"]) == {"baseline", "random", "lasp", "gradnorm", "foga"}


def test_report_cli_writes_tables_and_figures(results, tmp_path):
    cfg = small_cfg()
    cfg_path = tmp_path / "cfg.yaml"
    agrepa_config.save_resolved(cfg, tmp_path, "cfg.yaml")
    out = tmp_path / "out"
    base = ["--config", str(cfg_path)]
    assert cli.main(["report", "metrics", *base, "--eval", *map(str, results["evals"]),
                     "--reference", str(results["ref"]), "--out", str(out / "metrics.csv")]) == 0
    assert cli.main(["report", "table2", *base, "--metrics", str(out / "metrics.csv"),
                     "--out", str(out / "table2.csv"), "--vs-paper", str(out / "table2_vs_paper.csv")]) == 0
    assert cli.main(["report", "table3", *base, "--metrics", str(out / "metrics.csv"),
                     "--convergence", *map(str, results["convs"]), "--selection", *map(str, results["sels"]),
                     "--out", str(out / "table3.csv"), "--vs-paper", str(out / "table3_vs_paper.csv")]) == 0
    for name in ("metrics.csv", "table2.csv", "table2_vs_paper.csv", "table3.csv", "table3_vs_paper.csv"):
        assert (out / name).stat().st_size > 0
    assert len(pd.read_csv(out / "table2.csv")) == 4     # 3 methods + the reference floor
    assert "reference" not in set(pd.read_csv(out / "table2_vs_paper.csv")["method"])
    style = tmp_path / "s.mplstyle"
    style.write_text("font.size: 7\n")
    assert cli.main(["report", "convergence", *base, "--convergence", *map(str, results["convs"]),
                     "--style", str(style), "--out", str(out / "conv.png")]) == 0
    assert cli.main(["report", "seed-scatter", *base, "--metrics", str(out / "metrics.csv"),
                     "--style", str(style), "--out", str(out / "scatter.png")]) == 0
    for name in ("conv.png", "scatter.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a missing style file is a clear error naming it
    assert cli.main(["report", "seed-scatter", *base, "--metrics", str(out / "metrics.csv"),
                     "--style", str(tmp_path / "nope.mplstyle"), "--out", str(out / "x.png")]) == 2


def test_figure_format_follows_extension(results, tmp_path):
    cfg = small_cfg()
    df = tables.metrics_frame(results["evals"])
    path = figures.seed_scatter(df, cfg, tmp_path / "s.pdf")
    assert path.read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="s.gif"):
        figures.seed_scatter(df, cfg, tmp_path / "s.gif")


def test_every_report_subcommand_runs_without_torch(results, tmp_path):
    """Tables and figures come from CSV/JSON with pandas and matplotlib alone: no torch, no model."""
    import subprocess
    import sys

    from test_lsac_probe import synthetic_run
    from test_report_probes import run_csv
    from test_reports_rr import r3_evals, synthetic_metrics

    cfg = small_cfg()
    cfg["report"]["table4"].update(architectures=["dit"], seeds=[0, 1])
    cfg_path = agrepa_config.save_resolved(cfg, tmp_path, "cfg.yaml")
    probes = [str(run_csv(tmp_path, "A", 0)), str(run_csv(tmp_path, "A", 1))]
    out, base = tmp_path / "out", ["--config", str(cfg_path)]
    metrics = str(out / "metrics.csv")
    lsac_run = tmp_path / "lsac_run"                 # an lsac-eval output directory
    lsac_run.mkdir()
    variants, clips = synthetic_run()
    variants.to_csv(lsac_run / "variants.csv", index=False)
    clips.to_csv(lsac_run / "clips.csv", index=False)
    lsac_probe_csv = tmp_path / "lsac_probe.csv"
    pd.DataFrame([{"config": "A", "seed": 0, "branch": "baseline", "domain": d, "layer": l, "step": k,
                   "t": k / 4, "metric": m, "score": 0.1 * l + k} for d in ("speech", "audio") for l in (1, 2, 3)
                  for k in (1, 2, 3) for m in ("rel_change_cond", "freeze_mel_snr")]).to_csv(lsac_probe_csv,
                                                                                              index=False)
    rr_metrics = tmp_path / "metrics_rr.csv"          # seed 003: the RR runs' metrics, Figure R3's evaluations
    synthetic_metrics(cfg).to_csv(rr_metrics, index=False)
    rr_evals = list(map(str, r3_evals(cfg, tmp_path / "rr_eval")))
    argvs = {
        "metrics": ["--eval", *map(str, results["evals"]), "--reference", str(results["ref"]), "--out", metrics],
        "table1": ["--probes", *probes, "--out", str(out / "t1.csv")],
        "paired": ["--eval", *map(str, results["evals"]), "--out", str(out / "paired.csv")],
        "summary": ["--metrics", metrics, "--paired", str(out / "paired.csv"), "--out", str(out / "summary.md")],
        "forest": ["--paired", str(out / "paired.csv"), "--out", str(out / "forest.png")],
        "table2": ["--metrics", metrics, "--out", str(out / "t2.csv"), "--vs-paper", str(out / "t2v.csv")],
        "table3": ["--metrics", metrics, "--convergence", *map(str, results["convs"]),
                   "--selection", *map(str, results["sels"]), "--out", str(out / "t3.csv"),
                   "--vs-paper", str(out / "t3v.csv")],
        "figure1": ["--probes", *probes, "--out", str(out / "f1.png")],
        "layer-scores": ["--probes", *probes, "--out", str(out / "ls.png")],
        "convergence": ["--convergence", *map(str, results["convs"]), "--out", str(out / "c.png")],
        "seed-scatter": ["--metrics", metrics, "--out", str(out / "s.png")],
        "table4": ["--eval", *(f"dit:{p}" for p in results["evals"] if p.stem in ("baseline", "ag_repa")),
                   "--probes", *(f"dit:{p}" for p in probes),
                   "--selection", *(f"dit:{p}" for p in results["sels"] if p.stem == "foga"),
                   "--out", str(out / "t4.csv"), "--vs-paper", str(out / "t4v.csv")],
        "table4-figure": ["--table", str(out / "t4v.csv"), "--out", str(out / "t4.png")],
        "lsac-table": ["--runs", str(lsac_run), "--out", str(out / "l1.csv")],
        "lsac-figure": ["--table", str(out / "l1.csv"), "--token-config", "A", "--out", str(out / "l2.png")],
        "lsac-probe-figure": ["--probe", str(lsac_probe_csv), "--probes", *probes, "--token-config", "A",
                              "--out", str(out / "lp.png")],
        "rr-table1": ["--metrics", str(rr_metrics), "--out", str(out / "r1.csv")],
        "rr-table2": ["--metrics", str(rr_metrics), "--out", str(out / "r2.csv")],
        "rr-figure3": ["--eval", *rr_evals, "--data", str(out / "r3.csv"), "--out", str(out / "r3.png")],
    }
    parser = cli.build_parser()
    report = next(a for a in parser._subparsers._group_actions[0].choices["report"]._actions
                  if hasattr(a, "choices") and a.choices)
    assert set(report.choices) == set(argvs), "every report subcommand is exercised here"
    code = ("import json, sys\nfrom agrepa import cli\n"
            "for argv in json.loads(sys.argv[1]):\n    assert cli.main(argv) == 0, argv\n"
            "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'agrepa.model') if m in sys.modules)))")
    argv = json.dumps([["report", name, *base, *rest] for name, rest in argvs.items()])
    r = subprocess.run([sys.executable, "-c", code, argv], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def test_paired_deltas_in_tables_summary_and_forest(results, tmp_path):
    from agrepa.reports import paired, summary

    cfg = small_cfg()
    cfg["report"]["table2"]["columns"] = {"Speech FAD": {"domain": "speech", "metric": "fad"},
                                          "FM loss": {"domain": "all", "metric": "fm_loss"},
                                          "Speech WER": {"domain": "speech", "metric": "wer"}}
    cfg["report"]["paired"].update(bootstrap=400, permutations=400)
    clips = paired.clips_frame(results["evals"])
    assert set(clips["metric"]) == {"fm_loss", "wer"} and set(clips["domain"]) == {"speech", "audio", "all"}
    pf = paired.paired_frame(clips, cfg)
    pairs = set(zip(pf["method"], pf["versus"]))
    assert pairs == {("repa_l4", "baseline"), ("ag_repa", "baseline"), ("sel_random", "baseline"),
                     ("ag_repa", "repa_l4"), ("ag_repa", "sel_random")}
    ag = tables.lookup(pf, "A", "ag_repa", "baseline", "all", "fm_loss")
    assert ag["delta"] == pytest.approx(-0.05, abs=0.005) and bool(ag["resolved"]) and ag["improved"]
    assert ag["n_seeds"] == 2 and ag["n_units"] == 20 and ag["rel_ci_high"] < 0
    same = tables.lookup(pf, "A", "repa_l4", "baseline", "speech", "wer")
    assert same["delta"] == 0.0 and not bool(same["resolved"])      # identical WER counts
    df = tables.metrics_frame(results["evals"])
    t2 = tables.table2(df, cfg, pf)
    row = t2[t2["method"] == "ag_repa"].iloc[0]
    assert row["FM loss Δ"].endswith("*") and row["fm_loss_delta"] == pytest.approx(ag["delta"])
    assert t2[t2["method"] == "baseline"].iloc[0]["FM loss Δ"] == "—"
    assert row["Speech FAD Δ"] == "—"          # FAD is set-level: no paired difference
    t3 = tables.table3(df, tables.convergence_frame(results["convs"]), tables.read_selections(results["sels"]), cfg, pf)
    assert t3[t3["strategy"] == "foga"].iloc[0]["FM loss Δ"].endswith("*")
    text = summary.summary_markdown(pf, df, cfg)
    assert "AG-REPA (FoG-A top-k) vs Baseline (None): held-out FM loss" in text and "— better" in text
    assert "2 seeds × 10 clips" in text
    out = figures.forest_figure(pf, cfg, tmp_path / "forest.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fad_marked_when_rank_deficient(results):
    from agrepa.evaluation.evaluate import LOW_RANK

    cfg = small_cfg()
    df = tables.metrics_frame(results["evals"])
    df.loc[df["metric"] == "fad", "note"] = f"{LOW_RANK} 12 embedding rows < 384 dimensions"
    t2 = tables.table2(df, cfg)
    assert t2.iloc[0]["Speech FAD"].endswith("†") and "rank-deficient" in t2.iloc[0]["notes"]
