# Tables, figures and the HTML report, made only from the cached CSV/JSON results
# (`agrepa report ...`): re-plotting never retrains or re-evaluates. Figure rules
# depend on workflow/report/figures.mplstyle and report.figures, so editing the
# style re-runs only them.

localrules:
    report_metrics,
    report_paired,
    report_paired_table2,
    report_summary,
    report_forest,
    report_metrics_table2,
    report_table1,
    report_table2,
    report_table3,
    report_figure1,
    report_layer_scores,
    report_convergence,
    report_seed_scatter,
    report_table4,
    report_table4_figure,
    select,
    select_arch,


# report jobs re-run when a config section the report code reads changes
REPORT_PARAMS = dict(cfg=config_hash("agrepa.reports.cli"))


rule report_metrics:
    input:
        evals=expand(EVAL, tc=BTCS, seed=SEEDS, method=METHODS),
        reference=REFERENCE_EVAL,
    output:
        csv=report(METRICS, caption="../report/metrics.rst", category="Tables"),
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_metrics"),
    benchmark:
        bench_path("report_metrics")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report metrics --config {CFG} --threads {threads} --eval {input.evals} --reference {input.reference} "
        "--out {output.csv} > {log} 2>&1"


rule report_table1:
    input:
        probes=expand(PROBES, tc=TCS, seed=SEEDS),
    output:
        csv=report(TABLE1, caption="../report/table1.rst", category="Tables"),
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_table1"),
    benchmark:
        bench_path("report_table1")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report table1 --config {CFG} --threads {threads} --probes {input.probes} --out {output.csv} > {log} 2>&1"


rule report_metrics_table2:
    # Table 2's own runs only, so `snakemake results/table2.csv` trains nothing else.
    input:
        evals=expand(EVAL, tc=BTCS, seed=SEEDS, method=GRID["table2"]),
        reference=REFERENCE_EVAL,
    output:
        csv=METRICS_TABLE2,
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_metrics_table2"),
    benchmark:
        bench_path("report_metrics_table2")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report metrics --config {CFG} --threads {threads} --eval {input.evals} --reference {input.reference} "
        "--out {output.csv} > {log} 2>&1"




rule report_paired:
    input:
        evals=expand(EVAL, tc=BTCS, seed=SEEDS, method=METHODS),
    output:
        csv=report(PAIRED, caption="../report/paired.rst", category="Tables"),
        clips=CLIPS,
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_paired"),
    benchmark:
        bench_path("report_paired")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report paired --config {CFG} --threads {threads} --eval {input.evals} --clips-out {output.clips} "
        "--out {output.csv} > {log} 2>&1"


rule report_paired_table2:
    # Table 2's own runs only, so `snakemake results/table2.csv` trains nothing else.
    input:
        evals=expand(EVAL, tc=BTCS, seed=SEEDS, method=GRID["table2"]),
    output:
        csv=PAIRED_TABLE2,
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_paired_table2"),
    benchmark:
        bench_path("report_paired_table2")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report paired --config {CFG} --threads {threads} --eval {input.evals} --out {output.csv} > {log} 2>&1"


rule report_summary:
    input:
        metrics=METRICS,
        paired=PAIRED,
    output:
        md=report(SUMMARY, caption="../report/summary.rst", category="Tables"),
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_summary"),
    benchmark:
        bench_path("report_summary")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report summary --config {CFG} --threads {threads} --metrics {input.metrics} --paired {input.paired} "
        "--out {output.md} > {log} 2>&1"


rule report_table2:
    input:
        metrics=METRICS_TABLE2,
        paired=PAIRED_TABLE2,
    output:
        csv=report(TABLE2, caption="../report/table2.rst", category="Tables"),
        vs_paper=report(vs_paper(TABLE2), caption="../report/table2_vs_paper.rst", category="Tables"),
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_table2"),
    benchmark:
        bench_path("report_table2")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report table2 --config {CFG} --threads {threads} --metrics {input.metrics} --paired {input.paired} "
        "--out {output.csv} --vs-paper {output.vs_paper} > {log} 2>&1"


rule report_table3:
    input:
        metrics=METRICS,
        paired=PAIRED,
        convergence=curves(BTCS),
        selections=expand(SELECTION, tc=BTCS, seed=SEEDS, strategy=list(GRID["strategy_method"])),
    output:
        csv=report(TABLE3, caption="../report/table3.rst", category="Tables"),
        vs_paper=report(vs_paper(TABLE3), caption="../report/table3_vs_paper.rst", category="Tables"),
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_table3"),
    benchmark:
        bench_path("report_table3")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report table3 --config {CFG} --threads {threads} --metrics {input.metrics} "
        "--convergence {input.convergence} --selection {input.selections} --paired {input.paired} "
        "--out {output.csv} --vs-paper {output.vs_paper} > {log} 2>&1"


rule report_forest:
    input:
        paired=PAIRED,
        style=FIGURE_STYLE,
    output:
        fig=report(FIG_FOREST, caption="../report/forest.rst", category="Figures"),
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_forest"),
    benchmark:
        bench_path("report_forest")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report forest --config {CFG} --threads {threads} --paired {input.paired} --style {input.style} "
        "--out {output.fig} > {log} 2>&1"


rule report_figure1:
    input:
        probes=lambda wc: expand(PROBES, tc=wc.tc, seed=SEEDS),
        style=FIGURE_STYLE,
    output:
        fig=report(FIGURE1, caption="../report/figure1.rst", category="Figures"),
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_figure1", "{tc}"),
    benchmark:
        bench_path("report_figure1", "{tc}")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report figure1 --config {CFG} --threads {threads} --probes {input.probes} --style {input.style} "
        "--out {output.fig} > {log} 2>&1"


rule report_layer_scores:
    input:
        probes=lambda wc: expand(PROBES, tc=wc.tc, seed=SEEDS),
        style=FIGURE_STYLE,
    output:
        fig=report(FIG_LAYER_SCORES, caption="../report/layer_scores.rst", category="Figures"),
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_layer_scores", "{tc}"),
    benchmark:
        bench_path("report_layer_scores", "{tc}")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report layer-scores --config {CFG} --threads {threads} --probes {input.probes} --style {input.style} "
        "--out {output.fig} > {log} 2>&1"


rule report_convergence:
    input:
        convergence=lambda wc: curves(wc.tc),
        style=FIGURE_STYLE,
    output:
        fig=report(FIG_CONVERGENCE, caption="../report/convergence.rst", category="Figures"),
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_convergence", "{tc}"),
    benchmark:
        bench_path("report_convergence", "{tc}")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report convergence --config {CFG} --threads {threads} --convergence {input.convergence} "
        "--style {input.style} --out {output.fig} > {log} 2>&1"


rule report_seed_scatter:
    input:
        metrics=METRICS,
        style=FIGURE_STYLE,
    output:
        fig=report(FIG_SEED_SCATTER, caption="../report/seed_scatter.rst", category="Figures"),
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_seed_scatter"),
    benchmark:
        bench_path("report_seed_scatter")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report seed-scatter --config {CFG} --threads {threads} --metrics {input.metrics} --style {input.style} "
        "--out {output.fig} > {log} 2>&1"


def table4_inputs(kind):
    """ARCH:PATH of Table 4's evaluations, probes or FoG-A selections: model.arch's own runs at
    the Table 2 paths, every other backbone at its runs/<arch>/... paths."""
    default, tc, seeds = config["model"]["arch"], GRID["t4_tc"], GRID["t4_seeds"]
    plain = {"eval": EVAL, "probes": PROBES, "selection": SELECTION}[kind]
    tagged = {"eval": EVAL_ARCH, "probes": PROBES_ARCH, "selection": SELECTION_ARCH}[kind]
    out = []
    for arch in GRID["t4_archs"]:
        for seed in seeds:
            fill = dict(tc=tc, seed=seed, strategy=GRID["t4_strategy"])
            path = plain if arch == default else tagged
            if kind == "eval":
                out += [(arch, path.format(arch=arch, method=m, **fill)) for m in GRID["t4_pair"]]
            else:
                out.append((arch, path.format(arch=arch, **fill)))
    return out


rule report_table4:
    input:
        evals=[p for _, p in table4_inputs("eval")],
        probes=[p for _, p in table4_inputs("probes")],
        selections=[p for _, p in table4_inputs("selection")],
    output:
        csv=report(TABLE4, caption="../report/table4.rst", category="Tables"),
        vs_paper=report(vs_paper(TABLE4), caption="../report/table4_vs_paper.rst", category="Tables"),
    params:
        evals=" ".join(f"{a}:{p}" for a, p in table4_inputs("eval")),
        probes=" ".join(f"{a}:{p}" for a, p in table4_inputs("probes")),
        selections=" ".join(f"{a}:{p}" for a, p in table4_inputs("selection")),
        **REPORT_PARAMS,
    log:
        log_path("report_table4"),
    benchmark:
        bench_path("report_table4")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report table4 --config {CFG} --threads {threads} --eval {params.evals} --probes {params.probes} "
        "--selection {params.selections} --out {output.csv} --vs-paper {output.vs_paper} > {log} 2>&1"


rule report_table4_figure:
    input:
        table=vs_paper(TABLE4),
        style=FIGURE_STYLE,
    output:
        fig=report(FIG_TABLE4, caption="../report/table4_figure.rst", category="Figures"),
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_table4_figure"),
    benchmark:
        bench_path("report_table4_figure")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report table4-figure --config {CFG} --threads {threads} --table {input.table} --style {input.style} "
        "--out {output.fig} > {log} 2>&1"
