"""Training state and checkpoints: :class:`TrainState` (model, EMA, heads, optimiser,
scheduler, sampler, step, RNG) with ``to_dict``/``from_dict``, :func:`resume` from a run
directory's ``last.pt``, :func:`prepare_resume` (whether a job resumes that ``last.pt`` or starts
fresh), :func:`load_run` (a trained model for probes, sampling and evaluation), the EMA of weights
and RNG states.

A checkpoint is a dict of tensors and plain Python (lists, dicts, numbers, strings), so it
loads with ``torch.load(path, weights_only=True)``. Keys: ``format``, the run's identity
(:class:`RunSpec`: phase, method, seed, total_steps, layers, weights, selection, init,
vocab_size, token_layout, teacher_dims, config), the state (model, ema, bitc, repa, optimizer,
scheduler, sampler, step), ``rng`` (one entry per process), ``world_size``, ``accumulate`` (``train.accumulate``;
absent in checkpoints written before it: 1) and ``metrics`` (the metrics.csv rows so far).

Resume at another world size or ``train.accumulate``: the data, draws and loss do not depend on
either (``train.batch_size`` is the global batch), so a model without dropout resumes exactly (up
to floating-point reduction order); with dropout the per-process RNG streams cannot be carried
over, and :func:`resume` refuses (:func:`check_layout`).
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import io
from ..model import Backbone, build_model
from .dataset import BalancedSampler
from .objectives import BiTCHeads, REPAHeads

log = logging.getLogger(__name__)

CONFIG_KEYS = ("train.bitc_weight",)  # config sections this module reads (of a checkpoint's own config)
FORMAT = "agrepa-train-v1"


class EMA:
    """Exponential moving average of parameters: ``e <- d_n * e + (1 - d_n) * p`` at update n
    (0-based, counted over the whole training: warm-up then Phase II), with
    ``d_n = min(decay, (1 + n) / (10 + n))`` when ``warmup`` (so the random init does not
    linger in the average of a short run) and ``d_n = decay`` otherwise.

    Tracks several named modules (``{"model": dit, "bitc": heads}``). Its state dict
    is, per module, that module's full ``state_dict`` with the parameters replaced by
    their averages, so it loads straight into a fresh module.
    """

    def __init__(self, modules: dict[str, nn.Module], decay: float, warmup: bool = False):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay: must lie in [0, 1), got {decay}")
        self.modules, self.decay, self.warmup = modules, float(decay), bool(warmup)
        self.shadow = {k: {n: p.detach().clone() for n, p in m.named_parameters()}
                       for k, m in modules.items()}

    def decay_at(self, n: int) -> float:
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, n: int) -> None:
        """The n-th update (n = optimiser steps taken before this one, whole training)."""
        d = self.decay_at(n)
        for k, m in self.modules.items():
            params = dict(m.named_parameters())
            shadows = list(self.shadow[k].values())
            if shadows:
                torch._foreach_lerp_(shadows, [params[n].detach() for n in self.shadow[k]], 1.0 - d)

    def state_dict(self) -> dict:
        out = {}
        for k, m in self.modules.items():
            sd = m.state_dict()
            for n, t in self.shadow[k].items():
                sd[n] = t.clone()
            out[k] = sd
        return out

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for k in self.modules:
            if k not in state:
                raise KeyError(f"EMA state has no entry for {k!r}")
            for n, t in self.shadow[k].items():
                if n not in state[k]:
                    raise KeyError(f"EMA state of {k!r} has no tensor {n!r}")
                t.copy_(state[k][n])


def rng_state() -> dict:
    """torch (CPU and CUDA), numpy and python RNG states as weights_only-loadable objects."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


# -- the state of a run --

@dataclass
class RunSpec:
    """What identifies a run: a ``last.pt`` resumes only a run with the same identity."""

    phase: str
    method: str
    seed: int
    total_steps: int           # optimiser steps of this phase
    start_step: int            # steps trained before this phase (a continued branch: the warm-up's)
    plan: dict                 # REPA layers and weights per domain (objectives.plan_to_json)
    selection: str | None
    init: str | None
    vocab_size: int
    token_layout: dict         # {"paired", "audio_offset"} of the token store (Config A / B)
    teacher_dims: dict
    config: dict

    IDENTITY = ("phase", "method", "seed", "total_steps", "start_step", "plan")


@dataclass
class TrainState:
    """Everything a training step changes, and what a checkpoint restores."""

    spec: RunSpec
    model: Backbone
    bitc: BiTCHeads
    repa: REPAHeads
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: BalancedSampler
    step: int = 0
    metrics: list[dict] = field(default_factory=list)   # metrics.csv rows so far

    def modules(self) -> list[nn.Module]:
        """The trained modules, in the optimiser's parameter order."""
        return [self.model, self.bitc, self.repa]

    def to_dict(self, rng: list[dict], world_size: int, accumulate: int = 1) -> dict:
        """The checkpoint dict (``rng``: every process's :func:`rng_state`)."""
        return {"format": FORMAT, **asdict(self.spec), "step": self.step,
                "model": self.model.state_dict(), "ema": self.ema.state_dict(), "bitc": self.bitc.state_dict(),
                "repa": self.repa.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
                "rng": rng, "world_size": world_size, "accumulate": int(accumulate),
                "metrics": [dict(r) for r in self.metrics]}

    def from_dict(self, ck: dict, rank: int = 0, world_size: int = 1) -> "TrainState":
        """Restore this state from a checkpoint dict of the same run (RNG of process ``rank``)."""
        self.model.load_state_dict(ck["model"])
        self.bitc.load_state_dict(ck["bitc"])
        self.repa.load_state_dict(ck["repa"])
        self.ema.load_state_dict(ck["ema"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.sampler.load_state_dict(ck["sampler"])
        if ck["world_size"] == world_size:
            set_rng_state(ck["rng"][rank])
        else:
            log.warning("checkpoint written by %d process(es), resuming with %d: dropout RNG streams "
                        "are re-seeded", ck["world_size"], world_size)
        self.step = int(ck["step"])
        self.metrics = [dict(r) for r in ck.get("metrics", [])]
        return self


def snapshot_dict(ck: dict) -> dict:
    """A convergence snapshot (``snapshots/step_*.pt``) of the checkpoint dict ``ck``: what its
    readers read (the held-out and convergence curves: :func:`load_run` with the EMA weights),
    i.e. the run's identity and the EMA of the model and the BiT-C heads, fp32 as evaluated;
    no training weights, optimiser, sampler or RNG (``last.pt`` and ``final.pt`` keep those)."""
    keep = {"format", *RunSpec.__dataclass_fields__, "step"}
    return {**{k: v for k, v in ck.items() if k in keep}, "ema": ck["ema"], "snapshot": True}


def read_checkpoint(path: str | os.PathLike, what: str = "training checkpoint") -> dict:
    """A checkpoint dict written by ``agrepa train`` (weights only); errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable training checkpoint ({err})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"{path}: not an agrepa training checkpoint (format {FORMAT!r} expected)")
    return ck


def uses_dropout(modules: list[nn.Module]) -> bool:
    """Whether any of ``modules`` draws dropout masks in training (a ``Dropout`` with p > 0)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for mod in modules for m in mod.modules())


def check_layout(ck: dict, last: Path, world_size: int, accumulate: int, dropout: bool) -> None:
    """Refuse to resume ``ck`` at another process layout when that cannot continue the run exactly:
    with dropout, each process draws its masks from its own RNG stream (saved per process), and the
    masks of a micro-batch depend on the world size and ``train.accumulate``. Without dropout
    nothing the run computes depends on either (the global batch and its draws are the same), so
    the resume proceeds."""
    was_world, was_acc = int(ck["world_size"]), int(ck.get("accumulate", 1))
    if (was_world, was_acc) == (world_size, accumulate):
        return
    if dropout:
        raise ValueError(
            f"{last}: written by {was_world} process(es) with train.accumulate {was_acc}, this run has "
            f"{world_size} process(es) (world size: resources.train.gpu x nodes) with train.accumulate "
            f"{accumulate}: the model has dropout, whose masks come from per-process RNG streams, so it "
            f"would not continue exactly; resume with resources.train.gpu / train.accumulate as written, "
            f"or delete {last} to start again")
    log.info("%s: written by %d process(es) x %d micro-step(s), resuming with %d x %d: no dropout, so the run "
             "continues exactly (up to floating-point reduction order)", last, was_world, was_acc, world_size,
             accumulate)


def resume(state: TrainState, last: Path, rank: int = 0, world_size: int = 1, accumulate: int = 1) -> bool:
    """Restore ``state`` from ``last`` (a run directory's ``last.pt``) if it exists; refuse a
    ``last.pt`` of another run, or of another process layout when the model has dropout
    (:func:`check_layout`). True when resumed."""
    if not last.exists():
        return False
    ck = torch.load(last, map_location="cpu", weights_only=True)
    mine = {"format": FORMAT, **{k: getattr(state.spec, k) for k in RunSpec.IDENTITY}}
    for key, want in mine.items():
        if ck.get(key) != want:
            raise ValueError(f"{last}: {key} is {ck.get(key)!r} but this run has {want!r}; "
                             f"use another --out or delete the directory")
    check_layout(ck, last, world_size, accumulate, uses_dropout(state.modules()))
    state.from_dict(ck, rank, world_size)
    log.info("resuming %s from %s at step %d/%d", state.spec.method, last, state.step, state.spec.total_steps)
    return True


# -- resume or start fresh: what a training job does with the last.pt it finds --
#
# The workflow passes Snakemake's attempt number (`agrepa train --attempt N`). A job resumes
# OUT/last.pt when it continues an interrupted job of the same run:
# - N > 1: Snakemake retries a job that failed or was cancelled (a new SLURM job);
# - the SLURM job that last ran in OUT is running again: it was requeued (`scontrol requeue`,
#   preemption, a node failure under `sbatch --requeue`). SLURM keeps the job id across a
#   requeue, and each job records SLURM_CLUSTER_NAME / SLURM_JOB_ID in OUT/slurm_job.json.
#   (SLURM_RESTART_COUNT would say the same, but the executor plugin's job step removes every
#   SLURM_* variable except the job's identity before it runs the rule's shell.)
# Otherwise (attempt 1 of a new job: a first run, --forcerun, a changed config) it starts fresh:
# last.pt and snapshots/ left by an earlier run are removed, so a forced rerun really retrains.
# Without --attempt (`agrepa train` by hand) a last.pt is always resumed (:func:`resume`).

JOB_FILE = "slurm_job.json"


def slurm_job(environ=os.environ) -> dict | None:
    """This process's SLURM job (cluster name and job id), or None outside SLURM."""
    job_id = environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    return {"cluster": environ.get("SLURM_CLUSTER_NAME", ""), "job_id": job_id}


def _recorded_job(out: Path) -> dict | None:
    try:
        return json.loads((out / JOB_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def resume_reason(out: str | os.PathLike, attempt: int, environ=os.environ) -> str | None:
    """Why the run in ``out`` resumes (a sentence), or None when it starts fresh."""
    if attempt < 1:
        raise ValueError(f"--attempt: must be >= 1, got {attempt}")
    job = slurm_job(environ)
    if attempt > 1:
        return f"attempt {attempt}: Snakemake retries an interrupted job"
    if job is not None and _recorded_job(Path(out)) == job:
        return f"SLURM job {job['job_id']} was requeued"
    return None


def prepare_resume(out: str | os.PathLike, attempt: int, environ=os.environ) -> bool:
    """Apply :func:`resume_reason` to ``out`` (remove stale state for a fresh start), record this
    SLURM job there, and return whether the run resumes."""
    out = Path(out)
    reason = resume_reason(out, attempt, environ)
    last = out / "last.pt"
    if reason is not None and last.exists():
        log.info("%s: resuming from %s", reason, last)
    elif reason is not None:
        log.info("%s, but %s does not exist yet: starting at step 0", reason, last)
    elif last.exists() or (out / "snapshots").exists():
        log.info("attempt 1 of a new job: removing %s and snapshots/ left by an earlier run", last)
        last.unlink(missing_ok=True)
        shutil.rmtree(out / "snapshots", ignore_errors=True)
    job = slurm_job(environ)
    if job is not None:
        io.write_json(out / JOB_FILE, job)
    else:
        (out / JOB_FILE).unlink(missing_ok=True)
    return reason is not None


@dataclass
class LoadedRun:
    """A trained run for probes, sampling and evaluation (modules in eval mode)."""

    model: Backbone            # EMA weights if asked
    bitc: BiTCHeads            # EMA weights if asked
    cfg: dict                  # the run's resolved config
    vocab_size: int
    step: int
    method: str
    phase: str = "warmup"
    seed: int = 0
    plan: dict | None = None       # REPA layers and alpha per domain (1-based layers)


def load_run(path: str | os.PathLike, map_location="cpu", use_ema: bool = True) -> LoadedRun:
    """The trained model and BiT-C heads of a checkpoint written by ``agrepa train``: the EMA
    weights (sampling, evaluation) or, ``use_ema=False``, the training weights (the probes:
    the weights a branch starts from)."""
    ck = read_checkpoint(path, "checkpoint")
    cfg = ck["config"]
    model = build_model(cfg, ck["vocab_size"], ck.get("token_layout"))  # absent: an older Config A checkpoint
    if not use_ema and ck.get("snapshot"):
        raise ValueError(f"{path}: an EMA-only convergence snapshot holds no training weights "
                         f"(the training weights are in the run's last.pt / final.pt)")
    src = ck["ema"] if use_ema else {"model": ck["model"], "bitc": ck["bitc"]}
    # the head's form from its weights: checkpoints written before train.bitc_head_affine hold the affine one
    bitc = BiTCHeads(model.token_dim, ck["teacher_dims"], cfg["train"]["bitc_weight"],
                     affine=BiTCHeads.affine_of(src["bitc"]))
    model.load_state_dict(src["model"])
    bitc.load_state_dict(src["bitc"])
    return LoadedRun(model.to(map_location).eval(), bitc.to(map_location).eval(), cfg, int(ck["vocab_size"]),
                     int(ck["step"]), ck["method"], ck["phase"], int(ck["seed"]), dict(ck["plan"]))
