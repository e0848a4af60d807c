"""``agrepa plan``: jobs, GPU-hours and wall-clock per rule of a set of targets, before anything runs."""
from __future__ import annotations

import json

from .. import config as config_mod


def cmd_plan(args) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from .estimate import job_counts, plan, table, table4_backbones

    cfg = config_mod.from_args(args)
    if args.set:
        raise ValueError("agrepa plan: --set is not passed to Snakemake's dry run; put the keys in an overlay file")
    # Table 4's backbones are FLOP-counted while Snakemake's dry run (a subprocess) counts the jobs
    with ThreadPoolExecutor(1) as pool:
        dry_run = pool.submit(job_counts, args.config, args.targets)
        backbones = table4_backbones(cfg)
        counts = dry_run.result()
    p = plan(cfg, counts, backbones)
    print(json.dumps(p, indent=1) if args.json else table(p))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="jobs, estimated GPU-hours and wall-clock per rule of targets")
    config_mod.add_cli_args(p)
    p.add_argument("targets", nargs="*", help="Snakemake targets (default: the Snakefile's first rule, all)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (totals under total)")
    p.set_defaults(func=cmd_plan)
