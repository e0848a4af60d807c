"""``agrepa`` subcommands for attention caching (seed 004): ``lsac-probe`` (attention
convergence over the ODE steps and causal freezing), ``lsac-select`` (cache plans) and
``lsac-eval`` (the runs behind Table L1 / Figure L2).

A stage of its own (not in generation's or evaluation's CLI): a rule's config hash covers the
sections a module reaches through its imports, so LSAC commands registered there would make
editing ``lsac.*`` re-run every sampling and evaluation job. Each LSAC rule hashes the science
module it runs (``workflow/rules/lsac.smk``), so editing a budget re-plans without re-probing.
"""
from __future__ import annotations

import logging

from .. import config as config_mod

log = logging.getLogger(__name__)


def _load_run(args):
    """(config with the checkpoint's model section and CFG mode, loaded run, device)."""
    from ..device import resolve_device, set_threads
    from ..training.checkpoint import load_run  # stage modules are imported when their subcommand runs

    cfg = config_mod.from_args(args)
    set_threads(args.threads)
    from ..generation.sampling import run_config

    run = load_run(args.ckpt)  # the EMA weights, as `agrepa sample` reads them
    return {**run_config(cfg, run.cfg), "model": run.cfg["model"]}, run, resolve_device(cfg)


def cmd_lsac_probe(args) -> int:
    from .. import io
    from ..training.cli import data_paths
    from .probe import lsac_probe

    cfg, run, device = _load_run(args)
    df = lsac_probe(run.model, cfg, data_paths(args), args.seed, args.branch or run.method, args.token_config, device)
    io.write_csv(args.out, df)
    log.info("wrote %d rows to %s", len(df), args.out)
    return 0


def cmd_lsac_select(args) -> int:
    """Every plan of ``lsac.strategies`` x ``lsac.budgets`` -> ``--out-dir/<name>.json``, then
    ``index.json`` (written last: its presence marks a complete directory)."""
    from pathlib import Path

    import pandas as pd

    from .. import io
    from .plan import write_plan
    from .selection import select_plans

    cfg = config_mod.from_args(args)
    if not Path(args.probe).exists():
        raise FileNotFoundError(f"{args.probe}: LSAC probe CSV not found (run `agrepa lsac-probe` first)")
    plans = select_plans(cfg, pd.read_csv(args.probe), args.seed, str(args.probe))
    out = Path(args.out_dir)
    for plan in plans:
        write_plan(out / f"{plan.name}.json", plan)
        log.info("%s: %.1f %% of the attention reused, cells %s", plan.name, 100 * plan.attention_savings(),
                 plan.cells())
    io.write_json(out / "index.json", {"plans": [p.name for p in plans], "source": str(args.probe),
                                       "seed": int(args.seed)})
    return 0


def cmd_lsac_eval(args) -> int:
    from pathlib import Path

    from .. import io
    from ..evaluation.cli import tokenizer_dirs
    from ..training.cli import data_paths
    from .experiment import lsac_experiment, read_plans

    cfg, run, device = _load_run(args)
    variants, clips = lsac_experiment(run.model, cfg, data_paths(args), read_plans(args.plans), args.seed,
                                      args.branch or run.method, args.token_config, device,
                                      tokenizer_dirs(args.tokenizers), args.teacher_dir)
    io.write_csv(Path(args.out_dir) / "variants.csv", variants)
    io.write_csv(Path(args.out_dir) / "clips.csv", clips)
    return 0


def _model_args(p) -> None:
    p.add_argument("--ckpt", required=True, help="branch checkpoint (final.pt)")
    p.add_argument("--manifest", required=True, help="manifest.csv")
    p.add_argument("--mels", required=True, help="mel store directory")
    p.add_argument("--tokens", required=True, help="token store directory")
    p.add_argument("--seed", type=int, required=True, help="sampling seed (noise and prompts; the run's seed)")
    p.add_argument("--token-config", required=True, choices=["A", "B"], help="token config (the CSVs' config column)")
    p.add_argument("--branch", default=None, help="the branch's name in the outputs (default: the checkpoint's)")


def register(subparsers) -> None:
    p = subparsers.add_parser("lsac-probe", help="attention convergence over the ODE steps + causal freezing")
    config_mod.add_cli_args(p)
    _model_args(p)
    p.add_argument("--out", required=True, help="tidy probe CSV")
    p.set_defaults(func=cmd_lsac_probe)

    p = subparsers.add_parser("lsac-select", help="attention-caching plans (LSAC, causal LSAC, controls) per budget")
    config_mod.add_cli_args(p)
    p.add_argument("--probe", required=True, help="probe.csv of agrepa lsac-probe")
    p.add_argument("--seed", type=int, required=True, help="the run's seed (draws the random-layer control)")
    p.add_argument("--out-dir", required=True, help="directory for <plan>.json and index.json")
    p.set_defaults(func=cmd_lsac_select)

    p = subparsers.add_parser("lsac-eval", help="Table L1 runs: step reduction vs attention caching")
    config_mod.add_cli_args(p)
    _model_args(p)
    p.add_argument("--plans", required=True, help="plan directory (agrepa lsac-select)")
    p.add_argument("--tokenizers", nargs="+", default=None, metavar="STREAM=DIR",
                   help="fitted tokenizers for TER (ter in lsac.metrics): speech=DIR audio=DIR [beats=DIR]")
    p.add_argument("--teacher-dir", default=None, help="trained events teacher (the acoustic teacher of TER)")
    p.add_argument("--out-dir", required=True, help="directory for variants.csv and clips.csv")
    p.set_defaults(func=cmd_lsac_eval)
