"""Fast checks of the workflow's structure: dry runs (-n) of the embedded default and
the test overlay plan the expected grid; the merged config file is stable."""
import pytest
import yaml

from test_workflow_support import REPO, copy_workflow, job_counts, snakemake


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("wf"))


def plan_with(wf, tmp_path, overlay: str, *base: str) -> tuple[int, str]:
    """Dry run with the config files ``base`` and then ``overlay`` (YAML text): (return code, output)."""
    path = tmp_path / "overlay.yaml"
    path.write_text(overlay)
    r = snakemake(["-n", "--cores", "1", "--configfile", *base, str(path)], wf)
    return r.returncode, r.stderr + r.stdout


def test_default_config_plans_tables_2_and_3_grid(wf):
    r = snakemake(["-n", "--cores", "2"], wf)
    assert r.returncode == 0, r.stderr + r.stdout
    c = job_counts(r.stdout)
    # 3 seeds x configs A and B probed (Table 1); Config A's branches (branch_token_configs):
    # 8 Table 2 methods + 3 Table 3 controls (FoG-A reuses ag_repa)
    assert c["train_warmup"] == 2 * 3
    assert c["probe"] == 2 * 3
    # + seed 003: Table R1's 6 rows x 3 seeds (Table R2 is built on request: report.rr.r2.in_all false)
    rr = 6 * 3
    assert c["train_branch"] == 3 * 11 + rr
    assert c["sample"] == c["evaluate"] == c["heldout"] == 33 + rr
    assert "convergence" not in c          # the curves are the held-out FM loss: no sampling per snapshot
    assert c["rr_rsa"] == rr
    assert c["rr_sample_scale"] == c["rr_evaluate_scale"] == 3 * 2     # Figure R3: CFG 1 and 3 (2 = the default)
    assert "report_rr_table2" not in c
    assert c["select"] == 3 * 4
    assert c["data_synth"] == 1 and c["teacher_train"] == 1 and c["teacher_embed"] == 2
    assert c["eval_classifier_train"] == 1 and c["evaluate_reference"] == 1
    assert c["tokens_fit"] == 3 and c["tokens_encode"] == 2      # Config B adds the BEATs stream
    for rule in ("report_metrics", "report_table1", "report_table2", "report_table3", "report_paired",
                 "report_paired_table2", "report_summary", "report_forest", "report_seed_scatter",
                 "report_lsac_table", "report_table4", "report_table4_figure", "report_rr_metrics",
                 "report_rr_table1", "report_rr_figure3"):
        assert c[rule] == 1, rule
    for rule in ("report_figure1", "report_layer_scores"):
        assert c[rule] == 2, rule
    assert c["report_convergence"] == c["report_lsac_figure"] == c["report_lsac_probe_figure"] == 1
    # LSAC on the baseline and AG-REPA branches (Config A) of the first seed (lsac.n_seeds = 1)
    assert c["lsac_probe"] == c["lsac_select"] == c["lsac_eval"] == 2
    # Table 4: Voicebox-, CosyVoice- and F5-style at seed 0 (the DiT's row reuses Table 2's runs)
    assert c["train_warmup_arch"] == c["probe_arch"] == c["select_arch"] == 3
    assert c["train_branch_arch"] == c["sample_arch"] == c["evaluate_arch"] == c["heldout_arch"] == 3 * 2
    assert "convergence_arch" not in c


def test_test_overlay_plans_a_small_grid(wf):
    r = snakemake(["-n", "--cores", "2", "--configfile", "config/test.yaml"], wf)
    assert r.returncode == 0, r.stderr + r.stdout
    c = job_counts(r.stdout)
    assert c["train_warmup"] == 2
    # baseline, repa_l4, ag_repa (Table 2) + sel_random (Table 3), 2 seeds; seed 003: 2 R1 rows + 1 R2 cell
    assert c["train_branch"] == 8 + 3
    assert c["select"] == 4                        # random + foga per seed
    assert c["heldout"] == 8 + 3 and "convergence" not in c
    # Table 4: one other backbone (CosyVoice-style) x one seed x (baseline, AG-REPA)
    assert c["train_warmup_arch"] == 1 and c["train_branch_arch"] == 2 and c["report_table4"] == 1
    assert c["heldout_arch"] == c["evaluate_arch"] == 2
    # seed 003: rule all builds R2 here (report.rr.r2.in_all), R1 and R2 each from its own metrics CSV
    assert c["report_rr_metrics"] == 2 and c["report_rr_table2"] == 1 and c["rr_rsa"] == 3


def test_merged_config_is_written_once_and_only_when_changed(wf):
    target = wf / "results" / "config.yaml"
    assert snakemake(["-n", "--cores", "1", "--configfile", "config/test.yaml"], wf).returncode == 0
    first = target.stat().st_mtime_ns
    assert yaml.safe_load(target.read_text())["name"] == "test"
    assert snakemake(["-n", "--cores", "1", "--configfile", "config/test.yaml"], wf).returncode == 0
    assert target.stat().st_mtime_ns == first
    r = snakemake(["-n", "--cores", "1", "--configfile", "config/test.yaml", "--config", "name=other"], wf)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(target.read_text())["name"] == "other"
    # every rule passes that file
    assert "--config results/config.yaml" in snakemake(
        ["-n", "-p", "--cores", "1", "--configfile", "config/test.yaml"], wf).stdout


def test_table4_jobs_train_their_backbone_and_the_default_keeps_its_paths(wf, tmp_path):
    every = tmp_path / "every_backbone.yaml"
    every.write_text("report:\n  table4:\n    architectures: [dit, voicebox, cosyvoice, f5]\n")
    out = snakemake(["-n", "-p", "--cores", "1", "--configfile", "config/test.yaml", str(every)], wf).stdout
    train = [line for line in out.splitlines() if "agrepa train" in line]
    for arch in ("voicebox", "cosyvoice", "f5"):
        mine = [line for line in train if f"results/runs/{arch}/A/seed0/" in line]
        assert len(mine) == 3 and all(f"--set model.arch={arch} " in line for line in mine), arch
    dit = [line for line in train if "--set model.arch" not in line]
    assert len(dit) == 10 + 3 and all("results/runs/A/seed" in line for line in dit)   # + 3 RR branches (seed 003)
    assert "--selection results/selection/f5/A/seed0/foga.json" in out
    report = next(line for line in out.splitlines() if "agrepa report table4 " in line)
    assert "dit:results/eval/A/seed0/ag_repa.json" in report and "f5:results/probes/f5/A/seed0/probes.csv" in report


def test_table4_needs_a_baseline_and_a_selection_method(wf, tmp_path):
    rc, out = plan_with(wf, tmp_path, "report:\n  table4:\n    method: repa_l4\n", "config/test.yaml")
    assert rc != 0 and "report.table4" in out


def test_grid_naming_an_undefined_method_fails_with_its_name(wf, tmp_path):
    rc, out = plan_with(wf, tmp_path, "report:\n  table2:\n    methods: [baseline, repa_l99]\n")
    assert rc != 0
    assert "repa_l99" in out


def test_layer_outside_the_model_fails_with_the_key(wf, tmp_path):
    rc, out = plan_with(wf, tmp_path, "methods:\n  repa_l4: {layers: [40]}\n")
    assert rc != 0
    assert "methods.repa_l4.layers" in out


def test_rules_use_the_conda_env_and_log_files():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        if smk.name == "common.smk":
            continue
        derived = text.count("use rule ")            # `use rule A as B with:` inherits A's conda env
        assert text.count("rule ") - derived == text.count('conda:\n        "../../envs/agrepa.yaml"') + \
            text.count('conda:\n            "../../envs/agrepa.yaml"'), smk.name
        assert text.count("rule ") == text.count("log:"), smk.name          # each names its own log


def _train_jobs(wf, *configfiles):
    """(threads, shell command) of every training job planned for config/test.yaml + overlays."""
    out = snakemake(["-n", "-p", "--cores", "8", "--configfile", "config/test.yaml", *configfiles], wf).stdout
    jobs, threads = [], 1
    for line in out.splitlines():
        if line.strip().startswith("threads:"):
            threads = int(line.split(":")[1])
        elif line.startswith("Shell command:"):
            if "agrepa train --config" in line or "agrepa.cli train --config" in line:
                jobs.append((threads, line))
            threads = 1
    return jobs


def test_training_commands_pass_the_attempt_number(wf):
    jobs = _train_jobs(wf)
    assert len(jobs) == 2 + 8 + 1 + 2 + 3              # 2 warm-ups + 8 branches; Table 4 (CosyVoice): 1 + 2; 3 RR
    archs = 0
    for threads, cmd in jobs:
        # attempt 1: agrepa.training.checkpoint.prepare_resume starts fresh unless SLURM requeued this job
        arch = " --set model.arch=" in cmd                 # the *_arch rules: same command, backbone set
        archs += arch
        assert cmd.startswith("Shell command: agrepa train --config results/config.yaml"
                              + (" --set model.arch=cosyvoice" if arch else "") + " --threads 1 "), cmd
        assert " --attempt 1 > " in cmd and threads == 1
    assert archs == 1 + 2


def test_training_with_several_gpus_runs_one_process_per_gpu(wf, tmp_path):
    gpus = tmp_path / "gpus.yaml"
    gpus.write_text("resources:\n  train: {threads: 3, gpu: 2}\n")
    jobs = _train_jobs(wf, str(gpus))
    assert len(jobs) == 2 + 8 + 1 + 2 + 3
    for threads, cmd in jobs:
        assert cmd.startswith("Shell command: OMP_NUM_THREADS=3 torchrun --nnodes 1 --nproc_per_node 2 "
                              "--rdzv-backend c10d --rdzv-endpoint $(agrepa-rendezvous) "
                              "--rdzv-id ${SLURM_JOB_ID:-agrepa} -m agrepa.cli train --config results/config.yaml"), cmd
        assert " --threads 3 " in cmd and " --attempt 1 > " in cmd
        assert threads == 2 * 3                        # the job's CPUs: 3 threads for each of 2 processes


def test_rr_tables_alone_train_only_their_runs(wf):
    # `snakemake results/table_r1.csv`: R1's rows only (R2 has its own metrics CSV), nothing of Table 2/3
    r = snakemake(["-n", "--cores", "2", "results/table_r1.csv"], wf)
    assert r.returncode == 0, r.stderr + r.stdout
    c = job_counts(r.stdout)
    assert c["train_branch"] == 6 * 3 and c["select"] == 3          # AG-REPA rows: the FoG-A selection only
    assert "convergence" not in c and "report_table2" not in c and c["report_rr_metrics"] == 1
    # Table R2 on request: its 12 cells and the RR baseline at seed 0, no selection
    r = snakemake(["-n", "--cores", "2", "results/table_r2.csv"], wf)
    assert r.returncode == 0, r.stderr + r.stdout
    c = job_counts(r.stdout)
    assert c["train_branch"] == 12 + 1 and "select" not in c and c["report_rr_table2"] == 1
    r = snakemake(["-n", "--cores", "2", "results/figures/figure_r3.png"], wf)
    c = job_counts(r.stdout)
    assert c["train_branch"] == 3 and c["rr_sample_scale"] == 6 and c["evaluate"] == 3 and "rr_rsa" not in c


def test_rr_grid_naming_an_undefined_method_fails_with_the_key(wf, tmp_path):
    rc, out = plan_with(wf, tmp_path, "report:\n  rr:\n    r2: {methods: [rr_nope], seeds: [0]}\n")
    assert rc != 0 and "report.rr.r2.methods: method 'rr_nope'" in out


def test_rr_rate_overrides_on_another_backbone_fail_with_the_key(wf, tmp_path):
    # R2's CFG rates are the DiT recipe's: with model.arch f5 and R2 in rule all, planning names the key
    rc, out = plan_with(wf, tmp_path, "model: {arch: f5}\nreport:\n  rr:\n    r2: {in_all: true}\n")
    assert rc != 0
    assert "methods.rr_lam0p3_cfg0p05.train: ['cfg_drop_tokens'] are the DiT recipe's CFG rates" in out


def test_every_rule_writes_a_benchmark_file(wf):
    """Issue 23, item 7: each rule names a benchmark file next to its log, and in a dry run of the
    default every planned job has its own, named like its log (results/benchmarks/<rule>/ for
    results/logs/<rule>/; a derived rule may share its parent's folder, as its log does)."""
    import re

    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        if smk.name != "common.smk":
            text = smk.read_text()
            assert text.count("log:") == text.count("benchmark:") == text.count("bench_path("), smk.name
    r = snakemake(["-n", "--cores", "2"], wf)
    assert r.returncode == 0, r.stderr + r.stdout
    jobs = re.findall(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", r.stdout, flags=re.M)
    assert len(jobs) > 10
    seen = set()
    for rule, block in jobs:
        if "    output: " not in block:
            continue                                    # the Snakefile's target rules (all, ...) run nothing
        bench = re.search(r"^    benchmark: (\S+)$", block, flags=re.M)
        log = re.search(r"^    log: (\S+)\.log$", block, flags=re.M)
        assert bench and log, (rule, block)
        assert bench.group(1) == log.group(1).replace("results/logs/", "results/benchmarks/", 1) + ".tsv"
        assert bench.group(1) not in seen
        seen.add(bench.group(1))
