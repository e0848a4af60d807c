"""Table 4: AG-REPA on other flow-matching backbones (paper Sec. 5.4), from cached results only.

Rows: per architecture of ``report.table4.architectures``, its baseline and its AG-REPA
branch (``report.table4.baseline`` / ``.method``), token config ``report.table4.token_config``,
seeds ``report.table4.seeds``. Columns (``report.table4.columns``: label -> domain + metric):

* ``<label>``: mean ± std over seeds of the evaluation's value (as Table 2);
* ``Δ <label>`` on the AG-REPA row: the paired difference AG-REPA - baseline with its CI, as
  in Tables 2-3 (:mod:`agrepa.reports.paired`, :mod:`agrepa.evaluation.paired`: hierarchical
  bootstrap over seeds then clips, sign-flip permutation p-value, ``report.paired``
  resamples; ``*`` = resolved). Metrics scored per clip (``PAIRED_METRICS``: WER as word
  errors over reference words, MOS, ...) pair by seed and clip; set statistics (FAD) pair by
  seed only, one unit per seed (no CI with one seed);
* ``Top-3 FoG-A (speech)`` / ``(audio)``: the backbone's three units with the largest FoG-A
  (mean over the probe t grid and the seeds) per domain, by index and name (the paper does not
  report these); ``AG-REPA layers``: the sets the FoG-A selection gave training, per seed.

The comparison with the paper (``--vs-paper``): per architecture and column our baseline, AG-REPA and relative change
beside the paper's Table 4 (the DiT beside the paper's Table 2, speech). Figure: the relative
change per architecture and column, ours with its CI, the paper's as a marker.

Inputs are tagged with their architecture on the command line (``ARCH:PATH``), because the
default architecture's runs keep the untagged Table 2 paths.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .. import io
from ..evaluation import paired as stats
from . import paired
from .tables import (fmt_delta, fmt_mean_std, layers_text, mean_std, paper_reference, read_selections,
                     relative_change, run_of_path)

ARCH_LABELS = {"dit": "DiT", "voicebox": "Voicebox-style", "cosyvoice": "CosyVoice-style", "f5": "F5-TTS-style"}
PAPER_LABELS = {"dit": "DiT (paper Table 2, speech)", "voicebox": "Voicebox (Le et al., 2023)",
                "cosyvoice": "CosyVoice (Du et al., 2024)", "f5": "F5-TTS (Chen et al., 2025)"}
CONFIG_KEYS = ("eval.ci_level", "model.n_layers", "model.{arch}", "name", "report.decimals", "report.paired",
               "report.table4")  # config sections this module reads
DELTA_FIELDS = ("delta", "ci_low", "ci_high", "rel_pct", "p_value", "resolved", "n_seeds", "n_units", "note")


def unit_names(cfg: dict, arch: str) -> list[str]:
    """Names of the gated units of ``arch`` at the config's size (mirrors each backbone's
    ``unit_names``; a test checks they agree)."""
    if arch == "dit":
        return [f"block{l}" for l in range(1, cfg["model"]["n_layers"] + 1)]
    a = cfg["model"][arch]
    if arch == "voicebox":
        return [f"block{l}" for l in range(1, a["n_layers"] + 1)]
    if arch == "f5":
        return [f"text{c}" for c in range(1, a["conv_layers"] + 1)] + \
            [f"block{l}" for l in range(1, a["n_layers"] + 1)]
    if arch == "cosyvoice":
        stages = ["down1", "down2"] + [f"mid{i}" for i in range(1, a["n_mid"] + 1)] + ["up1", "up2"]
        return [n for s in stages for n in [f"{s}.res"] + [f"{s}.tf{b}" for b in range(1, a["n_blocks"] + 1)]]
    raise ValueError(f"report.table4.architectures: unknown architecture {arch!r}")


def split_tagged(items: Iterable[str], what: str) -> list[tuple[str, Path]]:
    """``ARCH:PATH`` arguments -> (arch, path)."""
    out = []
    for item in items:
        arch, sep, path = str(item).partition(":")
        if not sep or arch not in ARCH_LABELS:
            raise ValueError(f"--{what} {item!r}: expected ARCH:PATH with ARCH one of {sorted(ARCH_LABELS)}")
        out.append((arch, Path(path)))
    return out


@dataclass
class Runs:
    """The evaluations of every architecture: JSON by (arch, seed, method), per-clip rows by arch."""

    evals: dict[tuple[str, int, str], dict]
    clips: dict[str, pd.DataFrame]


def load_evals(tagged: Sequence[tuple[str, Path]]) -> Runs:
    """The tagged evaluation JSONs (each needs 'metrics' and 'clips'; path ``<tc>/seed<N>/<method>.json``)."""
    evals, paths = {}, {}
    for arch, path in tagged:
        data = io.read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), list):
            raise ValueError(f"{path}: an evaluation JSON needs a 'metrics' list")
        run = run_of_path(path)
        evals[(arch, run["seed"], run["method"])] = data
        paths.setdefault(arch, []).append(path)
    return Runs(evals, {arch: paired.clips_frame(p) for arch, p in paths.items()})


def metric_value(data: dict, domain: str, metric: str) -> float:
    for row in data["metrics"]:
        if row["domain"] == domain and row["metric"] == metric and row.get("input", "generated") == "generated":
            return float(row["value"]) if row["value"] is not None else math.nan
    return math.nan


def _no_delta(note: str, delta: float = math.nan, n_seeds: int = 0) -> dict:
    return {"delta": delta, "ci_low": math.nan, "ci_high": math.nan, "rel_pct": math.nan, "p_value": math.nan,
            "resolved": False, "n_seeds": n_seeds, "n_units": n_seeds, "note": note}


def _from_comparison(c: stats.Comparison, level: float, note: str) -> dict:
    return {"delta": c.delta, "ci_low": c.ci_low, "ci_high": c.ci_high, "rel_pct": c.rel_pct, "p_value": c.p_value,
            "resolved": c.resolved(1.0 - level), "n_seeds": c.n_seeds, "n_units": c.n_units, "note": note}


def delta_of(runs: Runs, arch: str, seeds: Sequence[int], base: str, method: str, ref: dict, cfg: dict) -> dict:
    """The paired AG-REPA - baseline difference of one column (module docstring): :data:`DELTA_FIELDS`."""
    level = float(cfg["eval"]["ci_level"])
    domain, metric = ref["domain"], ref["metric"]
    if metric in paired.PAIRED_METRICS:
        g = runs.clips.get(arch, pd.DataFrame(columns=paired.CLIP_COLUMNS))
        g = g[(g["metric"] == metric) & (g["domain"] == domain) & g["seed"].isin(list(seeds))]
        c = paired.compare_clips(g[g["method"] == method], g[g["method"] == base], metric, cfg, level)
        return _no_delta("no paired clips") if c is None else _from_comparison(c, level, "paired by seed and clip")
    pairs = [(metric_value(runs.evals[(arch, s, method)], domain, metric),
              metric_value(runs.evals[(arch, s, base)], domain, metric)) for s in seeds
             if (arch, s, base) in runs.evals and (arch, s, method) in runs.evals]
    pairs = [(a, b) for a, b in pairs if np.isfinite(a) and np.isfinite(b)]
    if len(pairs) < 2:
        d = pairs[0][0] - pairs[0][1] if pairs else math.nan
        return _no_delta("one seed: no CI (a set statistic is paired by seed only)" if pairs else "no finite values",
                         d, len(pairs))
    one = [np.ones(1)] * len(pairs)
    units = stats.PairedUnits([np.array([a]) for a, _ in pairs], one, [np.array([b]) for _, b in pairs], one)
    pc = cfg["report"]["paired"]
    c = stats.compare(units, 1.0, int(pc["bootstrap"]), int(pc["permutations"]), int(pc["seed"]), level)
    return _from_comparison(c, level, "paired by seed (a set statistic)")


def top_foga(probes: pd.DataFrame, names: Sequence[str], k: int = 3) -> dict[str, str]:
    """Per domain, the k units with the largest FoG-A (mean over t and seeds): 'L3 (name), ...'."""
    out = {}
    f = probes[probes["probe"] == "foga"]
    for domain, d in f.groupby("domain"):
        score = d.groupby("layer")["score"].mean().sort_values(ascending=False, kind="stable")
        out[domain] = ", ".join(f"L{int(l)} ({names[int(l) - 1]})" if 0 < l <= len(names) else f"L{int(l)}"
                                for l in score.index[:k])
    return out


def read_tagged_probes(tagged: Sequence[tuple[str, Path]]) -> dict[str, pd.DataFrame]:
    frames: dict[str, list[pd.DataFrame]] = {}
    for arch, path in tagged:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: probes CSV not found")
        df = pd.read_csv(path)
        missing = [c for c in ("domain", "probe", "layer", "t", "score") if c not in df.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
        frames.setdefault(arch, []).append(df)
    return {a: pd.concat(f, ignore_index=True) for a, f in frames.items()}


def read_tagged_selections(tagged: Sequence[tuple[str, Path]]) -> dict[str, pd.DataFrame]:
    """Selection JSONs (``agrepa select``) per architecture, as :func:`agrepa.reports.tables.read_selections` rows."""
    paths: dict[str, list[Path]] = {}
    for arch, path in tagged:
        paths.setdefault(arch, []).append(path)
    return {arch: read_selections(p) for arch, p in paths.items()}


def _row(runs: Runs, arch: str, m: str, seeds: Sequence[int], t4: dict, dec: int) -> dict:
    label = ARCH_LABELS[arch] if m == t4["baseline"] else "+ AG-REPA"
    row = {"Architecture": ARCH_LABELS[arch], "Method": label, "arch": arch, "method": m}
    for col, ref in t4["columns"].items():
        vals = [metric_value(runs.evals[(arch, s, m)], ref["domain"], ref["metric"]) for s in seeds
                if (arch, s, m) in runs.evals]
        mean, std, n = mean_std(vals)
        row.update({col: fmt_mean_std(mean, std, dec), f"{col}_mean": mean, f"{col}_std": std,
                    f"{col}_n_seeds": n})
    return row


def table4(runs: Runs, probes: dict[str, pd.DataFrame], selections: dict[str, pd.DataFrame],
           cfg: dict) -> pd.DataFrame:
    """Table 4 (module docstring)."""
    t4, dec = cfg["report"]["table4"], cfg["report"]["decimals"]
    seeds, rows = [int(s) for s in t4["seeds"]], []
    for arch in t4["architectures"]:
        names = unit_names(cfg, arch)
        top = top_foga(probes[arch], names) if arch in probes else {}
        sel = selections.get(arch, pd.DataFrame(columns=["seed", "layers"]))
        for m in (t4["baseline"], t4["method"]):
            if not any((arch, s, m) in runs.evals for s in seeds):
                raise ValueError(f"table4: no evaluation of {arch} / {m} for seeds {seeds}")
            row = _row(runs, arch, m, seeds, t4, dec)
            for col, ref in t4["columns"].items():
                d = delta_of(runs, arch, seeds, t4["baseline"], m, ref, cfg) if m == t4["method"] else None
                row[f"Δ {col}"] = "" if d is None else fmt_delta(d, dec)
                row.update({f"{col}_{k}": (d[k] if d else math.nan) for k in DELTA_FIELDS})
            row.update({"Top-3 FoG-A (speech)": top.get("speech", ""), "Top-3 FoG-A (audio)": top.get("audio", ""),
                        "AG-REPA layers": layers_text(sel[sel["seed"].isin(seeds)]), "n_units": len(names),
                        "token_config": t4["token_config"], "seeds": " ".join(map(str, seeds)),
                        "experiment": cfg["name"]})
            rows.append(row)
    return pd.DataFrame(rows)


def table4_vs_paper(table: pd.DataFrame, cfg: dict, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per architecture and column: ours and the paper's baseline, AG-REPA and relative change."""
    paper = paper_reference() if paper is None else paper
    paper = paper[paper["table"] == "table4"]
    t4, rows = cfg["report"]["table4"], []
    for arch in t4["architectures"]:
        ours = table[table["arch"] == arch].set_index("method")
        for col in t4["columns"]:
            def p(which):
                r = paper[(paper["method"] == f"{arch}:{which}") & (paper["metric"] == col)]
                return float(r["value"].iloc[0]) if len(r) else math.nan
            ob, om = (float(ours.loc[m, f"{col}_mean"]) for m in (t4["baseline"], t4["method"]))
            pb, pm = p("baseline"), p("ag_repa")
            orel, prel = relative_change(om, ob), relative_change(pm, pb)
            d = ours.loc[t4["method"]]
            rows.append({"arch": arch, "Architecture": ARCH_LABELS[arch], "paper_model": PAPER_LABELS[arch],
                         "metric": col, "ours_baseline": ob, "ours_ag_repa": om, "ours_delta": d[f"{col}_delta"],
                         "ours_ci_low": d[f"{col}_ci_low"], "ours_ci_high": d[f"{col}_ci_high"],
                         "ours_rel_pct": orel, "paper_baseline": pb, "paper_ag_repa": pm, "paper_rel_pct": prel,
                         "same_direction": bool(np.sign(orel) == np.sign(prel))
                         if np.isfinite(orel) and np.isfinite(prel) else None,
                         "experiment": cfg["name"]})
    return pd.DataFrame(rows)


def read_vs_paper(path: str | os.PathLike) -> pd.DataFrame:
    """Table 4 beside the paper (:func:`table4_vs_paper`), as written; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: Table 4 comparison CSV not found (run `agrepa report table4` first)")
    df = pd.read_csv(path)
    missing = [c for c in ("arch", "Architecture", "metric", "ours_baseline", "ours_rel_pct", "ours_ci_low",
                           "ours_ci_high", "paper_rel_pct") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    return df


def figure(vs: pd.DataFrame, out: str | os.PathLike, dpi: int = 150) -> Path:
    """Relative change AG-REPA vs baseline (%) per architecture, one panel per column: ours with
    its paired CI (scaled by our baseline), the paper's as an open marker."""
    from .figures import plt, save

    metrics = list(dict.fromkeys(vs["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 0.6 + 0.55 * vs["arch"].nunique()),
                             squeeze=False, sharey=True)
    for ax, metric in zip(axes[0], metrics):
        d = vs[vs["metric"] == metric].reset_index(drop=True)
        y = np.arange(len(d))[::-1]
        base = d["ours_baseline"].to_numpy(dtype=float)
        rel = d["ours_rel_pct"].to_numpy(dtype=float)
        lo = 100 * d["ours_ci_low"].to_numpy(dtype=float) / base
        hi = 100 * d["ours_ci_high"].to_numpy(dtype=float) / base
        err = np.vstack([np.where(np.isfinite(lo), rel - lo, 0), np.where(np.isfinite(hi), hi - rel, 0)])
        ax.errorbar(rel, y, xerr=np.abs(err), fmt="o", color="C0", capsize=3, label="ours (paired CI)")
        ax.plot(d["paper_rel_pct"], y, "D", mfc="none", color="C3", label="paper")
        ax.axvline(0, color="0.5", lw=0.8)
        ax.set_yticks(y, d["Architecture"])
        ax.set_title(metric)
        ax.set_xlabel("AG-REPA vs baseline (%)")
    axes[0][0].legend(loc="best", fontsize="small")
    fig.tight_layout()
    return save(fig, out, dpi)
