"""Whole-workflow run on config/test.yaml (one DAG run in a module-scoped fixture, then
small reruns): every target is produced; a second invocation has nothing to do;
deleting one eval output rebuilds only that evaluation and the tables; one ablation
reruns without touching anything upstream; editing the figure style re-runs only the
figure rules; the HTML report is built."""
import json
import shutil

import pandas as pd
import pytest
import torch

from test_train import _tensors_equal
from test_workflow_support import copy_workflow, job_counts, mtimes, snakemake

pytestmark = pytest.mark.slow

TEST = ["--configfile", "config/test.yaml"]
RUN = ["--cores", "2", *TEST]
FIGURE_RULES = {"report_figure1", "report_layer_scores", "report_convergence", "report_seed_scatter", "report_forest",
                "report_lsac_figure", "report_lsac_probe_figure", "report_table4_figure", "report_rr_figure3"}
REPORT_RULES = FIGURE_RULES | {"report_metrics", "report_metrics_table2", "report_table1", "report_table2", "report_table3",
                               "report_paired", "report_paired_table2", "report_summary", "report_lsac_table",
                               "report_table4", "report_rr_metrics", "report_rr_table1", "report_rr_table2"}
TARGETS = ["metrics.csv", "table1.csv", "table2.csv", "table3.csv", "table2_vs_paper.csv", "table3_vs_paper.csv",
           "figures/figure1_A.png", "figures/layer_scores_A.png", "figures/convergence_A.png",
           "figures/seed_scatter.png", "figures/forest.png", "listening_test/index.html", "paired.csv", "clips.csv",
           "summary.md", "table_l1.csv", "figures/figure_l2_A.png", "figures/lsac_probe_A.png", "table4.csv",
           "table4_vs_paper.csv", "figures/table4.png", "table_r1.csv", "table_r2.csv", "figures/figure_r3.png",
           "figures/figure_r3.csv"]


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    root = copy_workflow(tmp_path_factory.mktemp("wf"))
    r = snakemake(RUN, root, timeout=3600)
    if r.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in (root / "results" / "logs").rglob("*.log"))
        pytest.fail(f"whole-DAG run failed:\n{r.stderr[-6000:]}\n{logs[-12000:]}")
    # what the first run printed and logged, kept apart: the tests below run snakemake again in any order
    (root / "first_run.log").write_text(r.stderr)
    shutil.copy(root / "results" / "logs" / "warm_start.log", root / "first_warm_start.log")
    return root


def planned(root, *extra, targets=()):
    # targets go first: --configfile takes every word that follows it
    r = snakemake(["-n", *targets, *RUN, *extra], root)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout, job_counts(r.stdout)


def test_the_run_forked_every_job_from_the_warm_server(wf):
    # warm_start: true (config/config.yaml): one server imported the libraries; each job is a fork of it
    counts = job_counts((wf / "first_run.log").read_text())
    forked = [ln for ln in (wf / "first_warm_start.log").read_text().splitlines()
              if ln.startswith("warm start: pid ")]
    assert len(forked) == sum(counts.values()) - counts["all"]      # every job but `all` runs `agrepa`


def test_every_job_wrote_its_benchmark_file(wf):
    # issue 23, item 7: Snakemake's benchmark table (wall clock, max RSS, I/O) per job, named like its log
    counts = job_counts((wf / "first_run.log").read_text())
    benches = sorted((wf / "results" / "benchmarks").rglob("*.tsv"))
    assert len(benches) >= sum(counts.values()) - counts["all"]
    for path in benches:
        header, row = path.read_text().splitlines()[:2]
        assert header.split("\t")[:3] == ["s", "h:m:s", "max_rss"] and float(row.split("\t")[0]) >= 0
        log = wf / "results" / "logs" / path.relative_to(wf / "results" / "benchmarks").with_suffix(".log")
        assert log.exists(), path


def test_every_target_is_produced(wf):
    res = wf / "results"
    for t in TARGETS:
        assert (res / t).stat().st_size > 0, t
    t2 = pd.read_csv(res / "table2.csv")
    assert list(t2["method"]) == ["baseline", "repa_l4", "ag_repa", "reference"]
    assert (t2["n_seeds"][:3] == 2).all() and (t2["experiment"] == "test").all()
    t3 = pd.read_csv(res / "table3.csv")
    assert list(t3["strategy"]) == ["baseline", "random", "foga"]
    assert t3.set_index("strategy").loc["foga", "method"] == "ag_repa"
    metrics = pd.read_csv(res / "metrics.csv")
    assert set(metrics["method"]) == {"baseline", "repa_l4", "ag_repa", "sel_random", "reference"}
    # Tables 2 and 3 carry the paired difference against the baseline with its CI for each method
    for col in ("FM loss Δ", "Mel L1 Δ", "Speech TER Δ", "Event KL Δ"):
        cells = t2.set_index("method")[col]
        assert cells["baseline"] == "—" and cells["ag_repa"].count("[") == 1, (col, cells["ag_repa"])
    assert t3.set_index("strategy").loc["foga", "FM loss Δ"].count("[") == 1
    paired = pd.read_csv(res / "paired.csv")
    assert {"ag_repa", "repa_l4", "sel_random"} <= set(paired[paired["versus"] == "baseline"]["method"])
    summary = (res / "summary.md").read_text()
    assert summary.startswith("# Results summary: test") and "vs Baseline (None)" in summary
    # Table 4: the DiT (Table 2's runs) and the CosyVoice-style backbone, baseline and AG-REPA, seed 0
    t4 = pd.read_csv(res / "table4.csv")
    assert list(t4["arch"]) == ["dit", "dit", "cosyvoice", "cosyvoice"]
    assert list(t4["method"]) == ["baseline", "ag_repa"] * 2 and (t4["seeds"].astype(str) == "0").all()
    ag = t4[t4["method"] == "ag_repa"]
    assert ag["WER_n_units"].eq(2).all() and ag["Top-3 FoG-A (speech)"].str.match(r"L\d+ \(").all()
    assert t4.set_index("arch").loc["cosyvoice", "n_units"].tolist() == [10, 10]   # (1 + 1 block) x (4 + 1 mid)
    assert (res / "runs" / "cosyvoice" / "A" / "seed0" / "ag_repa" / "final.pt").exists()
    assert len(pd.read_csv(res / "table4_vs_paper.csv")) == 2 * 3


def test_table_l1_and_figure_l2_from_the_whole_dag(wf):
    # issue 16: Table L1 + Figure L2 for the baseline and AG-REPA checkpoints (lsac.n_seeds = 1: seed 0)
    t = pd.read_csv(wf / "results" / "table_l1.csv")
    assert list(dict.fromkeys(t["branch"])) == ["baseline", "ag_repa"] and set(t["seed"]) == {0}
    for branch, b in t.groupby("branch"):
        assert list(b["variant"]) == ["full", "steps_3", "steps_2", "lsac_f0.25", "causal_f0.25", "random_f0.25",
                                      "pab_f0.25", "deepcache_f0.25"]
        cached = b[b["budget"] == 0.25]
        assert (cached["attn_saved_pct"] >= 25).all() and (cached["flops_saved_pct"] > 0).all()
        assert (cached["retention_adv"] > 0).all() and cached["retention_ci_low"].notna().all()
        assert {"wer_speech", "fad_speech", "fad_audio", "wall_s_per_clip"} <= set(b.columns)
        # TER: the vocoded output re-tokenised by the conditioning tokenizers, both domains, with its CI
        for domain in ("speech", "audio"):
            assert b[f"ter_{domain}"].between(0, 10).all() and b[f"ter_{domain}_ci"].str.startswith("[").all()
            assert b.set_index("variant").loc["full", f"delta_ter_{domain}"] == 0
    probe = pd.read_csv(wf / "results" / "lsac" / "A" / "seed0" / "ag_repa" / "probe.csv")
    assert {"rel_change_cond", "rel_change_uncond", "freeze_mel_snr"} <= set(probe["metric"])


def test_seed_003_tables_and_figure(wf):
    res = wf / "results"
    r1 = pd.read_csv(res / "table_r1.csv")
    assert list(r1["method"]) == ["rr_baseline", "rr_max", "reference"]
    assert list(r1["Method"][:2]) == ["Baseline", "RR-max"]
    assert (r1["cfg_mode"][:2] == "batch").all() and list(r1["rr_lambda"][:2]) == [0.0, 3.0]
    assert {"Speech WER Δ", "Speech RSA", "Audio RSA", "notes"} <= set(r1.columns)
    assert r1["speech_wer_mean"][:2].notna().all() and r1["speech_wer_delta"][1:2].notna().all()
    assert "CLAP not computed" in r1["notes"][1]
    r2 = pd.read_csv(res / "table_r2.csv")
    assert list(r2["method"]) == ["rr_baseline", "rr_max", "rr_lam1_cfg0p2"]
    assert list(zip(r2["λ"], r2["CFG rate"])) == [(0.0, 0.1), (3.0, 0.1), (1.0, 0.2)]
    r3 = pd.read_csv(res / "figures" / "figure_r3.csv")
    assert set(r3["scale"]) == {1.0, 2.0} and set(r3["method"]) == {"rr_baseline", "rr_max"}
    # the RR branches: the batch-level CFG coin, the RR term logged on its steps, RSA rows
    runs = res / "runs" / "A" / "seed0"
    assert "cfg_mode: batch" in (runs / "rr_max" / "config.resolved.yaml").read_text()
    assert pd.read_csv(runs / "rr_max" / "metrics.csv")["rr"].notna().any()
    assert pd.read_csv(runs / "rr_baseline" / "metrics.csv")["rr"].isna().all()
    rsa = {(m["domain"], m["metric"]) for m in json.loads(
        (res / "rr" / "rsa" / "A" / "seed0" / "rr_max.json").read_text())["metrics"]}
    assert rsa == {(d, m) for d in ("speech", "audio") for m in ("rsa", "rsa_gt")}


def test_second_invocation_has_nothing_to_do(wf):
    out, counts = planned(wf)
    assert counts == {} and "Nothing to be done" in out


def test_deleted_eval_rebuilds_only_that_eval_and_the_reports(wf):
    res = wf / "results"
    victim = res / "eval" / "A" / "seed1" / "repa_l4.json"
    victim.unlink()
    # Snakemake (>= 7.7) does not regenerate a missing intermediate file whose downstream
    # outputs are present, so the README names it as a target next to `all`.
    again = ["all", "results/eval/A/seed1/repa_l4.json"]
    _, counts = planned(wf, targets=again)
    assert counts.pop("evaluate") == 1
    assert set(counts) <= REPORT_RULES | {"all"}
    assert {"report_metrics", "report_table2", "report_table3"} <= set(counts)
    before = mtimes(res)
    r = snakemake([*again, *RUN], wf)
    assert r.returncode == 0, r.stderr[-4000:]
    after = mtimes(res)
    changed = {p for p in after if after[p] != before.get(p)}
    assert "eval/A/seed1/repa_l4.json" in changed and "table2.csv" in changed
    assert not {p for p in changed if p.startswith(("runs/", "samples/", "probes/", "tokens/", "data/", "heldout/"))}
    assert {p for p in changed if p.startswith("eval/")} == {"eval/A/seed1/repa_l4.json"}


def test_rerun_one_ablation_touches_nothing_upstream(wf):
    # README: snakemake --cores 2 --forcerun results/runs/A/seed1/repa_l4/final.pt
    _, counts = planned(wf, "--forcerun", "results/runs/A/seed1/repa_l4/final.pt")
    for rule in ("train_branch", "sample", "heldout", "evaluate"):
        assert counts.pop(rule) == 1, rule
    assert set(counts) <= REPORT_RULES | {"all", "listening_test"}
    res = wf / "results"
    before = mtimes(res)
    warm = torch.load(res / "runs" / "A" / "seed1" / "repa_l4" / "final.pt", map_location="cpu", weights_only=True)
    # ... run cold this time: the branch trained in a fresh process equals the warm-started one bitwise
    r = snakemake([*RUN, "--forcerun", "results/runs/A/seed1/repa_l4/final.pt", "--config", "warm_start=False"], wf)
    assert r.returncode == 0, r.stderr[-4000:]
    after = mtimes(res)
    changed = {p for p in after if after[p] != before.get(p)}
    assert "runs/A/seed1/repa_l4/final.pt" in changed
    cold = torch.load(res / "runs" / "A" / "seed1" / "repa_l4" / "final.pt", map_location="cpu", weights_only=True)
    for key in ("model", "ema", "repa", "optimizer"):
        assert _tensors_equal(warm[key], cold[key]), key
    # a forced rerun retrains from the warm-up; it does not resume from the old last.pt
    log = (res / "logs" / "train_branch" / "A_seed1_repa_l4.log").read_text()
    assert "resuming" not in log
    upstream = [p for p in before if p.startswith(("data/", "tokens/", "embeddings/", "teachers/", "probes/",
                                                  "selection/", "runs/A/seed1/warmup/", "runs/A/seed0/"))]
    assert upstream and not changed & set(upstream)
    assert not {p for p in changed if p.startswith("eval/") and "repa_l4" not in p}


def test_editing_the_figure_style_reruns_only_figure_rules(wf):
    style = wf / "workflow" / "report" / "figures.mplstyle"
    style.write_text(style.read_text() + "\naxes.grid: False\n")
    _, counts = planned(wf)
    assert set(counts) - {"all"} == FIGURE_RULES
    res = wf / "results"
    before = mtimes(res)
    assert snakemake(RUN, wf).returncode == 0
    after = mtimes(res)
    changed = {p for p in after if after[p] != before.get(p)}
    assert changed and all(p.startswith("figures/") for p in changed)


def test_regenerate_reports_from_cached_results(wf):
    # README: force every report rule; nothing upstream of the CSVs re-runs
    _, counts = planned(wf, "--forcerun", *sorted(REPORT_RULES))
    assert set(counts) - {"all"} == REPORT_RULES


def test_changing_the_semantic_teacher_reruns_the_ground_truth_floor(wf, tmp_path):
    # the floor's FAD embeds with teachers.semantic: its rule hashes that section (issue: rerun tracking)
    overlay = tmp_path / "teacher.yaml"
    overlay.write_text("teachers:\n  semantic:\n    model: openai/whisper-tiny.en\n")
    _, counts = planned(wf, "--configfile", "config/test.yaml", str(overlay))
    # the floor re-runs; of the teacher stores only the semantic one (the acoustic store and the events
    # teacher hash teachers.acoustic); that the floor's own hash covers teachers.semantic is
    # tests/test_layout.py::test_each_rule_hash_covers_every_section_its_stage_declares
    assert counts.get("evaluate_reference") == 1 and counts.get("teacher_embed") == 1, counts
    assert "teacher_train" not in counts and "eval_classifier_train" not in counts, counts


def test_html_report(wf):
    r = snakemake(["--report", "report.html", *TEST], wf)
    assert r.returncode == 0, r.stdout + r.stderr
    html = (wf / "report.html").read_text(errors="replace")
    assert "table2.csv" in html and "seed_scatter.png" in html

