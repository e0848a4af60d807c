"""Figures made only from the tidy CSVs: convergence curves and per-seed scatter.

* ``convergence_figure``: the convergence metric (held-out FM loss, or FAD of samples) of the
  branch snapshots vs. branch step, one
  line per method (mean over seeds, shaded band = min..max over seeds), one panel per
  domain, with the Table 3 threshold as a dashed line when known.
* ``forest_figure``: the paired difference of every method against the baseline, in % of the
  baseline with its bootstrap CI, one panel per Table 2 metric that has per-clip pairs, one
  colour per token config; a filled marker when the difference is resolved (CI excludes 0, p < 0.05).
* ``seed_scatter``: every seed's value of each Table 2 column, per method (one panel per
  column), with the mean over seeds as a bar, so the spread behind ``mean ± std`` shows.

Style comes from a matplotlib style file (``workflow/report/figures.mplstyle``); the
image format follows the output's extension. Files are written atomically.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..config import DOMAINS
from .. import io  # noqa: E402
from .tables import _scale, method_label  # noqa: E402

CONFIG_KEYS = ("eval.ci_level", "eval.convergence.metric", "methods", "name", "report", "token_configs")  # config sections this module reads

log = logging.getLogger(__name__)


@contextlib.contextmanager
def style(path: str | os.PathLike | None) -> Iterator[None]:
    """Apply a matplotlib style file (or nothing) for the figures drawn inside."""
    if path is None:
        yield
        return
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: figure style file not found")
    with plt.style.context(str(path)):
        yield


def save(fig, out: str | os.PathLike, dpi: int) -> Path:
    """Save a figure atomically; the format is the extension of ``out``."""
    out = Path(out)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in ("png", "pdf", "svg"):
        raise ValueError(f"{out}: figure format must be png, pdf or svg")
    with io.atomic_path(out) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    plt.close(fig)
    log.info("wrote %s", out)
    return out


def convergence_figure(conv: pd.DataFrame, cfg: dict, out: str | os.PathLike,
                       threshold: float | None = None, style_file: str | os.PathLike | None = None) -> Path:
    """The ``eval.convergence.metric`` curve vs. branch step per method and domain (conv:
    tables.convergence_frame rows)."""
    conv = conv[conv["metric"] == cfg["eval"]["convergence"]["metric"]]
    if conv.empty:
        raise ValueError(f"{out}: no convergence rows to plot")
    domains = [d for d in DOMAINS if d in set(conv["domain"])] or sorted(set(conv["domain"]))
    present = set(conv["method"])
    order = list(cfg["report"]["table2"]["methods"]) + [m for m in cfg["methods"]]
    methods = list(dict.fromkeys(m for m in order if m in present))
    with style(style_file):
        fig, axes = plt.subplots(1, len(domains), squeeze=False,
                                 figsize=(3.6 * len(domains), plt.rcParams["figure.figsize"][1]))
        colors = plt.get_cmap("tab10")
        for ax, domain in zip(axes[0], domains):
            d = conv[conv["domain"] == domain]
            for i, method in enumerate(methods):
                g = d[d["method"] == method].groupby("step")["value"]
                if g.ngroups == 0:
                    continue
                stats = g.agg(["mean", "min", "max"]).reset_index()
                c = colors(i % 10)
                ax.plot(stats["step"], stats["mean"], marker="o", color=c,
                        label=method_label(method, cfg["methods"][method]))
                ax.fill_between(stats["step"], stats["min"], stats["max"], color=c, alpha=0.15, linewidth=0)
            if threshold is not None and np.isfinite(threshold) and domain == cfg["report"]["table3"]["domain"]:
                ax.axhline(threshold, color="0.3", linestyle="--", linewidth=1, label="threshold")
            ax.set_title(f"{domain}")
            ax.set_xlabel("branch step")
            ax.set_ylabel({"fad": "FAD", "fm_loss": "held-out FM loss"}[cfg["eval"]["convergence"]["metric"]])
        handles, labels = axes[0][0].get_legend_handles_labels()
        for ax in axes[0][1:]:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), bbox_to_anchor=(0.5, -0.02))
        fig.subplots_adjust(bottom=0.22 + 0.05 * ((len(labels) - 1) // 4))
        tcs = ", ".join(sorted(set(conv["token_config"].astype(str))))
        emb = ", ".join(sorted(set(conv["model"].dropna().astype(str))))
        fig.suptitle(f"Convergence, config {tcs} ({cfg['name']}, seeds "
                     f"{', '.join(str(s) for s in sorted(set(conv['seed'])))}; {emb or 'n/a'})")
        return save(fig, out, cfg["report"]["figures"]["dpi"])


def seed_scatter(metrics: pd.DataFrame, cfg: dict, out: str | os.PathLike,
                 style_file: str | os.PathLike | None = None) -> Path:
    """Per-seed values of every Table 2 column, per method (bars: mean over seeds)."""
    t2 = cfg["report"]["table2"]
    methods = [m for m in t2["methods"] if m in set(metrics["method"])]
    if not methods:
        raise ValueError(f"{out}: metrics has none of report.table2.methods")
    columns = [(label, ref) for label, ref in t2["columns"].items()
               if metrics[(metrics["domain"] == ref["domain"]) & (metrics["metric"] == ref["metric"])]
               ["value"].notna().any()]
    if not columns:
        raise ValueError(f"{out}: none of the Table 2 columns has a value")
    tcs = [tc for tc in cfg["token_configs"] if tc in set(metrics["token_config"])]
    x = np.arange(len(methods))
    with style(style_file):
        fig, axes = plt.subplots(1, len(columns), squeeze=False,
                                 figsize=(max(3.0, 0.45 * len(methods) + 1.2) * len(columns),
                                          plt.rcParams["figure.figsize"][1]))
        markers = "os^Dv"
        width = 0.8 / max(1, len(tcs))
        for ax, (label, ref) in zip(axes[0], columns):
            sel = metrics[(metrics["domain"] == ref["domain"]) & (metrics["metric"] == ref["metric"])]
            scale = _scale(ref["metric"], cfg)
            for j, tc in enumerate(tcs):
                offset = (j - (len(tcs) - 1) / 2) * width
                for i, method in enumerate(methods):
                    v = sel[(sel["token_config"] == tc) & (sel["method"] == method)].sort_values("seed")
                    vals = v["value"].to_numpy(float) * scale
                    finite = vals[np.isfinite(vals)]
                    if finite.size:
                        ax.bar(x[i] + offset, finite.mean(), width=width * 0.9, color=f"C{j}", alpha=0.3)
                    # deterministic horizontal spread of the seeds inside the bar
                    spread = np.linspace(-0.25, 0.25, len(vals)) * width if len(vals) > 1 else np.zeros(len(vals))
                    ax.scatter(x[i] + offset + spread, vals, color=f"C{j}", marker=markers[j % len(markers)],
                               zorder=3, label=f"config {tc}" if i == 0 else None)
            ax.set_xticks(x)
            ax.set_xticklabels(methods, rotation=45, ha="right")
            ax.set_title(label + (" (%)" if scale != 1 else ""))
        if len(tcs) > 1:
            axes[0][-1].legend()
        seeds = sorted(int(s) for s in metrics["seed"].dropna().unique())
        fig.suptitle(f"Per-seed results ({cfg['name']}, seeds {', '.join(map(str, seeds))})")
        return save(fig, out, cfg["report"]["figures"]["dpi"])



def forest_figure(paired: pd.DataFrame, cfg: dict, out: str | os.PathLike,
                  style_file: str | os.PathLike | None = None) -> Path:
    """Δ vs the baseline (% of the baseline, CI) per method, one panel per paired Table 2 metric."""
    base = cfg["report"]["table3"]["baseline"]
    vs = paired[paired["versus"] == base]
    panels = [(label, ref) for label, ref in cfg["report"]["table2"]["columns"].items()
              if ((vs["domain"] == ref["domain"]) & (vs["metric"] == ref["metric"])).any()]
    if not panels:
        raise ValueError(f"{out}: no paired comparison against {base!r} for any Table 2 column")
    methods = [m for m in cfg["report"]["table2"]["methods"] if m != base and m in set(vs["method"])]
    tcs = [tc for tc in cfg["token_configs"] if tc in set(vs["token_config"].astype(str))]
    y = np.arange(len(methods))[::-1]
    with style(style_file):
        ncol = min(4, len(panels))
        nrow = int(np.ceil(len(panels) / ncol))
        fig, axes = plt.subplots(nrow, ncol, squeeze=False, sharey=True,
                                 figsize=(3.2 * ncol, 0.35 * len(methods) * nrow + 1.2 * nrow + 0.6))
        for ax, (label, ref) in zip(axes.flat, panels):
            sel = vs[(vs["domain"] == ref["domain"]) & (vs["metric"] == ref["metric"])]
            for j, tc in enumerate(tcs):
                off = (j - (len(tcs) - 1) / 2) * 0.25
                for i, m in enumerate(methods):
                    r = sel[(sel["token_config"].astype(str) == tc) & (sel["method"] == m)]
                    if r.empty:
                        continue
                    r = r.iloc[0]
                    lo, hi = r["rel_pct"] - r["rel_ci_low"], r["rel_ci_high"] - r["rel_pct"]
                    ax.errorbar(r["rel_pct"], y[i] + off, xerr=[[max(lo, 0)], [max(hi, 0)]], fmt="o", color=f"C{j}",
                                mfc=f"C{j}" if bool(r["resolved"]) else "white", capsize=2,
                                label=f"config {tc}" if i == 0 else None)
            ax.axvline(0.0, color="0.4", linewidth=0.8)
            lower = ref["metric"] not in ("event_top1", "mos_ovrl", "spk_sim")
            ax.set_title(f"{label} ({'lower' if lower else 'higher'} is better)", fontsize="small")
            ax.set_xlabel(f"Δ vs {base} (% of {base})")
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_yticks(y)
            ax.set_yticklabels([method_label(m, cfg["methods"][m]) for m in methods])
        axes.flat[0].legend(fontsize="x-small")
        level = int(round(100 * float(cfg["eval"]["ci_level"])))
        fig.suptitle(f"Paired differences vs {base} with {level} % CIs (seeds x clips bootstrap; filled: "
                     f"resolved), {cfg['name']}", fontsize="small")
        fig.tight_layout()
        return save(fig, out, cfg["report"]["figures"]["dpi"])
