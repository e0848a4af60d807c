"""``agrepa probe`` (FoG-A, LASP, gradient norm of a warm-up checkpoint) and ``agrepa select``."""
from __future__ import annotations

import logging

from .. import config as config_mod
from ..training.cli import add_data_arguments, data_paths

CONFIG_KEYS = ('selection.foga_t', 'selection.k', 'selection.mode')  # config sections this module reads

log = logging.getLogger(__name__)

PROBE_NAMES = "foga,lasp,gradnorm"


def cmd_probe(args) -> int:
    from .. import io
    from ..device import set_threads
    from .probes import probe_checkpoint  # stage modules are imported when their subcommand runs

    cfg = config_mod.from_args(args)
    set_threads(args.threads)
    df = probe_checkpoint(cfg, args.ckpt, data_paths(args), split=args.split, seed=args.seed, token_config=args.token_config,
                          probes=[p.strip() for p in args.probes.split(",") if p.strip()])
    io.write_csv(args.out, df)
    log.info("wrote %s (%d rows)", args.out, len(df))
    return 0


def cmd_select(args) -> int:
    from .. import io
    from .records import read_probes
    from .selection import select

    cfg = config_mod.from_args(args)
    k = int(args.k if args.k is not None else cfg["selection"]["k"])
    foga_t = args.foga_t if args.foga_t is not None else cfg["selection"]["foga_t"]
    record = select(read_probes(args.probes), args.strategy, k, args.seed, foga_t, source=str(args.probes),
                    mode=cfg["selection"]["mode"])
    io.write_json(args.out, record)
    for key, sel in record["sets"].items():
        log.info("%s top-%d layers (%s) %s weights %s", args.strategy, k, key, sel["layers"],
                 [round(w, 4) for w in sel["weights"]])
    log.info("mode %s -> %s", record["mode"], args.out)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("probe", help="FoG-A, LASP and gradient-norm probes of a warm-up checkpoint")
    config_mod.add_cli_args(p)
    p.add_argument("--ckpt", required=True, help="warm-up checkpoint (final.pt)")
    add_data_arguments(p)
    p.add_argument("--seed", type=int, default=None, help="the run's seed for the CSV (default: the checkpoint's)")
    p.add_argument("--token-config", default=None,
                   help="token config name for the CSV (default: token store meta, else its directory name)")
    p.add_argument("--split", default="train", help="manifest split to probe (the paper: train)")
    p.add_argument("--probes", default=PROBE_NAMES, help="comma list of foga,lasp,gradnorm")
    p.add_argument("--out", required=True, help="probes.csv")
    p.set_defaults(func=cmd_probe)

    p = subparsers.add_parser("select", help="top-K layer selection and weights from probe scores")
    config_mod.add_cli_args(p)
    p.add_argument("--probes", required=True, help="probes.csv of one run (agrepa probe)")
    p.add_argument("--strategy", required=True, choices=config_mod.STRATEGIES)
    p.add_argument("--k", type=int, default=None, help="number of layers (default: selection.k)")
    p.add_argument("--seed", type=int, required=True, help="the run's seed (draws the random layers)")
    p.add_argument("--foga-t", default=None, help="'all' or one t of the probe grid (default: selection.foga_t)")
    p.add_argument("--out", required=True, help="selection JSON")
    p.set_defaults(func=cmd_select)
