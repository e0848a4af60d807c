# Phase I (one warm-up per token config x seed) and Phase II (every method branches
# from that same warm-up checkpoint): `agrepa train`.
#
# Requeue-safe: `agrepa train` resumes from last.pt in its --out directory, and
# last.pt is not a declared output (Snakemake would delete it before a retry).
# `--attempt` (Snakemake's attempt number) decides: a retried job (attempt > 1) or a
# requeued SLURM job (the same job id comes back) continues where it stopped; a first
# attempt (a new or forced run) removes a stale last.pt and snapshots/ and really
# retrains (prepare_resume in src/agrepa/training/checkpoint.py).
#
# Multi-GPU: resources.train.gpu = N > 1 runs N processes (torchrun, one per GPU) in
# the job; the job asks for N GPUs and N x resources.train.threads CPUs. Multi-node:
# resources.train.nodes = M > 1 runs N processes on each of M nodes (srun starts one
# torchrun per node; they meet at a c10d rendezvous on the first node).


def arch_set(wildcards):
    """`--set model.arch=ARCH` for a Table 4 backbone's job (model.arch's own jobs: nothing)."""
    return f" --set model.arch={wildcards.arch}" if "arch" in wildcards.keys() else ""


def train_processes():
    """Processes per node of a training job: one per GPU (resources.train.gpu), at least one."""
    return max(1, int(res("train", "gpu")))


def train_nodes():
    return int(res("train", "nodes"))


def train_resources():
    """Resources of a training job. On M > 1 nodes (resources.train.nodes) it asks SLURM for M
    tasks, one per node, each with resources.train.gpu GPUs (gres: --gpus would count the whole
    job's) and the threads of its processes; `mpi` makes the job step run the rule's shell once
    on the first node, where `srun` starts one torchrun per node (train_command)."""
    r = dict(**resources_of("train"), train_attempt=lambda wildcards, attempt: attempt)
    m = train_nodes()
    if m > 1:
        gpus = r.pop("gpu")
        r.update(nodes=m, tasks=m, tasks_per_gpu=0, mpi="srun", **({"gres": f"gpu:{gpus}"} if gpus else {}))
    return r


def train_command():
    """`agrepa train --config --threads`. Several processes (resources.train.gpu = G > 1 per
    node, or resources.train.nodes = M > 1): torchrun with a c10d rendezvous at the job's first
    node (agrepa.training.launch), started once per node by srun when M > 1; each process has
    resources.train.threads threads."""
    n, m = train_processes(), train_nodes()
    if n == 1 and m == 1:
        return "agrepa train --config {CFG}{params.arch} --threads {threads}"
    t = res("train", "threads")
    srun = f"srun --nodes {m} --ntasks-per-node 1 --kill-on-bad-exit=1 " if m > 1 else ""
    return (f"OMP_NUM_THREADS={t} {srun}torchrun --nnodes {m} --nproc_per_node {n} --rdzv-backend c10d "
            f"--rdzv-endpoint $(agrepa-rendezvous) --rdzv-id ${{{{SLURM_JOB_ID:-agrepa}}}} "
            f"-m agrepa.cli train --config {{CFG}}{{params.arch}} --threads {t}")


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
        arch=arch_set,
        cfg=config_hash("agrepa.training.cli", arch=config["model"]["arch"]),
    log:
        log_path("train_warmup", "{tc}", "seed{seed}"),
    benchmark:
        bench_path("train_warmup", "{tc}", "seed{seed}")
    threads: res("train", "threads") * train_processes()
    resources:
        **train_resources(),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        train_command() + " --phase warmup " + DATA_ARGS + " --seed {wildcards.seed} "
        "--out {params.out} --attempt {resources.train_attempt} > {log} 2>&1"


def branch_inputs(wildcards):
    inputs = data_inputs(wildcards)
    arch = {"arch": wildcards.arch} if "arch" in wildcards.keys() else {}
    inputs["init"] = (WARMUP_ARCH if arch else WARMUP).format(tc=wildcards.tc, seed=wildcards.seed, **arch)
    strategy = config["methods"][wildcards.method].get("selection")
    if strategy:
        inputs["selection"] = (SELECTION_ARCH if arch else SELECTION).format(
            tc=wildcards.tc, seed=wildcards.seed, strategy=strategy, **arch)
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
        arch=arch_set,
        cfg=lambda wc: config_hash("agrepa.training.cli", method=wc.method, arch=config["model"]["arch"]),
    log:
        log_path("train_branch", "{tc}", "seed{seed}", "{method}"),
    benchmark:
        bench_path("train_branch", "{tc}", "seed{seed}", "{method}")
    threads: res("train", "threads") * train_processes()
    resources:
        **train_resources(),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        train_command() + " --phase branch --method {wildcards.method} --init {input.init} "
        "{params.selection} " + DATA_ARGS + " --seed {wildcards.seed} --out {params.out} "
        "--attempt {resources.train_attempt} > {log} 2>&1"


# Table 4: the same two rules for every other backbone of report.table4.architectures
# (runs/<arch>/...; the job sets model.arch, its params hash that backbone's config keys).
use rule train_warmup as train_warmup_arch with:
    output:
        ckpt=WARMUP_ARCH,
        metrics=res_path("runs", "{arch}", "{tc}", "seed{seed}", "warmup", "metrics.csv"),
    params:
        out=lambda wc: os.path.dirname(WARMUP_ARCH.format(**wc)),
        mels=store_dir("mels"),
        tokens=store_dir("tokens"),
        semantic=store_dir("semantic"),
        acoustic=store_dir("acoustic"),
        arch=arch_set,
        cfg=lambda wc: config_hash("agrepa.training.cli", arch=wc.arch),
    log:
        log_path("train_warmup", "{arch}", "{tc}", "seed{seed}"),
    benchmark:
        bench_path("train_warmup", "{arch}", "{tc}", "seed{seed}")


use rule train_branch as train_branch_arch with:
    output:
        ckpt=BRANCH_ARCH,
        metrics=res_path("runs", "{arch}", "{tc}", "seed{seed}", "{method}", "metrics.csv"),
    params:
        out=lambda wc: os.path.dirname(BRANCH_ARCH.format(**wc)),
        selection=lambda wc, input: f"--selection {input.selection}" if "selection" in input.keys() else "",
        mels=store_dir("mels"),
        tokens=store_dir("tokens"),
        semantic=store_dir("semantic"),
        acoustic=store_dir("acoustic"),
        arch=arch_set,
        cfg=lambda wc: config_hash("agrepa.training.cli", method=wc.method, arch=wc.arch),
    log:
        log_path("train_branch", "{arch}", "{tc}", "seed{seed}", "{method}"),
    benchmark:
        bench_path("train_branch", "{arch}", "{tc}", "seed{seed}", "{method}")
