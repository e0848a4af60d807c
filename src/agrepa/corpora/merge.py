"""Merge several corpus directories (``manifest.csv`` + ``rejects.csv``) into one."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from . import manifest as mf

log = logging.getLogger(__name__)


def merge_corpora(dirs: list[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """One manifest from several: paths made absolute, rejects concatenated.

    A clip id present in two inputs is an error naming both manifests.
    """
    if not dirs:
        raise ValueError("agrepa data merge: no input directories given")
    frames, rejects, owner = [], [], {}
    for d in dirs:
        d = Path(d)
        man_path = d / "manifest.csv" if d.is_dir() or not d.suffix else d
        df = mf.read_manifest(man_path)
        for uid in df["id"]:
            if uid in owner:
                raise ValueError(f"{man_path}: duplicate id {uid!r} (also in {owner[uid]})")
            owner[uid] = man_path
        df["path"] = [str(mf.resolve_path(man_path, p)) for p in df["path"]]
        frames.append(df)
        rej_path = man_path.parent / "rejects.csv"
        if rej_path.exists():
            rej = mf.read_rejects(rej_path)
            rejects += [(str(mf.resolve_path(rej_path, p)) if p else p, r)
                        for p, r in zip(rej["path"], rej["reason"])]
        log.info("merge: %s: %d clips", man_path, len(df))
    out_dir = Path(out_dir)
    merged = pd.concat(frames, ignore_index=True)
    mf.write_rejects(rejects, out_dir / "rejects.csv")
    path = mf.write_manifest(merged, out_dir / "manifest.csv")
    log.info("merge: wrote %s (%d clips, %d rejects)", path, len(merged), len(rejects))
    return path
