"""Table L1, Figure L2 and the LSAC probe figure, from the CSVs of ``agrepa lsac-eval`` /
``agrepa lsac-probe`` (pandas + matplotlib only).

Quality loss of a variant on clip c is its mel distortion against the full-compute run,
D_v(c) = sum (x - x_full)^2 / sum x_full^2 (:mod:`agrepa.caching.quality`); the
variant's mel SNR is -10 log10 of the mean of D_v over clips. **Retention advantage** of a
cache variant = the quality loss of naive step reduction at equal FLOPs over its own::

    A_v = mean_c D_steps(c; rho_v(c)) / mean_c D_v(c)

where rho_v(c) is the variant's sampling FLOPs relative to the full run for clip c and
D_steps(c; rho) interpolates clip c's distortion linearly in rho between the step-reduction
runs S' = S .. ceil(S/2) (S' = S: rho = 1, D = 0; never extrapolated: NaN outside).
A_v > 1: the cache loses A_v times less than taking fewer steps for the same compute.
CIs: percentile bootstrap over clips (``eval.bootstrap``, ``eval.bootstrap_seed``,
``eval.ci_level``), numerator and denominator resampled together.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..evaluation import metrics

CONFIG_KEYS = ("eval.bootstrap", "eval.bootstrap_seed", "eval.ci_level")  # config sections this module reads

RUN_KEYS = ["config", "seed", "branch"]
QUALITY = [("wer", "speech"), ("fad", "speech"), ("fad", "audio"), ("ter", "speech"), ("ter", "audio")]


def read_runs(dirs: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(variants, clips) of ``agrepa lsac-eval`` output directories, concatenated."""
    var, clips = [], []
    for d in dirs:
        for name, out in (("variants.csv", var), ("clips.csv", clips)):
            path = Path(d) / name
            if not path.exists():
                raise FileNotFoundError(f"{path}: not found (run `agrepa lsac-eval` first)")
            out.append(pd.read_csv(path))
    if not clips:
        raise ValueError("no lsac-eval directories given")
    return pd.concat(var, ignore_index=True), pd.concat(clips, ignore_index=True)


def step_curve_distortion(run: pd.DataFrame) -> pd.Series:
    """For every (variant, id) of one run's clips: step reduction's distortion interpolated at the
    variant's relative FLOPs for that clip (module docstring)."""
    steps = run[run["strategy"].isin(["full", "steps"])]
    curves = {cid: (g["rel_flops"].to_numpy(float), g["mel_distortion"].to_numpy(float))
              for cid, g in steps.sort_values("rel_flops").groupby("id")}
    out = {}
    for (variant, cid), x in run.set_index(["variant", "id"])["rel_flops"].items():
        xs, ys = curves[cid]
        out[(variant, cid)] = float(np.interp(x, xs, ys)) if xs[0] <= x <= xs[-1] else math.nan
    return pd.Series(out)


def _snr(d: float) -> float:
    return math.inf if d == 0 else -10.0 * math.log10(d)


def quality_estimates(v: pd.DataFrame, d_step: np.ndarray, boot: tuple) -> dict:
    """Mel SNR and retention advantage (with CIs) of one variant's clips ``v``."""
    d = v["mel_distortion"].to_numpy(float)
    if not d.any():                                   # identical to the full run (the full run itself)
        out = {"mel_snr_db": math.inf, "mel_snr_ci_low": math.nan, "mel_snr_ci_high": math.nan}
    else:
        snr = metrics.bootstrap_ci(lambda i: _snr(float(d[i].mean())), len(d), *boot)
        out = {"mel_snr_db": snr.value, "mel_snr_ci_low": snr.ci_low, "mel_snr_ci_high": snr.ci_high}
    if v["strategy"].iloc[0] in ("full", "steps") or not np.isfinite(d_step).all():
        return out | {"retention_adv": math.nan, "retention_ci_low": math.nan, "retention_ci_high": math.nan}

    def ratio(i):
        den = float(d[i].mean())
        if den == 0:
            raise ValueError("no loss")
        return float(d_step[i].mean()) / den

    if float(d.mean()) == 0:
        return out | {"retention_adv": math.inf, "retention_ci_low": math.nan, "retention_ci_high": math.nan}
    est = metrics.bootstrap_ci(ratio, len(d), *boot)
    return out | {"retention_adv": est.value, "retention_ci_low": est.ci_low, "retention_ci_high": est.ci_high}


def _quality_columns(var: pd.DataFrame, full: pd.DataFrame) -> dict:
    out = {}
    for metric, domain in QUALITY:
        row = var[(var["metric"] == metric) & (var["domain"] == domain)]
        ref = full[(full["metric"] == metric) & (full["domain"] == domain)]
        if row.empty:
            continue
        value = float(row["value"].iloc[0])
        out[f"{metric}_{domain}"] = value
        out[f"{metric}_{domain}_ci"] = f"[{row['ci_low'].iloc[0]:.4g}, {row['ci_high'].iloc[0]:.4g}]"
        out[f"delta_{metric}_{domain}"] = value - float(ref["value"].iloc[0]) if not ref.empty else math.nan
    return out


def _timing(var: pd.DataFrame, full: pd.DataFrame, metric: str) -> tuple[float, float]:
    v = float(var.loc[var["metric"] == metric, "value"].iloc[0])
    f = float(full.loc[full["metric"] == metric, "value"].iloc[0])
    return v, 100.0 * (1.0 - v / f)


def table_l1(variants: pd.DataFrame, clips: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """Table L1: one row per (token config, seed, branch, variant) (module docstring)."""
    boot = (int(cfg["eval"]["bootstrap"]), int(cfg["eval"]["bootstrap_seed"]), float(cfg["eval"]["ci_level"]))
    rows = []
    for key, run in clips.groupby(RUN_KEYS, sort=False):
        rv = variants[(variants[RUN_KEYS] == pd.Series(key, index=RUN_KEYS)).all(axis=1)]
        d_step = step_curve_distortion(run)
        full_clips = run[run["strategy"] == "full"]
        full_var = rv[rv["variant"] == "full"]
        for name, v in run.groupby("variant", sort=False):
            var = rv[rv["variant"] == name]
            first = v.iloc[0]
            wall, wall_saved = _timing(var, full_var, "wall_s_per_clip")
            cpu, cpu_saved = _timing(var, full_var, "cpu_s_per_clip")
            row = dict(zip(RUN_KEYS, key), variant=name, strategy=first["strategy"], budget=first["budget"],
                       steps=int(first["steps"]), n_clips=len(v),
                       attn_saved_pct=100.0 * float(first["attention_savings"]),
                       gflops_per_clip=float(v["gflops"].mean()), attn_gflops_per_clip=float(v["attn_gflops"].mean()),
                       flops_saved_pct=100.0 * (1.0 - float(v["gflops"].mean()) / float(full_clips["gflops"].mean())),
                       wall_s_per_clip=wall, wall_saved_pct=wall_saved, cpu_s_per_clip=cpu, cpu_saved_pct=cpu_saved)
            row.update(quality_estimates(v, d_step.loc[list(zip(v["variant"], v["id"]))].to_numpy(float), boot))
            row.update(_quality_columns(var, full_var))
            row["quality_models"] = "; ".join(sorted(set(var["model"].dropna().astype(str)) - {
                "time.perf_counter", "time.process_time"}))
            rows.append(row)
    return pd.DataFrame(rows)


def headline(table: pd.DataFrame, budget: float) -> pd.DataFrame:
    """The LSAC rows at ``budget`` with the controls' retention advantage beside them."""
    at = table[np.isclose(table["budget"].astype(float), budget)]
    return at[["config", "seed", "branch", "variant", "attn_saved_pct", "flops_saved_pct", "wall_saved_pct",
               "cpu_saved_pct", "mel_snr_db", "retention_adv", "retention_ci_low", "retention_ci_high"]]
