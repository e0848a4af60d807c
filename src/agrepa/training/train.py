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
A run started in a directory holding ``last.pt`` resumes from it exactly.
Checkpoints hold only tensors and plain Python (``torch.load(weights_only=True)``).

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
from . import distributed as dist_mod
from .. import io
from ..device import move_batch, resolve_device
from .objectives import BiTCHeads, REPAHeads, flow_matching_loss, method_layers
from .checkpoint import EMA, rng_state, seed_everything, set_rng_state
from .dataset import BalancedSampler, TrainingData, crop_frames, derive_seed, generator, shard
from ..model.dit import DiT, build_model

CONFIG_KEYS = ("audio", "device", "train")  # config sections this module reads

log = logging.getLogger(__name__)

FORMAT = "agrepa-train-v1"
METRIC_COLUMNS = ["step", "loss", "fm", "bitc", "repa", "grad_norm", "lr", "samples_per_s"]


class NonFiniteLoss(ValueError):
    """A loss term became NaN/inf; the run stops, the last good checkpoint stays."""


@dataclass
class LoadedRun:
    model: DiT                 # eval mode; EMA weights if asked
    bitc: BiTCHeads            # eval mode; EMA weights if asked
    cfg: dict                  # the run's resolved config
    vocab_size: int
    step: int
    method: str
    phase: str = "warmup"
    seed: int = 0
    layers: list | None = None     # REPA layer set (1-based) of the run
    weights: list | None = None    # its alpha_l


def load_checkpoint(path: str | os.PathLike, map_location="cpu", use_ema: bool = True) -> LoadedRun:
    """A trained run from a checkpoint written by ``agrepa train`` (weights only)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable training checkpoint ({err})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"{path}: not an agrepa training checkpoint (format {FORMAT!r} expected)")
    cfg = ck["config"]
    model = build_model(cfg, ck["vocab_size"])
    bitc = BiTCHeads(model.dim, ck["teacher_dims"], cfg["train"]["bitc_weight"])
    src = ck["ema"] if use_ema else {"model": ck["model"], "bitc": ck["bitc"]}
    model.load_state_dict(src["model"])
    bitc.load_state_dict(src["bitc"])
    return LoadedRun(model.to(map_location).eval(), bitc.to(map_location).eval(), cfg, int(ck["vocab_size"]),
                     int(ck["step"]), ck["method"], ck["phase"], int(ck["seed"]),
                     list(ck["layers"]), list(ck["weights"]))


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


class MetricsLog:
    """metrics.csv rows, rewritten atomically. The rows also travel in every checkpoint,
    so a resumed run restores them even if the workflow deleted metrics.csv."""

    def __init__(self, path: Path, rows: list[dict] | None = None):
        self.path = path
        self.rows: list[dict] = [dict(r) for r in rows or []]

    def add(self, row: dict) -> None:
        self.rows.append(row)

    def write(self) -> None:
        io.write_csv(self.path, pd.DataFrame(self.rows, columns=METRIC_COLUMNS))


# -- the run --

def run(cfg: dict, *, phase: str, out: str | os.PathLike, manifest, mels, tokens, semantic, acoustic,
        seed: int = 0, method: str | None = None, init: str | os.PathLike | None = None,
        selection: str | os.PathLike | None = None, steps: int | None = None) -> Path:
    """Train one phase into ``out``; returns the path of ``final.pt``."""
    if phase not in ("warmup", "branch"):
        raise ValueError(f"--phase: expected warmup or branch, got {phase!r}")
    if phase == "warmup":
        method = method or "warmup"
        if init is not None or selection is not None:
            raise ValueError("--phase warmup takes neither --init nor --selection")
    elif method is None or init is None:
        raise ValueError("--phase branch needs --method and --init WARMUP/final.pt")
    out = Path(out)
    tc = cfg["train"]
    total = int(steps if steps is not None else tc["warmup_steps" if phase == "warmup" else "branch_steps"])
    if total < 1:
        raise ValueError(f"train.{phase}_steps / --steps: must be >= 1, got {total}")

    d = dist_mod.setup("cuda" if (cfg["device"] != "cpu" and torch.cuda.is_available()) else "cpu")
    try:
        return _run(cfg, d, phase=phase, out=out, manifest=manifest, mels=mels, tokens=tokens,
                    semantic=semantic, acoustic=acoustic, seed=int(seed), method=method, init=init,
                    selection=selection, total=total)
    finally:
        dist_mod.teardown(d)


def _run(cfg, d, *, phase, out, manifest, mels, tokens, semantic, acoustic, seed, method, init, selection,
         total) -> Path:
    tc = cfg["train"]
    device = resolve_device(cfg, d.local_rank)
    amp = autocast_dtype(cfg, device)
    G = int(tc["batch_size"])
    local = shard(G, d.rank, d.world_size)

    data = TrainingData(cfg, manifest, mels, tokens, semantic, acoustic, split="train")
    seed_everything(derive_seed(seed, "init"))
    model = build_model(cfg, data.vocab_size)
    bitc = BiTCHeads(model.dim, data.teacher_dims, tc["bitc_weight"])
    init_ck = None
    if phase == "branch":
        init_ck = _read_init(Path(init), data)
        model.load_state_dict(init_ck["model"])
        bitc.load_state_dict(init_ck["bitc"])
        layers, weights = method_layers(cfg, method, selection, model.n_layers)
    else:
        layers, weights = [], []
    seed_everything(derive_seed(seed, "repa", method))
    repa = REPAHeads(layers, weights, model.dim, data.teacher_dims, tc["repa_hidden"])
    model.to(device), bitc.to(device), repa.to(device)
    modules = [model, bitc, repa]
    dist_mod.broadcast_parameters(d, modules)
    params = [p for m in modules for p in m.parameters()]
    ema = EMA({"model": model, "bitc": bitc}, float(tc["ema_decay"]))
    if init_ck is not None:
        ema.load_state_dict(init_ck["ema"])
    opt = make_optimizer(cfg, modules)
    sched = make_scheduler(cfg, opt, total)
    sampler = BalancedSampler(data.domain, G, seed, tag=phase)
    seed_everything(derive_seed(seed, phase, "train", d.rank))
    forward = torch.compile(model) if tc["compile"] else model

    start, rows = 0, []
    last = out / "last.pt"
    if last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        for key, want in (("format", FORMAT), ("phase", phase), ("method", method), ("seed", seed),
                          ("total_steps", total), ("layers", layers), ("weights", weights)):
            if ck.get(key) != want:
                raise ValueError(f"{last}: {key} is {ck.get(key)!r} but this run has {want!r}; "
                                 f"use another --out or delete the directory")
        model.load_state_dict(ck["model"])
        bitc.load_state_dict(ck["bitc"])
        repa.load_state_dict(ck["repa"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        sampler.load_state_dict(ck["sampler"])
        if ck["world_size"] == d.world_size:
            set_rng_state(ck["rng"][d.rank])
        else:
            log.warning("%s: written by %d process(es), resuming with %d: dropout RNG streams are re-seeded",
                        last, ck["world_size"], d.world_size)
        start = int(ck["step"])
        rows = ck.get("metrics", [])
        log.info("resuming %s from %s at step %d/%d", method, last, start, total)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        config_mod.save_resolved(cfg, out)
    metrics = MetricsLog(out / "metrics.csv", rows)
    tb = _tensorboard(out) if d.is_main else None

    def checkpoint(step: int) -> dict | None:
        states = dist_mod.all_gather_object(d, rng_state())
        if not d.is_main:
            return None
        return {"format": FORMAT, "phase": phase, "method": method, "seed": seed, "step": step,
                "total_steps": total, "layers": layers, "weights": weights,
                "selection": None if selection is None else str(selection),
                "init": None if init is None else str(init),
                "vocab_size": data.vocab_size, "teacher_dims": dict(data.teacher_dims),
                "model": model.state_dict(), "ema": ema.state_dict(), "bitc": bitc.state_dict(),
                "repa": repa.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "sampler": sampler.state_dict(), "rng": states, "world_size": d.world_size, "config": cfg,
                "metrics": [dict(r) for r in metrics.rows]}

    snapshots = {int(s) for s in tc["snapshot_steps"] or []} if phase == "branch" else set()
    every, log_every = int(tc["checkpoint_every"]), int(tc["log_every"])
    if every < 1 or log_every < 1:
        raise ValueError(f"train.checkpoint_every / train.log_every: must be >= 1, got {every} / {log_every}")
    clip = float(tc["grad_clip"]) if tc["grad_clip"] else math.inf
    loss_on_prompt = bool(tc["loss_on_prompt"])
    acc, acc_n, t_log = torch.zeros(5, dtype=torch.float64), 0, time.perf_counter()
    model.train(), bitc.train(), repa.train()
    bar = tqdm(range(start, total), initial=start, total=total, desc=f"{phase}:{method}",
               disable=not d.is_main, dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0)
    for step in bar:
        idx = sampler.next_batch()
        draw = draw_step(cfg, seed, phase, step, G)
        batch = move_batch(data.collate(idx[local], draw.crop[local], draw.prompt[local]), device)
        T = batch["mel"].shape[1]
        x0 = draw.x0[local, :T].to(device)
        with (torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()):
            fm = flow_matching_loss(forward, batch, draw.t[local].to(device), x0, loss_on_prompt=loss_on_prompt,
                                    drop_tokens=draw.drop_tokens[local].to(device),
                                    drop_prompt=draw.drop_prompt[local].to(device), return_hidden=True)
            l_bitc = bitc.loss(fm.hidden[0], batch)
            l_repa = repa.loss(fm.hidden, batch)
        loss = fm.loss + l_bitc + (l_repa if l_repa is not None else 0.0)
        terms = torch.stack([loss.detach().float(), fm.loss.detach().float(), l_bitc.detach().float(),
                             (l_repa.detach().float() if l_repa is not None else torch.zeros((), device=device))])
        terms = dist_mod.all_reduce_mean(d, terms).cpu()
        for name, v in sorted(zip(("loss", "fm", "bitc", "repa"), terms.tolist()), key=lambda x: x[0] == "loss"):
            if not math.isfinite(v):
                raise NonFiniteLoss(f"step {step + 1}: loss term {name!r} is {v}; stopped, last good "
                                    f"checkpoint kept ({last if last.exists() else 'none written yet'})")
        opt.zero_grad(set_to_none=False)
        loss.backward()
        for p in params:  # parameters unused by this batch (a domain absent): explicit zero gradient
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        dist_mod.all_reduce_grads(d, params)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        lr = opt.param_groups[0]["lr"]  # the rate this step uses
        opt.step()
        sched.step()
        ema.update()
        done = step + 1

        acc += torch.tensor(terms.tolist() + [grad_norm], dtype=torch.float64)
        acc_n += 1
        if d.is_main and (done % log_every == 0 or done == total):
            now = time.perf_counter()
            m = (acc / acc_n).tolist()
            metrics.add({"step": done, "loss": m[0], "fm": m[1], "bitc": m[2],
                         "repa": m[3] if repa else float("nan"), "grad_norm": m[4],
                         "lr": lr, "samples_per_s": G * acc_n / max(now - t_log, 1e-9)})
            bar.set_postfix(loss=f"{m[0]:.4f}", fm=f"{m[1]:.4f}")
            if tb is not None:
                for key, val in metrics.rows[-1].items():
                    if key != "step" and math.isfinite(val):
                        tb.add_scalar(f"{phase}/{key}", val, done)
            log.debug("step %d: %s", done, metrics.rows[-1])
            acc.zero_()
            acc_n, t_log = 0, now
            metrics.write()
        if done in snapshots or done % every == 0 or done == total:
            ck = checkpoint(done)
            if ck is not None:
                if done in snapshots:
                    io.torch_save(out / "snapshots" / f"step_{done:06d}.pt", ck)
                if done == total:
                    io.torch_save(out / "final.pt", ck)
                if done % every == 0:
                    io.torch_save(last, ck)
                metrics.write()
                if metrics.rows:
                    r = metrics.rows[-1]
                    log.info("step %d/%d: loss %.4f fm %.4f bitc %.4f repa %s, checkpoint written", done, total,
                             r["loss"], r["fm"], r["bitc"], "-" if not repa else f"{r['repa']:.4f}")
            dist_mod.barrier(d)
    if start >= total:  # resumed at the end: (re)write whatever a finished run leaves
        ck = checkpoint(total)
        if ck is not None:
            if not (out / "final.pt").exists():
                io.torch_save(out / "final.pt", ck)
            metrics.write()
    if tb is not None:
        tb.close()
    log.info("%s %s: %d steps done -> %s", phase, method, total, out / "final.pt")
    return out / "final.pt"


def _tensorboard(out: Path):
    """A TensorBoard writer in OUT/tensorboard when the package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _read_init(path: Path, data: TrainingData) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path}: warm-up checkpoint (--init) not found")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"{path}: not an agrepa training checkpoint")
    if ck["vocab_size"] != data.vocab_size:
        raise ValueError(f"{path}: vocab_size {ck['vocab_size']} differs from the token store's {data.vocab_size}")
    if dict(ck["teacher_dims"]) != dict(data.teacher_dims):
        raise ValueError(f"{path}: teacher dims {ck['teacher_dims']} differ from the stores' {data.teacher_dims}")
    return ck
