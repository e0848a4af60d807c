"""Reuse of block features across ODE solver steps (layer-selective caching, seed 004).

A :class:`StepCache` rides in a forward pass's context. A block asks it for each
cacheable feature by ``(kind, layer)``:

* ``"attn"``: the self-attention output y_l (after the output projection, BEFORE the
  adaLN gate, as Learning-to-Cache stores it), so a reused y_l is multiplied by the
  current step's gate;
* ``"mlp"``: the MLP output, before its gate (whole-block reuse = both kinds).

At solver step ``step`` (set by the sampler before each function evaluation) the cache
returns the stored value of ``(kind, layer)`` when the plan reuses it at that step;
otherwise it computes it, keeps it (when a later step may reuse it, or ``keep`` names
it) and passes it to ``observe(kind, layer, step, value)``. A stored value is the whole
batch tensor, so each row (each clip, each CFG half) only ever gets back its own row:
the cache is per row, whatever else shares the batch. One cache serves one batch.
"""
from __future__ import annotations

from typing import Callable, Collection, Iterable, Mapping

Key = tuple[str, int]            # (kind, 1-based layer)
KINDS = ("attn", "mlp")


class StepCache:
    """Store / reuse of ``(kind, layer)`` features by solver step (module docstring)."""

    def __init__(self, reuse: Mapping[Key, Collection[int]] | None = None, keep: Iterable[Key] = (),
                 observe: Callable | None = None):
        self.reuse = {key: frozenset(int(s) for s in steps) for key, steps in (reuse or {}).items()}
        bad = [key for key in list(self.reuse) + list(keep) if key[0] not in KINDS]
        if bad:
            raise ValueError(f"cache keys must have a kind in {KINDS}, got {bad}")
        self.keep = set(self.reuse) | set(keep)
        self.observe = observe
        self.step = 0
        self.stored: dict[Key, object] = {}

    def __call__(self, kind: str, layer: int, compute: Callable):
        key = (kind, layer)
        if self.step in self.reuse.get(key, ()):
            if key not in self.stored:
                raise RuntimeError(f"step {self.step}: no stored {kind} output of layer {layer} to reuse "
                                   f"(a plan may not reuse before the first computed step)")
            return self.stored[key]
        value = compute()
        if key in self.keep:
            self.stored[key] = value
        if self.observe is not None:
            self.observe(kind, layer, self.step, value)
        return value
