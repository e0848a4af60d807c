"""The cost plan of a set of targets: jobs per rule from Snakemake's dry run, per rule the estimated
GPU-hours and wall-clock at the config's ``resources``, and totals.

Training (``train_warmup``, ``train_branch``): the DiT's analytic FLOPs (:mod:`agrepa.caching.flops`)
of one step, 3 x the forward (forward + backward) at ``train.batch_size`` rows of the crop
(``ceil(train.crop_seconds x audio.sample_rate / audio.hop_length)`` frames), times the phase's steps
(:class:`agrepa.training.schedule.Lengths` on ``plan.clips``, the train clips per domain, which are not
on disk at plan time), at ``plan.mfu`` x ``plan.peak_tflops``. Not counted: the REPA / BiT-C heads,
Config B's token fusion, the optimizer and EMA (each well under 1 % at paper size). No throughput has
been measured on a GPU, so every figure is an estimate at a stated MFU. Other GPU rules: a stated
GPU-hours per job (``plan.job_gpu_hours``). Wall-clock per job = GPU-hours / the job's GPUs
(``resources.<group>.gpu`` x ``nodes``, perfect scaling); the total wall-clock adds the stages' per-job
wall-clock (every job of a stage in parallel, the stages one after another).

Disk written per job (GB = 1e9 bytes), from the store formats and ``plan.clip_seconds`` (the mean clip;
``plan.clips`` train clips, so the valid and test clips add theirs): ``data_mels_part`` (one of
``shards.mels`` parts) float32 ``audio.n_mels`` x ``sample_rate / hop_length`` frames per second;
``teacher_embed_part`` (``shards.embed`` parts per role, the clips of the domains the role is
read for: :func:`agrepa.teachers.readers.embedded_domains`) :func:`teacher_store_bytes_per_clip`; the gathers write only an index; ``train_warmup`` /
``train_branch`` :func:`checkpoint_bytes` (``last.pt`` and ``final.pt`` the full training state, a
branch's ``train.snapshot_fractions`` snapshots the EMA weights); ``tokens_encode_part`` (``shards.encode``
parts per token config of ``token_configs``) :func:`token_store_bytes_per_clip`; ``sample`` PCM_16 wav +
float32 mel of ``sample.max_clips`` clips. Other rules: not estimated (``-``; most write CSV / JSON).

Table 4's backbones (``train_warmup_arch``, ``train_branch_arch``: the backbones of
``report.table4.architectures`` other than ``model.arch``, as many jobs each): one training step's
FLOPs as ``torch.utils.flop_counter.FlopCounterMode`` counts the backbone's forward and backward on the
``meta`` device (no memory, no arithmetic) at ``model.<arch>``'s sizes, on 2 rows of the crop
(FLOPs are linear in the rows) with ``crop_seconds`` x the speech stream's :func:`token_rate` tokens;
a job's GPU-hours and checkpoint bytes are the mean over those backbones. The ``*_arch`` variants of
the other rules take their parent rule's resources, ``plan.job_gpu_hours`` and disk. Peak memory
per job: the ``mem_mb`` the job requests (``resources``, per node), and for the DiT training jobs
an analytic GPU-memory estimate per GPU (:func:`train_gpu_memory_bytes`)."""
from __future__ import annotations

import inspect
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..caching.flops import Dims, forward_flops
from ..config import DOMAINS
from ..model.dit import DiT
from ..training.schedule import Lengths

CONFIG_KEYS = ("plan", "train", "model", "audio", "resources", "shards", "sample.max_clips", "tokens.speech.k",
               "teachers.frames_dtype", "tokens.audio.k", "tokens.speech.kind", "tokens.speech.onnx_token_rate",
               "token_configs", "report.table4.architectures")  # config sections this module reads

SKIPPED = {"results", ".snakemake", ".git"}   # not linked into the dry run's scratch directory
TRAIN_RULES = {"train_warmup": "warmup", "train_branch": "branch"}
# rule -> resources group of the workflow's GPU rules (workflow/rules/*.smk, resources_of(...));
# a Table 4 variant (X_arch) takes X's (base_rule)
RULE_GROUPS = {"teacher_embed_part": "teacher_embed", "tokens_fit": "tokens", "tokens_encode_part": "tokens",
               "train_warmup": "train", "train_branch": "train", "probe": "probe", "heldout": "evaluate",
               "sample": "sample", "evaluate": "evaluate", "evaluate_reference": "evaluate",
               "lsac_probe": "sample", "lsac_eval": "sample", "rr_sample_scale": "sample",
               "rr_evaluate_scale": "evaluate", "rr_rsa": "evaluate"}
# rule -> resources group of the CPU rules that name one (the rest take resources.default)
CPU_RULE_GROUPS = {"data_synth": "data", "data_corpus": "data", "data_mels_part": "data", "teacher_train": "teacher_train",
                   "eval_classifier_train": "teacher_train", "listening_test": "report"}


GB = 1e9
MEL_BYTES = 4                  # float32 mel frames (corpora/mels.py)
WAV_BYTES = 2                  # PCM_16 samples of a generated clip (audio.write_wav)
TEACHER_POOLED_BYTES = 4       # float32 pooled [D] of every embedded clip (teachers/cache.py)
# frames [T', D]: teachers.frames_dtype, only for the clips of the domains a tokenizer reads (teachers/cache.py)
TEACHER_FRAME_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
TOKEN_BYTES = 8                # int64 token ids (tokenizers/streams.py)
ARCH_SUFFIX = "_arch"          # Table 4's variant of a rule (workflow/rules/*.smk: use rule X as X_arch)
# fp32 copies of the weights: a full checkpoint (weights, EMA, Adam m and v), a snapshot (the EMA),
# a training process (weights, gradients, Adam m and v, EMA)
STATE_COPIES = {"full": 4, "snapshot": 1, "train_gpu": 5}
# bytes per layer x token x width a training step keeps for the backward: bf16 activations of a
# transformer block (Korthikanti et al. 2022, "Reducing activation recomputation"), flash attention
# (no T^2 term)
ACTIVATION_BYTES = 34


def dims(cfg: dict) -> Dims:
    """The DiT's FLOP sizes from the config (Config A's token embedding; time_freq_dim: the DiT's)."""
    mc = cfg["model"]
    return Dims(n_layers=int(mc["n_layers"]), dim=int(mc["dim"]), ff_mult=int(mc["ff_mult"]),
                n_mels=int(cfg["audio"]["n_mels"]), token_dim=int(mc["token_dim"] or mc["dim"]),
                time_freq_dim=inspect.signature(DiT).parameters["time_freq_dim"].default)


def crop_frames(cfg: dict) -> int:
    return math.ceil(float(cfg["train"]["crop_seconds"]) * cfg["audio"]["sample_rate"] / cfg["audio"]["hop_length"] - 1e-9)


def train_step_flops(cfg: dict) -> int:
    """FLOPs of one optimiser step (forward + backward = 3 x forward) on the global batch."""
    return 3 * forward_flops(dims(cfg), int(cfg["train"]["batch_size"]), crop_frames(cfg))["total"]


def config_a_vocab(cfg: dict) -> int:
    """Config A's vocabulary: the padding id + ``tokens.speech.k`` + ``tokens.audio.k``."""
    return 1 + int(cfg["tokens"]["speech"]["k"]) + int(cfg["tokens"]["audio"]["k"])


def dit_params(cfg: dict) -> int:
    """Parameters of the config's DiT (Config A's vocabulary: 1 + tokens.speech.k + tokens.audio.k),
    built on the meta device (no memory); the REPA / BiT-C heads are not counted."""
    import torch

    from ..model.dit import build_model
    from ..model.layers import n_params

    with torch.device("meta"):
        return n_params(build_model(cfg, config_a_vocab(cfg)))


def mel_bytes_per_second(cfg: dict) -> float:
    """float32 mel frames of one second of audio: n_mels x (sample_rate / hop_length) x 4 B."""
    ac = cfg["audio"]
    return int(ac["n_mels"]) * ac["sample_rate"] / ac["hop_length"] * MEL_BYTES


def window_seconds(cfg: dict, domain: str) -> float:
    """The mean clip's seconds within ``audio.max_seconds`` (what the teachers and the sampler see)."""
    return min(float(cfg["plan"]["clip_seconds"][domain]), float(cfg["audio"]["max_seconds"]))


def teacher_store_bytes_per_clip(cfg: dict, role: str, domain: str) -> float:
    """Bytes the ``role`` teacher store holds for the mean ``domain`` clip, as teachers/cache.py writes
    it: nothing for a clip of a domain the role is not read for (not embedded:
    :func:`agrepa.teachers.readers.embedded_domains`), else pooled [D] float32 + frames [frame_rate x
    window, D] in ``teachers.frames_dtype``, the frames only where a configured tokenizer reads them
    (:func:`agrepa.teachers.readers.frames_read`) (``plan.teachers.<role>``: dim, frame_rate)."""
    from ..teachers.readers import embedded_domains, frames_read

    if domain not in embedded_domains(cfg, role):
        return 0.0
    t = cfg["plan"]["teachers"][role]
    D = int(t["dim"])
    frames = 0.0
    if domain in frames_read(cfg, role):
        frames = float(t["frame_rate"]) * window_seconds(cfg, domain) * D * TEACHER_FRAME_BYTES[cfg["teachers"]["frames_dtype"]]
    return D * TEACHER_POOLED_BYTES + frames


def token_rate(cfg: dict, stream: str) -> float:
    """Tokens per second of a stream: the S3 ONNX tokenizer's ``tokens.speech.onnx_token_rate``, else
    one token per frame of the teacher it reads (``plan.teachers.<role>.frame_rate``: k-means and
    RepCodec on teacher frames, BEATs' tokenizer on its patches)."""
    if stream == "speech" and cfg["tokens"]["speech"]["kind"] == "s3-onnx":
        return float(cfg["tokens"]["speech"]["onnx_token_rate"])
    return float(cfg["plan"]["teachers"]["semantic" if stream == "speech" else "acoustic"]["frame_rate"])


def token_store_bytes_per_clip(cfg: dict, token_config: str, domain: str) -> float:
    """Bytes the token store of ``token_config`` holds for the mean ``domain`` clip: int64 ids at the
    domain's position rate (Config B: the faster of the domain's stream and BEATs'), one column per
    stream (A: 1, B: 2), over the clip's window (tokenizers/streams.py ``store_timing``)."""
    streams = [domain, "beats"] if token_config == "B" else [domain]
    rate = max(token_rate(cfg, s) for s in streams)
    return rate * window_seconds(cfg, domain) * len(streams) * TOKEN_BYTES


def backbone_step(cfg: dict, arch: str) -> dict:
    """``{"step_flops", "params"}`` of a Table 4 backbone: the FLOPs torch's FLOP counter counts for
    one training step (forward + backward of the velocity) on the global batch, and its parameters
    (Config A's vocabulary), both on the ``meta`` device (module docstring)."""
    import copy

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ..model import build_model
    from ..model.layers import n_params

    c = copy.deepcopy(cfg)
    c["model"]["arch"] = arch
    rows, T = 2, crop_frames(cfg)
    N = math.ceil(float(cfg["train"]["crop_seconds"]) * token_rate(cfg, "speech") - 1e-9)
    n_mels = int(cfg["audio"]["n_mels"])
    with torch.device("meta"):
        m = build_model(c, config_a_vocab(cfg)).train()
    x, t = torch.empty(rows, T, n_mels, device="meta"), torch.empty(rows, device="meta")
    tokens = torch.zeros(rows, N, dtype=torch.long, device="meta")
    prompt = torch.empty(rows, T, n_mels, device="meta")
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        m(x, t, tokens, prompt).square().mean().backward()
    step = fc.get_total_flops() * int(cfg["train"]["batch_size"]) / rows
    return {"step_flops": step, "params": n_params(m)}


def table4_backbones(cfg: dict) -> dict[str, dict]:
    """:func:`backbone_step` of every backbone of ``report.table4.architectures`` but ``model.arch``."""
    return {a: backbone_step(cfg, a) for a in cfg["report"]["table4"]["architectures"] if a != cfg["model"]["arch"]}


def checkpoint_bytes(p: int) -> dict[str, int]:
    """``full``: last.pt / final.pt (fp32 weights, EMA and Adam's two moments); ``snapshot``: a
    convergence snapshot (the EMA weights: training/checkpoint.py ``snapshot_dict``) of a model of
    ``p`` parameters (:func:`dit_params`)."""
    return {k: STATE_COPIES[k] * p * 4 for k in ("full", "snapshot")}


def train_gpu_memory_bytes(cfg: dict, gpus: int, params: int) -> float:
    """Peak memory of one training process (estimate): fp32 weights, gradients, Adam m and v and EMA
    (5 x params x 4 B, every DDP rank holds them) + activations L x (batch / gpus) x crop x dim x
    :data:`ACTIVATION_BYTES` (bf16, flash attention); no allocator overhead, workspace or heads."""
    mc = cfg["model"]
    rows = math.ceil(int(cfg["train"]["batch_size"]) / max(gpus, 1))
    acts = int(mc["n_layers"]) * rows * crop_frames(cfg) * int(mc["dim"]) * ACTIVATION_BYTES
    return STATE_COPIES["train_gpu"] * params * 4 + acts


def disk_per_job(cfg: dict, rule: str, ln: Lengths | None, params: int | None) -> tuple[float | None, str]:
    """(bytes one job of ``rule`` writes, basis); None where not estimated (module docstring).
    ``params``: the backbone's parameters (Table 4's rules: the mean over its backbones)."""
    rule = base_rule(rule)
    clips = {d: int(cfg["plan"]["clips"][d]) for d in DOMAINS}
    shards = cfg["shards"]
    if rule == "data_mels_part":   # one of shards.mels parts of the store
        return sum(clips[d] * float(cfg["plan"]["clip_seconds"][d]) for d in DOMAINS) * mel_bytes_per_second(cfg) \
            / int(shards["mels"]), f"fp32 mels of plan.clips / {shards['mels']} parts"
    if rule == "teacher_embed_part":    # shards.embed parts per role; the mean of the two roles' stores
        per = [sum(clips[d] * teacher_store_bytes_per_clip(cfg, r, d) for d in DOMAINS) for r in ("semantic", "acoustic")]
        return sum(per) / 2 / int(shards["embed"]), (f"fp32 pooled of the clips read + {cfg['teachers']['frames_dtype']} "
                                                     f"frames where read (mean of the 2 roles) / {shards['embed']} parts")
    if rule == "tokens_encode_part":    # shards.encode parts per token config; the mean of the configs' stores
        tcs = list(cfg["token_configs"])
        per = [sum(clips[d] * token_store_bytes_per_clip(cfg, tc, d) for d in DOMAINS) for tc in tcs]
        return sum(per) / len(tcs) / int(shards["encode"]), \
            f"int64 ids (mean of {'/'.join(tcs)}) / {shards['encode']} parts"
    if rule in TRAIN_RULES:
        from ..training.train import snapshot_steps

        ck = checkpoint_bytes(params)
        snaps = len(snapshot_steps(cfg, ln.steps("branch"))) if rule == "train_branch" else 0
        return 2 * ck["full"] + snaps * ck["snapshot"], f"last + final full state, {snaps} EMA snapshots"
    if rule == "sample":
        per_s = cfg["audio"]["sample_rate"] * WAV_BYTES + mel_bytes_per_second(cfg)
        n = cfg["sample"]["max_clips"]
        return sum(int(n[d]) * window_seconds(cfg, d) * per_s for d in DOMAINS), "PCM_16 wav + fp32 mel"
    return None, "not estimated"


def base_rule(rule: str) -> str:
    """``probe_arch`` -> ``probe``: the rule a Table 4 variant was made from (its resources and sizes)."""
    return rule[:-len(ARCH_SUFFIX)] if rule.endswith(ARCH_SUFFIX) else rule


def lengths(cfg: dict) -> Lengths:
    clips = cfg["plan"]["clips"]
    return Lengths.of(cfg, [i for i, d in enumerate(DOMAINS) for _ in range(int(clips[d]))])


def repo_root(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (cwd) holding the Snakefile."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "Snakefile").is_file():
            return d
    raise FileNotFoundError(f"no Snakefile at or above {here} (run agrepa plan in the repository)")


def job_counts(configs: list[str], targets: list[str], root: Path | None = None) -> dict[str, int]:
    """Rule -> jobs of ``snakemake -n`` on the targets as if nothing were on disk: it runs in a scratch
    directory that links the repository's files but not its results (the Snakefile writes
    {results_dir}/config.yaml when it is read, and existing outputs would hide their jobs); the path
    check is skipped, so no dataset need exist."""
    root = root or repo_root()
    exe = Path(sys.executable).parent / "snakemake"
    exe = str(exe) if exe.is_file() else shutil.which("snakemake")
    if not exe:
        raise FileNotFoundError("snakemake not found on PATH (agrepa plan counts jobs with its dry run)")
    env = {**os.environ, "AGREPA_SKIP_PATH_CHECK": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    cmd = [exe, *targets, "-n", "--quiet", "rules", "--configfile", *[str(Path(c).resolve()) for c in configs]]
    with tempfile.TemporaryDirectory(prefix="agrepa-plan-") as scratch:
        for entry in root.iterdir():
            if entry.name not in SKIPPED:
                os.symlink(entry, Path(scratch) / entry.name)
        run = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise ValueError(f"snakemake -n failed:\n{(run.stdout + run.stderr)[-2000:]}")
    return parse_job_stats(run.stdout + run.stderr)


def parse_job_stats(output: str) -> dict[str, int]:
    """Rule -> count from Snakemake's "Job stats" table ({} when nothing is to be done)."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "Job stats:"), None)
    counts = {}
    for line in ([] if start is None else lines[start + 3:]):
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m or m.group(1) == "total":
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def plan(cfg: dict, counts: dict[str, int], backbones: dict[str, dict] | None = None) -> dict:
    """Per rule: jobs, GPUs per job, GPU-hours per job and in all, wall-clock per job, the runtime
    limit per job (minutes) and the submissions a job needs within it; with ``total``.
    ``backbones``: :func:`table4_backbones`, read by Table 4's training rules only (counted here when
    those are planned and it is None)."""
    pc, rc = cfg["plan"], cfg["resources"]
    rate = float(pc["mfu"]) * float(pc["peak_tflops"]) * 1e12            # FLOP/s achieved per GPU
    step = train_step_flops(cfg)
    train_rules = [r for r in counts if base_rule(r) in TRAIN_RULES]
    ln = lengths(cfg) if train_rules else None
    params = dit_params(cfg) if ln is not None else None
    if backbones is None and any(r.endswith(ARCH_SUFFIX) for r in train_rules):
        backbones = table4_backbones(cfg)
    stages = {}
    for rule, jobs in counts.items():
        base = base_rule(rule)
        group = RULE_GROUPS.get(base)
        res_group = group or CPU_RULE_GROUPS.get(base)
        res = rc[res_group] if res_group in rc else rc["default"]
        gpus = int(res["gpu"]) * int(res["nodes"] if "nodes" in res else 1) if group else 0
        row = {"jobs": jobs, "group": group or "-", "gpus_per_job": gpus}
        rule_params = params
        if base in TRAIN_RULES:
            steps = ln.steps(TRAIN_RULES[base])
            if rule == base:
                flops, row["basis"] = step, f"{steps} steps x {step / 1e12:.1f} TFLOP at MFU {pc['mfu']}"
            else:     # Table 4: as many jobs of each backbone; the mean job
                flops = sum(b["step_flops"] for b in backbones.values()) / len(backbones)
                rule_params = sum(b["params"] for b in backbones.values()) / len(backbones)
                each = ", ".join(f"{a} {b['step_flops'] / 1e12:.1f}" for a, b in backbones.items())
                row["basis"] = f"{steps} steps x mean of {each} TFLOP (FLOP counter on meta) at MFU {pc['mfu']}"
            per_job = steps * flops / rate / 3600
            row["steps_per_job"] = steps
        elif group:
            per_job = float(pc["job_gpu_hours"][base]) if base in pc["job_gpu_hours"] else 0.0
            row["basis"] = "plan.job_gpu_hours" if base in pc["job_gpu_hours"] else "not estimated"
        else:
            per_job, row["basis"] = 0.0, "CPU"
        wall = per_job / max(gpus, 1)
        row.update(gpu_hours_per_job=per_job, gpu_hours=per_job * jobs, wall_hours_per_job=wall,
                   runtime_min=int(res["runtime"]), submissions=max(1, math.ceil(wall * 60 / int(res["runtime"]) - 1e-9)))
        row.update(disk_and_memory(cfg, rule, res, gpus, jobs, ln, rule_params))
        stages[rule] = row
    return {"estimate": f"MFU {pc['mfu']} of {pc['peak_tflops']} TFLOP/s ({pc['gpu']}); not measured",
            "train_step_tflop": step / 1e12, "crop_frames": crop_frames(cfg), "stages": stages,
            "total": totals(stages)}


def disk_and_memory(cfg: dict, rule: str, res: dict, gpus: int, jobs: int, ln: Lengths | None,
                    params: int | None) -> dict:
    """A stage's disk (GB per job and in all, basis; None: not estimated), the memory its jobs request
    (GB per node) and, for the DiT training rules, the estimated GPU memory per process."""
    disk, basis = disk_per_job(cfg, rule, ln, params)
    row = {"disk_gb_per_job": None if disk is None else disk / GB, "disk_gb": None if disk is None else disk * jobs / GB,
           "disk_basis": basis, "mem_gb_requested": int(res["mem_mb"]) / 1000, "gpu_mem_gb_est": None}
    if rule in TRAIN_RULES:
        row["gpu_mem_gb_est"] = train_gpu_memory_bytes(cfg, gpus, params) / GB
    return row


def totals(stages: dict) -> dict:
    """Jobs, GPU-hours, wall-clock (the stages' per-job wall-clock added), disk (the estimated
    stages') and the largest memory request and GPU-memory estimate of any job."""
    rows = stages.values()
    return {"jobs": sum(r["jobs"] for r in rows), "gpu_hours": sum(r["gpu_hours"] for r in rows),
            "wall_hours": sum(r["wall_hours_per_job"] for r in rows),
            "disk_gb": sum(r["disk_gb"] for r in rows if r["disk_gb"] is not None),
            "peak_mem_gb_requested": max((r["mem_gb_requested"] for r in rows), default=0.0),
            "peak_gpu_mem_gb_est": max((r["gpu_mem_gb_est"] for r in rows if r["gpu_mem_gb_est"] is not None),
                                       default=None)}


def _num(value, width: int, fmt: str) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"


def table(p: dict) -> str:
    """The plan as a fixed-width text table (``-``: not estimated)."""
    head = (f"{'rule':<22}{'jobs':>6}{'gpus':>6}{'GPU-h/job':>11}{'GPU-h':>10}{'wall-h/job':>12}{'runtime':>9}{'subm':>6}"
            f"{'disk-GB/job':>13}{'disk-GB':>10}{'mem-GB':>8}{'GPU-mem-GB':>12}  basis")
    rows = [f"estimate ({p['estimate']}); train step {p['train_step_tflop']:.1f} TFLOP on {p['crop_frames']} frames; "
            "mem-GB: requested (resources, per node); GPU-mem-GB: estimated per training process", head]
    for rule, r in p["stages"].items():
        rows.append(f"{rule:<22}{r['jobs']:>6}{r['gpus_per_job']:>6}{r['gpu_hours_per_job']:>11.2f}{r['gpu_hours']:>10.1f}"
                    f"{r['wall_hours_per_job']:>12.2f}{r['runtime_min']:>9}{r['submissions']:>6}"
                    f"{_num(r['disk_gb_per_job'], 13, '.2f')}{_num(r['disk_gb'], 10, '.1f')}"
                    f"{r['mem_gb_requested']:>8.1f}{_num(r['gpu_mem_gb_est'], 12, '.1f')}  {r['basis']}")
    t = p["total"]
    rows.append(f"{'total':<22}{t['jobs']:>6}{'':>6}{'':>11}{t['gpu_hours']:>10.1f}{t['wall_hours']:>12.2f}{'':>9}{'':>6}"
                f"{'':>13}{t['disk_gb']:>10.1f}{t['peak_mem_gb_requested']:>8.1f}{_num(t['peak_gpu_mem_gb_est'], 12, '.1f')}"
                "  (disk: the estimated rules; memory: the largest job)")
    return "\n".join(rows)
