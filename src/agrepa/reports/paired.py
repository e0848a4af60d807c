"""Paired comparisons between methods from the per-clip records of the evaluation JSONs.

* ``clips.csv`` (:func:`clips_frame`): one row per (token config, seed, method, domain, clip,
  metric) with the clip's numerator and denominator (:data:`PAIRED_METRICS`): a plain mean has
  ``den = 1``; WER pools word errors over reference words, TER token edits over reference tokens.
  Held-out FM loss, mel L1 and MCD are also pooled over both domains (domain ``all``).
* ``paired.csv`` (:func:`paired_frame`): for every token config, metric and domain, every method
  against ``report.table3.baseline`` and ``report.paired.focus`` (AG-REPA) against every other
  method: values, the difference with its hierarchical bootstrap CI (seeds, then clips within
  seeds), the relative difference in percent with its CI, the paired permutation p-value
  (:mod:`agrepa.evaluation.paired`), whether the difference is resolved (the CI excludes 0 and
  p < 1 - level) and, with the metric's direction, whether it is an improvement.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable

import pandas as pd

from .. import io
from ..evaluation import paired
from .tables import run_of_path

log = logging.getLogger(__name__)
CONFIG_KEYS = ("eval.ci_level", "methods", "name", "report.paired", "report.table2.methods", "report.table3.baseline")  # config sections this module reads

#: metric -> (numerator key, denominator key or None, scale, lower_is_better, label)
PAIRED_METRICS = {
    "fm_loss": ("fm_loss", None, 1.0, True, "held-out FM loss"),
    "mel_l1": ("mel_l1", None, 1.0, True, "mel L1"),
    "mcd": ("mcd", None, 1.0, True, "MCD (dB)"),
    "ter": ("ter_edits", "ter_len", 1.0, True, "TER"),
    "ter_beats": ("ter_beats_edits", "ter_beats_len", 1.0, True, "TER (BEATs stream)"),
    "wer": ("wer_errors", "wer_words", 100.0, True, "WER (%)"),
    "event_top1": ("event_top1", None, 1.0, False, "event top-1 accuracy"),
    "event_kl": ("event_kl", None, 1.0, True, "event KL"),
    "mos_ovrl": ("mos_ovrl", None, 1.0, False, "MOS (OVRL)"),
    "spk_sim": ("spk_sim", None, 1.0, False, "speaker similarity"),
}
POOLED_DOMAINS = ("fm_loss", "mel_l1", "mcd")
CLIP_COLUMNS = ["token_config", "seed", "method", "domain", "id", "metric", "num", "den"]
PAIRED_COLUMNS = ["experiment", "token_config", "method", "versus", "domain", "metric", "label", "value",
                  "value_versus", "delta", "ci_low", "ci_high", "rel_pct", "rel_ci_low", "rel_ci_high", "p_value",
                  "resolved", "improved", "lower_is_better", "n_seeds", "n_units", "ci_level"]


def _clip_rows(path, run: dict) -> list[dict]:
    data = io.read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("clips"), list):
        raise ValueError(f"{path}: an evaluation JSON needs a 'clips' list (per-clip records)")
    rows = []
    for rec in data["clips"]:
        if rec.get("input") not in ("generated", "heldout"):
            continue
        for metric, (num, den, _, _, _) in PAIRED_METRICS.items():
            if rec.get(num) is None or (den is not None and rec.get(den) is None):
                continue
            base = {**run, "id": str(rec["id"]), "metric": metric, "num": float(rec[num]),
                    "den": float(rec[den]) if den else 1.0}
            rows.append({**base, "domain": rec["domain"]})
            if metric in POOLED_DOMAINS:
                rows.append({**base, "domain": "all"})
    return rows


def clips_frame(eval_paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Per-clip numerators and denominators of every paired metric (module docstring)."""
    rows: list[dict] = []
    for p in eval_paths:
        rows += _clip_rows(p, run_of_path(p))
    return pd.DataFrame(rows, columns=CLIP_COLUMNS)


def comparison_pairs(methods: list[str], baseline: str, focus: str | None) -> list[tuple[str, str]]:
    """(method, versus): every method vs the baseline, then the focus method vs every other one."""
    pairs = [(m, baseline) for m in methods if m != baseline and baseline in methods]
    if focus in methods:
        pairs += [(focus, m) for m in methods if m not in (focus, baseline)]
    return pairs


def _units(a: pd.DataFrame, b: pd.DataFrame) -> paired.PairedUnits | None:
    """Per common seed, the clips both methods scored (inner join on id)."""
    num_a, den_a, num_b, den_b = [], [], [], []
    for seed in sorted(set(a["seed"]) & set(b["seed"])):
        j = a[a["seed"] == seed].merge(b[b["seed"] == seed], on="id", suffixes=("_a", "_b"))
        if j.empty:
            continue
        num_a.append(j["num_a"].to_numpy())
        den_a.append(j["den_a"].to_numpy())
        num_b.append(j["num_b"].to_numpy())
        den_b.append(j["den_b"].to_numpy())
    return paired.PairedUnits(num_a, den_a, num_b, den_b) if num_a else None


def compare_clips(a: pd.DataFrame, b: pd.DataFrame, metric: str, cfg: dict,
                  level: float) -> paired.Comparison | None:
    """Method ``a`` against ``b`` on one metric from their :func:`clips_frame` rows (one domain):
    paired by seed and clip, ``report.paired`` resamples; None when no clip is shared."""
    units = _units(a, b)
    if units is None:
        return None
    pc = cfg["report"]["paired"]
    return paired.compare(units, PAIRED_METRICS[metric][2], int(pc["bootstrap"]), int(pc["permutations"]),
                          int(pc["seed"]), level)


def paired_frame(clips: pd.DataFrame, cfg: dict, level: float | None = None) -> pd.DataFrame:
    """Every comparison of :func:`comparison_pairs` for every token config, metric and domain."""
    pc = cfg["report"]["paired"]
    level = float(cfg["eval"]["ci_level"] if level is None else level)
    baseline = cfg["report"]["table3"]["baseline"]
    order = list(cfg["report"]["table2"]["methods"]) + list(cfg["methods"])
    rows = []
    for (tc, metric, domain), g in clips.groupby(["token_config", "metric", "domain"], sort=False):
        methods = [m for m in dict.fromkeys(order) if m in set(g["method"])]
        _, _, _, lower, label = PAIRED_METRICS[metric]
        for method, versus in comparison_pairs(methods, baseline, pc["focus"]):
            c = compare_clips(g[g["method"] == method], g[g["method"] == versus], metric, cfg, level)
            if c is None:
                continue
            resolved = c.resolved(1.0 - level)
            improved = (bool(c.delta < 0) if lower else bool(c.delta > 0)) if resolved else None
            rows.append({"experiment": cfg["name"], "token_config": tc, "method": method, "versus": versus,
                         "domain": domain, "metric": metric, "label": label, "value": c.value_a,
                         "value_versus": c.value_b, "delta": c.delta, "ci_low": c.ci_low, "ci_high": c.ci_high,
                         "rel_pct": c.rel_pct, "rel_ci_low": c.rel_ci_low, "rel_ci_high": c.rel_ci_high,
                         "p_value": c.p_value, "resolved": resolved, "improved": improved,
                         "lower_is_better": lower, "n_seeds": c.n_seeds, "n_units": c.n_units, "ci_level": level})
    log.info("%d paired comparisons", len(rows))
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def read_paired(path: str | os.PathLike) -> pd.DataFrame:
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: paired comparisons CSV not found (run `agrepa report paired`)")
    df = pd.read_csv(path, dtype={"token_config": str})
    missing = [c for c in PAIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    return df
