"""Seed 003's tables and figure (representation-similarity regularisation, ``report.rr``),
from the workflow's CSV/JSON only (no torch).

* **Table R1** (:func:`table_r1`): one row per (token config, method of ``report.rr.r1``),
  then the ground-truth floor. Per column of ``report.rr.columns``: mean ± std over the seeds,
  and the paired difference against ``report.rr.baseline`` -- every branch of a seed shares
  the warm-up, the data order, the CFG coin and the sampling noise, so methods are paired by
  seed: ``delta_s = x_method,s - x_baseline,s``, its mean and a Student-t interval over the
  seeds (``eval.ci_level``; none with one seed). The floor's RSA is ``rsa_gt`` (the ground-truth
  audio of the same clips against the same conditioning similarities).
* **Table R2** (:func:`table_r2`): ``report.rr.r2``'s methods, each with its effective lambda
  and CFG rate (``train.cfg_drop_tokens`` of its branch), and the same columns: one seed gives
  the value with its bootstrap CI from the evaluation, several the mean ± std.
* **Figure R3** (:func:`figure_r3_frame`, :func:`figure_r3`): ``report.rr.r3.metrics`` against
  the sampling CFG scale for ``report.rr.r3.methods`` (the scale each evaluation was sampled
  with, from its ``sample_meta``).

CLAP (text-audio agreement in the paper) cannot be computed here: the conditioning is discrete
tokens, not captions; the RSA column measures the agreement RR optimises instead.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from .. import config as config_mod
from .. import io
from .tables import REFERENCE_METHOD, _join_unique, _slug, fmt_mean_std, mean_std, method_label, read_eval

CONFIG_KEYS = ("report.rr", "report.decimals", "report.figures", "name", "eval.ci_level", "methods", "rr",
               "seeds", "token_configs", "train.cfg_mode", "train.cfg_drop_tokens")  # config sections this module reads

log = logging.getLogger(__name__)

CLAP_NOTE = "CLAP not computed: the conditioning is discrete tokens, not captions (RSA measures what RR optimises)"
R3_COLUMNS = ["token_config", "seed", "method", "scale", "label", "domain", "metric", "value", "ci_low", "ci_high",
              "n", "model", "note"]


# -- a method's effective settings ------------------------------------------------------------

def branch_settings(cfg: dict, method: str) -> dict:
    """cfg_mode, CFG rate and RR settings (None: off) of ``method``'s branch, from its catalogue entry
    over ``train`` and ``rr`` (as :mod:`agrepa.training.similarity` merges them)."""
    spec = cfg["methods"][method]
    over = spec["train"] if "train" in spec else {}
    train = {k: over[k] if k in over else cfg["train"][k] for k in ("cfg_mode", "cfg_drop_tokens")}
    rr = {**cfg["rr"], **(spec["rr"] or {})} if "rr" in spec else None
    return {**train, "rr": rr}


def rr_label(cfg: dict, method: str) -> str:
    """``Baseline``, ``RR-max``, ``RR-max (every step)``, ``AG-REPA + RR-max``, ``RR-max λ=1, CFG 5%``..."""
    spec, s = cfg["methods"][method], branch_settings(cfg, method)
    base = "" if "layers" in spec and not spec["layers"] else method_label(method, spec).replace(" (FoG-A top-k)", "")
    if s["rr"] is None:
        return base or "Baseline"
    rr = f"RR-{s['rr']['pool']}" + (" (every step)" if s["rr"]["when"] == "always" else "")
    return f"{base} + {rr}" if base else rr


def paired_delta(a: dict, b: dict, level: float) -> tuple[float, float, float, int]:
    """Mean over the common seeds of a[s] - b[s] and its Student-t interval (NaN below 2 seeds)."""
    d = np.asarray([a[s] - b[s] for s in sorted(set(a) & set(b)) if np.isfinite(a[s]) and np.isfinite(b[s])])
    if d.size == 0:
        return math.nan, math.nan, math.nan, 0
    if d.size < 2:
        return float(d.mean()), math.nan, math.nan, 1
    half = float(stats.t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return float(d.mean()), float(d.mean()) - half, float(d.mean()) + half, int(d.size)


def fmt_delta(mean: float, lo: float, hi: float, decimals: int) -> str:
    if not np.isfinite(mean):
        return "n/a"
    if not np.isfinite(lo):
        return f"{mean:+.{decimals}f}"
    mark = " *" if lo > 0 or hi < 0 else ""          # the interval excludes 0
    return f"{mean:+.{decimals}f} [{lo:+.{decimals}f}, {hi:+.{decimals}f}]{mark}"


def _per_seed(run: pd.DataFrame, domain: str, metric: str) -> dict:
    sel = run[(run["domain"] == domain) & (run["metric"] == metric)]
    return {int(s): float(v) for s, v in zip(sel["seed"], sel["value"])}


def _provenance(run: pd.DataFrame, cfg: dict, notes: list[str]) -> dict:
    clips = {}
    for d, g in run.groupby("domain"):
        if g["n"].notna().any():
            clips[d] = int(np.nanmax(g["n"]))
    return {"n_clips": "; ".join(f"{d}={n}" for d, n in sorted(clips.items())),
            "asr_model": _join_unique(run[run["metric"].isin(["wer", "wer_utt"])]["model"]),
            "embedding": _join_unique(run[run["metric"].isin(["fad", "rsa", "rsa_gt"])]["model"]),
            "mos_model": _join_unique(run[run["metric"].isin(["mos_ovrl", "mos_p808"])]["model"]),
            "experiment": cfg["name"], "notes": " | ".join(notes)}


def _token_configs(metrics: pd.DataFrame, cfg: dict) -> list[str]:
    present = set(metrics["token_config"].astype(str))
    return [tc for tc in cfg["token_configs"] if tc in present]


def _runs(metrics: pd.DataFrame, tc: str, method: str, seeds: list[int], table: str) -> pd.DataFrame:
    run = metrics[(metrics["token_config"] == tc) & (metrics["method"] == method) & metrics["seed"].isin(seeds)]
    if run.empty:
        raise ValueError(f"metrics: no rows for token config {tc!r}, method {method!r}, seeds {seeds} "
                         f"(report.rr.{table})")
    return run


def _settings_columns(cfg: dict, method: str) -> dict:
    s = branch_settings(cfg, method)
    rr = s["rr"]
    return {"cfg_mode": s["cfg_mode"], "cfg_rate": float(s["cfg_drop_tokens"]),
            "rr_lambda": float(rr["lambda"]) if rr else 0.0,
            **{f"rr_{k}": rr[k] if rr else "" for k in ("pool", "when", "text", "within_domain")}}


# -- Table R1 -----------------------------------------------------------------------------

def _r1_row(run: pd.DataFrame, base: pd.DataFrame | None, cfg: dict) -> tuple[dict, list[str]]:
    """The value and paired-difference cells of one R1 row, and its notes."""
    dec, level = int(cfg["report"]["decimals"]), float(cfg["eval"]["ci_level"])
    row, notes = {}, []
    for label, ref in cfg["report"]["rr"]["columns"].items():
        values = _per_seed(run, ref["domain"], ref["metric"])
        mean, std, n = mean_std(list(values.values()))
        key = _slug(label)
        row.update({label: fmt_mean_std(mean, std, dec), f"{key}_mean": mean, f"{key}_std": std,
                    f"{key}_n_seeds": n})
        if not values:
            notes.append(f"{label}: metric {ref['domain']}/{ref['metric']} not in the evaluation")
        elif n == 0:
            sel = run[(run["domain"] == ref["domain"]) & (run["metric"] == ref["metric"])]
            notes.append(f"{label}: {_join_unique(sel['note']) or 'not computed'}")
        if base is not None:
            d, lo, hi, nd = paired_delta(values, _per_seed(base, ref["domain"], ref["metric"]), level)
            row.update({f"{label} Δ": fmt_delta(d, lo, hi, dec), f"{key}_delta": d, f"{key}_delta_ci_low": lo,
                        f"{key}_delta_ci_high": hi, f"{key}_delta_n_seeds": nd})
    return row, notes


def _r1_reference(metrics: pd.DataFrame, runs: pd.DataFrame, cfg: dict, tc: str) -> dict:
    """The floor: the reference evaluation's rows; a metric it lacks from the runs' ``<metric>_gt``
    rows (RSA of the ground-truth audio), mean ± std over the seeds."""
    dec = int(cfg["report"]["decimals"])
    ref_rows = metrics[metrics["method"] == REFERENCE_METHOD]
    row = {"Config": tc, "Method": "Reference (ground truth)", "method": REFERENCE_METHOD}
    for label, ref in cfg["report"]["rr"]["columns"].items():
        sel = ref_rows[(ref_rows["domain"] == ref["domain"]) & (ref_rows["metric"] == ref["metric"])]
        if sel.empty:
            gt = runs[(runs["domain"] == ref["domain"]) & (runs["metric"] == ref["metric"] + "_gt")]
            sel = gt.drop_duplicates(subset=["seed"])        # the same clips and warm-up for every method of a seed
        mean, std, n = mean_std(list(sel["value"]))
        row.update({label: fmt_mean_std(mean, std, dec), f"{_slug(label)}_mean": mean, f"{_slug(label)}_std": std,
                    f"{_slug(label)}_n_seeds": n})
    row.update(_provenance(ref_rows, cfg, [CLAP_NOTE]))
    return row


def table_r1(metrics: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """Table R1 (module doc) from the tidy metrics of the RR runs (``agrepa report metrics``)."""
    runs = config_mod.rr_runs(cfg)["r1"]
    baseline = cfg["report"]["rr"]["baseline"]
    rows = []
    for tc in _token_configs(metrics, cfg):
        base = _runs(metrics, tc, baseline, runs["seeds"], "r1")
        everything = []
        for method in runs["methods"]:
            run = _runs(metrics, tc, method, runs["seeds"], "r1")
            everything.append(run)
            cells, notes = _r1_row(run, None if method == baseline else base, cfg)
            seeds = sorted(int(s) for s in run["seed"].dropna().unique())
            rows.append({"Config": tc, "Method": rr_label(cfg, method), "method": method, **cells,
                         **_settings_columns(cfg, method), "n_seeds": len(seeds), "seeds": " ".join(map(str, seeds)),
                         "versus": "" if method == baseline else baseline,
                         **_provenance(run, cfg, notes + [CLAP_NOTE])})
        rows.append(_r1_reference(metrics, pd.concat(everything), cfg, tc))
    return pd.DataFrame(rows)


# -- Table R2 -----------------------------------------------------------------------------

def table_r2(metrics: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """Table R2 (module doc): lambda x CFG rate."""
    runs = config_mod.rr_runs(cfg)["r2"]
    dec = int(cfg["report"]["decimals"])
    rows = []
    for tc in _token_configs(metrics, cfg):
        for method in runs["methods"]:
            run = _runs(metrics, tc, method, runs["seeds"], "r2")
            s = _settings_columns(cfg, method)
            row = {"Config": tc, "Method": rr_label(cfg, method), "method": method,
                   "λ": s["rr_lambda"], "CFG rate": s["cfg_rate"], **s}
            notes = []
            for label, ref in cfg["report"]["rr"]["columns"].items():
                sel = run[(run["domain"] == ref["domain"]) & (run["metric"] == ref["metric"])]
                mean, std, n = mean_std(list(sel["value"]))
                if n == 1:
                    r = sel.dropna(subset=["value"]).iloc[0]
                    cell = f"{mean:.{dec}f}" + (f" [{r['ci_low']:.{dec}f}, {r['ci_high']:.{dec}f}]"
                                                if np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"]) else "")
                else:
                    cell = fmt_mean_std(mean, std, dec)
                if n == 0:
                    notes.append(f"{label}: {_join_unique(sel['note']) or 'not in the evaluation'}")
                row.update({label: cell, f"{_slug(label)}_mean": mean, f"{_slug(label)}_n_seeds": n})
            row.update({"seeds": " ".join(map(str, runs["seeds"])), **_provenance(run, cfg, notes)})
            rows.append(row)
    return pd.DataFrame(rows)


# -- Figure R3 ------------------------------------------------------------------------------

def figure_r3_frame(eval_paths: Iterable[str | os.PathLike], cfg: dict) -> pd.DataFrame:
    """Tidy rows of Figure R3: every ``report.rr.r3.metrics`` value of each evaluation with the CFG
    scale its samples were drawn with (``run.sample_meta.cfg_scale``)."""
    wanted = cfg["report"]["rr"]["r3"]["metrics"]
    rows = []
    for p in eval_paths:
        meta = (io.read_json(p).get("run") or {}).get("sample_meta") or {}
        if meta.get("cfg_scale") is None:
            raise ValueError(f"{p}: no run.sample_meta.cfg_scale (an evaluation of `agrepa sample` output expected)")
        for r in read_eval(p):
            for label, ref in wanted.items():
                if (r["domain"], r["metric"]) == (ref["domain"], ref["metric"]):
                    rows.append({**{k: r[k] for k in R3_COLUMNS if k in r}, "scale": float(meta["cfg_scale"]),
                                 "label": label})
    return pd.DataFrame(rows, columns=R3_COLUMNS)


def figure_r3(frame: pd.DataFrame, cfg: dict, out: str | os.PathLike) -> None:
    """One panel per metric: value vs CFG scale, one line per method (one seed: its bootstrap CI as
    error bars; several: mean ± std over seeds)."""
    from .figures import plt, save

    labels = list(cfg["report"]["rr"]["r3"]["metrics"])
    fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 3.4), squeeze=False)
    for ax, label in zip(axes[0], labels):
        panel = frame[frame["label"] == label]
        for method in cfg["report"]["rr"]["r3"]["methods"]:
            g = panel[panel["method"] == method].dropna(subset=["value"])
            if g.empty:
                continue
            agg = g.groupby("scale").agg(value=("value", "mean"), std=("value", "std"), n=("value", "size"),
                                         lo=("ci_low", "mean"), hi=("ci_high", "mean")).reset_index()
            one = (agg["n"] == 1).all()
            err = np.abs(np.vstack([agg["value"] - agg["lo"], agg["hi"] - agg["value"]])) if one \
                else agg["std"].fillna(0.0).to_numpy()
            ax.errorbar(agg["scale"], agg["value"], yerr=err, marker="o", capsize=3, label=rr_label(cfg, method))
        if panel.dropna(subset=["value"]).empty:
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("sampling CFG scale")
        ax.set_title(label)
    axes[0][0].legend(fontsize="small")
    seeds = config_mod.rr_runs(cfg)["r3"]["seeds"]
    fig.suptitle(f"{cfg['name']}: metrics vs CFG scale (seeds {' '.join(map(str, seeds))})")
    fig.tight_layout()
    save(fig, out, int(cfg["report"]["figures"]["dpi"]))
