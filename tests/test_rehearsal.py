"""The paper path, rehearsed: config/paper.yaml + config/rehearsal.yaml on `agrepa fixtures
paper`, with the local executor (README "Rehearse the paper path"). Builds results/table2.csv,
then every target of `all` for configs A and B; a second invocation has nothing to do; the
paper's choices (transformers Whisper, BEATs, S3 ONNX tokens, Vocos, VGGish) are what ran."""
import json
import os

import pandas as pd
import pytest

from test_workflow_support import copy_workflow, job_counts, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.rehearsal]   # not in `pytest -x -q`: `pytest -m rehearsal`

RUN = ["--cores", "2", "--configfile", "config/paper.yaml", "config/rehearsal.yaml"]
TARGETS = ["metrics.csv", "table1.csv", "table2.csv", "table3.csv", "table2_vs_paper.csv", "table3_vs_paper.csv",
           "figures/seed_scatter.png", "listening_test/index.html", "table4.csv", "table4_vs_paper.csv",
           "figures/table4.png", "table_l1.csv", "table_r1.csv", "table_r2.csv", "figures/figure_r3.png"] + [
    f"figures/{fig}_{tc}.png" for fig in ("figure1", "layer_scores", "convergence", "lsac_probe", "figure_l2")
    for tc in "AB"]
TABLE2 = ["baseline", "repa_l4", "repa_l4_8_12", "repa_shallow", "ag_repa"]


def run(root, *targets):
    r = snakemake([*targets, *RUN], root, timeout=3600)  # targets first: --configfile takes what follows it
    if r.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in (root / "results" / "logs").rglob("*.log")
                         if "rror" in p.read_text())
        pytest.fail(f"rehearsal failed:\n{r.stderr[-6000:]}\n{logs[-12000:]}")
    return r


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory, paper_fixtures):
    root = copy_workflow(tmp_path_factory.mktemp("rehearsal"))
    (root / "results" / "fixtures").mkdir(parents=True)
    os.symlink(paper_fixtures, root / "results" / "fixtures" / "paper")   # built by `agrepa fixtures paper`
    first = job_counts(run(root, "results/table2.csv").stderr)   # a run prints its job stats on stderr
    second = job_counts(run(root, "all").stderr)
    return root, first, second


def test_table2_first_then_every_target_for_configs_a_and_b(rehearsal):
    root, first, second = rehearsal
    assert first["train_branch"] == 2 * 2 * len(TABLE2) and "convergence" not in first
    # the Table 3 controls (random, lasp, gradnorm) x 2 seeds, then seed 003 at seed 0: R1's 4 rows and R2's
    # two cells (rr_max, rr_lam1_cfg0p2); configs A and B
    assert second["train_branch"] == 2 * 2 * 3 + 2 * (4 + 2)
    assert second["rr_rsa"] == 2 * (4 + 2) and second["lsac_eval"] == 2 * 2
    assert second["train_branch_arch"] == 3 * 2           # Table 4: voicebox, cosyvoice, f5 x (baseline, ag_repa)
    res = root / "results"
    for t in TARGETS:
        assert (res / t).stat().st_size > 0, t
    t2 = pd.read_csv(res / "table2.csv")
    for tc in "AB":
        assert list(t2[t2["Config"] == tc]["method"]) == TABLE2 + ["reference"]
    assert (t2[t2["method"] != "reference"]["n_seeds"] == 2).all() and (t2["experiment"] == "rehearsal").all()
    assert set(pd.read_csv(res / "table1.csv")["config"]) == {"A", "B"}
    t3 = pd.read_csv(res / "table3.csv")
    for tc in "AB":
        assert list(t3[t3["Config"] == tc]["strategy"]) == ["baseline", "random", "lasp", "gradnorm", "foga"]


def test_second_invocation_has_nothing_to_do(rehearsal):
    root, _, _ = rehearsal
    r = snakemake(["-n", *RUN], root)
    assert r.returncode == 0 and job_counts(r.stdout) == {} and "Nothing to be done" in r.stdout


def test_the_paper_choices_ran(rehearsal):
    root, _, _ = rehearsal
    res = root / "results"
    manifest = pd.read_csv(res / "data" / "manifest.csv")
    assert manifest[manifest["domain"] == "audio"]["duration"].max() == pytest.approx(10.0)
    assert manifest[manifest["domain"] == "speech"]["duration"].max() > 18.0
    speech = json.loads((res / "tokens" / "models" / "speech" / "metrics.json").read_text())
    assert speech["kind"] == "s3-onnx" and speech["k"] == 4096
    beats = json.loads((res / "tokens" / "models" / "beats" / "config.json").read_text())
    assert beats["kind"] == "beats-tokenizer" and beats["k"] == 1024     # Config B: BEATs' own tokenizer
    metrics = pd.read_csv(res / "metrics.csv")
    models = " ".join(metrics["model"].dropna().astype(str))
    assert "vggish" in models and "transformers:" in models
    meta = json.loads((res / "samples" / "B" / "seed1" / "ag_repa" / "sample_meta.json").read_text())
    assert meta["vocoder"]["vocoder"] == "vocos" and meta["config"] == "rehearsal"
    semantic = json.loads((res / "embeddings" / "semantic" / "index.json").read_text())["meta"]
    acoustic = json.loads((res / "embeddings" / "acoustic" / "index.json").read_text())["meta"]
    assert (semantic["teacher"], acoustic["teacher"]) == ("whisper", "beats")
