"""``agrepa``: the command line of the AG-REPA experiment suite, one subcommand per step.

Each stage package has a ``cli`` module with ``register(subparsers)``, which declares its
subcommands with argparse only; a handler ``cmd_<name>(args)`` imports the stage's
implementation when it runs, so ``agrepa --help`` (and every Snakemake job's start-up)
pays only for the subcommand it runs. Every subcommand takes ``--config`` (repeatable,
merged in order, validated) and ``--threads``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# The stages in data-flow order: (title in --help, module that registers its subcommands).
STAGES = [
    ("data", "agrepa.corpora.cli"),
    ("teachers", "agrepa.teachers.cli"),
    ("tokens", "agrepa.tokenizers.cli"),
    ("training", "agrepa.training.cli"),
    ("probing", "agrepa.probing.cli"),
    ("generation", "agrepa.generation.cli"),
    ("evaluation", "agrepa.evaluation.cli"),
    ("attention caching", "agrepa.caching.cli"),
    ("reports", "agrepa.reports.cli"),
    ("fixtures", "agrepa.fixtures.cli"),
    ("planning", "agrepa.planning.cli"),
]


class _StageGroup:
    """Stands in for argparse's subparsers while one stage registers: records each
    subcommand's one-line help for the grouped listing (argparse lists nothing itself)."""

    def __init__(self, subparsers):
        self.subparsers, self.commands = subparsers, []

    def add_parser(self, name, help="", **kwargs):
        self.commands.append((name, help))
        kwargs.setdefault("description", help)
        return self.subparsers.add_parser(name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agrepa", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    listing = []
    for title, name in STAGES:
        group = _StageGroup(sub)
        importlib.import_module(name).register(group)
        listing.append(f"{title}:")
        listing += [f"  {cmd:<16}{text}" for cmd, text in group.commands]
    parser.epilog = "commands, by stage (agrepa COMMAND --help for each):\n" + "\n".join(listing)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rc = args.func(args)
    except (FileNotFoundError, ValueError, KeyError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"agrepa {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
