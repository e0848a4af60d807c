"""``agrepa train``: Phase I (warm-up) or a Phase II branch of the flow-matching model.

Multi-process: ``torchrun --nproc_per_node N -m agrepa.cli train ...``.
"""
from __future__ import annotations

from .. import config as config_mod


def add_data_arguments(p) -> None:
    """The five stores every model-facing command reads (train, probe)."""
    p.add_argument("--manifest", required=True, help="manifest.csv")
    p.add_argument("--mels", required=True, metavar="DIR", help="mel store (meta: stats)")
    p.add_argument("--tokens", required=True, metavar="DIR", help="token store of this token config")
    p.add_argument("--semantic", required=True, metavar="DIR", help="semantic-teacher embedding store (speech)")
    p.add_argument("--acoustic", required=True, metavar="DIR", help="acoustic-teacher embedding store (audio)")


def data_paths(args):
    """The ``DataPaths`` of the store options (``--semantic``/``--acoustic`` where the command has them)."""
    from .dataset import DataPaths

    return DataPaths(args.manifest, args.mels, args.tokens, getattr(args, "semantic", None),
                     getattr(args, "acoustic", None))


def cmd_train(args) -> int:
    from ..device import set_threads
    from .train import run  # stage modules are imported when their subcommand runs (start-up time)

    cfg = config_mod.from_args(args)
    set_threads(args.threads)
    run(cfg, phase=args.phase, out=args.out, data=data_paths(args), seed=args.seed, method=args.method,
        init=args.init, selection=args.selection, steps=args.steps, attempt=args.attempt)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the flow-matching model (phase warmup or branch)")
    config_mod.add_cli_args(p)
    p.add_argument("--phase", required=True, choices=["warmup", "branch"])
    p.add_argument("--method", default=None, help="a key of the config's methods: grid (branch)")
    p.add_argument("--init", default=None, metavar="CKPT", help="warm-up final.pt (branch)")
    p.add_argument("--selection", default=None, metavar="JSON", help="layer selection (selection methods)")
    add_data_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="run seed: init, data order, noise, dropout")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (resumes from DIR/last.pt)")
    p.add_argument("--steps", type=int, default=None, help="override the phase length")
    p.add_argument("--attempt", type=int, default=None,
                   help="Snakemake's attempt number: resume DIR/last.pt only for a retried (N > 1) or "
                        "requeued SLURM job, else start fresh (default: always resume)")
    p.set_defaults(func=cmd_train)
