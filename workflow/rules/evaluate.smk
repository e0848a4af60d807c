# Sampling the test split from every branch, the held-out FM loss of every checkpoint,
# scoring the samples, the ground-truth floor, the event classifier of the evaluation,
# and (eval.convergence.metric = fad) FAD-vs-step curves from the snapshots:
# `agrepa sample`, `agrepa heldout`, `agrepa evaluate`, `agrepa teacher train --section
# eval.events.train`, `agrepa convergence`, `agrepa listening-test`.


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
        cfg=lambda wc: config_hash("agrepa.generation.cli", method=wc.method, arch=config["model"]["arch"]),
    log:
        log_path("sample", "{tc}", "seed{seed}", "{method}"),
    benchmark:
        bench_path("sample", "{tc}", "seed{seed}", "{method}")
    threads: res("sample", "threads")
    resources:
        **resources_of("sample"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa sample --config {CFG} --threads {threads} --ckpt {input.ckpt} --manifest {input.manifest} "
        "--mels {params.mels} --tokens {params.tokens} --split test --seed {wildcards.seed} "
        "--out {params.out} > {log} 2>&1"


# Table 4: sampling every other backbone's branches (the recipe's sampling keys are in
# model.<arch>; the checkpoint says which backbone it is).
use rule sample as sample_arch with:
    input:
        unpack(data_inputs),
        ckpt=BRANCH_ARCH,
    output:
        csv=SAMPLES_ARCH,
    params:
        out=lambda wc: os.path.dirname(SAMPLES_ARCH.format(**wc)),
        mels=store_dir("mels"),
        tokens=store_dir("tokens"),
        cfg=lambda wc: config_hash("agrepa.generation.cli", method=wc.method, arch=wc.arch),
    log:
        log_path("sample", "{arch}", "{tc}", "seed{seed}", "{method}"),
    benchmark:
        bench_path("sample", "{arch}", "{tc}", "seed{seed}", "{method}")


EVENTS_CLASSIFIER = config["eval"]["events"]["classifier"] == "events"
T3_METHODS = list(dict.fromkeys([config["report"]["table3"]["baseline"]] + list(GRID["strategy_method"].values())))
CURVE_METRIC = config["eval"]["convergence"]["metric"]


if EVENTS_CLASSIFIER:

    rule eval_classifier_train:
        # the event classifier of the evaluation: a second event encoder (eval.events.train:
        # another seed and width than the acoustic teacher)
        input:
            manifest=MANIFEST,
        output:
            model=CLASSIFIER,
        params:
            out=os.path.dirname(CLASSIFIER),
            cfg=config_hash("agrepa.teachers.cli", role="acoustic"),
        log:
            log_path("eval_classifier_train"),
        benchmark:
            bench_path("eval_classifier_train")
        threads: res("teacher_train", "threads")
        resources:
            **resources_of("teacher_train"),
        conda:
            "../../envs/agrepa.yaml"
        shell:
            "agrepa teacher train --config {CFG} --threads {threads} --section eval.events.train "
            "--manifest {input.manifest} "
            "--out {params.out} > {log} 2>&1"


def heldout_inputs(wc):
    inputs = {**data_inputs(wc), "ckpt": BRANCH.format(**wc)}
    if wc.method in T3_METHODS:  # the convergence curve: the warm-up (step 0) and every snapshot too
        inputs["init"] = WARMUP.format(tc=wc.tc, seed=wc.seed)
    return inputs


rule heldout:
    # held-out FM loss of the final checkpoint (Table 2's fm_loss) and, for Table 3's methods, of
    # the warm-up and every snapshot (the convergence curves), without sampling
    input:
        unpack(heldout_inputs),
    output:
        csv=HELDOUT,
    params:
        run=lambda wc, input: os.path.dirname(input.ckpt),
        curve=lambda wc, input: f"--init {input.init}" if "init" in input.keys() else "--final-only",
        mels=store_dir("mels"),
        tokens=store_dir("tokens"),
        semantic=store_dir("semantic"),
        acoustic=store_dir("acoustic"),
        cfg=lambda wc: config_hash("agrepa.evaluation.cli", method=wc.method, arch=config["model"]["arch"]),
    log:
        log_path("heldout", "{tc}", "seed{seed}", "{method}"),
    benchmark:
        bench_path("heldout", "{tc}", "seed{seed}", "{method}")
    threads: res("evaluate", "threads")
    resources:
        **resources_of("evaluate"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa heldout --config {CFG} --threads {threads} --run {params.run} {params.curve} " + DATA_ARGS + " --out {output.csv} "
        "> {log} 2>&1"


# Table 4: the held-out FM loss of every other backbone's final checkpoints (evaluate reads it)
use rule heldout as heldout_arch with:
    input:
        unpack(data_inputs),
        ckpt=BRANCH_ARCH,
    output:
        csv=HELDOUT_ARCH,
    params:
        run=lambda wc, input: os.path.dirname(input.ckpt),
        curve="--final-only",
        mels=store_dir("mels"),
        tokens=store_dir("tokens"),
        semantic=store_dir("semantic"),
        acoustic=store_dir("acoustic"),
        cfg=lambda wc: config_hash("agrepa.evaluation.cli", method=wc.method, arch=wc.arch),
    log:
        log_path("heldout", "{arch}", "{tc}", "seed{seed}", "{method}"),
    benchmark:
        bench_path("heldout", "{arch}", "{tc}", "seed{seed}", "{method}")


def scorer_inputs(tcs):
    """Tokenizers (TER), the events teacher (TER's acoustic teacher) and the event classifier."""
    inputs = {"tok_speech": TOKEN_MODEL.format(stream="speech"), "tok_audio": TOKEN_MODEL.format(stream="audio")}
    if "B" in tcs:
        inputs["tok_beats"] = TOKEN_MODEL.format(stream="beats")
    if EVENTS:
        inputs["teacher"] = EVENTS_TEACHER
    if EVENTS_CLASSIFIER:
        inputs["classifier"] = CLASSIFIER
    return inputs


def scorer_args(wc, input):
    args = ["--tokenizers"] + [f"{s}={input['tok_' + s]}" for s in ("speech", "audio", "beats")
                               if "tok_" + s in input.keys()]
    if "teacher" in input.keys():
        args += ["--teacher-dir", os.path.dirname(input.teacher)]
    if "classifier" in input.keys():
        args += ["--classifier", os.path.dirname(input.classifier)]
    return " ".join(args)


def evaluate_inputs(wc):
    return {"samples": SAMPLES.format(**wc), "manifest": MANIFEST, "mels": MELS, "tokens": TOKENS.format(tc=wc.tc),
            "heldout": HELDOUT.format(**wc), **scorer_inputs([wc.tc])}


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        json=EVAL,
    params:
        samples=lambda wc, input: os.path.dirname(input.samples),
        mels=lambda wc, input: os.path.dirname(input.mels),
        tokens=lambda wc, input: os.path.dirname(input.tokens),
        scorers=scorer_args,
        cfg=lambda wc: config_hash("agrepa.evaluation.cli", method=wc.method, arch=config["model"]["arch"]),
    log:
        log_path("evaluate", "{tc}", "seed{seed}", "{method}"),
    benchmark:
        bench_path("evaluate", "{tc}", "seed{seed}", "{method}")
    threads: res("evaluate", "threads")
    resources:
        **resources_of("evaluate"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa evaluate --config {CFG} --threads {threads} --samples {params.samples} --manifest {input.manifest} "
        "--mels {params.mels} --tokens {params.tokens} --heldout {input.heldout} {params.scorers} "
        "--out {output.json} > {log} 2>&1"


def evaluate_arch_inputs(wc):
    return {**evaluate_inputs(wc), "samples": SAMPLES_ARCH.format(**wc), "heldout": HELDOUT_ARCH.format(**wc)}


use rule evaluate as evaluate_arch with:
    input:
        unpack(evaluate_arch_inputs),
    output:
        json=EVAL_ARCH,
    params:
        samples=lambda wc, input: os.path.dirname(input.samples),
        mels=lambda wc, input: os.path.dirname(input.mels),
        tokens=lambda wc, input: os.path.dirname(input.tokens),
        scorers=scorer_args,
        cfg=lambda wc: config_hash("agrepa.evaluation.cli", method=wc.method, arch=wc.arch),
    log:
        log_path("evaluate", "{arch}", "{tc}", "seed{seed}", "{method}"),
    benchmark:
        bench_path("evaluate", "{arch}", "{tc}", "seed{seed}", "{method}")


rule evaluate_reference:
    input:
        manifest=MANIFEST,
        mels=MELS,
        **scorer_inputs(BTCS),
    output:
        json=REFERENCE_EVAL,
    params:
        mels=lambda wc, input: os.path.dirname(input.mels),
        scorers=scorer_args,
        cfg=config_hash("agrepa.evaluation.cli"),
    log:
        log_path("evaluate_reference"),
    benchmark:
        bench_path("evaluate_reference")
    threads: res("evaluate", "threads")
    resources:
        **resources_of("evaluate"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa evaluate --config {CFG} --threads {threads} --reference --manifest {input.manifest} --mels {params.mels} "
        "{params.scorers} --out {output.json} > {log} 2>&1"


if CURVE_METRIC == "fad":

    rule convergence:
        # FAD of samples at every snapshot (paper scale: Table 3's convergence is steps to a FAD
        # threshold); only for Table 3's methods, which are the only ones that use it
        input:
            unpack(data_inputs),
            ckpt=BRANCH,
        output:
            csv=CONVERGENCE,
        params:
            run=lambda wc, input: os.path.dirname(input.ckpt),
            mels=store_dir("mels"),
            tokens=store_dir("tokens"),
            cfg=lambda wc: config_hash("agrepa.evaluation.cli", method=wc.method, arch=config["model"]["arch"]),
        log:
            log_path("convergence", "{tc}", "seed{seed}", "{method}"),
        benchmark:
            bench_path("convergence", "{tc}", "seed{seed}", "{method}")
        threads: res("evaluate", "threads")
        resources:
            **resources_of("evaluate"),
        conda:
            "../../envs/agrepa.yaml"
        shell:
            "agrepa convergence --config {CFG} --threads {threads} --run {params.run} --manifest {input.manifest} "
            "--mels {params.mels} --tokens {params.tokens} --seed {wildcards.seed} "
            "--out {output.csv} > {log} 2>&1"


def curves(tc):
    """The convergence curves of Table 3's methods: held-out loss CSVs or FAD curves."""
    return expand(HELDOUT if CURVE_METRIC == "fm_loss" else CONVERGENCE, tc=tc, seed=SEEDS, method=T3_METHODS)


rule listening_test:
    input:
        samples=expand(SAMPLES, tc=BTCS, seed=SEEDS[:1], method=METHODS),
    output:
        html=LISTENING_TEST,
    params:
        dirs=lambda wc, input: " ".join(os.path.dirname(p) for p in input.samples),
        names=" ".join(expand("{tc}_{method}", tc=BTCS, method=METHODS)),
        cfg=config_hash("agrepa.evaluation.cli"),
    log:
        log_path("listening_test"),
    benchmark:
        bench_path("listening_test")
    threads: 1
    resources:
        **resources_of("report"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa listening-test --config {CFG} --threads {threads} --samples {params.dirs} --names {params.names} "
        "--out {output.html} > {log} 2>&1"
