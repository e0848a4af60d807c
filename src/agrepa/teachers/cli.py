"""``agrepa teacher {train,embed}``."""
from __future__ import annotations

from .. import config as config_mod
from ..parts import add_part_args, part_mode


def cmd_train(args) -> int:
    from ..device import set_threads
    from .events import train_events  # stage modules are imported when their subcommand runs

    cfg = config_mod.from_args(args)
    set_threads(args.threads)
    train_events(args.manifest, args.out, cfg, section=args.section)
    config_mod.save_resolved(cfg, args.out)
    return 0


def cmd_embed(args) -> int:
    from ..device import set_threads
    from .cache import embed_manifest, gather_embeddings

    cfg = config_mod.from_args(args)
    if part_mode(args) == "gather":
        gather_embeddings(cfg, args.role, args.manifest, args.out, args.parts)
        return 0
    set_threads(args.threads)
    embed_manifest(cfg, args.role, args.manifest, args.out, teacher_dir=args.teacher_dir,
                   part=args.part, parts=args.parts)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("teacher", help="train the event teacher; cache teacher embeddings")
    sub = p.add_subparsers(dest="teacher_command", metavar="ACTION")
    sub.required = True

    t = sub.add_parser("train", help="train the audio-event teacher (the embedded BEATs stand-in)")
    t.add_argument("--manifest", required=True, help="manifest.csv (uses audio-domain train/valid clips)")
    t.add_argument("--out", required=True, help="output directory (model.safetensors, config.json, metrics.json)")
    t.add_argument("--section", default="teachers.acoustic.events",
                   choices=["teachers.acoustic.events", "eval.events.train"],
                   help="config section with the hyper-parameters: the acoustic teacher (default) or the "
                        "evaluation's event classifier")
    config_mod.add_cli_args(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("embed", help="run a teacher over the clips of a manifest that some stage reads its output of (cached)")
    e.add_argument("--role", required=True, choices=["semantic", "acoustic"])
    e.add_argument("--manifest", required=True)
    e.add_argument("--teacher-dir", default=None, help="trained event teacher directory (events teacher)")
    e.add_argument("--out", required=True, help="output store directory")
    add_part_args(e)
    config_mod.add_cli_args(e)
    e.set_defaults(func=cmd_embed)
