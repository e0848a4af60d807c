"""``agrepa heldout`` (held-out flow-matching loss of a branch's checkpoints), ``agrepa evaluate``
(every metric of sample directories or the ground-truth floor), ``agrepa convergence`` (FAD per
kept snapshot), ``agrepa listening-test`` and ``agrepa rsa`` (representational similarity of
generated clips, seed 003)."""
from __future__ import annotations

import logging

from .. import config as config_mod

CONFIG_KEYS = ("eval.listening_test", "sample.seed")  # config sections this module reads

log = logging.getLogger(__name__)


def tokenizer_dirs(items: list[str] | None) -> dict | None:
    """``--tokenizers STREAM=DIR ...`` as ``{stream: dir}`` (None when not given)."""
    if not items:
        return None
    out = {}
    for item in items:
        stream, sep, path = item.partition("=")
        if not sep or stream not in ("speech", "audio", "beats"):
            raise ValueError(f"--tokenizers: expected STREAM=DIR with STREAM in speech, audio, beats; got {item!r}")
        out[stream] = path
    return out


def cmd_heldout(args) -> int:
    from .. import io
    from ..device import resolve_device, set_threads
    from .heldout import heldout_curve, heldout_data

    cfg = config_mod.from_args(args)
    set_threads(args.threads)
    data = heldout_data(cfg, args.manifest, args.mels, args.tokens, args.semantic, args.acoustic)
    io.write_csv(args.out, heldout_curve(cfg, args.run, data, args.init, resolve_device(cfg), args.final_only))
    return 0


def cmd_evaluate(args) -> int:
    from .. import io
    from ..device import set_threads
    from .evaluate import build_models, evaluate  # stage modules are imported when their subcommand runs

    cfg = config_mod.from_args(args)
    set_threads(args.threads)
    if not args.reference and not args.samples:
        raise ValueError("evaluate: --samples is required unless --reference is given")
    samples = args.samples or [None]
    if len(samples) != len(args.out) or (args.heldout and len(args.heldout) != len(args.out)):
        raise ValueError(f"evaluate: {len(samples)} --samples, {len(args.out)} --out and "
                         f"{len(args.heldout or [])} --heldout: give one --out (and --heldout) per sample directory")
    models = build_models(cfg, ["speech", "audio"], tokenizer_dirs(args.tokenizers), args.teacher_dir,
                          args.classifier)
    for i, (samples_dir, out) in enumerate(zip(samples, args.out)):
        result = evaluate(cfg, args.manifest, samples_dir, args.reference, args.mels, models=models,
                          tokens_dir=args.tokens, heldout=args.heldout[i] if args.heldout else None)
        io.write_json(out, result)
        for m in result["metrics"]:
            log.info("%s %s [%s] = %s (CI %s..%s, n=%s) %s", m["domain"], m["metric"], m["input"], m["value"],
                     m["ci_low"], m["ci_high"], m["n"], m["note"])
    return 0


def cmd_convergence(args) -> int:
    import pandas as pd

    from .. import io
    from ..device import resolve_device, set_threads
    from ..training.cli import data_paths
    from .evaluate import convergence_curve

    cfg = config_mod.from_args(args)
    set_threads(args.threads)
    seed = int(cfg["sample"]["seed"] if args.seed is None else args.seed)
    frames = [convergence_curve(cfg, r, data_paths(args), seed, device=resolve_device(cfg))
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


def cmd_rsa(args) -> int:
    from .. import io
    from ..device import set_threads
    from .rsa import rsa

    cfg = config_mod.from_args(args)
    set_threads(args.threads)
    result = rsa(cfg, args.samples, args.manifest, args.tokens, args.warmup)
    io.write_json(args.out, result)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("heldout", help="held-out flow-matching loss of a branch's checkpoints (no sampling)")
    config_mod.add_cli_args(p)
    p.add_argument("--run", required=True, help="branch run directory (final.pt, snapshots/)")
    p.add_argument("--init", default=None, help="the warm-up final.pt (scored as branch step 0)")
    p.add_argument("--final-only", action="store_true", help="score final.pt only (no snapshots)")
    p.add_argument("--manifest", required=True)
    p.add_argument("--mels", required=True)
    p.add_argument("--tokens", required=True)
    p.add_argument("--semantic", required=True)
    p.add_argument("--acoustic", required=True)
    p.add_argument("--out", required=True, help="per-clip CSV (step, phase, ckpt, id, domain, loss)")
    p.set_defaults(func=cmd_heldout)

    p = subparsers.add_parser("evaluate", help="WER, FAD, MOS, speaker similarity, mel distance, TER, events, "
                                               "held-out FM loss, with bootstrap CIs")
    config_mod.add_cli_args(p)
    p.add_argument("--samples", nargs="+", default=None,
                   help="sample directories written by `agrepa sample` (one --out each; the models load once)")
    p.add_argument("--manifest", required=True, help="manifest.csv (ground truth, transcripts, prompts)")
    p.add_argument("--reference", action="store_true",
                   help="score the ground truth (vocoder resynthesis + raw audio): the floor numbers")
    p.add_argument("--mels", default=None, help="mel store: the ground-truth mels (mel distance; --reference: "
                                                "the vocoder input)")
    p.add_argument("--tokens", default=None, help="token store of the samples' token config (TER)")
    p.add_argument("--tokenizers", nargs="+", default=None, metavar="STREAM=DIR",
                   help="fitted tokenizers for TER: speech=DIR audio=DIR [beats=DIR]")
    p.add_argument("--teacher-dir", default=None, help="trained events teacher (the acoustic teacher of TER)")
    p.add_argument("--classifier", default=None, help="trained event classifier directory (eval.events)")
    p.add_argument("--heldout", nargs="+", default=None, help="held-out loss CSVs (`agrepa heldout`), one per --samples")
    p.add_argument("--out", nargs="+", required=True, help="evaluation JSON(s), one per --samples")
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

    p = subparsers.add_parser("rsa", help="Spearman between conditioning and generated clips' similarities (seed 003)")
    config_mod.add_cli_args(p)
    p.add_argument("--samples", required=True, help="sample directory written by `agrepa sample`")
    p.add_argument("--manifest", required=True, help="manifest.csv (ground-truth audio)")
    p.add_argument("--tokens", required=True, metavar="DIR", help="token store (the clips' conditioning tokens)")
    p.add_argument("--warmup", required=True, metavar="CKPT", help="the warm-up's final.pt (its token embedding)")
    p.add_argument("--out", required=True, help="RSA JSON (rows as in an evaluation JSON)")
    p.set_defaults(func=cmd_rsa)
