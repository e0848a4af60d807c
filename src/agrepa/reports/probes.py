"""Table 1 and Figure 1 from probes CSVs (``agrepa probe``), plus per-layer bar plots.

Everything here reads only the tidy probes CSV (columns config, seed, domain,
probe, layer, t, score, spread, n), so it runs in seconds without a model.

Table 1 (per token config): the top-3 layers for Cos-SEM (LASP, speech),
Cos-EVT (LASP, audio), FoG-A speech and FoG-A audio. A layer's score is its
mean over the t grid; the table ranks the mean over seeds of those scores
(the paper: "averaged over three seeds"; ties -> lower layer) and, for each
listed layer, counts in how many seeds it is among that seed's own top-3, e.g.
``L1 (3/3) L2 (3/3) L5 (2/3)``. Blocks 1..L are ranked; the input interface
(LASP layer 0, which BiT-C trains directly) is left out unless asked for.

Figure 1: layer x t heatmaps, LASP beside FoG-A, one row per domain, averaged over seeds.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import DOMAINS
from .. import io
from ..probing.records import read_probes

# Table 1's columns: (title, probe, domain)
TABLE1_METRICS = [
    ("Cos-SEM", "lasp", "speech"),
    ("Cos-EVT", "lasp", "audio"),
    ("FoG-A Speech", "foga", "speech"),
    ("FoG-A Audio", "foga", "audio"),
]
PANEL_TITLE = {("lasp", "speech"): "LASP Cos-SEM (speech)", ("lasp", "audio"): "LASP Cos-EVT (audio)",
               ("foga", "speech"): "FoG-A (speech)", ("foga", "audio"): "FoG-A (audio)"}


def load_probes(probes) -> pd.DataFrame:
    """One DataFrame from a probes DataFrame, a CSV path, or a list of either."""
    if isinstance(probes, pd.DataFrame):
        return probes.copy()
    if isinstance(probes, (str, os.PathLike)):
        return read_probes(probes)
    frames = [load_probes(p) for p in probes]
    if not frames:
        raise ValueError("no probes CSVs given")
    return pd.concat(frames, ignore_index=True)


def _rank(scores: pd.Series, k: int) -> list[int]:
    """Layers of the k highest scores (descending; ties -> lower layer)."""
    order = sorted(scores.index, key=lambda l: (-float(scores[l]), int(l)))
    return [int(l) for l in order[:k]]


def per_seed_scores(df: pd.DataFrame, probe: str, domain: str, include_interface: bool = False) -> pd.DataFrame:
    """Mean over t per (config, seed, layer) of one probe/domain -> columns config, seed, layer, score."""
    rows = df[(df["probe"] == probe) & (df["domain"] == domain)]
    if not include_interface:
        rows = rows[rows["layer"] >= 1]
    return rows.groupby(["config", "seed", "layer"], as_index=False)["score"].mean()


def table1_long(probes, k: int = 3, include_interface: bool = False) -> pd.DataFrame:
    """Table 1 in long form: one row per (config, metric, rank) with columns
    config, metric, rank, layer, score (seed mean), seed_std, in_topk (seeds whose own
    top-k has the layer), n_seeds, seeds, per_seed_topk ("s0: 1 2 3; s1: ...")."""
    df = load_probes(probes)
    out = []
    for config in sorted(df["config"].astype(str).unique()):
        dc = df[df["config"].astype(str) == config]
        for title, probe, domain in TABLE1_METRICS:
            ps = per_seed_scores(dc, probe, domain, include_interface)
            if ps.empty:
                continue
            seeds = sorted(ps["seed"].unique())
            seed_top = {s: _rank(ps[ps["seed"] == s].set_index("layer")["score"], k) for s in seeds}
            agg = ps.groupby("layer")["score"].agg(["mean", "std"])
            for rank, layer in enumerate(_rank(agg["mean"], k), start=1):
                out.append({
                    "config": config, "metric": title, "rank": rank, "layer": layer,
                    "score": float(agg.loc[layer, "mean"]),
                    "seed_std": float(agg.loc[layer, "std"]) if len(seeds) > 1 else float("nan"),
                    "in_topk": sum(layer in seed_top[s] for s in seeds), "n_seeds": len(seeds),
                    "seeds": " ".join(str(int(s)) for s in seeds),
                    "per_seed_topk": "; ".join(f"s{int(s)}: " + " ".join(map(str, seed_top[s])) for s in seeds),
                })
    return pd.DataFrame(out, columns=["config", "metric", "rank", "layer", "score", "seed_std", "in_topk",
                                      "n_seeds", "seeds", "per_seed_topk"])


def table1(probe_csvs, k: int = 3, include_interface: bool = False) -> pd.DataFrame:
    """Table 1: one row per token config; a column per metric (``"Cos-SEM (top3)"``, ...) holding
    ``"L20 (3/3) L22 (3/3) L21 (2/3)"`` (layer, then in how many seeds it is in that seed's top-k),
    plus ``seeds`` and ``n_seeds`` for provenance. ``probe_csvs``: paths and/or DataFrames."""
    long = table1_long(probe_csvs, k, include_interface)
    rows = []
    for config, grp in long.groupby("config", sort=True):
        row = {"config": config}
        for title, _, _ in TABLE1_METRICS:
            g = grp[grp["metric"] == title].sort_values("rank")
            row[f"{title} (top{k})"] = " ".join(f"L{r.layer} ({r.in_topk}/{r.n_seeds})"
                                               for r in g.itertuples()) if len(g) else ""
        row["seeds"] = grp["seeds"].iloc[0]
        row["n_seeds"] = int(grp["n_seeds"].max())
        rows.append(row)
    cols = ["config"] + [f"{t} (top{k})" for t, _, _ in TABLE1_METRICS] + ["seeds", "n_seeds"]
    return pd.DataFrame(rows, columns=cols)


def _one_config(df: pd.DataFrame, config: str | None) -> tuple[pd.DataFrame, str]:
    configs = sorted(df["config"].astype(str).unique())
    if config is None:
        if len(configs) != 1:
            raise ValueError(f"probes hold token configs {configs}; pass config=")
        config = configs[0]
    if config not in configs:
        raise ValueError(f"token config {config!r} not in the probes (have {configs})")
    return df[df["config"].astype(str) == config], config


def heatmap_matrix(df: pd.DataFrame, probe: str, domain: str) -> pd.DataFrame:
    """Layer x t matrix (rows: deepest layer first) of the seed-mean score of one probe/domain."""
    rows = df[(df["probe"] == probe) & (df["domain"] == domain)]
    m = rows.groupby(["layer", "t"])["score"].mean().unstack("t")
    return m.sort_index(ascending=False)


def _save(fig, out_path: str | os.PathLike) -> Path:
    out_path = Path(out_path)
    fmt = out_path.suffix.lstrip(".") or "png"
    with io.atomic_path(out_path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
    return out_path


def figure1(probe_csv_or_df, out_path: str | os.PathLike, config: str | None = None) -> Path:
    """Figure 1: per domain (rows), the layer x t heatmap of LASP (left) beside FoG-A (right),
    averaged over the seeds in the CSV(s), for one token config. Writes ``out_path`` atomically
    (format from its suffix) and returns it."""
    import seaborn as sns
    from matplotlib.figure import Figure

    df, config = _one_config(load_probes(probe_csv_or_df), config)
    seeds = sorted(df["seed"].unique())
    panels = [(d, p) for d in DOMAINS for p in ("lasp", "foga")]
    mats = {(d, p): heatmap_matrix(df, p, d) for d, p in panels}
    if all(m.empty for m in mats.values()):
        raise ValueError(f"config {config!r}: no lasp/foga rows to draw")
    fig = Figure(figsize=(11, 8.5), layout="constrained")
    axes = fig.subplots(2, 2)
    for ax, (d, p) in zip(axes.flat, panels):
        m = mats[(d, p)]
        if m.empty:
            ax.set_axis_off()
            ax.set_title(f"{PANEL_TITLE[(p, d)]}: no data")
            continue
        sns.heatmap(m, ax=ax, cmap="viridis" if p == "lasp" else "magma",
                    xticklabels=[f"{t:.2f}" for t in m.columns],
                    yticklabels=["in" if l == 0 else f"L{l}" for l in m.index],
                    cbar_kws={"label": "cosine" if p == "lasp" else "||v - v^(l)|| / ||v||"})
        ax.set_title(PANEL_TITLE[(p, d)])
        ax.set_xlabel("flow time t")
        ax.set_ylabel("layer")
    fig.suptitle(f"Store vs contribute: LASP and FoG-A over depth and flow time "
                 f"(config {config}, seeds {', '.join(str(int(s)) for s in seeds)})")
    return _save(fig, out_path)


def probe_bars(probe_csv_or_df, out_path: str | os.PathLike, config: str | None = None) -> Path:
    """Bar plots per layer (score averaged over t, then over seeds; error bars = std over seeds,
    or the CSV's across-batch spread with one seed): LASP, FoG-A and, if present, gradient norm,
    speech and audio side by side."""
    import seaborn as sns
    from matplotlib.figure import Figure

    df, config = _one_config(load_probes(probe_csv_or_df), config)
    probes = [p for p in ("lasp", "foga", "gradnorm") if (df["probe"] == p).any()]
    if not probes:
        raise ValueError(f"config {config!r}: no probe rows to draw")
    seeds = sorted(df["seed"].unique())
    fig = Figure(figsize=(5.5 * len(probes), 4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(probes)))
    labels = {"lasp": "LASP cosine (Cos-SEM / Cos-EVT)", "foga": "FoG-A", "gradnorm": "gradient norm"}
    for ax, p in zip(axes, probes):
        rows = df[df["probe"] == p]
        per_seed = rows.groupby(["domain", "seed", "layer"], as_index=False).agg(
            score=("score", "mean"), spread=("spread", "mean"))
        agg = per_seed.groupby(["domain", "layer"], as_index=False).agg(
            score=("score", "mean"), err=("score", "std"), spread=("spread", "mean"))
        if len(seeds) == 1:
            agg["err"] = agg["spread"]
        domains = [d for d in DOMAINS if d in set(agg["domain"])]
        layers = sorted(agg["layer"].unique())
        width = 0.8 / len(domains)
        palette = sns.color_palette("deep", len(domains))
        for j, d in enumerate(domains):
            a = agg[agg["domain"] == d].set_index("layer").reindex(layers)
            x = np.arange(len(layers)) + (j - (len(domains) - 1) / 2) * width
            ax.bar(x, a["score"], width, yerr=a["err"].fillna(0.0), color=palette[j], label=d, capsize=2)
        ax.set_xticks(np.arange(len(layers)), ["in" if l == 0 else str(int(l)) for l in layers])
        ax.set_xlabel("layer")
        ax.set_title(labels[p])
        ax.legend()
    fig.suptitle(f"Probe scores per layer, mean over t (config {config}, seeds "
                 f"{', '.join(str(int(s)) for s in seeds)})")
    return _save(fig, out_path)
