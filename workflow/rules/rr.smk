# Seed 003: representation-similarity regularisation (Tables R1, R2 and Figure R3;
# report.rr; the target `all` has Table R2 only with report.rr.r2.in_all, otherwise ask for
# results/table_r2.csv). The RR runs are ordinary Phase II methods of the catalogue (methods.rr_*),
# branched from the shared warm-ups by train_branch and sampled / scored by sample and
# evaluate; here: the RSA of their samples (`agrepa rsa`), sampling and scoring at other
# CFG scales (Figure R3), and the reports (`agrepa report rr-*`).

localrules:
    report_rr_metrics,
    report_rr_table1,
    report_rr_table2,
    report_rr_figure3,


def rr_runs(path, table):
    """``path`` for every (branched token config, seed, method) of report.rr.<table>."""
    runs = GRID["rr"][table]
    return expand(path, tc=BTCS, seed=runs["seeds"], method=runs["methods"])


def scale_key():
    """The config key of model.arch's sampling CFG scale (its recipe: sample.cfg_scale for the DiT)."""
    arch = config["model"]["arch"]
    return "sample.cfg_scale" if arch == "dit" else f"model.{arch}.cfg_scale"


def r3_evals():
    """Figure R3's evaluations: the ordinary one at the recipe's CFG scale, rr/eval_cfg<s> at the others."""
    runs = GRID["rr"]["r3"]
    arch = config["model"]["arch"]
    default = config["sample"]["cfg_scale"] if arch == "dit" else config["model"][arch]["cfg_scale"]
    out = []
    for scale in config["report"]["rr"]["r3"]["scales"]:
        same = default is not None and float(scale) == float(default)
        out += expand(EVAL if same else RR_EVAL, tc=BTCS, seed=runs["seeds"], method=runs["methods"],
                      scale=float(scale))
    return out


rule rr_rsa:
    input:
        samples=SAMPLES,
        manifest=MANIFEST,
        tokens=TOKENS,
        warmup=WARMUP,
    output:
        json=RR_RSA,
    params:
        samples=lambda wc, input: os.path.dirname(input.samples),
        tokens=lambda wc, input: os.path.dirname(input.tokens),
        cfg=lambda wc: config_hash("agrepa.evaluation.cli", method=wc.method, arch=config["model"]["arch"]),
    log:
        log_path("rr_rsa", "{tc}", "seed{seed}", "{method}"),
    benchmark:
        bench_path("rr_rsa", "{tc}", "seed{seed}", "{method}")
    threads: res("evaluate", "threads")
    resources:
        **resources_of("evaluate"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa rsa --config {CFG} --threads {threads} --samples {params.samples} --manifest {input.manifest} "
        "--tokens {params.tokens} --warmup {input.warmup} --out {output.json} > {log} 2>&1"


rule rr_sample_scale:
    input:
        unpack(data_inputs),
        ckpt=BRANCH,
    output:
        csv=RR_SAMPLES,
    params:
        out=lambda wc: os.path.dirname(RR_SAMPLES.format(**wc)),
        mels=store_dir("mels"),
        tokens=store_dir("tokens"),
        cfg=lambda wc: config_hash("agrepa.generation.cli", method=wc.method, arch=config["model"]["arch"]),
        scale_key=scale_key(),
    log:
        log_path("rr_sample_scale", "cfg{scale}", "{tc}", "seed{seed}", "{method}"),
    benchmark:
        bench_path("rr_sample_scale", "cfg{scale}", "{tc}", "seed{seed}", "{method}")
    threads: res("sample", "threads")
    resources:
        **resources_of("sample"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa sample --config {CFG} --threads {threads} --set {params.scale_key}={wildcards.scale} "
        "--ckpt {input.ckpt} --manifest {input.manifest} --mels {params.mels} --tokens {params.tokens} "
        "--split test --seed {wildcards.seed} --out {params.out} > {log} 2>&1"


def rr_evaluate_inputs(wc):
    """As the ordinary evaluation's inputs (TER, events), for the samples at another CFG scale; no
    held-out loss (it does not depend on the sampling scale: the ordinary evaluation has it)."""
    return {"samples": RR_SAMPLES.format(**wc), "manifest": MANIFEST, "mels": MELS,
            "tokens": TOKENS.format(tc=wc.tc), **scorer_inputs([wc.tc])}


rule rr_evaluate_scale:
    input:
        unpack(rr_evaluate_inputs),
    output:
        json=RR_EVAL,
    params:
        samples=lambda wc, input: os.path.dirname(input.samples),
        mels=lambda wc, input: os.path.dirname(input.mels),
        tokens=lambda wc, input: os.path.dirname(input.tokens),
        scorers=scorer_args,
        cfg=lambda wc: config_hash("agrepa.evaluation.cli", method=wc.method, arch=config["model"]["arch"]),
    log:
        log_path("rr_evaluate_scale", "cfg{scale}", "{tc}", "seed{seed}", "{method}"),
    benchmark:
        bench_path("rr_evaluate_scale", "cfg{scale}", "{tc}", "seed{seed}", "{method}")
    threads: res("evaluate", "threads")
    resources:
        **resources_of("evaluate"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa evaluate --config {CFG} --threads {threads} --samples {params.samples} --manifest {input.manifest} "
        "--mels {params.mels} --tokens {params.tokens} {params.scorers} --out {output.json} > {log} 2>&1"


rule report_rr_metrics:
    # one table's runs only: `snakemake results/table_r1.csv` trains nothing of R2 (report.rr.r2.in_all)
    input:
        evals=lambda wc: rr_runs(EVAL, wc.table),
        rsa=lambda wc: rr_runs(RR_RSA, wc.table),
        reference=REFERENCE_EVAL,
    output:
        csv=RR_METRICS,
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_rr_metrics", "{table}"),
    benchmark:
        bench_path("report_rr_metrics", "{table}")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report metrics --config {CFG} --threads {threads} --eval {input.evals} {input.rsa} "
        "--reference {input.reference} --out {output.csv} > {log} 2>&1"


rule report_rr_table1:
    input:
        metrics=RR_METRICS.format(table="r1"),
    output:
        csv=report(TABLE_R1, caption="../report/table_r1.rst", category="Tables"),
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_rr_table1"),
    benchmark:
        bench_path("report_rr_table1")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report rr-table1 --config {CFG} --threads {threads} --metrics {input.metrics} --out {output.csv} "
        "> {log} 2>&1"


rule report_rr_table2:
    input:
        metrics=RR_METRICS.format(table="r2"),
    output:
        csv=report(TABLE_R2, caption="../report/table_r2.rst", category="Tables"),
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_rr_table2"),
    benchmark:
        bench_path("report_rr_table2")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report rr-table2 --config {CFG} --threads {threads} --metrics {input.metrics} --out {output.csv} "
        "> {log} 2>&1"


rule report_rr_figure3:
    input:
        evals=lambda wc: r3_evals(),
        style=FIGURE_STYLE,
    output:
        fig=report(FIGURE_R3, caption="../report/figure_r3.rst", category="Figures"),
        csv=FIGURE_R3_DATA,
    params:
        **REPORT_PARAMS,
    log:
        log_path("report_rr_figure3"),
    benchmark:
        bench_path("report_rr_figure3")
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa report rr-figure3 --config {CFG} --threads {threads} --eval {input.evals} --style {input.style} "
        "--data {output.csv} --out {output.fig} > {log} 2>&1"
