# Probes of the warm-up checkpoint (FoG-A, LASP, gradient norm) and the frozen
# layer selections they give: `agrepa probe`, `agrepa select`.


rule probe:
    input:
        unpack(data_inputs),
        ckpt=WARMUP,
    output:
        csv=PROBES,
    params:
        mels=store_dir("mels"),
        tokens=store_dir("tokens"),
        semantic=store_dir("semantic"),
        acoustic=store_dir("acoustic"),
        cfg=config_hash("agrepa.probing.cli", arch=config["model"]["arch"]),
    log:
        log_path("probe", "{tc}", "seed{seed}"),
    benchmark:
        bench_path("probe", "{tc}", "seed{seed}")
    threads: res("probe", "threads")
    resources:
        **resources_of("probe"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa probe --config {CFG} --threads {threads} --ckpt {input.ckpt} " + DATA_ARGS + " --seed {wildcards.seed} "
        "--token-config {wildcards.tc} --out {output.csv} > {log} 2>&1"


rule select:
    input:
        probes=PROBES,
    output:
        json=SELECTION,
    params:
        k=config["selection"]["k"],
        cfg=config_hash("agrepa.probing.cli"),
    log:
        log_path("select", "{tc}", "seed{seed}", "{strategy}"),
    benchmark:
        bench_path("select", "{tc}", "seed{seed}", "{strategy}")
    threads: 1
    resources:
        **resources_of("default"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa select --config {CFG} --threads {threads} --probes {input.probes} --strategy {wildcards.strategy} "
        "--k {params.k} --seed {wildcards.seed} --out {output.json} > {log} 2>&1"


# Table 4: probes and the FoG-A selection of every other backbone (its warm-up's checkpoint
# says which backbone it is).
use rule probe as probe_arch with:
    input:
        unpack(data_inputs),
        ckpt=WARMUP_ARCH,
    output:
        csv=PROBES_ARCH,
    params:
        mels=store_dir("mels"),
        tokens=store_dir("tokens"),
        semantic=store_dir("semantic"),
        acoustic=store_dir("acoustic"),
        cfg=lambda wc: config_hash("agrepa.probing.cli", arch=wc.arch),
    log:
        log_path("probe", "{arch}", "{tc}", "seed{seed}"),
    benchmark:
        bench_path("probe", "{arch}", "{tc}", "seed{seed}")


use rule select as select_arch with:
    input:
        probes=PROBES_ARCH,
    output:
        json=SELECTION_ARCH,
    log:
        log_path("select", "{arch}", "{tc}", "seed{seed}", "{strategy}"),
    benchmark:
        bench_path("select", "{arch}", "{tc}", "seed{seed}", "{strategy}")
