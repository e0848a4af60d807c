"""``agrepa teacher {train,embed}``."""
from __future__ import annotations

import torch

from .. import config as C


def _train(args) -> int:
    from .events import train_events

    cfg = C.from_args(args)
    torch.set_num_threads(int(C.get(cfg, "teachers.threads", torch.get_num_threads())))
    train_events(args.manifest, args.out, cfg)
    C.save_resolved(cfg, args.out)
    return 0


def _embed(args) -> int:
    from .cache import embed_manifest

    cfg = C.from_args(args)
    torch.set_num_threads(int(C.get(cfg, "teachers.threads", torch.get_num_threads())))
    embed_manifest(cfg, args.role, args.manifest, args.out, teacher_dir=args.teacher_dir)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("teacher", help="train the event teacher; cache teacher embeddings")
    sub = p.add_subparsers(dest="teacher_command", metavar="ACTION")
    sub.required = True

    t = sub.add_parser("train", help="train the audio-event teacher (the embedded BEATs stand-in)")
    t.add_argument("--manifest", required=True, help="manifest.csv (uses audio-domain train/valid clips)")
    t.add_argument("--out", required=True, help="output directory (model.safetensors, config.json, metrics.json)")
    C.add_cli_args(t)
    t.set_defaults(func=_train)

    e = sub.add_parser("embed", help="run a teacher over every clip of a manifest (cached)")
    e.add_argument("--role", required=True, choices=["semantic", "acoustic"])
    e.add_argument("--manifest", required=True)
    e.add_argument("--teacher-dir", default=None, help="trained event teacher directory (events teacher)")
    e.add_argument("--out", required=True, help="output store directory")
    C.add_cli_args(e)
    e.set_defaults(func=_embed)
