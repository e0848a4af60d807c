"""``results/summary.md``: what the tables show, in plain words, generated from the CSVs only.

Sections: the setup (experiment, token configs, seeds, clips, models), then per token config
which paired differences against the baseline the metrics resolve (95 % CI excludes 0) and which
they do not, AG-REPA against every other row, the ground-truth floor (the reference row), and the
caveats the metric notes carry (rank-deficient FAD, FAD∞ left out). Every sentence is built from
``paired.csv``, ``metrics.csv`` and ``table2.csv``/``table3.csv`` values; nothing is typed in.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..config import DOMAINS

from .paired import PAIRED_METRICS
from .tables import REFERENCE_METHOD, fmt_rel, method_label

CONFIG_KEYS = ("eval.ci_level", "methods", "name", "report.paired", "report.table3.baseline", "token_configs")  # config sections this module reads


def _label(cfg: dict, method: str) -> str:
    return method_label(method, cfg["methods"][method]) if method in cfg["methods"] else method


def _sentence(r, cfg: dict) -> str:
    """"AG-REPA vs baseline: held-out FM loss -3.1 % [-4.0, -2.2] (p = 0.002), 3 seeds x 64 clips"."""
    what = f"{r['label']}" + ("" if r["domain"] == "all" else f" ({r['domain']})")
    verdict = {"True": "better", "False": "worse"}.get(str(r["improved"]), "not resolved")
    per_seed = int(round(r["n_units"] / max(1, r["n_seeds"])))
    return (f"{_label(cfg, r['method'])} vs {_label(cfg, r['versus'])}: {what} {fmt_rel(r)} "
            f"(Δ {r['delta']:+.4g}, p = {r['p_value']:.3g}), {int(r['n_seeds'])} seeds × {per_seed} clips — {verdict}")


def _comparisons(paired: pd.DataFrame, tc: str, cfg: dict, focus_first: bool) -> list[str]:
    base = cfg["report"]["table3"]["baseline"]
    focus = cfg["report"]["paired"]["focus"]
    sel = paired[paired["token_config"].astype(str) == str(tc)]
    sel = sel[sel["versus"] == base] if not focus_first else sel[(sel["method"] == focus) & (sel["versus"] != base)]
    if sel.empty:
        return ["- (no comparisons)"]
    order = {m: i for i, m in enumerate(PAIRED_METRICS)}
    sel = sel.assign(_o=sel["metric"].map(order)).sort_values(["method", "versus", "_o", "domain"])
    resolved = [f"- {_sentence(r, cfg)}" for _, r in sel.iterrows() if bool(r["resolved"])]
    unresolved = sel[~sel["resolved"].astype(bool)]
    lines = resolved or ["- none of the differences is resolved (CI excluding 0 and permutation p below 1 - CI level)"]
    if len(unresolved):
        by_method = unresolved.groupby(["method", "versus"])
        lines.append("- not resolved: " + "; ".join(
            f"{_label(cfg, m)} vs {_label(cfg, v)}: " + ", ".join(
                sorted({g_r['label'] + ('' if g_r['domain'] == 'all' else f' ({g_r["domain"]})')
                        for _, g_r in g.iterrows()})) for (m, v), g in by_method))
    return lines


def _floor(metrics: pd.DataFrame) -> list[str]:
    ref = metrics[(metrics["method"] == REFERENCE_METHOD) & metrics["value"].notna()]
    picks = [("speech", "wer", "WER of the vocoded ground truth (%)"), ("speech", "wer_gt", "WER of the raw ground truth (%)"),
             ("speech", "ter", "speech TER of the vocoded ground truth"), ("audio", "ter", "audio TER of the vocoded ground truth"),
             ("speech", "fad", "speech FAD of the vocoded ground truth"), ("audio", "fad", "audio FAD of the vocoded ground truth"),
             ("audio", "event_top1_gt", "event top-1 accuracy of the classifier on the raw ground truth")]
    out = []
    for domain, metric, text in picks:
        v = ref[(ref["domain"] == domain) & (ref["metric"] == metric)]
        if len(v):
            r = v.iloc[0]
            ci = f" [{r['ci_low']:.3g}, {r['ci_high']:.3g}]" if np.isfinite(r["ci_low"]) else ""
            out.append(f"- {text}: {r['value']:.3g}{ci} (n = {int(r['n'])})")
    return out or ["- (no reference evaluation)"]


def _caveats(metrics: pd.DataFrame) -> list[str]:
    from ..evaluation.evaluate import LOW_RANK

    runs = metrics[metrics["method"] != REFERENCE_METHOD]
    out = []
    fad = runs[runs["metric"] == "fad"]
    low = fad[fad["note"].astype(str).str.startswith(LOW_RANK)]
    if len(low):
        out.append(f"- FAD: {len(low)} of {len(fad)} FAD values come from fewer embedding rows than embedding "
                   f"dimensions ({low['note'].iloc[0][len(LOW_RANK):].strip()}); marked † in the tables.")
    inf = runs[runs["metric"] == "fad_inf"]
    left = inf[inf["value"].isna()]
    if len(inf):
        out.append(f"- FAD∞: {len(left)} of {len(inf)} values left out because the extrapolation fit is not "
                   f"meaningful (the R² is in each note of metrics.csv).")
    return out or ["- none"]


def summary_markdown(paired: pd.DataFrame, metrics: pd.DataFrame, cfg: dict) -> str:
    """The text of ``summary.md`` (module docstring)."""
    runs = metrics[metrics["method"] != REFERENCE_METHOD]
    seeds = sorted(int(s) for s in runs["seed"].dropna().unique())
    tcs = [tc for tc in cfg["token_configs"] if tc in set(runs["token_config"].astype(str))]
    level = int(round(100 * float(cfg["eval"]["ci_level"])))
    n = {d: int(runs[(runs["domain"] == d) & (runs["metric"] == "fad")]["n"].max()) if len(runs) else 0
         for d in DOMAINS}
    models = sorted({m for m in runs["model"].dropna().astype(str) if m})
    lines = [f"# Results summary: {cfg['name']}", "",
             f"Token configs {', '.join(tcs)}; seeds {', '.join(map(str, seeds))}; test clips per seed: "
             f"speech {n['speech']}, audio {n['audio']}. Differences are paired by seed and clip: every method "
             f"of a seed shares the warm-up, the data order and the sampling noise. Each difference carries a "
             f"{level} % CI from a bootstrap that resamples seeds and, within each, clips "
             f"({cfg['report']['paired']['bootstrap']} resamples), and the p-value of a paired sign-flip "
             f"permutation test ({cfg['report']['paired']['permutations']} permutations). Relative differences are "
             f"in % of the other method's value. A difference is resolved when its CI excludes 0 and its p-value "
             f"is below {1 - float(cfg['eval']['ci_level']):.2g}; \"better\" follows each metric's direction.", ""]
    for tc in tcs:
        lines += [f"## Config {tc}: every method vs the baseline", ""] + _comparisons(paired, tc, cfg, False) + [""]
        if cfg["report"]["paired"]["focus"]:
            lines += [f"## Config {tc}: {_label(cfg, cfg['report']['paired']['focus'])} vs every other row", ""]
            lines += _comparisons(paired, tc, cfg, True) + [""]
    lines += ["## The floor (reference row: the test clips' ground truth through the same pipeline)", ""]
    lines += _floor(metrics) + ["", "## Caveats", ""] + _caveats(metrics)
    lines += ["", "Models: " + "; ".join(models[:12]) + ("; ..." if len(models) > 12 else ""), ""]
    return "\n".join(lines)
