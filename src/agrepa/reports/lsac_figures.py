"""Figure L2 (Pareto: sampling GFLOPs per clip vs quality) and the LSAC probe figure
(attention convergence over ODE steps beside FoG-A), from CSVs only.

* :func:`figure_l2`: one column per branch, one row per quality measure (mel SNR against
  the full run; WER / FAD against the ground truth where measured); naive step reduction
  as a line over S', LSAC and each control as a line over the budgets, the full run as a
  dashed vertical line (its mel SNR is infinite). Values are means over the seeds present.
* :func:`probe_figure`: per branch (rows), the layer x step heatmap of the relative change
  r_l(i) of the attention output (conditional half, mean over domains, log colour scale),
  the causal-freezing mel SNR (layer x freeze step), the warm-up checkpoint's FoG-A
  (layer x t, mean over domains and seeds) and a scatter of each layer's FoG-A against its
  mean freezing SNR, with Spearman's rho of FoG-A against the freezing SNR and against the
  mean r: are the functionally passive layers the cacheable ones?
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from .figures import save, style  # noqa: E402
from .lsac import QUALITY  # noqa: E402

CONFIG_KEYS = ("name", "report.figures")  # config sections this module reads

STRATEGY_LABELS = {"lsac": "LSAC", "causal": "causal LSAC (ours)", "random": "random layers", "pab": "all layers, alternate steps (PAB)",
                    "deepcache": "whole blocks, alternate steps (DeepCache/FORA)"}


def _panels(t: pd.DataFrame) -> list[tuple[str, str]]:
    out = [("mel_snr_db", "mel SNR vs full compute (dB)")]
    for metric, domain in QUALITY:
        col = f"{metric}_{domain}"
        if col in t and t[col].notna().any():
            out.append((col, f"{metric.upper()} {domain}"))
    return out


def _pareto_panel(ax, b: pd.DataFrame, col: str) -> None:
    full = b[b["strategy"] == "full"]
    steps = b[b["strategy"].isin(["steps"] + ([] if col == "mel_snr_db" else ["full"]))].sort_values("gflops_per_clip")
    ax.plot(steps["gflops_per_clip"], steps[col], marker="o", color="0.35", label="fewer Euler steps")
    for s, (_, r) in zip(steps["steps"], steps.iterrows()):
        ax.annotate(str(int(s)), (r["gflops_per_clip"], r[col]), fontsize=6, xytext=(2, 2),
                    textcoords="offset points")
    for i, (strategy, label) in enumerate(STRATEGY_LABELS.items()):
        g = b[b["strategy"] == strategy].sort_values("gflops_per_clip")
        if not g.empty:
            ax.plot(g["gflops_per_clip"], g[col], marker="os^Dv"[i], color=f"C{i}", label=label)
    if not full.empty:
        ax.axvline(float(full["gflops_per_clip"].iloc[0]), color="0.5", linestyle="--", linewidth=1,
                   label="full compute")
        if col != "mel_snr_db":
            ax.axhline(float(full[col].iloc[0]), color="0.5", linestyle=":", linewidth=1)


def figure_l2(table: pd.DataFrame, cfg: dict, token_config: str, out: str | os.PathLike,
              style_file: str | os.PathLike | None = None) -> Path:
    """Figure L2 for one token config (module docstring) from Table L1's rows."""
    t = table[table["config"].astype(str) == str(token_config)]
    if t.empty:
        raise ValueError(f"{out}: Table L1 has no rows for token config {token_config!r}")
    branches = list(dict.fromkeys(t["branch"]))
    panels = _panels(t)
    numeric = ["gflops_per_clip", "steps"] + [c for c, _ in panels]
    with style(style_file):
        w, h = plt.rcParams["figure.figsize"]
        fig, axes = plt.subplots(len(panels), len(branches), squeeze=False,
                                 figsize=(0.6 * w * len(branches), 0.7 * h * len(panels)))
        for j, branch in enumerate(branches):
            b = t[t["branch"] == branch].groupby(["variant", "strategy"], as_index=False, sort=False)[numeric].mean()
            for i, (col, label) in enumerate(panels):
                ax = axes[i][j]
                _pareto_panel(ax, b, col)
                ax.set_title(f"{branch}: {label}" if i == 0 else label)
                ax.set_xlabel("GFLOPs per clip (sampling, CFG)")
                ax.set_ylabel(label)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.06))
        seeds = ", ".join(str(int(s)) for s in sorted(t["seed"].unique()))
        fig.suptitle(f"Attention caching vs fewer steps, config {token_config} ({cfg['name']}, seeds {seeds}, "
                     f"S = {int(t[t['strategy'] == 'full']['steps'].iloc[0])})")
        fig.tight_layout()
        return save(fig, out, cfg["report"]["figures"]["dpi"])


def _heatmap(ax, m: pd.DataFrame, title: str, xlabel: str, cbar: str, log: bool, fmt: str = "{:g}") -> None:
    vals = m.to_numpy(float)
    finite = vals[np.isfinite(vals) & (vals > 0)] if log else vals[np.isfinite(vals)]
    norm = LogNorm(finite.min(), finite.max()) if log and finite.size and finite.min() < finite.max() else None
    im = ax.imshow(vals, aspect="auto", cmap="magma" if log else "viridis", norm=norm)
    ax.figure.colorbar(im, ax=ax, label=cbar)
    ax.set_xticks(range(len(m.columns)), [fmt.format(c) for c in m.columns], fontsize=6, rotation=90)
    ax.set_yticks(range(len(m.index)), [f"L{int(l)}" for l in m.index], fontsize=6)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer")
    ax.grid(False)


def _scatter(ax, r: pd.Series, freeze: pd.Series, foga: pd.Series) -> None:
    """Per layer: FoG-A (x) against the mean freezing mel SNR (y), with Spearman's rho of FoG-A
    against both the freezing SNR and the mean relative change r."""
    both = pd.concat([r.rename("r"), freeze.rename("freeze"), foga.rename("foga")], axis=1)
    both = both.replace([np.inf, -np.inf], np.nan)
    rho = {c: both[c].corr(both["foga"], method="spearman") if both[[c, "foga"]].dropna().shape[0] > 2
           else float("nan") for c in ("r", "freeze")}
    pts = both.dropna(subset=["freeze", "foga"])
    ax.scatter(pts["foga"], pts["freeze"], color="C0")
    for l, row in pts.iterrows():
        ax.annotate(f"L{int(l)}", (row["foga"], row["freeze"]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ax.set_title(f"Spearman rho(FoG-A, freeze SNR) = {rho['freeze']:.2f}, rho(FoG-A, r) = {rho['r']:.2f}",
                 fontsize=7)
    ax.set_xlabel("FoG-A (warm-up, mean over t)")
    ax.set_ylabel("freeze mel SNR (dB, mean over k)")


def probe_figure(probe: pd.DataFrame, foga_probes: pd.DataFrame | None, cfg: dict, token_config: str,
                 out: str | os.PathLike, style_file: str | os.PathLike | None = None) -> Path:
    """The LSAC probe figure for one token config (module docstring)."""
    p = probe[probe["config"].astype(str) == str(token_config)]
    if p.empty:
        raise ValueError(f"{out}: no LSAC probe rows for token config {token_config!r}")
    branches = list(dict.fromkeys(p["branch"]))
    foga = None
    if foga_probes is not None:
        f = foga_probes[(foga_probes["probe"] == "foga") & (foga_probes["layer"] >= 1)
                        & (foga_probes["config"].astype(str) == str(token_config))]
        foga = f.groupby(["layer", "t"])["score"].mean().unstack("t") if not f.empty else None
    with style(style_file):
        w, h = plt.rcParams["figure.figsize"]
        fig, axes = plt.subplots(len(branches), 4, squeeze=False, figsize=(2.2 * w, 0.9 * h * len(branches)))
        for ax, branch in zip(axes, branches):
            b = p[p["branch"] == branch]
            r = b[b["metric"] == "rel_change_cond"].groupby(["layer", "step"])["score"].mean().unstack("step")
            _heatmap(ax[0], r, f"{branch}: r_l(i), attention output", "ODE step i", "relative change", log=True)
            fz = b[b["metric"] == "freeze_mel_snr"].groupby(["layer", "step"])["score"].mean().unstack("step")
            if fz.empty:
                ax[1].set_axis_off()
            else:
                _heatmap(ax[1], fz, "freeze y_l from step k", "freeze step k", "mel SNR vs full (dB)", log=False)
            if foga is None:
                ax[2].set_axis_off()
                ax[3].set_axis_off()
                continue
            _heatmap(ax[2], foga, "FoG-A (warm-up)", "flow time t", "||v - v^(l)|| / ||v||", log=False,
                     fmt="{:.2f}")
            _scatter(ax[3], r.mean(axis=1), fz.mean(axis=1) if not fz.empty else r.mean(axis=1) * np.nan,
                     foga.mean(axis=1))
        seeds = ", ".join(str(int(s)) for s in sorted(p["seed"].unique()))
        fig.suptitle(f"Attention convergence over the ODE vs FoG-A, config {token_config} ({cfg['name']}, "
                     f"seeds {seeds})")
        fig.tight_layout()
        return save(fig, out, cfg["report"]["figures"]["dpi"])
