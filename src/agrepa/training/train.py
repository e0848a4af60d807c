"""``agrepa train``: the two-phase probe-then-intervene protocol (paper, App. A.5).

Phase I (``--phase warmup``): flow matching + BiT-C at the input interface for
``train.warmup_epochs``; writes ``OUT/final.pt`` (the probes read its training weights).

Phase II (``--phase branch --method M --init WARMUP/final.pt [--selection J]``): from the
warm-up's training weights, EMA and BiT-C heads, ``train.branch_epochs`` more. With
``train.branch_start: continue`` (default) a branch also continues the warm-up's AdamW
state, its data stream, its RNG and ONE learning-rate schedule spanning both phases
(:mod:`agrepa.training.schedule`), so the baseline branch is literally the warm-up
continued; ``restart`` gives each branch a fresh optimiser and schedule. The data order,
crops, prompts, noise, flow times and CFG drops depend only on (seed, stream, step), so
every method of a seed sees identical batches; only the REPA term
(:mod:`agrepa.training.objectives`) differs.

Loss per step: ``L = L_FM + L_BiT-C + L_REPA`` (L_REPA absent for the baseline), plus
``rr.lambda * L_RR`` for a Phase II method with an ``rr:`` entry on the steps where it applies
(:mod:`agrepa.training.similarity`). A method's ``train:`` entry overrides its branch's CFG
dropout (``train.cfg_mode`` sample | batch, the drop rates; :func:`batch_drops`).
AdamW (weight decay on matrices only), OneCycle or warm-up-constant schedule,
gradient clipping, EMA of model and BiT-C weights (with warm-up), bf16 autocast on GPU
(fp32 on CPU), optional ``torch.compile``, CFG dropout of tokens and prompt.

Outputs in OUT: ``last.pt`` (rolling, every ``train.checkpoint_every`` steps),
``snapshots/step_XXXXXX.pt`` (branch, at ``train.snapshot_fractions`` of Phase II and its
end), ``final.pt``, ``metrics.csv`` (step, epoch, loss, fm, bitc, repa, rr, grad_norm, lr,
samples_per_s; means over the logging interval; repa empty for the baseline; rr the mean over
the interval's steps where RR applied, empty where it never did; epoch counts
from the start of the warm-up), ``length.json`` (epochs -> steps: train clips, global
batch, steps of both phases, where this phase starts), ``config.resolved.yaml``.
A run started in a directory holding ``last.pt`` resumes from it exactly
(:func:`agrepa.training.checkpoint.resume`); with ``--attempt N`` (the workflow) only a retried
or requeued job does (:func:`agrepa.training.checkpoint.prepare_resume`).

Multi-process: ``torchrun --nproc_per_node N -m agrepa.cli train ...``.
``train.batch_size`` is the GLOBAL batch; rank r trains on the r-th contiguous shard of
the same global batch (:func:`agrepa.training.dataset.shard`), gradients are averaged, only
rank 0 writes. Every per-sample random draw depends on (seed, stream, step) and the
sample's position in the global batch, so N processes reproduce one process up to
floating-point reduction order.
"""
from __future__ import annotations

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
from ..device import autocast, autocast_dtype, move_batch, resolve_device
from ..model import build_model, recipe
from ..model.tokens import CONFIG_A_LAYOUT
from . import distributed as dist_mod
from .checkpoint import (EMA, RunSpec, TrainState, prepare_resume, read_checkpoint, resume, rng_state, seed_everything,
                         set_rng_state, snapshot_dict)
from .dataset import BalancedSampler, DataPaths, TrainingData, crop_frames, derive_seed, generator, shard
from . import similarity
from .loader import StepBatches, loader, next_batch, positions, step_generator
from .objectives import BITC_OBJECTIVES, BiTCHeads, REPAHeads, flow_matching_loss, method_config, method_plan, plan_to_json
from .schedule import Lengths, Schedule, continue_optimizer, make_optimizer

CONFIG_KEYS = ("audio", "device", "train")  # config sections this module reads

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["step", "epoch", "loss", "fm", "bitc", "repa", "rr", "grad_norm", "lr", "samples_per_s"]
LOSS_TERMS = ("fm", "bitc", "repa", "rr", "loss")   # the order non-finite terms are reported in


class NonFiniteLoss(ValueError):
    """A loss term became NaN/inf; the run stops, the last good checkpoint stays."""


@dataclass(frozen=True)
class StepOptions:
    """How the training step runs (issue 24, item 1). The defaults are the fast step; every field
    False is the step as it was before (:meth:`legacy`, which ``benchmarks/bench_step.py`` times
    against the default). On the CPU both give the same numbers: the CUDA-only fields do nothing
    there, and the others change where values live and when they are read, not their arithmetic.

    ``device_noise``: on CUDA the flow-matching noise x0 is drawn on the device from its own
    generator (seeded by ``derive_seed(seed, stream, "noise", step)``) instead of the full global
    batch on the CPU every step; the CPU always draws it on the host, unchanged.
    ``dense_attention``: a batch without padding calls attention with no mask (SDPA's flash
    kernel), decided on the host (the batch's ``padded`` flag, or its CPU mask).
    ``deferred_metrics``: the loss terms and the gradient norm stay device tensors, summed in the
    :class:`Meter` and read (and checked finite) only at ``train.log_every`` steps and before a
    checkpoint is written: no host sync in the step.
    ``fused_adam``, ``tf32``: AdamW(fused=True) and TF32 matmuls / cuDNN, on CUDA only."""

    device_noise: bool = True
    dense_attention: bool = True
    deferred_metrics: bool = True
    fused_adam: bool = True
    tf32: bool = True

    @classmethod
    def legacy(cls) -> "StepOptions":
        return cls(device_noise=False, dense_attention=False, deferred_metrics=False, fused_adam=False, tf32=False)


# -- pieces of the run --

@dataclass
class StepDraw:
    """Everything random about one global batch, drawn from (seed, stream, global step) alone."""

    crop: torch.Tensor         # [G] crop position uniforms
    prompt: torch.Tensor       # [G] prompt length uniforms
    t: torch.Tensor            # [G] flow times
    drop_tokens: torch.Tensor  # [G] bool
    drop_prompt: torch.Tensor  # [G] bool
    x0: torch.Tensor | None    # [G, crop, n_mels] noise; None: drawn on the device from noise_seed (noise)
    noise_seed: int | None = None


def noise(cfg: dict, draw: StepDraw, G: int, device: torch.device) -> torch.Tensor:
    """The step's x0 [G, crop, n_mels]: the host draw, or (``draw_step(..., host_noise=False)``) one
    drawn on ``device`` from a generator of that device seeded by ``draw.noise_seed``."""
    if draw.x0 is not None:
        return draw.x0
    g = torch.Generator(device=device)
    g.manual_seed(draw.noise_seed)
    return torch.randn(G, crop_frames(cfg), int(cfg["audio"]["n_mels"]), generator=g, device=device)


def draw_step(cfg: dict, seed: int, stream: str, step: int, G: int, host_noise: bool = True) -> StepDraw:
    """The step's draws; CFG dropout and the flow-time schedule follow the architecture's
    recipe (:func:`agrepa.model.recipe`). ``train.cfg_mode``: ``sample`` blanks each sample's
    tokens and prompt independently, or both at once with ``cfg_drop_both`` (drawn last, so
    the other draws do not depend on it); ``batch`` decides the drops of the whole step at once
    (:func:`batch_drops`). Both modes draw the same crops, prompts, flow times and noise.
    ``host_noise=False`` (CUDA, :class:`StepOptions`): the noise is not drawn here but on the device
    (:func:`noise`), so the ``cfg_drop_both`` draws after it differ from the host stream's."""
    g = step_generator(seed, stream, step)
    r = recipe(cfg)
    crop, prompt = positions(g, G)              # first: the loader's workers draw them alone
    t = torch.rand(G, generator=g)
    drop_tokens = torch.rand(G, generator=g) < r.cfg_drop_tokens
    drop_prompt = torch.rand(G, generator=g) < r.cfg_drop_prompt
    x0 = torch.randn(G, crop_frames(cfg), int(cfg["audio"]["n_mels"]), generator=g) if host_noise else None
    both = torch.rand(G, generator=g) < r.cfg_drop_both
    if r.t_train == "cosine":
        t = 1 - torch.cos(t * (math.pi / 2))
    mode = cfg["train"]["cfg_mode"]
    if mode == "batch":
        p_cfg = 1.0 - (1.0 - r.cfg_drop_tokens) * (1.0 - r.cfg_drop_both)   # a sample's tokens dropped
        drop_tokens, drop_prompt = batch_drops(seed, stream, step, G, p_cfg, r.cfg_drop_prompt)
    elif mode == "sample":
        drop_tokens, drop_prompt = drop_tokens | both, drop_prompt | both
    else:
        raise ValueError(f"train.cfg_mode: expected sample or batch, got {mode!r}")
    return StepDraw(crop=crop, prompt=prompt, t=t, drop_tokens=drop_tokens, drop_prompt=drop_prompt, x0=x0,
                    noise_seed=None if host_noise else derive_seed(seed, stream, "noise", step))


def batch_drops(seed: int, stream: str, step: int, G: int, p_cfg: float,
                p_prompt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``cfg_mode: batch`` (the framework of seed 003; F5-TTS's CFM): one coin per step, drawn from
    (seed, stream, step) alone, so every branch of a seed sees the same CFG steps. With probability
    ``p_cfg`` (the recipe's chance that a sample's tokens are dropped: ``cfg_drop_tokens`` for the
    DiT, ``cfg_drop_both`` for F5, Voicebox and CosyVoice) the step is a CFG step: every sample's
    tokens AND prompt are dropped; otherwise with probability ``p_prompt`` every sample's prompt alone."""
    u_cfg, u_prompt = torch.rand(2, generator=generator(seed, stream, "cfg", step)).tolist()
    cfg_step = u_cfg < p_cfg
    return torch.full((G,), cfg_step), torch.full((G,), cfg_step or u_prompt < p_prompt)


class Meter:
    """Running means of named scalars over a logging interval (and the samples/s rate).

    Values may be Python floats or 0-d tensors on the device (:class:`StepOptions`
    ``deferred_metrics``): tensors are summed on their device in float64, which is the Python
    float arithmetic of the host path, so the means are the same to the bit; they are read only
    by :meth:`means` and :meth:`check_finite` (the log steps)."""

    def __init__(self):
        self.sums: dict[str, float | torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.n = 0
        self.t0 = time.perf_counter()
        self.pending: list[tuple[int, dict]] = []   # (step, loss terms) not yet checked finite

    def add(self, values: dict, step: int | None = None) -> None:
        """One step's values; a name absent this step (RR on a step it does not apply to) is
        averaged over the steps that had it. With ``step``, the loss terms among them wait for
        :meth:`check_finite`."""
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + (v.detach().double() if torch.is_tensor(v) else float(v))
            self.counts[k] = self.counts.get(k, 0) + 1
        self.n += 1
        if step is not None:
            self.pending.append((step, {k: values[k] for k in LOSS_TERMS if k in values}))

    def means(self) -> dict[str, float]:
        return {k: float(v) / self.counts[k] for k, v in self.sums.items()}

    def check_finite(self, last: Path) -> None:
        """:func:`check_finite` of every step added since the last call, with one host read."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        flat = torch.stack([torch.as_tensor(v).detach().double().reshape(()) for _, terms in pending
                            for v in terms.values()]).cpu().tolist()
        values = iter(flat)
        for step, terms in pending:
            check_finite({k: next(values) for k in terms}, step, last)

    def rate(self, per_step: int) -> float:
        """Items per second since the last reset, ``per_step`` items a step."""
        return per_step * self.n / max(time.perf_counter() - self.t0, 1e-9)

    def reset(self) -> None:
        self.sums, self.counts, self.n, self.t0 = {}, {}, 0, time.perf_counter()


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
    noise_scale: float
    every: int                 # rolling last.pt
    log_every: int
    lengths: Lengths
    total: int                 # optimiser steps of this phase
    start: int                 # steps trained before it (a branch: the warm-up's)
    continues: bool            # train.branch_start: continue
    stream: str                # data order / draws: "train" (one stream over both phases) or the phase
    snapshots: set[int]
    bitc_objective: str = "full"   # train.bitc_objective of this run's token config (set by run)
    rr: similarity.SimilarityRegulariser | None = None   # a Phase II method's RR term (set by run)
    opts: StepOptions = StepOptions()   # how the step runs (the fast step; legacy: the step before issue 24)

    @classmethod
    def build(cls, cfg: dict, phase: str, seed: int, out: Path, d: dist_mod.Dist, lengths: Lengths,
              init_ck: dict | None, steps: int | None) -> "Loop":
        tc = cfg["train"]
        every, log_every = int(tc["checkpoint_every"]), int(tc["log_every"])
        if every < 1 or log_every < 1:
            raise ValueError(f"train.checkpoint_every / train.log_every: must be >= 1, got {every} / {log_every}")
        if tc["branch_start"] not in ("continue", "restart"):
            raise ValueError(f"train.branch_start: expected continue or restart, got {tc['branch_start']!r}")
        continues = tc["branch_start"] == "continue"
        if init_ck is not None and continues and init_ck["config"]["train"]["branch_start"] != "continue":
            raise ValueError("train.branch_start is continue but the warm-up (--init) was trained with restart: "
                             "its schedule does not span Phase II")
        total = int(steps if steps is not None else lengths.steps(phase))
        if total < 1:
            raise ValueError(f"--steps: must be >= 1, got {total}")
        start = 0 if init_ck is None else int(init_ck["start_step"]) + int(init_ck["step"])
        device, G = resolve_device(cfg, d.local_rank), int(tc["batch_size"])
        return cls(cfg, phase, seed, out, d, device, autocast_dtype(cfg["train"]["precision"], device, "train.precision"), G, shard(G, d.rank, d.world_size),
                   float(tc["grad_clip"]) if tc["grad_clip"] else math.inf, recipe(cfg).loss_on_prompt,
                   float(tc["noise_scale"]), every, log_every, lengths, total, start, continues,
                   "train" if continues else phase, snapshot_steps(cfg, total) if phase == "branch" else set())

    def schedule(self, opt: torch.optim.Optimizer, init_ck: dict | None) -> Schedule:
        """One schedule over warm-up + Phase II (continue; a branch continues the warm-up's),
        or this phase's own (restart)."""
        if not self.continues:
            return Schedule(self.cfg, opt, self.total)
        span = self.lengths.warmup_steps + self.lengths.branch_steps if init_ck is None \
            else int(init_ck["scheduler"]["span"])
        return Schedule(self.cfg, opt, span, self.start)

    def global_step(self, step: int) -> int:
        """Steps since training began (warm-up included) at this phase's step ``step``."""
        return self.start + step

    def draw_step(self, step: int) -> int:
        """The step number the draws of this phase's step ``step`` are keyed by."""
        return self.global_step(step) if self.continues else step

    def draw(self, step: int) -> StepDraw:
        """The draws of this phase's step ``step``; on CUDA with ``opts.device_noise`` the noise is
        left to the device (:func:`noise`)."""
        host_noise = not (self.opts.device_noise and self.device.type == "cuda")
        return draw_step(self.cfg, self.seed, self.stream, self.draw_step(step), self.batch_size, host_noise)

    def fast_math(self) -> None:
        """TF32 matmuls and cuDNN convolutions on CUDA (``opts.tf32``); nothing on the CPU."""
        if self.device.type == "cuda" and self.opts.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True


def snapshot_steps(cfg: dict, total: int) -> set[int]:
    """Branch steps kept for convergence curves: ``train.snapshot_fractions`` of the phase, and its end."""
    fractions = [float(f) for f in cfg["train"]["snapshot_fractions"] or []]
    if any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"train.snapshot_fractions: each must lie in (0, 1], got {fractions}")
    return {max(1, int(round(f * total))) for f in fractions} | {total}


# -- the run --

def run(cfg: dict, *, phase: str, out: str | os.PathLike, data: DataPaths, seed: int = 0,
        method: str | None = None, init: str | os.PathLike | None = None,
        selection: str | os.PathLike | None = None, steps: int | None = None, attempt: int | None = None) -> Path:
    """Train one phase into ``out``; returns the path of ``final.pt``. ``attempt``: Snakemake's attempt
    number, which decides whether a ``last.pt`` in ``out`` is resumed (:func:`.checkpoint.prepare_resume`)."""
    method = check_phase(phase, method, init, selection)
    if phase == "branch":
        cfg = method_config(cfg, method)      # the method's own CFG settings (methods.<m>.train)
    d = dist_mod.setup("cuda" if (cfg["device"] != "cpu" and torch.cuda.is_available()) else "cpu")
    try:
        # set up
        if attempt is not None and d.is_main:
            prepare_resume(out, attempt)
        dist_mod.barrier(d)
        clips = TrainingData(cfg, data, split="train")
        init_ck = read_init(Path(init), clips) if phase == "branch" else None
        loop = Loop.build(cfg, phase, int(seed), Path(out), d, Lengths.of(cfg, clips.domain), init_ck, steps)
        loop.bitc_objective = bitc_objective(cfg, clips.token_layout)
        loop.fast_math()
        state = initial_state(loop, clips, method, init_ck, selection)
        if phase == "branch":
            loop.rr = similarity.build(cfg, method, state.model, init_ck, clips.token_store.meta,
                                       clips.token_store.dir)
            loop.rr = loop.rr.to(loop.device) if loop.rr is not None else None
        forward = torch.compile(state.model) if cfg["train"]["compile"] else state.model
        # resume
        last = loop.out / "last.pt"
        resume(state, last, d.rank, d.world_size)
        if d.is_main:
            loop.out.mkdir(parents=True, exist_ok=True)
            config_mod.save_resolved(cfg, loop.out)
            io.write_json(loop.out / "length.json", length_record(loop))
        metrics, meter = MetricsLog(loop.out / "metrics.csv", state.metrics), Meter()
        tb = _tensorboard(loop.out) if d.is_main else None
        for m in state.modules():
            m.train()
        start, total = state.step, loop.total
        bar = tqdm(range(start, total), initial=start, total=total, desc=f"{phase}:{method}",
                   disable=not d.is_main, dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0)
        # loop: draw batch, forward, losses, step, log, checkpoint
        batches = iter(loader(cfg, StepBatches(clips, state.sampler.state_dict(), batch_size=loop.batch_size,
                                                seed=loop.seed, stream=loop.stream, local=loop.local, start=start,
                                                total=total, draw_offset=loop.draw_step(0)),
                              pin_memory=loop.device.type == "cuda"))
        started = time.perf_counter()
        for step in bar:
            batch, draw = draw_batch(loop, batches, state.sampler, step)
            loss, terms = losses(loop, forward, state, batch, draw)
            if not loop.opts.deferred_metrics:
                check_finite(terms, step, last)
            grad_norm, lr = optimise(loop, state, loss)
            state.step = done = step + 1
            meter.add({**terms, "grad_norm": grad_norm}, step if loop.opts.deferred_metrics else None)
            log_due = done % loop.log_every == 0 or done == total
            if log_due or done in loop.snapshots or done % loop.every == 0:
                meter.check_finite(last)     # deferred: the terms since the last check, before any write
            if d.is_main and log_due:
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
        if d.is_main and total > start:
            elapsed = max(time.perf_counter() - started, 1e-9)
            log.info("throughput: train %s %s: %d steps in %.2f s = %.3f steps/s, %.2f samples/s (global batch %d, "
                     "%d process(es))", phase, method, total - start, elapsed, (total - start) / elapsed,
                     (total - start) * loop.batch_size / elapsed, loop.batch_size, d.world_size)
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


def length_record(loop: Loop) -> dict:
    """``OUT/length.json``: epochs -> steps of both phases, and where this phase sits."""
    return {**loop.lengths.to_json(), "phase": loop.phase, "phase_steps": loop.total, "start_step": loop.start,
            "branch_start": loop.cfg["train"]["branch_start"]}


def bitc_objective(cfg: dict, token_layout: dict) -> str:
    """``train.bitc_objective`` of the token config a run trains on (B: paired tokens, else A)."""
    name = "B" if token_layout["paired"] else "A"
    objective = cfg["train"]["bitc_objective"][name]
    if objective not in BITC_OBJECTIVES:
        raise ValueError(f"train.bitc_objective.{name}: expected one of {list(BITC_OBJECTIVES)}, got {objective!r}")
    if objective == "none":
        log.warning("train.bitc_objective.%s is none: the BiT-C heads stay untrained, so LASP and Cos-SEM of "
                    "this run read untrained heads", name)
    return objective


def check_bitc_width(cfg: dict, model) -> None:
    """BiT-C aligns the token embedding and LASP applies its heads to every layer: on a
    backbone with a configurable token width (``token_dim_key``: DiT, Voicebox) the two
    widths must agree whenever BiT-C is on. The F5 and CosyVoice backbones keep their
    references' widths; LASP scores their layers of the token embedding's width only
    (NaN elsewhere; :func:`agrepa.probing.probes.bitc_scorer`)."""
    key = model.token_dim_key
    if key is None or all(float(w) == 0 for w in cfg["train"]["bitc_weight"].values()):
        return
    wrong = sorted({w for w in model.hidden_dims[1:] if w != model.token_dim})
    if wrong:
        dim_key = key.rsplit(".", 1)[0] + ".dim"
        raise ValueError(f"{key} {model.token_dim} differs from {dim_key} {wrong[0]}: BiT-C trains its "
                         f"heads on the token embedding and LASP applies them to every layer, so the widths must "
                         f"agree (set {key}: null, or train.bitc_weight to 0)")


def initial_state(loop: Loop, clips: TrainingData, method: str, init_ck: dict | None, selection) -> TrainState:
    """Step-0 state: fresh (warm-up) or the warm-up checkpoint's training weights and EMA
    (branch) and, with ``train.branch_start: continue``, its optimiser, data stream and RNG."""
    cfg, tc, seed = loop.cfg, loop.cfg["train"], loop.seed
    seed_everything(derive_seed(seed, "init"))
    model = build_model(cfg, clips.vocab_size, clips.token_layout)
    check_bitc_width(cfg, model)
    bitc = BiTCHeads(model.token_dim, clips.teacher_dims, tc["bitc_weight"], affine=bool(tc["bitc_head_affine"]))
    plan = {}
    if init_ck is not None:
        if BiTCHeads.affine_of(init_ck["bitc"]) != bitc.affine:
            raise ValueError(f"train.bitc_head_affine is {bitc.affine} but the warm-up {init_ck['path']} holds the "
                             f"{'affine' if not bitc.affine else 'bias-free'} BiT-C head: train the warm-up again "
                             f"with this config")
        model.load_state_dict(init_ck["model"])
        bitc.load_state_dict(init_ck["bitc"])
        plan = method_plan(cfg, method, selection, model.n_layers)
    seed_everything(derive_seed(seed, "repa", method))
    repa = REPAHeads(plan, model.hidden_dims, clips.teacher_dims, tc["repa_hidden"])
    for m in (model, bitc, repa):
        m.to(loop.device)
    dist_mod.broadcast_parameters(loop.dist, [model, bitc, repa])
    ema = EMA({"model": model, "bitc": bitc}, float(tc["ema_decay"]), bool(tc["ema_warmup"]))
    opt = make_optimizer(cfg, [model, bitc, repa], fused=loop.opts.fused_adam and loop.device.type == "cuda")
    sampler = BalancedSampler(clips.domain, loop.batch_size, seed, tag=loop.stream)
    if init_ck is not None:
        ema.load_state_dict(init_ck["ema"])
        if loop.continues:
            continue_optimizer(opt, init_ck["optimizer"])
            sampler.load_state_dict(init_ck["sampler"])
    spec = RunSpec(loop.phase, method, seed, loop.total, loop.start, plan_to_json(plan),
                   None if selection is None else str(selection),
                   None if init_ck is None else str(init_ck["path"]), clips.vocab_size, dict(clips.token_layout),
                   dict(clips.teacher_dims), cfg)
    state = TrainState(spec, model, bitc, repa, ema, opt, loop.schedule(opt, init_ck), sampler)
    if loop.continues and init_ck is not None and init_ck["world_size"] == loop.dist.world_size:
        set_rng_state(init_ck["rng"][loop.dist.rank])     # dropout continues the warm-up's stream
    else:
        seed_everything(derive_seed(seed, loop.phase, "train", loop.dist.rank))
    return state


def draw_batch(loop: Loop, batches, sampler: BalancedSampler, step: int) -> tuple[dict, StepDraw]:
    """This process's shard of the global batch of ``step`` (from the loader ``batches``; the
    consumed ``sampler`` advanced by one batch) on the device, and the step's draws."""
    batch = next_batch(batches, sampler, step)
    return move_batch(batch, loop.device), loop.draw(step)


def padded(loop: Loop, batch: dict) -> bool | None:
    """Whether the batch has padding, known on the host (``opts.dense_attention``): the batch's own
    ``padded`` flag, else its mask when that is on the CPU; None (keep the attention mask) when it
    is not known without a device sync, or with the legacy step."""
    if not loop.opts.dense_attention:
        return None
    if "padded" in batch:
        return bool(batch["padded"])
    mask = batch["mask"]
    return None if mask.device.type != "cpu" else not bool(mask.all())


def losses(loop: Loop, forward: nn.Module, state: TrainState, batch: dict,
           draw: StepDraw) -> tuple[torch.Tensor, dict]:
    """The total loss of one batch (with its graph) and the process-averaged values of the
    terms ``loss``, ``fm``, ``bitc``, ``repa`` (0 without REPA heads) and ``rr`` (only on the
    steps where the method's RR applies): Python floats, or 0-d fp32 device tensors with
    ``opts.deferred_metrics`` (no host sync)."""
    j, dev, T = loop.local, loop.device, batch["mel"].shape[1]
    x0 = noise(loop.cfg, draw, loop.batch_size, dev)[j, :T].to(dev) * loop.noise_scale
    drop_tokens = draw.drop_tokens[j].to(dev)
    with autocast(loop.amp, dev):
        fm = flow_matching_loss(forward, batch, draw.t[j].to(dev), x0, loss_on_prompt=loop.loss_on_prompt,
                                drop_tokens=drop_tokens, drop_prompt=draw.drop_prompt[j].to(dev), return_hidden=True,
                                padded=padded(loop, batch))
        tok = state.model.embed_tokens(batch["tokens"], batch["mask"], T)   # BiT-C: the token embedding
        l_bitc = state.bitc.loss(tok, batch, keep=~drop_tokens, objective=loop.bitc_objective)
        l_repa = state.repa.loss(fm.hidden, batch) if state.repa.active else torch.zeros((), device=dev)
        l_rr = None if loop.rr is None else \
            loop.rr.loss(fm.hidden, batch, drop_tokens, state.model.token_emb, loop.dist)
    loss = fm.loss + l_bitc + (l_repa if state.repa.active else 0.0)
    if l_rr is not None:
        loss = loss + loop.rr.settings.lam * l_rr
    values = {"loss": loss, "fm": fm.loss, "bitc": l_bitc, "repa": l_repa, **({} if l_rr is None else {"rr": l_rr})}
    values = {k: v.detach().float() for k, v in values.items()}
    if not loop.opts.deferred_metrics:
        return loss, dist_mod.all_reduce_mean_dict(loop.dist, values)
    mean = dist_mod.all_reduce_mean(loop.dist, torch.stack(list(values.values())))
    return loss, dict(zip(values, mean.unbind()))


def check_finite(terms: dict, step: int, last: Path) -> None:
    for name in (n for n in LOSS_TERMS if n in terms):
        v = terms[name]
        if not math.isfinite(v):
            raise NonFiniteLoss(f"step {step + 1}: loss term {name!r} is {v}; stopped, last good "
                                f"checkpoint kept ({last if last.exists() else 'none written yet'})")


def optimise(loop: Loop, state: TrainState, loss: torch.Tensor) -> tuple[float | torch.Tensor, float]:
    """Backward, averaged gradients, clipping, optimiser and scheduler step, EMA update;
    returns (gradient norm before clipping: a device tensor with ``opts.deferred_metrics``,
    the learning rate this step used)."""
    opt = state.optimizer
    params = [p for m in state.modules() for p in m.parameters()]
    opt.zero_grad(set_to_none=False)
    loss.backward()
    for p in params:  # parameters unused by this batch (a domain absent): explicit zero gradient
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    dist_mod.all_reduce_grads(loop.dist, params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, loop.clip)
    if not loop.opts.deferred_metrics:
        grad_norm = float(grad_norm)
    lr = opt.param_groups[0]["lr"]
    opt.step()
    state.scheduler.step()
    state.ema.update(loop.global_step(state.step))
    return grad_norm, lr


def log_row(loop: Loop, state: TrainState, meter: Meter, done: int, lr: float) -> dict:
    """One metrics.csv row: means over the logging interval."""
    m = meter.means()
    row = {"step": done, "epoch": loop.lengths.epoch_of(loop.global_step(done)), "loss": m["loss"], "fm": m["fm"], "bitc": m["bitc"],
           "repa": m["repa"] if state.repa.active else float("nan"), "rr": m.get("rr", float("nan")),
           "grad_norm": m["grad_norm"],
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
            io.torch_save(loop.out / "snapshots" / f"step_{done:06d}.pt", snapshot_dict(ck))
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
    """The warm-up checkpoint a branch starts from, checked against this run's stores
    (``path`` added: the run records where it started)."""
    ck = dict(read_checkpoint(path, "warm-up checkpoint (--init)"), path=str(path))
    if ck["phase"] != "warmup":
        raise ValueError(f"{path}: a {ck['phase']} checkpoint; --init takes the warm-up's final.pt")
    if ck["vocab_size"] != clips.vocab_size:
        raise ValueError(f"{path}: vocab_size {ck['vocab_size']} differs from the token store's {clips.vocab_size}")
    if dict(ck.get("token_layout") or CONFIG_A_LAYOUT) != dict(clips.token_layout):
        raise ValueError(f"{path}: token layout {ck.get('token_layout')} differs from the token store's "
                         f"{clips.token_layout} (Config A vs B?)")
    if dict(ck["teacher_dims"]) != dict(clips.teacher_dims):
        raise ValueError(f"{path}: teacher dims {ck['teacher_dims']} differ from the stores' {clips.teacher_dims}")
    return ck
