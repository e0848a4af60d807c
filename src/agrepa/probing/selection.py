"""Layer selection from probe scores (paper, Sec. 4.4, Eqs. 10-11; Table 3's strategies).

Per domain (speech, audio) and merged, a per-layer score s_l (blocks l = 1..L only; the
input interface is never selected):

* ``foga``: FoG-A of the domain (merged: mean of the two domains), averaged over the t grid
  or at one t (``selection.foga_t``: ``all`` or a t value that is in the probe grid);
* ``lasp``: Cos-SEM for speech, Cos-EVT for audio (the domain's LASP rows, mean over t);
  merged: the mean of the two;
* ``gradnorm``: the domain's gradient norm (merged: mean over the domains);
* ``random``: K layers drawn without replacement by ``numpy.random.default_rng``, seeded
  by the run seed (merged) or (seed, domain index) (per domain).

Top-K (Eq. 10): the K largest scores; ties go to the lower layer index. Weights
(Eq. 11): alpha_l = s_l / sum_{j in top-K} s_j. Rule for non-positive scores
(possible for LASP cosines): weights use max(s_l, 0); if every selected score
is <= 0 the weights are uniform (1/K). A non-finite score is an error. The
random strategy always has uniform weights. Training scales these weights
(``train.repa_weighting``, :func:`agrepa.training.objectives.method_plan`).

Output JSON: ``{"strategy", "k", "mode" (selection.mode: which sets training uses),
"sets": {"speech" | "audio" | "merged": {"layers" (1-based, by score descending; a random
draw in ascending order), "weights" (aligned with "layers", sum 1), "scores" ({"1": s_1,
..., "L": s_L}; empty for random)}}, "seed", "source", "config", "foga_t", "weight_rule"}``.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from ..config import DOMAINS, STRATEGIES

log = logging.getLogger(__name__)

WEIGHT_RULE = "alpha_l = max(s_l,0) / sum over top-K; uniform if all selected s_l <= 0"


def _one_run(df: pd.DataFrame, source: str) -> pd.DataFrame:
    runs = df[["config", "seed"]].drop_duplicates()
    if len(runs) > 1:
        raise ValueError(f"{source}: holds {len(runs)} (config, seed) runs; selection needs the probes "
                         f"of one run")
    return df


def n_layers_of(df: pd.DataFrame, source: str = "probes") -> int:
    """L, the number of blocks, from the layers the probes CSV covers (1..L)."""
    layers = df.loc[df["layer"] >= 1, "layer"]
    if layers.empty:
        raise ValueError(f"{source}: no rows with layer >= 1")
    L = int(layers.max())
    if sorted(set(layers.astype(int))) != list(range(1, L + 1)):
        raise ValueError(f"{source}: layers are not a contiguous range 1..{L}")
    return L


def layer_scores(df: pd.DataFrame, strategy: str, foga_t="all", source: str = "probes",
                 domain: str | None = None) -> pd.Series:
    """Per-layer score s_l (index 1..L) of ``strategy`` from a probes DataFrame (see module doc):
    of ``domain``, or the mean over the domains (None)."""
    if strategy not in ("foga", "lasp", "gradnorm"):
        raise ValueError(f"no probe scores for strategy {strategy!r}; choose from foga, lasp, gradnorm")
    rows = df[(df["probe"] == strategy) & (df["layer"] >= 1)]
    if rows.empty:
        raise ValueError(f"{source}: no {strategy} rows")
    if strategy == "foga" and str(foga_t) != "all":
        t = float(foga_t)
        grid = sorted(rows["t"].unique())
        hit = [g for g in grid if math.isclose(g, t, abs_tol=1e-9)]
        if not hit:
            raise ValueError(f"config key 'selection.foga_t': t={t} is not in the probe grid {grid} of {source}")
        rows = rows[np.isclose(rows["t"], hit[0], atol=1e-9)]
    per_domain = rows.groupby(["domain", "layer"])["score"].mean()        # mean over t
    if domain is None:
        scores = per_domain.groupby("layer").mean()                       # then over domains
    elif domain in per_domain.index.get_level_values("domain"):
        scores = per_domain.loc[domain]
    else:
        raise ValueError(f"{source}: no {strategy} rows for domain {domain!r}")
    scores.index = scores.index.astype(int)
    bad = scores[~np.isfinite(scores.to_numpy())]
    if len(bad):
        raise ValueError(f"{source}: non-finite {strategy} score at layer(s) {list(bad.index)}")
    return scores.sort_index()


def top_k(scores: pd.Series, k: int) -> list[int]:
    """The K layers with the highest scores, by score descending; ties -> lower layer first."""
    L = len(scores)
    if not 1 <= k <= L:
        raise ValueError(f"K={k} must satisfy 1 <= K <= L={L}")
    order = sorted(scores.index, key=lambda l: (-float(scores[l]), int(l)))
    return [int(l) for l in order[:k]]


def weights_from_scores(selected: list[float]) -> list[float]:
    """alpha_l = max(s_l, 0) / sum_j max(s_j, 0) (Eq. 11); uniform if that sum is 0."""
    s = np.clip(np.asarray(selected, dtype=np.float64), 0.0, None)
    total = s.sum()
    if total <= 0:
        log.warning("all selected scores are <= 0; using uniform weights")
        return [1.0 / len(s)] * len(s)
    return (s / total).tolist()


def random_layers(n_layers: int, k: int, seed: int, stream: int | None = None) -> list[int]:
    """K distinct layers from 1..L drawn with ``numpy.random.default_rng(seed)`` (or
    ``default_rng([seed, stream])``: one stream per domain), ascending."""
    if not 1 <= k <= n_layers:
        raise ValueError(f"K={k} must satisfy 1 <= K <= L={n_layers}")
    rng = np.random.default_rng(int(seed) if stream is None else [int(seed), int(stream)])
    return sorted(int(l) + 1 for l in rng.choice(n_layers, size=k, replace=False))


def select(df: pd.DataFrame, strategy: str, k: int, seed: int, foga_t="all", source: str = "probes",
           mode: str = "per_domain") -> dict:
    """The selection record (see module doc) for one run's probes DataFrame."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
    if mode not in ("per_domain", "merged"):
        raise ValueError(f"config key 'selection.mode': expected per_domain or merged, got {mode!r}")
    df = _one_run(df, source)
    L = n_layers_of(df, source)
    if not 1 <= k <= L:
        raise ValueError(f"K={k} must satisfy 1 <= K <= L={L} ({source})")
    config_name = str(df["config"].iloc[0]) if len(df) else ""
    sets = {key: one_set(df, strategy, k, seed, foga_t, source, L, None if key == "merged" else key)
            for key in (*DOMAINS, "merged")}
    return {"strategy": strategy, "k": int(k), "mode": mode, "sets": sets, "seed": int(seed), "source": str(source),
            "config": config_name, "foga_t": str(foga_t) if strategy == "foga" else None, "weight_rule": WEIGHT_RULE}


def one_set(df: pd.DataFrame, strategy: str, k: int, seed: int, foga_t, source: str, L: int,
            domain: str | None) -> dict:
    """``{"layers", "weights", "scores"}`` of one domain (None: merged)."""
    if strategy == "random":
        layers = random_layers(L, k, seed, None if domain is None else DOMAINS.index(domain))
        return {"layers": layers, "weights": [1.0 / k] * k, "scores": {}}
    scores = layer_scores(df, strategy, foga_t, source, domain)
    if list(scores.index) != list(range(1, L + 1)):
        raise ValueError(f"{source}: {strategy} scores cover layers {list(scores.index)}, expected 1..{L}")
    layers = top_k(scores, k)
    return {"layers": layers, "weights": weights_from_scores([float(scores[l]) for l in layers]),
            "scores": {str(l): float(v) for l, v in scores.items()}}
