"""``agrepa train``: the two-phase probe-then-intervene protocol (paper, App. A.5).

Phase I (``--phase warmup``): flow matching + BiT-C at the input interface for
``train.warmup_steps`` steps; writes ``OUT/final.pt`` (the probes read it).

Phase II (``--phase branch --method M --init WARMUP/final.pt [--selection J]``):
model, EMA and BiT-C heads from the warm-up checkpoint, a fresh optimiser and
schedule, ``train.branch_steps`` steps. The data order, crops, prompts, noise,
flow times and CFG drops depend only on (seed, phase, step), so every method of
a seed sees identical batches; only the REPA term (:mod:`agrepa.training.objectives`) differs.

Loss per step: ``L = L_FM + L_BiT-C + L_REPA`` (L_REPA absent for the baseline).
AdamW (weight decay on matrices only), OneCycle or warm-up-constant schedule,
gradient clipping, EMA of model and BiT-C weights, bf16 autocast on GPU (fp32 on
CPU), optional ``torch.compile``, CFG dropout of tokens and prompt.

Outputs in OUT: ``last.pt`` (rolling, every ``train.checkpoint_every`` steps),
``snapshots/step_XXXXXX.pt`` (branch, at ``train.snapshot_steps``), ``final.pt``,
``metrics.csv`` (step, loss, fm, bitc, repa, grad_norm, lr, samples_per_s; means
over the logging interval; repa empty for the baseline), ``config.resolved.yaml``.
A run started in a directory holding ``last.pt`` resumes from it exactly
(:func:`agrepa.training.checkpoint.resume`).

Multi-process: ``torchrun --nproc_per_node N -m agrepa.cli train ...``.
``train.batch_size`` is the GLOBAL batch; rank r trains on the r-th contiguous shard of
the same global batch (:func:`agrepa.training.dataset.shard`), gradients are averaged, only
rank 0 writes. Every per-sample random draw depends on (seed, phase, step) and the
sample's position in the global batch, so N processes reproduce one process up to
floating-point reduction order.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from .. import config as config_mod
from .. import io
from ..device import move_batch, resolve_device
from ..model.dit import build_model
from . import distributed as dist_mod
from .checkpoint import EMA, RunSpec, TrainState, read_checkpoint, resume, rng_state, seed_everything
from .dataset import BalancedSampler, DataPaths, TrainingData, crop_frames, derive_seed, generator, shard
from .objectives import BiTCHeads, REPAHeads, flow_matching_loss, method_layers

CONFIG_KEYS = ("audio", "device", "train")  # config sections this module reads

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["step", "loss", "fm", "bitc", "repa", "grad_norm", "lr", "samples_per_s"]
LOSS_TERMS = ("fm", "bitc", "repa", "loss")   # the order non-finite terms are reported in


class NonFiniteLoss(ValueError):
    """A loss term became NaN/inf; the run stops, the last good checkpoint stays."""


# -- pieces of the run --

def autocast_dtype(cfg: dict, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPU, none (fp32) on CPU, unless ``train.precision`` says otherwise."""
    p = cfg["train"]["precision"]
    if p == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if p == "bf16":
        return torch.bfloat16
    if p == "fp32":
        return None
    raise ValueError(f"train.precision: expected auto, bf16 or fp32, got {p!r}")


def make_optimizer(cfg: dict, modules: list[nn.Module]) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (dim >= 2), none on biases, norms and gains."""
    params = [p for m in modules for p in m.parameters()]
    decay = [p for p in params if p.dim() >= 2]
    other = [p for p in params if p.dim() < 2]
    tc = cfg["train"]
    return torch.optim.AdamW([{"params": decay, "weight_decay": float(tc["weight_decay"])},
                              {"params": other, "weight_decay": 0.0}],
                             lr=float(tc["lr"]), betas=tuple(float(b) for b in tc["betas"]))


def _cos(a: float, b: float, p: float) -> float:
    """Cosine interpolation from ``a`` (p = 0) to ``b`` (p = 1)."""
    return b + (a - b) * (1 + math.cos(math.pi * min(max(p, 0.0), 1.0))) / 2


def lr_factor(step: int, total: int, kind: str, warmup_fraction: float, div: float, final_div: float) -> float:
    """Learning-rate multiplier of step ``step`` (0-based) of ``total``.

    ``onecycle`` (OneCycle, cosine): lr/div -> lr over the first ``warmup_fraction`` of the
    steps, then lr -> lr/(div*final_div) by the last step. ``warmup_constant``: linear
    warm-up to lr over the same fraction, then constant.
    """
    warm = max(1, int(round(warmup_fraction * total)))
    if kind == "warmup_constant":
        return min(1.0, (step + 1) / warm)
    if kind == "onecycle":
        if step < warm:
            return _cos(1.0 / div, 1.0, step / warm)
        return _cos(1.0, 1.0 / (div * final_div), (step - warm) / max(1, total - 1 - warm))
    raise ValueError(f"train.schedule: expected onecycle or warmup_constant, got {kind!r}")


def make_scheduler(cfg: dict, opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The ``train.schedule`` (:func:`lr_factor`) as a LambdaLR over ``total`` steps."""
    tc = cfg["train"]
    kind, frac = tc["schedule"], float(tc["warmup_fraction"])
    div, final_div = float(tc["onecycle_div_factor"]), float(tc["onecycle_final_div_factor"])
    lr_factor(0, total, kind, frac, div, final_div)  # validates the kind
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, kind, frac, div, final_div))


@dataclass
class StepDraw:
    """Everything random about one global batch, drawn from (seed, phase, step) alone."""

    crop: torch.Tensor         # [G] crop position uniforms
    prompt: torch.Tensor       # [G] prompt length uniforms
    t: torch.Tensor            # [G] flow times
    drop_tokens: torch.Tensor  # [G] bool
    drop_prompt: torch.Tensor  # [G] bool
    x0: torch.Tensor           # [G, crop, n_mels] noise


def draw_step(cfg: dict, seed: int, phase: str, step: int, G: int) -> StepDraw:
    g = generator(seed, phase, "batch", step)
    tc = cfg["train"]
    return StepDraw(crop=torch.rand(G, generator=g), prompt=torch.rand(G, generator=g),
                    t=torch.rand(G, generator=g),
                    drop_tokens=torch.rand(G, generator=g) < float(tc["cfg_drop_tokens"]),
                    drop_prompt=torch.rand(G, generator=g) < float(tc["cfg_drop_prompt"]),
                    x0=torch.randn(G, crop_frames(cfg), int(cfg["audio"]["n_mels"]), generator=g))


class Meter:
    """Running means of named scalars over a logging interval (and the samples/s rate)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.n = 0
        self.t0 = time.perf_counter()

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.n += 1

    def means(self) -> dict[str, float]:
        return {k: v / self.n for k, v in self.sums.items()}

    def rate(self, per_step: int) -> float:
        """Items per second since the last reset, ``per_step`` items a step."""
        return per_step * self.n / max(time.perf_counter() - self.t0, 1e-9)

    def reset(self) -> None:
        self.sums, self.n, self.t0 = {}, 0, time.perf_counter()


class MetricsLog:
    """metrics.csv rows, rewritten atomically. The rows are the train state's own list, so
    they travel in every checkpoint and a resumed run restores them even if the workflow
    deleted metrics.csv."""

    def __init__(self, path: Path, rows: list[dict]):
        self.path = path
        self.rows = rows

    def add(self, row: dict) -> None:
        self.rows.append(row)

    def write(self) -> None:
        io.write_csv(self.path, pd.DataFrame(self.rows, columns=METRIC_COLUMNS))


@dataclass
class Loop:
    """The fixed settings the training loop reads (never changed by a step)."""

    cfg: dict
    phase: str
    seed: int
    out: Path
    dist: dist_mod.Dist
    device: torch.device
    amp: torch.dtype | None
    batch_size: int            # global
    local: slice               # this process's shard of the global batch
    clip: float
    loss_on_prompt: bool
    every: int                 # rolling last.pt
    log_every: int
    snapshots: set[int]

    @classmethod
    def build(cls, cfg: dict, phase: str, seed: int, out: Path, d: dist_mod.Dist) -> "Loop":
        tc = cfg["train"]
        every, log_every = int(tc["checkpoint_every"]), int(tc["log_every"])
        if every < 1 or log_every < 1:
            raise ValueError(f"train.checkpoint_every / train.log_every: must be >= 1, got {every} / {log_every}")
        device = resolve_device(cfg, d.local_rank)
        G = int(tc["batch_size"])
        return cls(cfg, phase, seed, out, d, device, autocast_dtype(cfg, device), G, shard(G, d.rank, d.world_size),
                   float(tc["grad_clip"]) if tc["grad_clip"] else math.inf, bool(tc["loss_on_prompt"]), every,
                   log_every, {int(s) for s in tc["snapshot_steps"] or []} if phase == "branch" else set())


# -- the run --

def run(cfg: dict, *, phase: str, out: str | os.PathLike, data: DataPaths, seed: int = 0,
        method: str | None = None, init: str | os.PathLike | None = None,
        selection: str | os.PathLike | None = None, steps: int | None = None) -> Path:
    """Train one phase into ``out``; returns the path of ``final.pt``."""
    method = check_phase(phase, method, init, selection)
    total = phase_length(cfg, phase, steps)
    d = dist_mod.setup("cuda" if (cfg["device"] != "cpu" and torch.cuda.is_available()) else "cpu")
    try:
        # set up
        loop = Loop.build(cfg, phase, int(seed), Path(out), d)
        clips = TrainingData(cfg, data, split="train")
        state = initial_state(loop, clips, method, init, selection, total)
        forward = torch.compile(state.model) if cfg["train"]["compile"] else state.model
        # resume
        last = loop.out / "last.pt"
        resume(state, last, d.rank, d.world_size)
        if d.is_main:
            loop.out.mkdir(parents=True, exist_ok=True)
            config_mod.save_resolved(cfg, loop.out)
        metrics, meter = MetricsLog(loop.out / "metrics.csv", state.metrics), Meter()
        tb = _tensorboard(loop.out) if d.is_main else None
        for m in state.modules():
            m.train()
        start = state.step
        bar = tqdm(range(start, total), initial=start, total=total, desc=f"{phase}:{method}",
                   disable=not d.is_main, dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0)
        # loop: draw batch, forward, losses, step, log, checkpoint
        for step in bar:
            batch, draw = draw_batch(loop, clips, state.sampler, step)
            loss, terms = losses(loop, forward, state, batch, draw)
            check_finite(terms, step, last)
            grad_norm, lr = optimise(loop, state, loss)
            state.step = done = step + 1
            meter.add({**terms, "grad_norm": grad_norm})
            if d.is_main and (done % loop.log_every == 0 or done == total):
                row = log_row(loop, state, meter, done, lr)
                metrics.add(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", fm=f"{row['fm']:.4f}")
                _to_tensorboard(tb, phase, row)
                metrics.write()
                meter.reset()
            if done in loop.snapshots or done % loop.every == 0 or done == total:
                write_checkpoints(loop, state, metrics, done)
        # finish
        if start >= total:   # resumed at the end: complete the outputs
            write_checkpoints(loop, state, metrics, total, only_missing=True)
        if tb is not None:
            tb.close()
        log.info("%s %s: %d steps done -> %s", phase, method, total, loop.out / "final.pt")
        return loop.out / "final.pt"
    finally:
        dist_mod.teardown(d)


def check_phase(phase: str, method: str | None, init, selection) -> str:
    """The method name of a phase (``warmup`` for Phase I); errors for inconsistent options."""
    if phase not in ("warmup", "branch"):
        raise ValueError(f"--phase: expected warmup or branch, got {phase!r}")
    if phase == "warmup":
        if init is not None or selection is not None:
            raise ValueError("--phase warmup takes neither --init nor --selection")
        return method or "warmup"
    if method is None or init is None:
        raise ValueError("--phase branch needs --method and --init WARMUP/final.pt")
    return method


def phase_length(cfg: dict, phase: str, steps: int | None) -> int:
    """Optimiser steps of the phase: ``--steps``, else ``train.warmup_steps`` / ``train.branch_steps``."""
    total = int(steps if steps is not None else cfg["train"]["warmup_steps" if phase == "warmup" else "branch_steps"])
    if total < 1:
        raise ValueError(f"train.{phase}_steps / --steps: must be >= 1, got {total}")
    return total


def initial_state(loop: Loop, clips: TrainingData, method: str, init, selection, total: int) -> TrainState:
    """Step-0 state: fresh (warm-up) or the warm-up checkpoint's weights and EMA (branch)."""
    cfg, tc, seed = loop.cfg, loop.cfg["train"], loop.seed
    seed_everything(derive_seed(seed, "init"))
    model = build_model(cfg, clips.vocab_size)
    bitc = BiTCHeads(model.dim, clips.teacher_dims, tc["bitc_weight"])
    layers, weights, init_ck = [], [], None
    if loop.phase == "branch":
        init_ck = read_init(Path(init), clips)
        model.load_state_dict(init_ck["model"])
        bitc.load_state_dict(init_ck["bitc"])
        layers, weights = method_layers(cfg, method, selection, model.n_layers)
    seed_everything(derive_seed(seed, "repa", method))
    repa = REPAHeads(layers, weights, model.dim, clips.teacher_dims, tc["repa_hidden"])
    for m in (model, bitc, repa):
        m.to(loop.device)
    dist_mod.broadcast_parameters(loop.dist, [model, bitc, repa])
    ema = EMA({"model": model, "bitc": bitc}, float(tc["ema_decay"]))
    if init_ck is not None:
        ema.load_state_dict(init_ck["ema"])
    opt = make_optimizer(cfg, [model, bitc, repa])
    spec = RunSpec(loop.phase, method, seed, total, layers, weights, None if selection is None else str(selection),
                   None if init is None else str(init), clips.vocab_size, dict(clips.teacher_dims), cfg)
    state = TrainState(spec, model, bitc, repa, ema, opt, make_scheduler(cfg, opt, total),
                       BalancedSampler(clips.domain, loop.batch_size, seed, tag=loop.phase))
    seed_everything(derive_seed(seed, loop.phase, "train", loop.dist.rank))
    return state


def draw_batch(loop: Loop, clips: TrainingData, sampler: BalancedSampler, step: int) -> tuple[dict, StepDraw]:
    """This process's shard of the global batch of ``step`` on the device, and the step's draws."""
    idx = sampler.next_batch()
    draw = draw_step(loop.cfg, loop.seed, loop.phase, step, loop.batch_size)
    j = loop.local
    return move_batch(clips.collate(idx[j], draw.crop[j], draw.prompt[j]), loop.device), draw


def losses(loop: Loop, forward: nn.Module, state: TrainState, batch: dict,
           draw: StepDraw) -> tuple[torch.Tensor, dict[str, float]]:
    """The total loss of one batch (with its graph) and the process-averaged values of the
    terms ``loss``, ``fm``, ``bitc`` and ``repa`` (0 without REPA heads)."""
    j, dev = loop.local, loop.device
    x0 = draw.x0[j, :batch["mel"].shape[1]].to(dev)
    with (torch.autocast(dev.type, dtype=loop.amp) if loop.amp is not None else contextlib.nullcontext()):
        fm = flow_matching_loss(forward, batch, draw.t[j].to(dev), x0, loss_on_prompt=loop.loss_on_prompt,
                                drop_tokens=draw.drop_tokens[j].to(dev), drop_prompt=draw.drop_prompt[j].to(dev),
                                return_hidden=True)
        l_bitc = state.bitc.loss(fm.hidden[0], batch)
        l_repa = state.repa.loss(fm.hidden, batch) if state.repa.active else torch.zeros((), device=dev)
    loss = fm.loss + l_bitc + (l_repa if state.repa.active else 0.0)
    values = {"loss": loss, "fm": fm.loss, "bitc": l_bitc, "repa": l_repa}
    return loss, dist_mod.all_reduce_mean_dict(loop.dist, {k: v.detach().float() for k, v in values.items()})


def check_finite(terms: dict, step: int, last: Path) -> None:
    for name in LOSS_TERMS:
        v = terms[name]
        if not math.isfinite(v):
            raise NonFiniteLoss(f"step {step + 1}: loss term {name!r} is {v}; stopped, last good "
                                f"checkpoint kept ({last if last.exists() else 'none written yet'})")


def optimise(loop: Loop, state: TrainState, loss: torch.Tensor) -> tuple[float, float]:
    """Backward, averaged gradients, clipping, optimiser and scheduler step, EMA update;
    returns (gradient norm before clipping, the learning rate this step used)."""
    opt = state.optimizer
    params = [p for m in state.modules() for p in m.parameters()]
    opt.zero_grad(set_to_none=False)
    loss.backward()
    for p in params:  # parameters unused by this batch (a domain absent): explicit zero gradient
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    dist_mod.all_reduce_grads(loop.dist, params)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, loop.clip))
    lr = opt.param_groups[0]["lr"]
    opt.step()
    state.scheduler.step()
    state.ema.update()
    return grad_norm, lr


def log_row(loop: Loop, state: TrainState, meter: Meter, done: int, lr: float) -> dict:
    """One metrics.csv row: means over the logging interval."""
    m = meter.means()
    row = {"step": done, "loss": m["loss"], "fm": m["fm"], "bitc": m["bitc"],
           "repa": m["repa"] if state.repa.active else float("nan"), "grad_norm": m["grad_norm"],
           "lr": lr, "samples_per_s": meter.rate(loop.batch_size)}
    log.debug("step %d: %s", done, row)
    return row


def write_checkpoints(loop: Loop, state: TrainState, metrics: MetricsLog, done: int,
                      only_missing: bool = False) -> None:
    """The checkpoints due at step ``done`` (snapshot, final, rolling last), by rank 0.
    ``only_missing``: a run resumed at its end writes only what is missing."""
    ck_rng = dist_mod.all_gather_object(loop.dist, rng_state())
    if loop.dist.is_main:
        ck = state.to_dict(ck_rng, loop.dist.world_size)
        total = state.spec.total_steps
        if only_missing:
            if not (loop.out / "final.pt").exists():
                io.torch_save(loop.out / "final.pt", ck)
            metrics.write()
            return
        if done in loop.snapshots:
            io.torch_save(loop.out / "snapshots" / f"step_{done:06d}.pt", ck)
        if done == total:
            io.torch_save(loop.out / "final.pt", ck)
        if done % loop.every == 0:
            io.torch_save(loop.out / "last.pt", ck)
        metrics.write()
        if metrics.rows:
            r = metrics.rows[-1]
            log.info("step %d/%d: loss %.4f fm %.4f bitc %.4f repa %s, checkpoint written", done, total,
                     r["loss"], r["fm"], r["bitc"], "-" if not state.repa.active else f"{r['repa']:.4f}")
    if not only_missing:
        dist_mod.barrier(loop.dist)


def _tensorboard(out: Path):
    """A TensorBoard writer in OUT/tensorboard when the package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _to_tensorboard(tb, phase: str, row: dict) -> None:
    if tb is not None:
        for key, val in row.items():
            if key != "step" and math.isfinite(val):
                tb.add_scalar(f"{phase}/{key}", val, row["step"])


def read_init(path: Path, clips: TrainingData) -> dict:
    """The warm-up checkpoint a branch starts from, checked against this run's stores."""
    ck = read_checkpoint(path, "warm-up checkpoint (--init)")
    if ck["vocab_size"] != clips.vocab_size:
        raise ValueError(f"{path}: vocab_size {ck['vocab_size']} differs from the token store's {clips.vocab_size}")
    if dict(ck["teacher_dims"]) != dict(clips.teacher_dims):
        raise ValueError(f"{path}: teacher dims {ck['teacher_dims']} differ from the stores' {clips.teacher_dims}")
    return ck
