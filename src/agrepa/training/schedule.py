"""Optimiser, learning-rate schedule and phase lengths of the two-phase protocol (App. A.5).

Lengths: the paper trains Phase I for one epoch and Phase II for two more. An epoch is
``ceil(epochs * E / G)`` optimiser steps with G = ``train.batch_size`` (global) and E the
epoch's clips: every train clip once (``train.epoch_size: clips``) or twice the larger
domain (``balanced``: the authors' balanced sampler up-samples the smaller corpus).

Schedule: the learning rate of global step g (steps since the warm-up began) is
``train.lr * lr_factor(g, span)``; with ``train.onecycle_momentum: [base, max]`` AdamW's
beta1 cycles against it (max -> base at the peak -> max, as torch's OneCycleLR).
``train.branch_start: continue`` runs ONE schedule over warm-up + Phase II
(span = both lengths): the warm-up covers g = 0..W-1, a branch g = W..W+B-1 and also
continues the warm-up's AdamW moments, so the baseline branch is the warm-up continued.
``restart`` gives each phase its own schedule (span = its length, g from 0) and a fresh
optimiser.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..config import DOMAINS

CONFIG_KEYS = ("train",)  # config sections this module reads


def make_optimizer(cfg: dict, modules: list[nn.Module], fused: bool = False) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (dim >= 2), none on biases, norms and gains. ``fused``: the
    fused CUDA kernel (every parameter on one CUDA device; the training step asks for it there)."""
    params = [p for m in modules for p in m.parameters()]
    decay = [p for p in params if p.dim() >= 2]
    other = [p for p in params if p.dim() < 2]
    tc = cfg["train"]
    return torch.optim.AdamW([{"params": decay, "weight_decay": float(tc["weight_decay"])},
                              {"params": other, "weight_decay": 0.0}],
                             lr=float(tc["lr"]), betas=tuple(float(b) for b in tc["betas"]),
                             **({"fused": True} if fused else {}))


def continue_optimizer(opt: torch.optim.Optimizer, state: dict) -> None:
    """Load the warm-up optimiser's ``state`` into a branch optimiser ``opt`` whose parameter
    groups hold the warm-up's parameters first (model, BiT-C heads), then the new REPA
    heads' (their AdamW moments start at zero)."""
    mine = opt.state_dict()
    if len(state["param_groups"]) != len(mine["param_groups"]):
        raise ValueError(f"warm-up optimiser has {len(state['param_groups'])} parameter groups, "
                         f"this one {len(mine['param_groups'])}")
    moments = {}
    for old, new in zip(state["param_groups"], mine["param_groups"]):
        n = len(old["params"])
        if n > len(new["params"]):
            raise ValueError(f"warm-up optimiser group has {n} parameters, this one only {len(new['params'])}")
        moments.update({j: state["state"][i] for i, j in zip(old["params"], new["params"][:n])
                        if i in state["state"]})
        new.update({k: v for k, v in old.items() if k != "params"})
    opt.load_state_dict({"state": moments, "param_groups": mine["param_groups"]})


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


class Schedule:
    """Sets every parameter group's lr (and beta1 when cycled) for global step ``start + steps``
    (module doc); its state is ``span``, ``start`` and the steps taken in this run."""

    def __init__(self, cfg: dict, opt: torch.optim.Optimizer, span: int, start: int = 0):
        tc = cfg["train"]
        self.opt, self.span, self.start, self.steps = opt, int(span), int(start), 0
        self.kind, self.frac = tc["schedule"], float(tc["warmup_fraction"])
        self.div, self.final_div = float(tc["onecycle_div_factor"]), float(tc["onecycle_final_div_factor"])
        self.lr = float(tc["lr"])
        self.momentum = tc["onecycle_momentum"]
        lr_factor(0, self.span, self.kind, self.frac, self.div, self.final_div)  # validates the kind
        if self.momentum is not None and (self.kind != "onecycle" or len(self.momentum) != 2
                                          or not 0 <= self.momentum[0] <= self.momentum[1] < 1):
            raise ValueError(f"train.onecycle_momentum: [base, max] with 0 <= base <= max < 1 and "
                             f"train.schedule onecycle, got {self.momentum} ({self.kind})")
        self.apply()

    def beta1(self, g: int) -> float:
        base, top = (float(m) for m in self.momentum)
        warm = max(1, int(round(self.frac * self.span)))
        if g < warm:
            return _cos(top, base, g / warm)
        return _cos(base, top, (g - warm) / max(1, self.span - 1 - warm))

    def apply(self) -> None:
        g = self.start + self.steps
        lr = self.lr * lr_factor(g, self.span, self.kind, self.frac, self.div, self.final_div)
        for group in self.opt.param_groups:
            group["lr"] = lr
            if self.momentum is not None:
                group["betas"] = (self.beta1(g), group["betas"][1])

    def step(self) -> None:
        self.steps += 1
        self.apply()

    def state_dict(self) -> dict:
        return {"span": self.span, "start": self.start, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        for key in ("span", "start"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(f"schedule state: {key} is {state[key]}, this run has {getattr(self, key)}")
        self.steps = int(state["steps"])
        self.apply()


@dataclass(frozen=True)
class Lengths:
    """Phase lengths in optimiser steps from epochs (written to a run's ``length.json``)."""

    train_clips: dict          # per domain
    epoch_size: str
    epoch_clips: int
    batch_size: int
    warmup_epochs: float
    branch_epochs: float
    warmup_steps: int
    branch_steps: int

    @classmethod
    def of(cls, cfg: dict, domains: list[int]) -> "Lengths":
        """From the config and the domain id of every train clip."""
        tc = cfg["train"]
        counts = {d: sum(1 for x in domains if x == i) for i, d in enumerate(DOMAINS)}
        kind, G = tc["epoch_size"], int(tc["batch_size"])
        if kind not in ("clips", "balanced"):
            raise ValueError(f"train.epoch_size: expected clips or balanced, got {kind!r}")
        clips = sum(counts.values()) if kind == "clips" else 2 * max(counts.values())
        steps = {}
        for phase in ("warmup", "branch"):
            epochs = float(tc[f"{phase}_epochs"])
            steps[phase] = math.ceil(epochs * clips / G - 1e-9)
            if epochs <= 0 or steps[phase] < 1:
                raise ValueError(f"train.{phase}_epochs: {epochs} epochs of {clips} clips at batch {G} give "
                                 f"{steps[phase]} steps; need at least 1")
        return cls(counts, kind, clips, G, float(tc["warmup_epochs"]), float(tc["branch_epochs"]),
                   steps["warmup"], steps["branch"])

    def steps(self, phase: str) -> int:
        return self.warmup_steps if phase == "warmup" else self.branch_steps

    def epoch_of(self, global_step: int) -> float:
        """Epochs trained after ``global_step`` optimiser steps."""
        return global_step * self.batch_size / self.epoch_clips

    def to_json(self) -> dict:
        return {**asdict(self), "steps_per_epoch": self.epoch_clips / self.batch_size}
