# Sampling the test split from every branch, scoring the samples, the ground-truth
# floor, and FAD-vs-step curves from the branch snapshots:
# `agrepa sample`, `agrepa evaluate`, `agrepa convergence`, `agrepa listening-test`.


rule sample:
    input:
        unpack(data_inputs),
        ckpt=BRANCH,
    output:
        csv=SAMPLES,
    params:
        out=lambda wc: os.path.dirname(SAMPLES.format(**wc)),
        mels=store_dir("mels"),
        tokens=store_dir("tokens"),
        cfg=lambda wc: config_hash("agrepa.generation.cli", method=wc.method),
    log:
        log_path("sample", "{tc}", "seed{seed}", "{method}"),
    threads: res("sample", "threads")
    resources:
        **resources_of("sample"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa sample --config {CFG} --threads {threads} --ckpt {input.ckpt} --manifest {input.manifest} "
        "--mels {params.mels} --tokens {params.tokens} --split test --seed {wildcards.seed} "
        "--out {params.out} > {log} 2>&1"


rule evaluate:
    input:
        samples=SAMPLES,
        manifest=MANIFEST,
    output:
        json=EVAL,
    params:
        samples=lambda wc, input: os.path.dirname(input.samples),
        cfg=lambda wc: config_hash("agrepa.evaluation.cli", method=wc.method),
    log:
        log_path("evaluate", "{tc}", "seed{seed}", "{method}"),
    threads: res("evaluate", "threads")
    resources:
        **resources_of("evaluate"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa evaluate --config {CFG} --threads {threads} --samples {params.samples} --manifest {input.manifest} "
        "--out {output.json} > {log} 2>&1"


rule evaluate_reference:
    input:
        manifest=MANIFEST,
        mels=MELS,
    output:
        json=REFERENCE_EVAL,
    params:
        mels=lambda wc, input: os.path.dirname(input.mels),
        cfg=config_hash("agrepa.evaluation.cli"),
    log:
        log_path("evaluate_reference"),
    threads: res("evaluate", "threads")
    resources:
        **resources_of("evaluate"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa evaluate --config {CFG} --threads {threads} --reference --manifest {input.manifest} --mels {params.mels} "
        "--out {output.json} > {log} 2>&1"


rule convergence:
    input:
        unpack(data_inputs),
        ckpt=BRANCH,
    output:
        csv=CONVERGENCE,
    params:
        run=lambda wc, input: os.path.dirname(input.ckpt),
        mels=store_dir("mels"),
        tokens=store_dir("tokens"),
        cfg=lambda wc: config_hash("agrepa.evaluation.cli", method=wc.method),
    log:
        log_path("convergence", "{tc}", "seed{seed}", "{method}"),
    threads: res("evaluate", "threads")
    resources:
        **resources_of("evaluate"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa convergence --config {CFG} --threads {threads} --run {params.run} --manifest {input.manifest} "
        "--mels {params.mels} --tokens {params.tokens} --seed {wildcards.seed} "
        "--out {output.csv} > {log} 2>&1"


rule listening_test:
    input:
        samples=expand(SAMPLES, tc=TCS, seed=SEEDS[:1], method=METHODS),
    output:
        html=LISTENING_TEST,
    params:
        dirs=lambda wc, input: " ".join(os.path.dirname(p) for p in input.samples),
        names=" ".join(expand("{tc}_{method}", tc=TCS, method=METHODS)),
        cfg=config_hash("agrepa.evaluation.cli"),
    log:
        log_path("listening_test"),
    threads: 1
    resources:
        **resources_of("report"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa listening-test --config {CFG} --threads {threads} --samples {params.dirs} --names {params.names} "
        "--out {output.html} > {log} 2>&1"
