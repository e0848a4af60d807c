"""Paired comparisons between two methods of the same seeds and clips (numpy only).

Every branch of a seed shares the warm-up, the data order and the sampling noise, so two
methods' scores are paired by (seed, clip). A metric is a pooled ratio over clips: each clip
contributes a numerator and a denominator (``den = 1`` for a plain mean; WER: word errors /
reference words; TER: token edits / reference tokens), and the method's value over a set of
(seed, clip) units is ``scale * sum(num) / sum(den)``. The difference of method ``a`` against
``b`` is ``delta = value(a) - value(b)`` on the same units, the relative difference
``100 * delta / value(b)``.

Uncertainty (:func:`compare`):

* **Hierarchical paired bootstrap.** One resample draws S seeds with replacement from the S
  seeds, then, independently for every drawn seed, that seed's clips with replacement; both
  methods are evaluated on the same drawn units, so their pairing survives. The CI is the
  percentile interval of ``delta`` (and of the relative difference) over ``n_boot`` resamples.
* **Paired permutation test** (sign flip). Under H0 the two methods' labels are exchangeable
  within every (seed, clip) pair: each resample swaps a's and b's (num, den) in every pair
  independently with probability 1/2 and recomputes ``delta``; the two-sided p-value is
  ``(1 + #{|delta*| >= |delta|}) / (1 + n_perm)`` (never 0, valid for Monte Carlo draws).

A difference is *resolved* when the CI excludes 0 and the p-value is below ``1 - level``
(:meth:`Comparison.resolved`). Both use ``numpy.random.default_rng(seed)``: the same inputs and seed give the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class PairedUnits:
    """Per seed, the paired per-clip (num, den) arrays of method a and method b: ``[n_clips_s]`` each."""

    num_a: list[np.ndarray]
    den_a: list[np.ndarray]
    num_b: list[np.ndarray]
    den_b: list[np.ndarray]

    def __post_init__(self):
        parts = (self.num_a, self.den_a, self.num_b, self.den_b)
        if not self.num_a or len({len(p) for p in parts}) != 1:
            raise ValueError("paired: need the same (non-zero) number of seeds in every array list")
        for s, arrays in enumerate(zip(*parts)):
            n = {len(np.atleast_1d(x)) for x in arrays}
            if len(n) != 1 or 0 in n:
                raise ValueError(f"paired: seed #{s} has unequal or empty clip arrays ({sorted(n)})")
        self.num_a = [np.asarray(x, np.float64) for x in self.num_a]
        self.den_a = [np.asarray(x, np.float64) for x in self.den_a]
        self.num_b = [np.asarray(x, np.float64) for x in self.num_b]
        self.den_b = [np.asarray(x, np.float64) for x in self.den_b]
        for arrays in parts:
            if not all(np.isfinite(x).all() for x in arrays):
                raise ValueError("paired: non-finite per-clip values")

    @property
    def n_seeds(self) -> int:
        return len(self.num_a)

    @property
    def n_units(self) -> int:
        return int(sum(len(x) for x in self.num_a))


@dataclass
class Comparison:
    """value(a), value(b), their difference with a bootstrap CI, the relative difference (%) with
    its CI, and the permutation p-value."""

    value_a: float
    value_b: float
    delta: float
    ci_low: float
    ci_high: float
    rel_pct: float
    rel_ci_low: float
    rel_ci_high: float
    p_value: float
    n_seeds: int
    n_units: int

    @property
    def ci_excludes_zero(self) -> bool:
        return bool(np.isfinite(self.ci_low) and np.isfinite(self.ci_high) and (self.ci_low > 0 or self.ci_high < 0))

    def resolved(self, alpha: float) -> bool:
        """The CI excludes 0 *and* the permutation p-value is below ``alpha``. With a handful of clips
        per seed the percentile bootstrap is anti-conservative (its CI can exclude 0 where the exact
        permutation test cannot reach alpha), so both must agree before a difference is called resolved."""
        return self.ci_excludes_zero and bool(np.isfinite(self.p_value) and self.p_value < alpha)


def _ratio(num: float | np.ndarray, den: float | np.ndarray, scale: float) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, scale * num / np.where(den > 0, den, 1.0), np.nan)


def pooled(num: Sequence[np.ndarray], den: Sequence[np.ndarray], scale: float = 1.0) -> float:
    """``scale * sum(num) / sum(den)`` over every seed's clips."""
    return float(_ratio(sum(float(x.sum()) for x in num), sum(float(x.sum()) for x in den), scale))


def bootstrap_sums(units: PairedUnits, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, 4] sums (num_a, den_a, num_b, den_b) of hierarchical resamples (module docstring)."""
    S = units.n_seeds
    out = np.zeros((n_boot, 4))
    stacks = [np.stack([units.num_a[s], units.den_a[s], units.num_b[s], units.den_b[s]], 1) for s in range(S)]
    draws = rng.integers(0, S, size=(n_boot, S))
    for j in range(S):
        for s in range(S):
            rows = np.flatnonzero(draws[:, j] == s)
            if rows.size == 0:
                continue
            n = stacks[s].shape[0]
            counts = rng.multinomial(n, np.full(n, 1.0 / n), size=rows.size)   # [k, n]
            out[rows] += counts @ stacks[s]
    return out


def permutation_deltas(units: PairedUnits, n_perm: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """``delta`` of ``n_perm`` sign-flip resamples (module docstring)."""
    num_a, den_a = np.concatenate(units.num_a), np.concatenate(units.den_a)
    num_b, den_b = np.concatenate(units.num_b), np.concatenate(units.den_b)
    flip = rng.random((n_perm, num_a.size)) < 0.5
    keep = ~flip
    sa = keep @ np.stack([num_a, den_a], 1) + flip @ np.stack([num_b, den_b], 1)
    sb = keep @ np.stack([num_b, den_b], 1) + flip @ np.stack([num_a, den_a], 1)
    return _ratio(sa[:, 0], sa[:, 1], scale) - _ratio(sb[:, 0], sb[:, 1], scale)


def compare(units: PairedUnits, scale: float = 1.0, n_boot: int = 2000, n_perm: int = 2000, seed: int = 0,
            level: float = 0.95) -> Comparison:
    """Paired difference a - b with its hierarchical bootstrap CI and permutation p-value."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"paired: CI level must lie in (0, 1), got {level}")
    va = pooled(units.num_a, units.den_a, scale)
    vb = pooled(units.num_b, units.den_b, scale)
    delta = va - vb
    rng = np.random.default_rng(seed)
    lo = hi = rlo = rhi = np.nan
    if n_boot > 0:
        sums = bootstrap_sums(units, int(n_boot), rng)
        a, b = _ratio(sums[:, 0], sums[:, 1], scale), _ratio(sums[:, 2], sums[:, 3], scale)
        d = a - b
        ok = np.isfinite(d)
        alpha = (1.0 - level) / 2.0
        if ok.any():
            lo, hi = np.quantile(d[ok], [alpha, 1.0 - alpha])
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = 100.0 * d / b
        ok = np.isfinite(rel)
        if ok.any():
            rlo, rhi = np.quantile(rel[ok], [alpha, 1.0 - alpha])
    p = np.nan
    if n_perm > 0:
        null = permutation_deltas(units, int(n_perm), rng, scale)
        null = null[np.isfinite(null)]
        # a tolerance so that round-off of an identical statistic still counts as "as extreme"
        tol = 1e-12 * max(1.0, abs(delta))
        p = float((1 + np.count_nonzero(np.abs(null) >= abs(delta) - tol)) / (1 + null.size))
    rel_pct = 100.0 * delta / vb if vb not in (0.0,) and np.isfinite(vb) else np.nan
    return Comparison(va, vb, float(delta), float(lo), float(hi), float(rel_pct), float(rlo), float(rhi), p,
                      units.n_seeds, units.n_units)
