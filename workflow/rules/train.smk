# Phase I (one warm-up per token config x seed) and Phase II (every method branches
# from that same warm-up checkpoint): `agrepa train`.
#
# Requeue-safe: `agrepa train` resumes from last.pt in its --out directory, and
# last.pt is not a declared output (Snakemake would delete it before a retry),
# so a SLURM requeue (SLURM_RESTART_COUNT > 0) or a Snakemake retry (attempt > 1)
# continues where the job stopped. A first attempt starts fresh: it removes a stale
# last.pt and snapshots/ (left by an earlier run, e.g. before --forcerun or a config
# change), so a forced rerun really retrains.
FRESH_START = ('if [ {resources.train_attempt} -eq 1 ] && [ "${{SLURM_RESTART_COUNT:-0}}" -eq 0 ]; '
               'then rm -rf {params.out}/last.pt {params.out}/snapshots; fi; ')


def train_resources():
    return dict(**resources_of("train"), train_attempt=lambda wildcards, attempt: attempt)


def data_inputs(wildcards):
    """The data every model-facing command reads, for this token config."""
    return {
        "manifest": MANIFEST,
        "mels": MELS,
        "tokens": TOKENS.format(tc=wildcards.tc),
        "semantic": EMBEDDINGS.format(role="semantic"),
        "acoustic": EMBEDDINGS.format(role="acoustic"),
    }


# store directories (rules name DIR/index.json; the CLI takes the directory)
DATA_ARGS = ("--manifest {input.manifest} --mels {params.mels} --tokens {params.tokens} "
             "--semantic {params.semantic} --acoustic {params.acoustic}")


def store_dir(key):
    return lambda wc, input: os.path.dirname(input[key])


rule train_warmup:
    input:
        unpack(data_inputs),
    output:
        ckpt=WARMUP,
        metrics=res_path("runs", "{tc}", "seed{seed}", "warmup", "metrics.csv"),
    params:
        out=lambda wc: os.path.dirname(WARMUP.format(**wc)),
        mels=store_dir("mels"),
        tokens=store_dir("tokens"),
        semantic=store_dir("semantic"),
        acoustic=store_dir("acoustic"),
        cfg=config_hash("agrepa.training.cli"),
    log:
        log_path("train_warmup", "{tc}", "seed{seed}"),
    threads: res("train", "threads")
    resources:
        **train_resources(),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        FRESH_START + "agrepa train --config {CFG} --threads {threads} --phase warmup " + DATA_ARGS + " --seed {wildcards.seed} "
        "--out {params.out} > {log} 2>&1"


def branch_inputs(wildcards):
    inputs = data_inputs(wildcards)
    inputs["init"] = WARMUP.format(tc=wildcards.tc, seed=wildcards.seed)
    strategy = config["methods"][wildcards.method].get("selection")
    if strategy:
        inputs["selection"] = SELECTION.format(tc=wildcards.tc, seed=wildcards.seed, strategy=strategy)
    return inputs


rule train_branch:
    input:
        unpack(branch_inputs),
    output:
        ckpt=BRANCH,
        metrics=res_path("runs", "{tc}", "seed{seed}", "{method}", "metrics.csv"),
    params:
        out=lambda wc: os.path.dirname(BRANCH.format(**wc)),
        selection=lambda wc, input: f"--selection {input.selection}" if "selection" in input.keys() else "",
        mels=store_dir("mels"),
        tokens=store_dir("tokens"),
        semantic=store_dir("semantic"),
        acoustic=store_dir("acoustic"),
        cfg=lambda wc: config_hash("agrepa.training.cli", method=wc.method),
    log:
        log_path("train_branch", "{tc}", "seed{seed}", "{method}"),
    threads: res("train", "threads")
    resources:
        **train_resources(),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        FRESH_START + "agrepa train --config {CFG} --threads {threads} --phase branch --method {wildcards.method} --init {input.init} "
        "{params.selection} " + DATA_ARGS + " --seed {wildcards.seed} --out {params.out} > {log} 2>&1"
