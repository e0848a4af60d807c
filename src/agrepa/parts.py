"""Scatter / gather of the per-clip stages: which contiguous slice of the manifest part ``k`` of
``K`` covers, its directory name, and the ``--part`` / ``--parts`` / ``--gather`` arguments of
``agrepa data mels``, ``agrepa teacher embed`` and ``agrepa tokens encode``. No torch here: the
CLI modules import it when they register (:mod:`agrepa.store` writes and gathers the parts)."""
from __future__ import annotations


def part_name(k: int, parts: int) -> str:
    """``part-0000kof0000K``: the directory of part ``k`` (0-based) of ``parts``."""
    if parts < 1 or not 0 <= k < parts:
        raise ValueError(f"--part {k} --parts {parts}: need parts >= 1 and 0 <= part < parts")
    return f"part-{k:05d}of{parts:05d}"


def part_range(n: int, k: int, parts: int) -> tuple[int, int]:
    """``[start, stop)`` of part ``k``'s contiguous slice of ``n`` rows (sizes differ by at most 1)."""
    part_name(k, parts)
    return k * n // parts, (k + 1) * n // parts


def add_part_args(p) -> None:
    """``--part k --parts K`` (write part k) / ``--gather --parts K`` (gather); neither: the whole
    manifest as part 0 of 1, then its gather (the same code path)."""
    p.add_argument("--parts", type=int, default=1, help="K: the manifest is cut into K parts (shards.<stage>)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--part", type=int, default=None, help="write part k (0-based) of K into OUT/part-kofK/")
    g.add_argument("--gather", action="store_true", help="write OUT/index.json over the K finished parts")


def part_mode(args) -> str:
    """``"part"``, ``"gather"`` or ``"whole"`` from :func:`add_part_args`' arguments."""
    if args.part is not None:
        part_name(args.part, args.parts)
        return "part"
    if args.gather:
        return "gather"
    if args.parts != 1:
        raise ValueError(f"--parts {args.parts} needs --part k or --gather")
    return "whole"
