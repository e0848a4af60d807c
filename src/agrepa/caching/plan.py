"""A frozen plan of which block features the sampler reuses at which ODE steps.

The plan is data; :meth:`CachePlan.new_cache` turns it into the step cache of one
batch (:class:`agrepa.model.cache.StepCache`). ``reuse[kind][layer]`` lists the solver
steps (0-based, 1..S-1) at which block ``layer``'s ``kind`` output ("attn": the
self-attention output before its gate; "mlp": the MLP output before its gate) is NOT
computed but taken from the last step that computed it. Step 0 always computes.

JSON (written by ``agrepa lsac-select``)::

    {"name", "strategy", "steps" (S), "n_layers" (L), "budget" (targeted attention saving),
     "attention_savings" (reused attention cells / (S L)), "reuse": {"attn": {"<l>": [i, ...]},
     "mlp": {...}}, ...strategy fields (tau, refresh, stable_from, seed, source)}
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .. import io

KINDS = ("attn", "mlp")


@dataclass
class CachePlan:
    name: str
    strategy: str
    steps: int
    n_layers: int
    reuse: dict[str, dict[int, list[int]]]
    budget: float | None = None
    info: dict = field(default_factory=dict)     # strategy-specific fields (tau, refresh, stable_from, ...)

    def __post_init__(self):
        self.reuse = {kind: {int(l): sorted(int(i) for i in steps) for l, steps in layers.items() if steps}
                      for kind, layers in self.reuse.items()}
        self.validate()

    def validate(self, source: str = "cache plan") -> None:
        if self.steps < 1 or self.n_layers < 1:
            raise ValueError(f"{source}: steps and n_layers must be >= 1, got {self.steps}, {self.n_layers}")
        for kind, layers in self.reuse.items():
            if kind not in KINDS:
                raise ValueError(f"{source}: unknown kind {kind!r} in 'reuse' (choose from {KINDS})")
            for layer, steps in layers.items():
                if not 1 <= layer <= self.n_layers:
                    raise ValueError(f"{source}: layer {layer} outside 1..{self.n_layers}")
                bad = [i for i in steps if not 1 <= i < self.steps]
                if bad:
                    raise ValueError(f"{source}: layer {layer} reuses {kind} at step(s) {bad} outside "
                                     f"1..{self.steps - 1} (step 0 always computes)")

    def cells(self) -> dict[str, int]:
        """Reused (step, layer) cells per kind."""
        return {kind: sum(len(s) for s in self.reuse.get(kind, {}).values()) for kind in KINDS}

    def attention_savings(self) -> float:
        """Fraction of the sampler's self-attention FLOPs the plan saves (every block costs the same)."""
        return self.cells()["attn"] / (self.steps * self.n_layers)

    def new_cache(self, observe=None):
        """The step cache of one batch (import here: building plans does not need torch)."""
        from ..model.cache import StepCache

        return StepCache({(kind, layer): steps for kind, layers in self.reuse.items()
                          for layer, steps in layers.items()}, observe=observe)

    def check_model(self, n_layers: int, steps: int, source: str = "cache plan") -> None:
        """A plan made for another depth or step count cannot be applied."""
        if (n_layers, steps) != (self.n_layers, self.steps):
            raise ValueError(f"{source}: plan {self.name!r} is for L={self.n_layers}, S={self.steps}; "
                             f"the model has L={n_layers} and the sampler runs S={steps} steps")

    def to_json(self) -> dict:
        return {"name": self.name, "strategy": self.strategy, "steps": self.steps, "n_layers": self.n_layers,
                "budget": self.budget, "attention_savings": self.attention_savings(), "cells": self.cells(),
                "reuse": {k: {str(l): s for l, s in v.items()} for k, v in self.reuse.items()}, **self.info}


def write_plan(path: str | os.PathLike, plan: CachePlan) -> None:
    io.write_json(path, plan.to_json())


def read_plan(path: str | os.PathLike) -> CachePlan:
    """Read and check a plan JSON; errors name the file."""
    rec = io.read_json(path, required=("name", "strategy", "steps", "n_layers", "reuse"))
    info = {k: v for k, v in rec.items()
            if k not in ("name", "strategy", "steps", "n_layers", "budget", "reuse", "attention_savings", "cells")}
    try:
        return CachePlan(rec["name"], rec["strategy"], int(rec["steps"]), int(rec["n_layers"]),
                         {k: {int(l): s for l, s in v.items()} for k, v in rec["reuse"].items()},
                         rec.get("budget"), info)
    except (ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: invalid cache plan ({err})") from None
