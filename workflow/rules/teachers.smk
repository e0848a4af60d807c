# Frozen teachers, their embeddings, and the tokenizers fitted on them:
# `agrepa teacher ...` and `agrepa tokens ...`.

EVENTS = config["teachers"]["acoustic"]["name"] == "events"
STREAM_ROLE = {"speech": "semantic", "audio": "acoustic", "beats": "acoustic"}


if EVENTS:

    rule teacher_train:
        input:
            manifest=MANIFEST,
        output:
            model=EVENTS_TEACHER,
            metrics=res_path("teachers", "events", "metrics.json"),
        params:
            out=os.path.dirname(EVENTS_TEACHER),
            cfg=config_hash("agrepa.teachers.cli", role="acoustic"),
        log:
            log_path("teacher_train"),
        benchmark:
            bench_path("teacher_train")
        threads: res("teacher_train", "threads")
        resources:
            **resources_of("teacher_train"),
        conda:
            "../../envs/agrepa.yaml"
        shell:
            "agrepa teacher train --config {CFG} --threads {threads} --manifest {input.manifest} "
            "--out {params.out} > {log} 2>&1"


def embed_inputs(wildcards):
    inputs = {"manifest": MANIFEST}
    if wildcards.role == "acoustic" and EVENTS:
        inputs["teacher"] = EVENTS_TEACHER
    return inputs


def embed_teacher_arg(wildcards):
    if wildcards.role == "acoustic" and EVENTS:
        return "--teacher-dir " + os.path.dirname(EVENTS_TEACHER)
    return ""


rule teacher_embed_part:
    input:
        unpack(embed_inputs),
    output:
        index=part_of(EMBEDDINGS),
    params:
        out=lambda wc: os.path.dirname(EMBEDDINGS.format(role=wc.role)),
        teacher=embed_teacher_arg,
        k=lambda wc: int(wc.k),
        n=lambda wc: int(wc.n),
        cfg=lambda wc: config_hash("agrepa.teachers.cli", role=wc.role),
    log:
        log_path("teacher_embed_part", "{role}", "part-{k}of{n}"),
    benchmark:
        bench_path("teacher_embed_part", "{role}", "part-{k}of{n}")
    threads: res("teacher_embed", "threads")
    resources:
        **resources_of("teacher_embed"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa teacher embed --config {CFG} --threads {threads} --role {wildcards.role} --manifest {input.manifest} "
        "{params.teacher} --part {params.k} --parts {params.n} --out {params.out} > {log} 2>&1"


rule teacher_embed:
    input:
        manifest=MANIFEST,
        parts=lambda wc: parts_of(EMBEDDINGS, "embed", role=wc.role),
    output:
        index=EMBEDDINGS,
    params:
        out=lambda wc: os.path.dirname(EMBEDDINGS.format(role=wc.role)),
        n=config["shards"]["embed"],
        cfg=lambda wc: config_hash("agrepa.teachers.cli", role=wc.role),
    log:
        log_path("teacher_embed", "{role}"),
    benchmark:
        bench_path("teacher_embed", "{role}")
    threads: 1
    resources:
        **resources_of("default"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa teacher embed --config {CFG} --threads {threads} --role {wildcards.role} --manifest {input.manifest} "
        "--gather --parts {params.n} --out {params.out} > {log} 2>&1"


rule tokens_fit:
    input:
        features=lambda wc: EMBEDDINGS.format(role=STREAM_ROLE[wc.stream]),
        manifest=MANIFEST,
    output:
        model=directory(TOKEN_MODEL),
    params:
        features=lambda wc, input: os.path.dirname(input.features),
        cfg=config_hash("agrepa.tokenizers.cli"),
    log:
        log_path("tokens_fit", "{stream}"),
    benchmark:
        bench_path("tokens_fit", "{stream}")
    threads: res("tokens", "threads")
    resources:
        **resources_of("tokens"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa tokens fit --config {CFG} --threads {threads} --stream {wildcards.stream} --features {params.features} "
        "--manifest {input.manifest} --out {output.model} > {log} 2>&1"


def encode_inputs(wildcards):
    inputs = {
        "speech": TOKEN_MODEL.format(stream="speech"),
        "audio": TOKEN_MODEL.format(stream="audio"),
        "semantic": EMBEDDINGS.format(role="semantic"),
        "acoustic": EMBEDDINGS.format(role="acoustic"),
        "manifest": MANIFEST,
    }
    if wildcards.tc == "B":
        inputs["beats"] = TOKEN_MODEL.format(stream="beats")
        if "A" in config["token_configs"]:    # the speech and audio streams are encoded once, for A
            inputs["primary"] = TOKENS.format(tc="A")
    return inputs


rule tokens_encode_part:
    input:
        unpack(encode_inputs),
    output:
        index=part_of(TOKENS),
    params:
        out=lambda wc: os.path.dirname(TOKENS.format(tc=wc.tc)),
        beats=lambda wc, input: f"--beats-model {input.beats}" if wc.tc == "B" else "",
        primary=lambda wc, input: f"--primary {os.path.dirname(input.primary)}" if "primary" in input.keys() else "",
        semantic=lambda wc, input: os.path.dirname(input.semantic),
        acoustic=lambda wc, input: os.path.dirname(input.acoustic),
        k=lambda wc: int(wc.k),
        n=lambda wc: int(wc.n),
        cfg=config_hash("agrepa.tokenizers.cli"),
    log:
        log_path("tokens_encode_part", "{tc}", "part-{k}of{n}"),
    benchmark:
        bench_path("tokens_encode_part", "{tc}", "part-{k}of{n}")
    threads: res("tokens", "threads")
    resources:
        **resources_of("tokens"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa tokens encode --config {CFG} --threads {threads} --token-config {wildcards.tc} "
        "--speech-model {input.speech} --audio-model {input.audio} {params.beats} {params.primary} "
        "--semantic {params.semantic} --acoustic {params.acoustic} --manifest {input.manifest} "
        "--part {params.k} --parts {params.n} --out {params.out} > {log} 2>&1"


rule tokens_encode:
    input:
        manifest=MANIFEST,
        parts=lambda wc: parts_of(TOKENS, "encode", tc=wc.tc),
    output:
        index=TOKENS,
    params:
        out=lambda wc: os.path.dirname(TOKENS.format(tc=wc.tc)),
        n=config["shards"]["encode"],
        cfg=config_hash("agrepa.tokenizers.cli"),
    log:
        log_path("tokens_encode", "{tc}"),
    benchmark:
        bench_path("tokens_encode", "{tc}")
    threads: 1
    resources:
        **resources_of("default"),
    conda:
        "../../envs/agrepa.yaml"
    shell:
        "agrepa tokens encode --config {CFG} --threads {threads} --token-config {wildcards.tc} "
        "--manifest {input.manifest} --gather --parts {params.n} --out {params.out} > {log} 2>&1"
