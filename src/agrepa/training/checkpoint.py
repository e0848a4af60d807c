"""Training-state helpers: exponential moving average of weights and RNG states.

Everything here is stored as tensors and plain Python (lists, dicts, numbers,
strings), so a checkpoint loads with ``torch.load(path, weights_only=True)``.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn


class EMA:
    """Exponential moving average of parameters: ``e <- decay * e + (1 - decay) * p``.

    Tracks several named modules (``{"model": dit, "bitc": heads}``). Its state dict
    is, per module, that module's full ``state_dict`` with the parameters replaced by
    their averages, so it loads straight into a fresh module.
    """

    def __init__(self, modules: dict[str, nn.Module], decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.ema_decay: must lie in [0, 1), got {decay}")
        self.modules, self.decay = modules, float(decay)
        self.shadow = {k: {n: p.detach().clone() for n, p in m.named_parameters()}
                       for k, m in modules.items()}

    @torch.no_grad()
    def update(self) -> None:
        for k, m in self.modules.items():
            params = dict(m.named_parameters())
            shadows = list(self.shadow[k].values())
            if shadows:
                torch._foreach_lerp_(shadows, [params[n].detach() for n in self.shadow[k]], 1.0 - self.decay)

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
