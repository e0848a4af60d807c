"""Tables 2 and 3, the tidy ``metrics.csv`` and their ``*_vs_paper.csv`` siblings.

Everything here reads only what the workflow wrote (evaluation JSONs, convergence
CSVs, selection JSONs), never a model, so tables regenerate in seconds.

* ``metrics.csv``: one row per run x metric (long format): experiment, token_config,
  seed, method, domain, metric, value, ci_low, ci_high, n, model, note, input
  (what was scored: generated samples, "resynthesis", "ground_truth"), source (the JSON).
* Table 2: one row per (token config, method), then the ground-truth floor (method
  ``reference``: the test clips' ground truth through the same vocoder); per column (config
  ``report.table2.columns``: label -> domain + metric) the mean ± std over seeds
  (sample std, ddof = 1), the number of seeds, and provenance (experiment name, seeds,
  clips scored, ASR / FAD-embedding / MOS models).
* Table 3: one row per layer-selection strategy (plus the baseline): the layers each
  picked, training steps, final FAD (mean ± std), relative gain
  ``100 * (FAD_baseline - FAD) / FAD_baseline`` and convergence = the first branch
  step whose FAD is <= the threshold, per seed, then mean ± std over the seeds that
  reached it.
* ``*_vs_paper.csv``: our numbers beside the paper's (``agrepa/data/paper_reference.csv``)
  and, because absolute values do not transfer across scales and FAD embeddings, both
  changes relative to each one's own baseline: ``100 * (x - x_baseline) / x_baseline``.
"""
from __future__ import annotations

import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .. import io
from ..evaluation import metrics

CONFIG_KEYS = ("eval.convergence", "methods", "name", "report", "selection", "token_configs", "train.repa_lambda",
               "train.repa_weighting")  # config sections this module reads

METRIC_COLUMNS = ["experiment", "token_config", "seed", "method", "domain", "metric", "value",
                  "ci_low", "ci_high", "n", "model", "note", "input", "source"]
CONVERGENCE_COLUMNS = ["step", "domain", "fad", "n", "embedding"]
RUN_PATTERN = re.compile(r"(?P<tc>[^/\\]+)[/\\]seed(?P<seed>\d+)[/\\](?P<method>[^/\\]+)\.(?:json|csv)$")
STRATEGY_LABELS = {"random": "Random Control", "lasp": "Highest LASP",
                   "gradnorm": "Gradient Norm", "foga": "Highest FoG-A"}
REFERENCE_METHOD = "reference"


# --- reading the workflow's artifacts ----------------------------------------------------
def run_of_path(path: str | os.PathLike) -> dict:
    """Token config, seed and method from ``.../<tc>/seed<S>/<method>.{json,csv}``."""
    m = RUN_PATTERN.search(str(path))
    if not m:
        raise ValueError(f"{path}: expected a path ending in <token config>/seed<N>/<method>.json|csv")
    return {"token_config": m["tc"], "seed": int(m["seed"]), "method": m["method"]}


def read_eval(path: str | os.PathLike, run: dict | None = None) -> list[dict]:
    """The metric rows of one evaluation JSON ({"run": {...}, "metrics": [...]})."""
    data = io.read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), list):
        raise ValueError(f"{path}: an evaluation JSON needs a 'metrics' list")
    run = dict(run if run is not None else run_of_path(path))
    rows = []
    for i, item in enumerate(data["metrics"]):
        for key in ("domain", "metric", "value"):
            if key not in item:
                raise ValueError(f"{path}: metrics[{i}] has no {key!r}")
        value = item["value"]
        rows.append({**run, "domain": item["domain"], "metric": item["metric"],
                     "value": float(value) if value is not None else math.nan,
                     "ci_low": _num(item.get("ci_low")), "ci_high": _num(item.get("ci_high")),
                     "n": _num(item.get("n")), "model": item.get("model") or "",
                     "note": item.get("note") or "", "input": item.get("input") or "",
                     "source": str(path)})
    return rows


def _num(x) -> float:
    return float(x) if x is not None else math.nan


def metrics_frame(eval_paths: Iterable[str | os.PathLike], reference: str | os.PathLike | None = None,
                  experiment: str = "") -> pd.DataFrame:
    """Tidy long table of every run x metric (``metrics.csv``).

    The run of each JSON comes from its path (``<tc>/seed<S>/<method>.json``); the
    ground-truth floor (``reference``), if given, becomes method ``reference`` with
    no token config or seed.
    """
    rows: list[dict] = []
    for p in eval_paths:
        rows += read_eval(p)
    if reference is not None:
        rows += read_eval(reference, {"token_config": "", "seed": math.nan, "method": REFERENCE_METHOD})
    df = pd.DataFrame(rows, columns=[c for c in METRIC_COLUMNS if c != "experiment"])
    df.insert(0, "experiment", experiment)
    return df[METRIC_COLUMNS]


def read_metrics(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: metrics CSV not found")
    df = pd.read_csv(path, keep_default_na=True,
                     dtype={"token_config": str, "model": str, "note": str, "input": str})
    missing = [c for c in METRIC_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    df["token_config"] = df["token_config"].fillna("")
    df[["model", "note", "input"]] = df[["model", "note", "input"]].fillna("")
    return df


CURVE_COLUMNS = ["token_config", "seed", "method", "step", "domain", "metric", "value", "n", "model"]
HELDOUT_CURVE_COLUMNS = ["step", "id", "domain", "loss"]


def _curve_of(df: pd.DataFrame, path) -> pd.DataFrame:
    """One convergence CSV as curve rows: FAD curves as they are, held-out loss CSVs (per clip)
    as the mean per step and domain (and over both domains, ``all``)."""
    if all(c in df.columns for c in HELDOUT_CURVE_COLUMNS):
        both = pd.concat([df, df.assign(domain="all")])
        g = both.groupby(["step", "domain"])["loss"].agg(["mean", "count"]).reset_index()
        return pd.DataFrame({"step": g["step"], "domain": g["domain"], "metric": "fm_loss", "value": g["mean"],
                             "n": g["count"], "model": "held-out FM loss (valid split, EMA)"})
    missing = [c for c in CONVERGENCE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (neither a FAD curve nor a held-out loss CSV)")
    return pd.DataFrame({"step": df["step"], "domain": df["domain"], "metric": "fad", "value": df["fad"],
                         "n": df["n"], "model": df["embedding"]})


def convergence_frame(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Convergence curves (``CURVE_COLUMNS``) from FAD curve CSVs (``agrepa convergence``) or
    held-out loss CSVs (``agrepa heldout``), with their run columns from the paths."""
    frames = []
    for p in paths:
        if not Path(p).exists():
            raise FileNotFoundError(f"{p}: convergence CSV not found")
        df = _curve_of(pd.read_csv(p, dtype={"id": str}), p)
        for k, v in run_of_path(p).items():
            df[k] = v
        frames.append(df)
    return pd.concat(frames, ignore_index=True)[CURVE_COLUMNS] if frames else pd.DataFrame(columns=CURVE_COLUMNS)


SELECTION_COLUMNS = ["token_config", "seed", "strategy", "mode", "layers", "weights"]


def read_selections(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Selection JSONs (``agrepa select``) as rows: token_config, seed, strategy, mode and the
    sets training used: ``layers`` / ``weights`` = {"speech": [...], "audio": [...]} (mode
    per_domain) or {"merged": [...]} (mode merged)."""
    rows = []
    for p in paths:
        data = io.read_json(p)
        for key in ("strategy", "mode", "sets"):
            if key not in data:
                raise ValueError(f"{p}: selection JSON has no {key!r}")
        m = re.search(r"(?P<tc>[^/\\]+)[/\\]seed(?P<seed>\d+)[/\\][^/\\]+\.json$", str(p))
        if not m:
            raise ValueError(f"{p}: expected a path ending in <token config>/seed<N>/<strategy>.json")
        keys = ["speech", "audio"] if data["mode"] == "per_domain" else ["merged"]
        missing = [k for k in keys if k not in data["sets"]]
        if missing:
            raise ValueError(f"{p}: selection JSON has no set {missing[0]!r} (mode {data['mode']})")
        rows.append({"token_config": m["tc"], "seed": int(m["seed"]), "strategy": data["strategy"],
                     "mode": data["mode"], "layers": {k: [int(x) for x in data["sets"][k]["layers"]] for k in keys},
                     "weights": {k: list(data["sets"][k]["weights"]) for k in keys}})
    return pd.DataFrame(rows, columns=SELECTION_COLUMNS)


def paper_reference() -> pd.DataFrame:
    """The paper's Tables 2 and 3 (table, method, label, metric, value, std, note)."""
    with resources.files("agrepa.data").joinpath("paper_reference.csv").open() as f:
        return pd.read_csv(f)


# --- small statistics -----------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample std (ddof = 1; NaN for one value) and count of the finite values."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan, int(x.size)


def fmt_mean_std(mean: float, std: float, decimals: int) -> str:
    if not np.isfinite(mean):
        return "n/a"
    if not np.isfinite(std):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def relative_change(x: float, base: float) -> float:
    """100 * (x - base) / base (NaN when either is missing or base is 0)."""
    if not (np.isfinite(x) and np.isfinite(base)) or base == 0:
        return math.nan
    return 100.0 * (x - base) / base


def method_label(name: str, spec: dict) -> str:
    """A row label in the paper's style from a method's config entry."""
    if spec.get("selection"):
        s = spec["selection"]
        return "AG-REPA (FoG-A top-k)" if s == "foga" else f"{STRATEGY_LABELS.get(s, s)} (top-k)"
    layers = spec.get("layers") or []
    if not layers:
        return "Baseline (None)"
    if len(layers) == 1:
        return f"REPA @ Layer {layers[0]}"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"REPA @ L{layers[0]}–L{layers[-1]}"
    return "REPA @ L" + ", ".join(str(l) for l in layers)


def _join_unique(values: Iterable) -> str:
    out = []
    for v in values:
        if isinstance(v, str) and v and v not in out:
            out.append(v)
    return "; ".join(out)


def _metric_values(df: pd.DataFrame, domain: str, metric: str) -> pd.DataFrame:
    return df[(df["domain"] == domain) & (df["metric"] == metric)]


def _scale(metric: str, cfg: dict) -> float:
    return 100.0 if metric in ("wer", "wer_utt") and cfg["report"]["table2"]["wer_percent"] else 1.0


def _token_configs(metrics: pd.DataFrame, cfg: dict) -> list[str]:
    present = set(metrics["token_config"].astype(str))
    return [tc for tc in cfg["token_configs"] if tc in present]


# --- Table 2 --------------------------------------------------------------------------------
def _cell(run: pd.DataFrame, ref: dict, cfg: dict) -> tuple[str, dict, list[str]]:
    """One Table 2 cell: ``mean ± std`` over seeds (``†`` when a FAD is rank-deficient), its numbers
    and the notes it needs."""
    from ..evaluation.evaluate import LOW_RANK

    dec = cfg["report"]["decimals"]
    sel = _metric_values(run, ref["domain"], ref["metric"])
    mean, std, n = mean_std(list(sel["value"] * _scale(ref["metric"], cfg)))
    text = fmt_mean_std(mean, std, dec)
    notes = []
    if n == 0 and len(sel):
        notes.append(_join_unique(sel["note"]) or "not computed")
    elif len(sel) == 0:
        notes.append(f"metric {ref['domain']}/{ref['metric']} not in the evaluation")
    low_rank = [x for x in sel["note"] if isinstance(x, str) and x.startswith(LOW_RANK)]
    if low_rank and n:
        text += " †"
        notes.append(low_rank[0])
    return text, {"mean": mean, "std": std, "n_seeds": n}, notes


def _delta_cells(row: dict, numeric: dict, label: str, ref: dict, tc: str, method: str, versus: str, paired_df,
                 dec: int) -> None:
    """The paired difference of one cell against ``versus``: text in ``row``, numbers in ``numeric``."""
    key = _slug(label)
    c = None if method == versus else lookup(paired_df, tc, method, versus, ref["domain"], ref["metric"])
    row[f"{label} Δ"] = "—" if c is None else fmt_delta(c, dec)
    for name in ("delta", "ci_low", "ci_high", "rel_pct", "p_value"):
        numeric[f"{key}_delta_{name}" if name != "delta" else f"{key}_delta"] = \
            math.nan if c is None else float(c[name])
    numeric[f"{key}_resolved"] = None if c is None else bool(c["resolved"])


def table2(metrics: pd.DataFrame, cfg: dict, paired_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 2: one row per (token config, method) of ``report.table2.methods``; with ``paired_df``
    (``paired.csv``) every column also gets the paired difference against the baseline with its CI
    (``*``: resolved, i.e. the CI excludes 0 and the permutation p < 0.05)."""
    t2 = cfg["report"]["table2"]
    dec = cfg["report"]["decimals"]
    reference = metrics[metrics["method"] == REFERENCE_METHOD]
    rows = []
    for tc in _token_configs(metrics, cfg):
        entries = list(t2["methods"]) + ([REFERENCE_METHOD] if len(reference) else [])
        for method in entries:
            if method == REFERENCE_METHOD:
                # the floor: ground-truth test clips through the same vocoder and metrics
                run = reference
                row = {"Config": tc, "Method": "Reference (vocoded ground truth)", "method": method,
                       "layers": ""}
            else:
                run = metrics[(metrics["token_config"] == tc) & (metrics["method"] == method)]
                if run.empty:
                    raise ValueError(f"metrics: no rows for token config {tc!r}, method {method!r} "
                                     f"(listed in report.table2.methods)")
                spec = cfg["methods"][method]
                row = {"Config": tc, "Method": method_label(method, spec), "method": method,
                       "layers": " ".join(map(str, spec["layers"])) if "layers" in spec
                       else f"top-{cfg['selection']['k']} by {spec['selection']}"}
            numeric, notes, clips = {}, [], {}
            base = cfg["report"]["table3"]["baseline"]
            for label, ref in t2["columns"].items():
                sel = _metric_values(run, ref["domain"], ref["metric"])
                row[label], nums, cell_notes = _cell(run, ref, cfg)
                numeric.update({f"{_slug(label)}_{k}": v for k, v in nums.items()})
                notes += [f"{label}: {x}" for x in cell_notes]
                if paired_df is not None:
                    _delta_cells(row, numeric, label, ref, tc, method, base, paired_df, dec)
                if len(sel):
                    clips[ref["domain"]] = max(clips.get(ref["domain"], 0), int(np.nanmax(sel["n"])) if sel["n"].notna().any() else 0)
            row.update(numeric)
            seeds = sorted(int(s) for s in run["seed"].dropna().unique())
            row.update({
                "n_seeds": len(seeds), "seeds": " ".join(map(str, seeds)),
                "experiment": cfg["name"],
                "n_clips": "; ".join(f"{d}={n}" for d, n in sorted(clips.items())),
                "asr_model": _join_unique(run[run["metric"].isin(["wer", "wer_utt"])]["model"]),
                "fad_embedding": _join_unique(run[run["metric"].isin(["fad", "fad_inf"])]["model"]),
                "mos_model": _join_unique(run[run["metric"].isin(["mos_ovrl", "mos_p808"])]["model"]),
                "repa_weighting": f"{cfg['train']['repa_weighting']} (lambda {cfg['train']['repa_lambda']})",
                "notes": " | ".join(notes),
            })
            rows.append(row)
    return pd.DataFrame(rows)


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def table2_vs_paper(table: pd.DataFrame, cfg: dict, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 2 beside the paper: per (token config, method, column) ours, paper, relative changes."""
    paper = paper_reference() if paper is None else paper
    paper = paper[paper["table"] == "table2"]
    base = cfg["report"]["table3"]["baseline"]
    rows = []
    for _, r in table[table["method"] != REFERENCE_METHOD].iterrows():
        for label in cfg["report"]["table2"]["columns"]:
            key = _slug(label)
            ours, ours_std = r[f"{key}_mean"], r[f"{key}_std"]
            ref = paper[(paper["method"] == r["method"]) & (paper["metric"] == label)]
            p = float(ref["value"].iloc[0]) if len(ref) else math.nan
            p_std = float(ref["std"].iloc[0]) if len(ref) else math.nan
            ours_base = table[(table["Config"] == r["Config"]) & (table["method"] == base)]
            ob = float(ours_base[f"{key}_mean"].iloc[0]) if len(ours_base) else math.nan
            pb_row = paper[(paper["method"] == base) & (paper["metric"] == label)]
            pb = float(pb_row["value"].iloc[0]) if len(pb_row) else math.nan
            ours_rel, paper_rel = relative_change(ours, ob), relative_change(p, pb)
            same = (np.sign(ours_rel) == np.sign(paper_rel)) if np.isfinite(ours_rel) and np.isfinite(paper_rel) \
                and r["method"] != base else None
            rows.append({"Config": r["Config"], "method": r["method"], "Method": r["Method"], "metric": label,
                         "ours_mean": ours, "ours_std": ours_std, "ours_n_seeds": r[f"{key}_n_seeds"],
                         "paper": p, "paper_std": p_std,
                         "ours_vs_baseline_pct": ours_rel, "paper_vs_baseline_pct": paper_rel,
                         "same_direction": same, "experiment": r["experiment"]})
    return pd.DataFrame(rows)


# --- Table 3 --------------------------------------------------------------------------------
def steps_to_threshold(curve: pd.DataFrame, threshold: float) -> float:
    """Training steps for a convergence curve (columns step, value) to reach ``threshold``,
    linearly interpolated between the bracketing snapshots (agrepa.evaluation.metrics.steps_to_threshold);
    NaN when never reached (nothing is extrapolated)."""
    c = curve.dropna(subset=["value"])
    reached = metrics.steps_to_threshold(c["step"].tolist(), c["value"].tolist(), threshold)
    return math.nan if reached is None else float(reached)


def convergence_threshold(conv: pd.DataFrame, cfg: dict, token_config: str) -> float:
    """eval.convergence.threshold, or (null) the baseline's final value, mean over seeds."""
    fixed = cfg["eval"]["convergence"]["threshold"]
    if fixed is not None:
        return float(fixed)
    t3 = cfg["report"]["table3"]
    base = conv[(conv["token_config"] == token_config) & (conv["method"] == t3["baseline"])
                & (conv["domain"] == t3["domain"])].dropna(subset=["value"])
    if base.empty:
        return math.nan
    finals = base.sort_values("step").groupby("seed")["value"].last()
    return float(finals.mean())


def _set_text(layers: dict) -> str:
    """``L1, L9, L5`` (merged) or ``speech L1, L9, L5 / audio L1, L21, L9`` (per domain)."""
    if list(layers) == ["merged"]:
        return ", ".join(f"L{l}" for l in layers["merged"])
    return " / ".join(f"{d} " + ", ".join(f"L{l}" for l in ls) for d, ls in layers.items())


def layers_text(sel: pd.DataFrame) -> str:
    """The layer sets of selection rows (:func:`read_selections`), per seed where they differ."""
    if sel.empty:
        return "—"
    per_seed = {int(r.seed): _set_text(r.layers) for r in sel.itertuples()}
    values = set(per_seed.values())
    if len(values) == 1:
        return values.pop()
    return " | ".join(f"seed {s}: {v}" for s, v in sorted(per_seed.items()))


def _convergence_cell(convergence: pd.DataFrame, tc: str, method: str, domain: str, metric: str,
                      threshold: float) -> tuple[str, float, float, str]:
    """Steps to reach ``threshold`` per seed, as ``mean ± std`` text, mean, std and ``reached/seeds``."""
    curves = convergence[(convergence["token_config"] == tc) & (convergence["method"] == method)
                         & (convergence["domain"] == domain) & (convergence["metric"] == metric)]
    reached = [steps_to_threshold(g, threshold) for _, g in curves.groupby("seed")] if np.isfinite(threshold) else []
    c_mean, c_std, c_n = mean_std(reached)
    text = (fmt_mean_std(c_mean, c_std, 0) + (f" ({c_n}/{len(reached)} seeds)" if c_n < len(reached) else "")) \
        if c_n else "N/A"
    return text, c_mean, c_std, f"{c_n}/{len(reached)}"


def table3(metrics: pd.DataFrame, convergence: pd.DataFrame, selections: pd.DataFrame,
           cfg: dict, paired_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 3: baseline + one row per strategy of ``selection.strategies``: the paper's FAD, Rel. Gain
    and convergence (steps for the ``eval.convergence.metric`` curve to reach the threshold), plus the
    held-out FM loss and, with ``paired_df``, both differences against the baseline with their CIs."""
    t3 = cfg["report"]["table3"]
    dec = cfg["report"]["decimals"]
    domain, curve_metric = t3["domain"], cfg["eval"]["convergence"]["metric"]
    k = int(cfg["selection"]["k"])
    rows = []
    for tc in _token_configs(metrics, cfg):
        conv = convergence[convergence["metric"] == curve_metric]
        threshold = convergence_threshold(conv, cfg, tc)
        entries = [("baseline", t3["baseline"])] + [(s, t3["strategies"][s]) for s in cfg["selection"]["strategies"]]
        base_mean = math.nan
        for strategy, method in entries:
            run = metrics[(metrics["token_config"] == tc) & (metrics["method"] == method)]
            if run.empty:
                raise ValueError(f"metrics: no rows for token config {tc!r}, method {method!r} "
                                 f"(Table 3 row {strategy!r})")
            fad = _metric_values(run, domain, "fad")
            mean, std, n = mean_std(list(fad["value"]))
            fm_text, fm, _ = _cell(run, {"domain": domain, "metric": "fm_loss"}, cfg)
            base_mean = mean if strategy == "baseline" else base_mean
            c_text, c_mean, c_std, c_reached = _convergence_cell(conv, tc, method, domain, curve_metric, threshold)
            curves = convergence[(convergence["token_config"] == tc) & (convergence["method"] == method)]
            steps = int(curves["step"].max()) if len(curves) else math.nan   # the last snapshot is the branch's end
            sel = selections[(selections["token_config"] == tc) & (selections["strategy"] == strategy)] \
                if strategy != "baseline" else selections.iloc[0:0]
            gain = -relative_change(mean, base_mean) if strategy != "baseline" else math.nan
            row = {"Config": tc, "Selection Strategy": "Baseline (None)" if strategy == "baseline"
                   else STRATEGY_LABELS.get(strategy, strategy) + (" (AG-REPA)" if strategy == "foga" else ""),
                   "strategy": strategy, "method": method, f"Top-{k} Layers": layers_text(sel),
                   "Training steps": steps, "FAD": fmt_mean_std(mean, std, dec),
                   "Rel. Gain": "—" if strategy == "baseline" or not np.isfinite(gain) else f"{gain:+.1f}%",
                   "Convergence": c_text, "FM loss": fm_text}
            numeric = {}
            if paired_df is not None:
                for label, metric in (("FM loss", "fm_loss"),):   # FAD is set-level: no per-clip pairing
                    _delta_cells(row, numeric, label, {"domain": domain, "metric": metric}, tc, method,
                                 t3["baseline"], paired_df, dec)
            row.update(numeric)
            row.update({"fad_mean": mean, "fad_std": std, "n_seeds": n, "rel_gain_pct": gain,
                        "fm_loss_mean": fm["mean"], "fm_loss_std": fm["std"],
                        "convergence_mean": c_mean, "convergence_std": c_std, "convergence_reached": c_reached,
                        "convergence_metric": curve_metric, "threshold": threshold, "domain": domain,
                        "experiment": cfg["name"],
                        "seeds": " ".join(str(int(x)) for x in sorted(run["seed"].dropna().unique())),
                        "fad_embedding": _join_unique(fad["model"]),
                        "n_clips": int(np.nanmax(fad["n"])) if fad["n"].notna().any() else 0})
            rows.append(row)
    return pd.DataFrame(rows)


def table3_vs_paper(table: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 3 beside the paper: FAD, Rel. Gain (%) and convergence steps per strategy."""
    paper = paper_reference() if paper is None else paper
    paper = paper[paper["table"] == "table3"]
    rows = []
    for _, r in table.iterrows():
        for metric, ours in (("Training steps", float(r["Training steps"])), ("FAD", r["fad_mean"]),
                             ("Rel. Gain", r["rel_gain_pct"]), ("Convergence", r["convergence_mean"])):
            ref = paper[(paper["method"] == r["strategy"]) & (paper["metric"] == metric)]
            rows.append({"Config": r["Config"], "strategy": r["strategy"], "method": r["method"],
                         "metric": metric, "ours": ours,
                         "paper": float(ref["value"].iloc[0]) if len(ref) else math.nan,
                         "paper_note": ref["note"].iloc[0] if len(ref) and isinstance(ref["note"].iloc[0], str) else "",
                         "experiment": r["experiment"]})
    return pd.DataFrame(rows)


# --- paired differences (paired.csv, agrepa.reports.paired) in the tables ---------------------------
def fmt_delta(row, decimals: int) -> str:
    """``+0.012 [+0.004, +0.020]*`` (``*``: resolved, the CI excludes 0 and p < 1 - level)."""
    if not np.isfinite(row["delta"]):
        return "n/a"

    def f(x):
        return "n/a" if not np.isfinite(x) else f"{x:+.{decimals}g}" if abs(x) < 10 ** -decimals else f"{x:+.{decimals}f}"
    mark = "*" if bool(row["resolved"]) else ""
    return f"{f(row['delta'])} [{f(row['ci_low'])}, {f(row['ci_high'])}]{mark}"


def _pct(x: float) -> str:
    return f"{x:+.1f}" if abs(x) >= 0.1 else f"{x:+.2g}"


def fmt_rel(row) -> str:
    """``-3.1 % [-4.0, -2.2]`` (relative difference and its CI; 2 significant digits below 0.1 %)."""
    if not np.isfinite(row["rel_pct"]):
        return "n/a"
    lo, hi = row["rel_ci_low"], row["rel_ci_high"]
    ci = f" [{_pct(lo)}, {_pct(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else ""
    return f"{_pct(row['rel_pct'])} %{ci}"


def lookup(paired_df: pd.DataFrame, tc: str, method: str, versus: str, domain: str, metric: str):
    """The one comparison row, or None."""
    if paired_df is None or paired_df.empty:
        return None
    sel = paired_df[(paired_df["token_config"].astype(str) == str(tc)) & (paired_df["method"] == method)
                    & (paired_df["versus"] == versus) & (paired_df["domain"] == domain)
                    & (paired_df["metric"] == metric)]
    return None if sel.empty else sel.iloc[0]
