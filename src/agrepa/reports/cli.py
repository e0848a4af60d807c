"""``agrepa report ...``: tables and figures from the workflow's cached results.

    agrepa report metrics      --eval E.json... [--reference R.json] --out results/metrics.csv
    agrepa report table1       --probes P.csv... --out results/table1.csv
    agrepa report table2       --metrics results/metrics.csv --out results/table2.csv --vs-paper V.csv
    agrepa report table3       --metrics M --convergence C.csv... --selection S.json... --out T.csv --vs-paper V.csv
    agrepa report paired       --eval E.json... [--clips-out results/clips.csv] --out results/paired.csv
    agrepa report summary      --metrics M --paired P --out results/summary.md
    agrepa report forest       --paired P [--style S] --out results/figures/forest.png
    agrepa report figure1      --probes P.csv... [--style S] --out results/figures/figure1_A.png
    agrepa report layer-scores --probes P.csv... [--style S] --out results/figures/layer_scores_A.png
    agrepa report convergence  --convergence C.csv... [--style S] --out results/figures/convergence_A.png
    agrepa report seed-scatter --metrics M [--style S] --out results/figures/seed_scatter.png
    agrepa report lsac-table   --runs DIR... --out results/table_l1.csv
    agrepa report lsac-figure  --table results/table_l1.csv --token-config A [--style S] --out results/figures/figure_l2_A.png
    agrepa report lsac-probe-figure --probe L.csv... [--probes P.csv...] --token-config A [--style S] --out ...
    agrepa report table4       --eval ARCH:E.json... --probes ARCH:P.csv... --selection ARCH:S.json... --out T.csv --vs-paper V.csv
    agrepa report table4-figure --table V.csv [--style S] --out results/figures/table4.png
    agrepa report rr-table1    --metrics results/reports/metrics_rr_r1.csv --out results/table_r1.csv
    agrepa report rr-table2    --metrics results/reports/metrics_rr_r2.csv --out results/table_r2.csv
    agrepa report rr-figure3   --eval E.json... [--style S] --data D.csv --out results/figures/figure_r3.png

table2/table3 also write our numbers beside the paper's to --vs-paper.
"""
from __future__ import annotations

import logging

from .. import config as config_mod
from .. import io

CONFIG_KEYS = ("name", "report.figures.dpi", "selection.k")  # config sections this module reads

log = logging.getLogger(__name__)


def cmd_metrics(args) -> int:
    from . import tables  # pandas/matplotlib: imported when the subcommand runs

    cfg = config_mod.from_args(args)
    df = tables.metrics_frame(args.eval, args.reference, experiment=cfg["name"])
    io.write_csv(args.out, df)
    log.info("wrote %s (%d rows from %d evaluations)", args.out, len(df), len(args.eval))
    return 0


def _write_table(args, build) -> int:
    """The handlers that write one table: ``build(cfg)`` (a DataFrame) to ``--out``."""
    io.write_csv(args.out, build(config_mod.from_args(args)))
    log.info("wrote %s", args.out)
    return 0


def cmd_table1(args) -> int:
    from . import probes as probe_reports  # pandas/matplotlib: imported when the subcommand runs

    return _write_table(args, lambda cfg: probe_reports.table1(args.probes, k=int(cfg["selection"]["k"])))


def cmd_paired(args) -> int:
    from . import paired  # numpy/pandas: imported when the subcommand runs

    cfg = config_mod.from_args(args)
    clips = paired.clips_frame(args.eval)
    if args.clips_out:
        io.write_csv(args.clips_out, clips)
    df = paired.paired_frame(clips, cfg)
    io.write_csv(args.out, df)
    log.info("wrote %s (%d comparisons, %d resolved)", args.out, len(df), int(df["resolved"].sum()) if len(df) else 0)
    return 0


def _paired_or_none(path):
    from . import paired

    return paired.read_paired(path) if path else None


def cmd_table2(args) -> int:
    from . import tables  # pandas/matplotlib: imported when the subcommand runs

    cfg = config_mod.from_args(args)
    table = tables.table2(tables.read_metrics(args.metrics), cfg, _paired_or_none(args.paired))
    io.write_csv(args.out, table)
    io.write_csv(args.vs_paper, tables.table2_vs_paper(table, cfg))
    log.info("wrote %s and %s", args.out, args.vs_paper)
    return 0


def cmd_table3(args) -> int:
    from . import tables  # pandas/matplotlib: imported when the subcommand runs

    cfg = config_mod.from_args(args)
    table = tables.table3(tables.read_metrics(args.metrics), tables.convergence_frame(args.convergence),
                          tables.read_selections(args.selection), cfg, _paired_or_none(args.paired))
    io.write_csv(args.out, table)
    io.write_csv(args.vs_paper, tables.table3_vs_paper(table))
    log.info("wrote %s and %s", args.out, args.vs_paper)
    return 0


def cmd_summary(args) -> int:
    from . import paired, summary, tables

    cfg = config_mod.from_args(args)
    text = summary.summary_markdown(paired.read_paired(args.paired), tables.read_metrics(args.metrics), cfg)
    io.write_text(args.out, text)
    log.info("wrote %s", args.out)
    return 0


def cmd_forest(args) -> int:
    from . import figures, paired

    cfg = config_mod.from_args(args)
    figures.forest_figure(paired.read_paired(args.paired), cfg, args.out, style_file=args.style)
    return 0


def cmd_figure1(args) -> int:
    from . import figures, probes as probe_reports  # pandas/matplotlib: imported when the subcommand runs

    config_mod.from_args(args)
    with figures.style(args.style):
        probe_reports.figure1(probe_reports.load_probes(args.probes), args.out)
    return 0


def cmd_layer_scores(args) -> int:
    from . import figures, probes as probe_reports  # pandas/matplotlib: imported when the subcommand runs

    config_mod.from_args(args)
    with figures.style(args.style):
        probe_reports.probe_bars(probe_reports.load_probes(args.probes), args.out)
    return 0


def cmd_convergence(args) -> int:
    from . import figures, tables  # pandas/matplotlib: imported when the subcommand runs

    cfg = config_mod.from_args(args)
    conv = tables.convergence_frame(args.convergence)
    tcs = sorted(set(conv["token_config"]))
    threshold = tables.convergence_threshold(conv, cfg, tcs[0]) if len(tcs) == 1 else float("nan")
    figures.convergence_figure(conv, cfg, args.out, threshold=threshold, style_file=args.style)
    return 0


def cmd_seed_scatter(args) -> int:
    from . import figures, tables  # pandas/matplotlib: imported when the subcommand runs

    cfg = config_mod.from_args(args)
    metrics = tables.read_metrics(args.metrics)
    metrics = metrics[metrics["method"] != tables.REFERENCE_METHOD]
    figures.seed_scatter(metrics, cfg, args.out, style_file=args.style)
    return 0


def cmd_lsac_table(args) -> int:
    from . import lsac  # pandas: imported when the subcommand runs

    return _write_table(args, lambda cfg: lsac.table_l1(*lsac.read_runs(args.runs), cfg))


def cmd_rr_table1(args) -> int:
    from . import rr, tables  # pandas: imported when the subcommand runs

    return _write_table(args, lambda cfg: rr.table_r1(tables.read_metrics(args.metrics), cfg))


def cmd_lsac_figure(args) -> int:
    import pandas as pd

    from . import lsac_figures  # pandas/matplotlib: imported when the subcommand runs

    cfg = config_mod.from_args(args)
    lsac_figures.figure_l2(pd.read_csv(args.table), cfg, args.token_config, args.out, style_file=args.style)
    return 0


def cmd_lsac_probe_figure(args) -> int:
    import pandas as pd

    from . import lsac_figures  # pandas/matplotlib: imported when the subcommand runs

    cfg = config_mod.from_args(args)
    probe = pd.concat([pd.read_csv(p) for p in args.probe], ignore_index=True)
    foga = pd.concat([pd.read_csv(p) for p in args.probes], ignore_index=True) if args.probes else None
    lsac_figures.probe_figure(probe, foga, cfg, args.token_config, args.out, style_file=args.style)
    return 0


def cmd_table4(args) -> int:
    from . import table4 as t4  # pandas/matplotlib: imported when the subcommand runs

    cfg = config_mod.from_args(args)
    evals = t4.load_evals(t4.split_tagged(args.eval, "eval"))
    probes = t4.read_tagged_probes(t4.split_tagged(args.probes, "probes"))
    selections = t4.read_tagged_selections(t4.split_tagged(args.selection, "selection"))
    table = t4.table4(evals, probes, selections, cfg)
    io.write_csv(args.out, table)
    io.write_csv(args.vs_paper, t4.table4_vs_paper(table, cfg))
    log.info("wrote %s and %s", args.out, args.vs_paper)
    return 0


def cmd_table4_figure(args) -> int:
    from . import figures, table4 as t4  # pandas/matplotlib: imported when the subcommand runs

    cfg = config_mod.from_args(args)
    with figures.style(args.style):
        t4.figure(t4.read_vs_paper(args.table), args.out, dpi=int(cfg["report"]["figures"]["dpi"]))
    return 0


def _register_table4(add) -> None:
    """``report table4`` and ``report table4-figure`` (``add`` makes a subcommand parser)."""
    q = add("table4", cmd_table4, "Table 4: AG-REPA on other backbones (+ our numbers beside the paper's)")
    q.add_argument("--vs-paper", required=True, help="output: Table 4 beside the paper's numbers")
    q.add_argument("--eval", nargs="+", required=True, help="ARCH:eval JSON at <tc>/seed<N>/<method>.json")
    q.add_argument("--probes", nargs="+", required=True, help="ARCH:probes.csv of each architecture's warm-ups")
    q.add_argument("--selection", nargs="*", default=[], help="ARCH:FoG-A selection JSON at <tc>/seed<N>/foga.json")

    q = add("table4-figure", cmd_table4_figure, "Table 4's relative changes, ours vs the paper's")
    q.add_argument("--table", required=True, help="Table 4 beside the paper's numbers (report table4 --vs-paper)")
    q.add_argument("--style", default=None, help="matplotlib style file")


def cmd_rr_table2(args) -> int:
    from . import rr, tables  # pandas: imported when the subcommand runs

    return _write_table(args, lambda cfg: rr.table_r2(tables.read_metrics(args.metrics), cfg))


def cmd_rr_figure3(args) -> int:
    from . import figures, rr  # pandas/matplotlib: imported when the subcommand runs

    cfg = config_mod.from_args(args)
    frame = rr.figure_r3_frame(args.eval, cfg)
    io.write_csv(args.data, frame)
    with figures.style(args.style):
        rr.figure_r3(frame, cfg, args.out)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="tables and figures from cached results",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="report_command", metavar="WHAT")
    sub.required = True

    def add(name, func, help_text):
        q = sub.add_parser(name, help=help_text)
        config_mod.add_cli_args(q)
        q.add_argument("--out", required=True, help="output file")
        q.set_defaults(func=func)
        return q

    q = add("metrics", cmd_metrics, "tidy metrics.csv from evaluation JSONs")
    q.add_argument("--eval", nargs="+", required=True, help="eval JSONs at <tc>/seed<N>/<method>.json")
    q.add_argument("--reference", default=None, help="ground-truth evaluation JSON")

    q = add("table1", cmd_table1, "Table 1 (top-k layers by LASP and FoG-A)")
    q.add_argument("--probes", nargs="+", required=True, help="probes.csv files")

    q = add("paired", cmd_paired, "paired differences between methods (bootstrap CI, permutation p)")
    q.add_argument("--eval", nargs="+", required=True, help="eval JSONs at <tc>/seed<N>/<method>.json")
    q.add_argument("--clips-out", default=None, help="also write the per-clip values (clips.csv)")

    q = add("table2", cmd_table2, "Table 2 (+ our numbers beside the paper's)")
    q.add_argument("--metrics", required=True, help="metrics.csv")
    q.add_argument("--vs-paper", required=True, help="output: Table 2 beside the paper's numbers")
    q.add_argument("--paired", default=None, help="paired.csv: adds the Δ vs baseline columns")

    q = add("table3", cmd_table3, "Table 3 (+ our numbers beside the paper's)")
    q.add_argument("--metrics", required=True, help="metrics.csv")
    q.add_argument("--vs-paper", required=True, help="output: Table 3 beside the paper's numbers")
    q.add_argument("--convergence", nargs="+", required=True, help="convergence CSVs at <tc>/seed<N>/<method>.csv")
    q.add_argument("--selection", nargs="+", required=True, help="selection JSONs at <tc>/seed<N>/<strategy>.json")
    q.add_argument("--paired", default=None, help="paired.csv: adds the Δ vs baseline columns")

    q = add("summary", cmd_summary, "results/summary.md: what the tables show, in words")
    q.add_argument("--metrics", required=True, help="metrics.csv")
    q.add_argument("--paired", required=True, help="paired.csv")

    q = add("forest", cmd_forest, "forest plot of the paired differences vs the baseline")
    q.add_argument("--paired", required=True, help="paired.csv")
    q.add_argument("--style", default=None, help="matplotlib style file")

    for name, func, what in (("figure1", cmd_figure1, "Figure 1 (LASP vs FoG-A heatmaps)"),
                             ("layer-scores", cmd_layer_scores, "per-layer FoG-A / LASP bars")):
        q = add(name, func, what)
        q.add_argument("--probes", nargs="+", required=True, help="probes.csv files (one token config)")
        q.add_argument("--style", default=None, help="matplotlib style file")

    q = add("convergence", cmd_convergence, "convergence curves (held-out FM loss or FAD vs. step) per method")
    q.add_argument("--convergence", nargs="+", required=True, help="held-out loss or FAD curve CSVs")
    q.add_argument("--style", default=None, help="matplotlib style file")

    _register_table4(add)

    q = add("seed-scatter", cmd_seed_scatter, "per-seed values of the Table 2 metrics")
    q.add_argument("--metrics", required=True, help="metrics.csv")
    q.add_argument("--style", default=None, help="matplotlib style file")

    q = add("lsac-table", cmd_lsac_table, "Table L1 (attention caching vs fewer steps)")
    q.add_argument("--runs", nargs="+", required=True, help="agrepa lsac-eval output directories")

    q = add("lsac-figure", cmd_lsac_figure, "Figure L2 (GFLOPs per clip vs quality)")
    q.add_argument("--table", required=True, help="table_l1.csv")
    q.add_argument("--token-config", required=True, help="token config of the figure")
    q.add_argument("--style", default=None, help="matplotlib style file")

    q = add("lsac-probe-figure", cmd_lsac_probe_figure, "attention convergence heatmaps beside FoG-A")
    q.add_argument("--probe", nargs="+", required=True, help="lsac_probe.csv files")
    q.add_argument("--probes", nargs="*", default=None, help="probes.csv files of the warm-ups (FoG-A)")
    q.add_argument("--token-config", required=True, help="token config of the figure")
    q.add_argument("--style", default=None, help="matplotlib style file")

    register_rr(add)


def register_rr(add) -> None:
    """Seed 003's report subcommands (``add``: as in :func:`register`)."""
    for name, func, what in (("rr-table1", cmd_rr_table1, "Table R1 (seed 003: RR methods, paired deltas)"),
                             ("rr-table2", cmd_rr_table2, "Table R2 (seed 003: lambda x CFG rate)")):
        q = add(name, func, what)
        q.add_argument("--metrics", required=True, help="metrics CSV of the RR runs (agrepa report metrics)")

    q = add("rr-figure3", cmd_rr_figure3, "Figure R3 (seed 003: metrics vs sampling CFG scale)")
    q.add_argument("--eval", nargs="+", required=True, help="eval JSONs of the R3 methods at every CFG scale")
    q.add_argument("--data", required=True, help="output: the figure's tidy rows (CSV)")
    q.add_argument("--style", default=None, help="matplotlib style file")
