# Layer-selective attention caching (seed 004) on the branch checkpoints of
# lsac.methods x the first lsac.n_seeds seeds: `agrepa lsac-probe` (attention convergence over the ODE
# steps, causal freezing; valid split), `agrepa lsac-select` (LSAC + control plans per
# budget), `agrepa lsac-eval` (full / fewer steps / cached sampling of the test subset),
# then Table L1, Figure L2 and the probe figure (`agrepa report lsac-*`, CSVs only).

# Each job hashes the config its science module reads (agrepa.config.config_keys), not the
# whole lsac section: editing a budget re-plans and re-evaluates, but does not re-probe.


localrules:
    lsac_select,
    report_lsac_table,
    report_lsac_figure,
    report_lsac_probe_figure,


rule lsac_probe:
    input:
        unpack(data_inputs),
        ckpt=BRANCH,
    output:
        csv=LSAC_PROBE,
    params:
        mels=store_dir("mels"),
        tokens=store_dir("tokens"),
        cfg=config_hash("agrepa.caching.probe"),
    log:
        log_path("lsac_probe", "{tc}", "seed{seed}", "{method}"),
    benchmark:
        bench_path("lsac_probe", "{tc}", "seed{seed}", "{method}")
    threads: res("sample", "threads")
    resources:
        **resources_of("sample"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa lsac-probe --config {CFG} --threads {threads} --ckpt {input.ckpt} --manifest {input.manifest} "
        "--mels {params.mels} --tokens {params.tokens} --seed {wildcards.seed} --token-config {wildcards.tc} "
        "--branch {wildcards.method} --out {output.csv} > {log} 2>&1"


rule lsac_select:
    input:
        probe=LSAC_PROBE,
    output:
        index=LSAC_PLANS,
    params:
        out=lambda wc, output: os.path.dirname(output.index),
        cfg=config_hash("agrepa.caching.selection"),
    log:
        log_path("lsac_select", "{tc}", "seed{seed}", "{method}"),
    benchmark:
        bench_path("lsac_select", "{tc}", "seed{seed}", "{method}")
    threads: 1
    resources:
        **resources_of("default"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa lsac-select --config {CFG} --threads {threads} --probe {input.probe} --seed {wildcards.seed} "
        "--out-dir {params.out} > {log} 2>&1"


def lsac_eval_inputs(wc):
    """The data stores, the branch and its plans; with ter in lsac.metrics, TER's tokenizers and
    events teacher (evaluate.smk's scorer inputs, without the event classifier)."""
    inputs = {**data_inputs(wc), "ckpt": BRANCH.format(**wc), "plans": LSAC_PLANS.format(**wc)}
    if "ter" in config["lsac"]["metrics"]:
        inputs.update({k: v for k, v in scorer_inputs([wc.tc]).items() if k != "classifier"})
    return inputs


rule lsac_eval:
    input:
        unpack(lsac_eval_inputs),
    output:
        clips=LSAC_EVAL,
        variants=os.path.join(LSAC_DIR, "eval", "variants.csv"),
    params:
        out=lambda wc, output: os.path.dirname(output.clips),
        plans=lambda wc, input: os.path.dirname(input.plans),
        mels=store_dir("mels"),
        tokens=store_dir("tokens"),
        scorers=lambda wc, input: scorer_args(wc, input) if "ter" in config["lsac"]["metrics"] else "",
        cfg=config_hash("agrepa.caching.experiment"),
    log:
        log_path("lsac_eval", "{tc}", "seed{seed}", "{method}"),
    benchmark:
        bench_path("lsac_eval", "{tc}", "seed{seed}", "{method}")
    threads: res("sample", "threads")
    resources:
        **resources_of("sample"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa lsac-eval --config {CFG} --threads {threads} --ckpt {input.ckpt} --manifest {input.manifest} "
        "--mels {params.mels} --tokens {params.tokens} --seed {wildcards.seed} --token-config {wildcards.tc} "
        "--branch {wildcards.method} --plans {params.plans} {params.scorers} --out-dir {params.out} > {log} 2>&1"


LSAC_RUNS = dict(tc=BTCS, seed=GRID["lsac_seeds"], method=GRID["lsac_methods"])


rule report_lsac_table:
    input:
        clips=expand(LSAC_EVAL, **LSAC_RUNS),
    output:
        csv=report(TABLE_L1, caption="../report/table_l1.rst", category="Tables"),
    params:
        runs=lambda wc, input: " ".join(os.path.dirname(p) for p in input.clips),
        **REPORT_PARAMS,
    log:
        log_path("report_lsac_table"),
    benchmark:
        bench_path("report_lsac_table")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report lsac-table --config {CFG} --threads {threads} --runs {params.runs} --out {output.csv} > {log} 2>&1"


rule report_lsac_figure:
    input:
        table=TABLE_L1,
        style=FIGURE_STYLE,
    output:
        fig=report(FIG_L2, caption="../report/figure_l2.rst", category="Figures"),
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_lsac_figure", "{tc}"),
    benchmark:
        bench_path("report_lsac_figure", "{tc}")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report lsac-figure --config {CFG} --threads {threads} --table {input.table} --token-config {wildcards.tc} "
        "--style {input.style} --out {output.fig} > {log} 2>&1"


rule report_lsac_probe_figure:
    input:
        probe=lambda wc: expand(LSAC_PROBE, tc=wc.tc, seed=GRID["lsac_seeds"], method=GRID["lsac_methods"]),
        probes=lambda wc: expand(PROBES, tc=wc.tc, seed=GRID["lsac_seeds"]),
        style=FIGURE_STYLE,
    output:
        fig=report(FIG_LSAC_PROBE, caption="../report/lsac_probe.rst", category="Figures"),
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_lsac_probe_figure", "{tc}"),
    benchmark:
        bench_path("report_lsac_probe_figure", "{tc}")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report lsac-probe-figure --config {CFG} --threads {threads} --probe {input.probe} --probes {input.probes} "
        "--token-config {wildcards.tc} --style {input.style} --out {output.fig} > {log} 2>&1"
