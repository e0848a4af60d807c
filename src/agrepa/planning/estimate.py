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
wall-clock (every job of a stage in parallel, the stages one after another)."""
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

CONFIG_KEYS = ("plan", "train", "model", "audio", "resources")  # config sections this module reads

SKIPPED = {"results", ".snakemake", ".git"}   # not linked into the dry run's scratch directory
TRAIN_RULES = {"train_warmup": "warmup", "train_branch": "branch"}
# rule -> resources group of the workflow's GPU rules (workflow/rules/*.smk, resources_of(...))
RULE_GROUPS = {"teacher_embed_part": "teacher_embed", "tokens_fit": "tokens", "tokens_encode_part": "tokens",
               "train_warmup": "train", "train_branch": "train", "train_warmup_arch": "train",
               "train_branch_arch": "train", "probe": "probe", "heldout": "evaluate",
               "sample": "sample", "evaluate": "evaluate", "evaluate_reference": "evaluate",
               "lsac_probe": "sample", "lsac_eval": "sample", "rr_sample_scale": "sample",
               "rr_evaluate_scale": "evaluate", "rr_rsa": "evaluate"}


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


def plan(cfg: dict, counts: dict[str, int]) -> dict:
    """Per rule: jobs, GPUs per job, GPU-hours per job and in all, wall-clock per job, the runtime
    limit per job (minutes) and the submissions a job needs within it; with ``total``."""
    pc, rc = cfg["plan"], cfg["resources"]
    rate = float(pc["mfu"]) * float(pc["peak_tflops"]) * 1e12            # FLOP/s achieved per GPU
    step = train_step_flops(cfg)
    ln = lengths(cfg) if set(counts) & set(TRAIN_RULES) else None
    stages = {}
    for rule, jobs in counts.items():
        group = RULE_GROUPS.get(rule)
        res = rc[group] if group in rc else rc["default"]
        gpus = int(res["gpu"]) * int(res["nodes"] if "nodes" in res else 1) if group else 0
        row = {"jobs": jobs, "group": group or "-", "gpus_per_job": gpus}
        if rule in TRAIN_RULES:
            steps = ln.steps(TRAIN_RULES[rule])
            per_job = steps * step / rate / 3600
            row.update(steps_per_job=steps, basis=f"{steps} steps x {step / 1e12:.1f} TFLOP at MFU {pc['mfu']}")
        elif group:
            per_job = float(pc["job_gpu_hours"][rule]) if rule in pc["job_gpu_hours"] else 0.0
            row["basis"] = "plan.job_gpu_hours" if rule in pc["job_gpu_hours"] else \
                "not estimated" + (" (Table 4 backbone: no FLOP count)" if rule.endswith("_arch") else "")
        else:
            per_job, row["basis"] = 0.0, "CPU"
        wall = per_job / max(gpus, 1)
        row.update(gpu_hours_per_job=per_job, gpu_hours=per_job * jobs, wall_hours_per_job=wall,
                   runtime_min=int(res["runtime"]), submissions=max(1, math.ceil(wall * 60 / int(res["runtime"]) - 1e-9)))
        stages[rule] = row
    total = {"jobs": sum(r["jobs"] for r in stages.values()),
             "gpu_hours": sum(r["gpu_hours"] for r in stages.values()),
             "wall_hours": sum(r["wall_hours_per_job"] for r in stages.values())}
    return {"estimate": f"MFU {pc['mfu']} of {pc['peak_tflops']} TFLOP/s ({pc['gpu']}); not measured",
            "train_step_tflop": step / 1e12, "crop_frames": crop_frames(cfg), "stages": stages, "total": total}


def table(p: dict) -> str:
    """The plan as a fixed-width text table."""
    head = f"{'rule':<22}{'jobs':>6}{'gpus':>6}{'GPU-h/job':>11}{'GPU-h':>10}{'wall-h/job':>12}{'runtime':>9}{'subm':>6}  basis"
    rows = [f"estimate ({p['estimate']}); train step {p['train_step_tflop']:.1f} TFLOP on {p['crop_frames']} frames", head]
    for rule, r in p["stages"].items():
        rows.append(f"{rule:<22}{r['jobs']:>6}{r['gpus_per_job']:>6}{r['gpu_hours_per_job']:>11.2f}{r['gpu_hours']:>10.1f}"
                    f"{r['wall_hours_per_job']:>12.2f}{r['runtime_min']:>9}{r['submissions']:>6}  {r['basis']}")
    t = p["total"]
    rows.append(f"{'total':<22}{t['jobs']:>6}{'':>6}{'':>11}{t['gpu_hours']:>10.1f}{t['wall_hours']:>12.2f}")
    return "\n".join(rows)
