# Corpus and mel features: `agrepa data ...`.
# source: synth -> one synthesised corpus; source: real -> LibriSpeech + AudioSet
# from local disk, merged into one manifest.


if config["data"]["source"] == "synth":

    rule data_synth:
        output:
            manifest=MANIFEST,
            rejects=res_path("data", "rejects.csv"),
        params:
            out=res_path("data"),
            cfg=config_hash("agrepa.corpora.cli"),
        log:
            log_path("data_synth"),
        benchmark:
            bench_path("data_synth")
        threads: res("data", "threads")
        resources:
            **resources_of("data"),
        conda:
            "../../envs/agrepa.yaml"
        shell:
            "agrepa data synth --config {CFG} --threads {threads} --out {params.out} > {log} 2>&1"

else:

    rule data_corpus:
        output:
            manifest=res_path("data", "{corpus}", "manifest.csv"),
        params:
            out=res_path("data", "{corpus}"),
            root=lambda wc: config["data"][wc.corpus]["root"],
            cfg=config_hash("agrepa.corpora.cli"),
        wildcard_constraints:
            corpus="librispeech|audioset",
        log:
            log_path("data_corpus", "{corpus}"),
        benchmark:
            bench_path("data_corpus", "{corpus}")
        threads: res("data", "threads")
        resources:
            **resources_of("data"),
        conda:
            "../../envs/agrepa.yaml"
        shell:
            "agrepa data {wildcards.corpus} --config {CFG} --threads {threads} --root {params.root} "
            "--out {params.out} > {log} 2>&1"

    rule data_merge:
        input:
            res_path("data", "librispeech", "manifest.csv"),
            res_path("data", "audioset", "manifest.csv"),
        output:
            manifest=MANIFEST,
        params:
            out=res_path("data"),
            dirs=lambda wc, input: " ".join(os.path.dirname(p) for p in input),
        log:
            log_path("data_merge"),
        benchmark:
            bench_path("data_merge")
        threads: 1
        resources:
            **resources_of("default"),
        conda:
            "../../envs/agrepa.yaml"
        shell:
            "agrepa data merge {params.dirs} --config {CFG} --threads {threads} --out {params.out} > {log} 2>&1"


rule data_mels_part:
    input:
        manifest=MANIFEST,
    output:
        index=part_of(MELS),
    params:
        out=os.path.dirname(MELS),
        k=lambda wc: int(wc.k),
        n=lambda wc: int(wc.n),
        cfg=config_hash("agrepa.corpora.cli"),
    log:
        log_path("data_mels_part", "part-{k}of{n}"),
    benchmark:
        bench_path("data_mels_part", "part-{k}of{n}")
    threads: res("data", "threads")
    resources:
        **resources_of("data"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa data mels --config {CFG} --threads {threads} --manifest {input.manifest} "
        "--part {params.k} --parts {params.n} --out {params.out} > {log} 2>&1"


rule data_mels:
    input:
        manifest=MANIFEST,
        parts=parts_of(MELS, "mels"),
    output:
        index=MELS,
    params:
        out=os.path.dirname(MELS),
        n=config["shards"]["mels"],
        cfg=config_hash("agrepa.corpora.cli"),
    log:
        log_path("data_mels"),
    benchmark:
        bench_path("data_mels")
    threads: 1
    resources:
        **resources_of("default"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa data mels --config {CFG} --threads {threads} --manifest {input.manifest} "
        "--gather --parts {params.n} --out {params.out} > {log} 2>&1"
