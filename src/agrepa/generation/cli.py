"""``agrepa sample``: zero-shot generation of the test clips from a checkpoint."""
from __future__ import annotations

from .. import config as config_mod

CONFIG_KEYS = ("name", "sample.seed")  # config sections this module reads


def cmd_sample(args) -> int:
    import torch

    from ..device import resolve_device, set_threads
    from ..training.checkpoint import load_run
    from ..training.cli import data_paths
    from .sampling import run_config, sample_split  # stage modules are imported when their subcommand runs
    from .vocoder import build_vocoder

    cfg = config_mod.from_args(args)
    set_threads(args.threads)
    seed = int(cfg["sample"]["seed"] if args.seed is None else args.seed)
    torch.manual_seed(seed)
    run = load_run(args.ckpt)
    cfg = run_config(cfg, run.cfg)     # the checkpoint's architecture and CFG mode
    meta = {"ckpt": str(args.ckpt), "method": run.method, "phase": run.phase, "train_seed": run.seed,
            "step": run.step, "config": cfg["name"]}
    max_clips = None if args.max_clips is None else {"speech": args.max_clips, "audio": args.max_clips}
    sample_split(run.model, cfg, data_paths(args), args.split, seed, args.out,
                 max_clips=max_clips, vocoder=build_vocoder(cfg), meta=meta, device=resolve_device(cfg))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("sample", help="zero-shot generation of test clips (Euler ODE + CFG + vocoder)")
    config_mod.add_cli_args(p)
    p.add_argument("--ckpt", required=True, help="training checkpoint (final.pt or a snapshot)")
    p.add_argument("--manifest", required=True, help="manifest.csv")
    p.add_argument("--mels", required=True, help="mel store directory (or its index.json)")
    p.add_argument("--tokens", required=True, help="token store directory (or its index.json)")
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: sample.seed)")
    p.add_argument("--max-clips", type=int, default=None, help="clips per domain (default: sample.max_clips)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_sample)
