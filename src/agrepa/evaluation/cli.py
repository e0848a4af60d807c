"""``agrepa evaluate`` (every metric of a sample directory or the ground-truth floor),
``agrepa convergence`` (FAD per kept snapshot) and ``agrepa listening-test``."""
from __future__ import annotations

import logging

from .. import config as config_mod

CONFIG_KEYS = ("eval.listening_test", "sample.seed")  # config sections this module reads

log = logging.getLogger(__name__)


def cmd_evaluate(args) -> int:
    from .. import io
    from ..device import set_threads
    from .evaluate import evaluate  # stage modules are imported when their subcommand runs

    cfg = config_mod.from_args(args)
    set_threads(args.threads)
    result = evaluate(cfg, args.manifest, args.samples, args.reference, args.mels)
    io.write_json(args.out, result)
    for m in result["metrics"]:
        log.info("%s %s [%s] = %s (CI %s..%s, n=%s) %s", m["domain"], m["metric"], m["input"], m["value"],
                 m["ci_low"], m["ci_high"], m["n"], m["note"])
    return 0


def cmd_convergence(args) -> int:
    import pandas as pd

    from .. import io
    from ..device import resolve_device, set_threads
    from .evaluate import convergence_curve

    cfg = config_mod.from_args(args)
    set_threads(args.threads)
    seed = int(cfg["sample"]["seed"] if args.seed is None else args.seed)
    frames = [convergence_curve(cfg, r, args.manifest, args.mels, args.tokens, seed, device=resolve_device(cfg))
              for r in args.run]
    io.write_csv(args.out, pd.concat(frames, ignore_index=True))
    return 0


def cmd_listening_test(args) -> int:
    from .listening_test import method_names, write_listening_test

    cfg = config_mod.from_args(args)
    lt = cfg["eval"]["listening_test"]
    write_listening_test(args.samples, args.names or method_names(args.samples), args.out,
                         max_clips=lt["max_clips"] if args.max_clips is None else args.max_clips,
                         audio=args.audio or lt["audio"],
                         seed=int(cfg["sample"]["seed"] if args.seed is None else args.seed))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="WER, FAD, FAD-inf, MOS, speaker similarity with bootstrap CIs")
    config_mod.add_cli_args(p)
    p.add_argument("--samples", default=None, help="sample directory written by `agrepa sample`")
    p.add_argument("--manifest", required=True, help="manifest.csv (ground truth, transcripts, prompts)")
    p.add_argument("--reference", action="store_true",
                   help="score the ground truth (vocoder resynthesis + raw audio): the floor numbers")
    p.add_argument("--mels", default=None, help="mel store for --reference (default: computed from the audio)")
    p.add_argument("--out", required=True, help="evaluation JSON")
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("convergence", help="FAD at every kept snapshot of branch runs")
    config_mod.add_cli_args(p)
    p.add_argument("--run", nargs="+", required=True, help="branch run directories (with snapshots/)")
    p.add_argument("--manifest", required=True)
    p.add_argument("--mels", required=True)
    p.add_argument("--tokens", required=True)
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: sample.seed)")
    p.add_argument("--out", required=True, help="convergence CSV")
    p.set_defaults(func=cmd_convergence)

    p = subparsers.add_parser("listening-test", help="static blinded MOS listening page (HTML) + key JSON")
    config_mod.add_cli_args(p)
    p.add_argument("--samples", nargs="+", required=True, help="sample directories (one per method)")
    p.add_argument("--names", nargs="+", default=None, help="method names (default: from the paths)")
    p.add_argument("--max-clips", type=int, default=None,
                   help="clips per domain (default: eval.listening_test.max_clips)")
    p.add_argument("--audio", choices=["embed", "link"], default=None,
                   help="embed audio in the page or link blinded copies (default: eval.listening_test.audio)")
    p.add_argument("--seed", type=int, default=None, help="blinding seed (default: sample.seed)")
    p.add_argument("--out", required=True, help="HTML page; the key goes to <stem>.key.json beside it")
    p.set_defaults(func=cmd_listening_test)
