"""Layer-selective attention caching (LSAC, seed 004) and its controls, as cache plans.

From the probe's relative change of each layer's attention output between
consecutive ODE steps, r_l(i) = ||y_l^i - y_l^{i-1}|| / ||y_l^{i-1}|| (i = 1..S-1;
:mod:`agrepa.caching.probe`), aggregated as the MAX over domains and CFG
halves of the per-clip mean (a layer counts as converged only where it has
converged for both domains and both halves):

* **stable-from step** k_l(tau) = the first step k >= 1 after which r_l stays below
  tau (r_l(i) < tau for every i >= k); S when there is none (never reused);
* **LSAC plan**: layer l reuses its stored y_l at every step i >= k_l, except a
  refresh every R steps (recompute at i with (i - k_l + 1) % R == 0; R = None: never);
* **tau by bisection** so that the plan saves at least a fraction ``budget`` of the
  sampler's attention FLOPs: the smallest tau (to 1e-12 relative) whose plan reaches
  the budget; the saving is a step function of tau, so the plan records what it
  actually saves (``attention_savings``).

Ours, from the probe's causal freezing instead of the convergence proxy:

* ``causal``: every layer l gets a freeze step k_l from the probe's freeze grid, or none;
  it computes y_l up to step k_l and reuses y_l^{k_l} at every later step (exactly the
  probed freeze). With D_l(k) = 10^(-SNR/10) the measured mel distortion of freezing layer l
  from k alone (the max over domains), the plan minimises sum_l D_l(k_l) subject to saving at
  least ``budget`` of the attention (cells S - 1 - k_l per layer): a Lagrange multiplier
  lam is bisected, and each layer picks argmin_k D_l(k) - lam (S - 1 - k) (none: 0).
  Summing single-layer distortions assumes their errors add; Table L1 checks it.

Controls at the same budget (the same number of reused attention cells N as the
LSAC plan, or the nearest whole number of steps):

* ``random``: LSAC's per-layer schedules handed to a random permutation of the layers
  (``numpy.random.default_rng(seed)``): same cells, same step pattern, layers not chosen;
* ``pab`` (pyramid-attention-broadcast style, non-selective): EVERY layer reuses its
  attention output on alternate steps S-2, S-4, ... (n = max(1, round(N / L)) steps);
* ``deepcache`` (DeepCache / FORA style): whole-block reuse (attention AND MLP output)
  of every layer at the same alternate steps.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from ..config import CACHE_STRATEGIES
from .plan import CachePlan

log = logging.getLogger(__name__)

CONFIG_KEYS = ("lsac.budgets", "lsac.refresh", "lsac.strategies", "sample.steps")  # config sections this module reads

CHANGE_METRICS = ("rel_change_cond", "rel_change_uncond")


def change_matrix(probe: pd.DataFrame, source: str = "lsac probe") -> np.ndarray:
    """r [L, S] (column i = step i; column 0 is NaN) from a probe CSV's relative-change rows:
    the max over domains and CFG halves (module docstring)."""
    rows = probe[probe["metric"].isin(CHANGE_METRICS)]
    if rows.empty:
        raise ValueError(f"{source}: no {CHANGE_METRICS} rows")
    L, S = int(rows["layer"].max()), int(rows["step"].max()) + 1
    table = rows.groupby(["layer", "step"])["score"].max()
    r = np.full((L, S), np.nan)
    for (layer, step), score in table.items():
        r[int(layer) - 1, int(step)] = float(score)
    missing = np.argwhere(np.isnan(r[:, 1:]))
    if len(missing):
        l, i = missing[0]
        raise ValueError(f"{source}: no relative change for layer {l + 1} at step {i + 1}")
    if not np.isfinite(r[:, 1:]).all() or (r[:, 1:] < 0).any():
        raise ValueError(f"{source}: relative changes must be finite and >= 0")
    return r


def stable_from(r_layer: np.ndarray, tau: float) -> int:
    """First k >= 1 with r(i) < tau for all i >= k (r_layer[0] is ignored); len(r_layer) if none."""
    S = len(r_layer)
    k = S
    for i in range(S - 1, 0, -1):
        if not r_layer[i] < tau:
            break
        k = i
    return k


def reuse_steps(k: int, steps: int, refresh: int | None) -> list[int]:
    """Steps at which a layer stable from k reuses its output (refresh every R steps)."""
    if refresh is not None and refresh < 2:
        raise ValueError(f"config key lsac.refresh: must be >= 2 or null, got {refresh}")
    return [i for i in range(max(k, 1), steps) if refresh is None or (i - k + 1) % refresh]


def _lsac_reuse(r: np.ndarray, tau: float, refresh: int | None) -> tuple[dict, dict]:
    S = r.shape[1]
    ks = {l + 1: stable_from(r[l], tau) for l in range(r.shape[0])}
    return {l: reuse_steps(k, S, refresh) for l, k in ks.items()}, ks


def lsac_plan(r: np.ndarray, budget: float, refresh: int | None = None, name: str | None = None) -> CachePlan:
    """The LSAC plan whose attention saving first reaches ``budget`` (tau by bisection)."""
    if not 0.0 < budget < 1.0:
        raise ValueError(f"config key lsac.budgets: a budget must lie in (0, 1), got {budget}")
    L, S = r.shape

    def savings(tau):
        return sum(len(s) for s in _lsac_reuse(r, tau, refresh)[0].values()) / (S * L)

    lo, hi = 0.0, float(np.nanmax(r[:, 1:])) * 2.0 + 1e-12
    if savings(hi) < budget:
        log.warning("budget %.3f is out of reach (at most %.3f of the attention can be reused); "
                    "every layer is reused from step 1", budget, savings(hi))
    else:
        while hi - lo > 1e-12 * max(hi, 1e-30):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if savings(mid) >= budget else (mid, hi)
    reuse, ks = _lsac_reuse(r, hi, refresh)
    return CachePlan(name or f"lsac_f{budget:g}", "lsac", S, L, {"attn": reuse}, budget,
                     {"tau": hi, "refresh": refresh, "stable_from": {str(l): k for l, k in ks.items()}})


def freeze_distortion(probe: pd.DataFrame, source: str = "lsac probe") -> dict[int, dict[int, float]]:
    """{layer: {freeze step k: D}} from the probe's ``freeze_mel_snr`` rows, D = 10^(-SNR/10), the
    max over domains."""
    rows = probe[probe["metric"] == "freeze_mel_snr"]
    if rows.empty:
        raise ValueError(f"{source}: no freeze_mel_snr rows (the causal strategy needs causal freezing)")
    snr = rows.groupby(["layer", "step"])["score"].min()             # worst domain
    out: dict[int, dict[int, float]] = {}
    for (layer, k), v in snr.items():
        out.setdefault(int(layer), {})[int(k)] = 0.0 if math.isinf(v) and v > 0 else 10.0 ** (-float(v) / 10.0)
    return out


def _causal_choice(freeze: dict, steps: int, lam: float) -> dict[int, int | None]:
    choice = {}
    for layer, options in freeze.items():
        best, best_k = 0.0, None                                     # no reuse: cost 0
        for k, d in sorted(options.items()):
            value = d - lam * (steps - 1 - k)
            if value < best:
                best, best_k = value, k
        choice[layer] = best_k
    return choice


def causal_plan(freeze: dict[int, dict[int, float]], steps: int, n_layers: int, budget: float) -> CachePlan:
    """The ``causal`` plan (module docstring): freeze steps by a bisected Lagrange multiplier."""
    target = budget * steps * n_layers

    def cells(lam):
        return sum(steps - 1 - k for k in _causal_choice(freeze, steps, lam).values() if k is not None)

    lo, hi = 0.0, 1.0
    while cells(hi) < target and hi < 1e12:
        hi *= 2.0
    if cells(hi) < target:
        log.warning("causal plan: budget %.3f is out of reach with the probed freeze steps", budget)
    else:
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if cells(mid) >= target else (mid, hi)
    choice = _causal_choice(freeze, steps, hi)
    reuse = {l: list(range(k + 1, steps)) for l, k in choice.items() if k is not None}
    return CachePlan(f"causal_f{budget:g}", "causal", steps, n_layers, {"attn": reuse}, budget,
                     {"lambda": hi, "freeze_from": {str(l): k for l, k in sorted(choice.items())},
                      "predicted_distortion": sum(freeze[l][k] for l, k in choice.items() if k is not None)})


def random_plan(lsac: CachePlan, seed: int) -> CachePlan:
    """LSAC's per-layer schedules on a random permutation of the layers."""
    perm = np.random.default_rng(int(seed)).permutation(lsac.n_layers) + 1
    schedules = lsac.reuse.get("attn", {})
    reuse = {int(perm[l - 1]): schedules.get(l, []) for l in range(1, lsac.n_layers + 1)}
    return CachePlan(f"random_f{lsac.budget:g}", "random", lsac.steps, lsac.n_layers, {"attn": reuse}, lsac.budget,
                     {"seed": int(seed), "permutation": [int(p) for p in perm]})


def alternate_plan(strategy: str, steps: int, n_layers: int, cells: int, budget: float) -> CachePlan:
    """``pab`` (attention) or ``deepcache`` (attention + MLP) reuse by every layer on alternate
    steps S-2, S-4, ... for max(1, round(cells / L)) steps."""
    if strategy not in ("pab", "deepcache"):
        raise ValueError(f"unknown alternate-step strategy {strategy!r}")
    available = list(range(steps - 2, 0, -2))
    n = min(max(1, int(math.floor(cells / n_layers + 0.5))), len(available))
    chosen = sorted(available[:n])
    layers = {l: chosen for l in range(1, n_layers + 1)}
    reuse = {"attn": layers} if strategy == "pab" else {"attn": layers, "mlp": layers}
    return CachePlan(f"{strategy}_f{budget:g}", strategy, steps, n_layers, reuse, budget, {"reuse_steps": chosen})


def select_plans(cfg: dict, probe: pd.DataFrame, seed: int, source: str = "lsac probe") -> list[CachePlan]:
    """Every plan of ``lsac.strategies`` at every budget of ``lsac.budgets`` from one probe's rows."""
    strategies, refresh = cfg["lsac"]["strategies"], cfg["lsac"]["refresh"]
    r = change_matrix(probe, source)
    if r.shape[1] != int(cfg["sample"]["steps"]):
        raise ValueError(f"{source}: probed {r.shape[1]} steps but sample.steps is {cfg['sample']['steps']}")
    freeze = freeze_distortion(probe, source) if "causal" in strategies else None
    plans = []
    for budget in cfg["lsac"]["budgets"]:
        plans += plans_for_budget(r, float(budget), refresh, strategies, seed, freeze)
    for plan in plans:
        plan.info["source"] = source
    return plans


def plans_for_budget(r: np.ndarray, budget: float, refresh: int | None, strategies, seed: int,
                     freeze: dict | None = None) -> list[CachePlan]:
    """LSAC at ``budget``, the causal plan (needs ``freeze``) and the controls matched to LSAC's
    reused attention cells."""
    unknown = [s for s in strategies if s not in CACHE_STRATEGIES]
    if unknown:
        raise ValueError(f"config key lsac.strategies: unknown {unknown} (choose from {CACHE_STRATEGIES})")
    lsac = lsac_plan(r, budget, refresh)
    out = [lsac] if "lsac" in strategies else []
    for s in strategies:
        if s == "causal":
            if freeze is None:
                raise ValueError("the causal strategy needs the probe's freeze_mel_snr rows")
            out.append(causal_plan(freeze, lsac.steps, lsac.n_layers, budget))
        elif s == "random":
            out.append(random_plan(lsac, seed))
        elif s in ("pab", "deepcache"):
            out.append(alternate_plan(s, lsac.steps, lsac.n_layers, lsac.cells()["attn"], budget))
    return out
