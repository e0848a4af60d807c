"""The manifest: one CSV row per clip, the contract between the data stage and the rest.

Columns (header always present)::

    id, path, duration, sample_rate, domain, split, speaker, text, labels, caption

* ``id`` -- unique clip id (the key of every tensor store);
* ``path`` -- absolute, or relative to the manifest's directory (:func:`resolve_path`);
* ``duration`` -- seconds; ``sample_rate`` -- Hz of the file on disk;
* ``domain`` -- ``speech`` or ``audio``; ``split`` -- ``train``, ``valid`` or ``test``;
* ``speaker`` -- speaker id (speech; empty for audio); ``text`` -- transcript (speech);
* ``labels`` -- ``;``-joined label names (audio; empty for speech); ``caption`` -- a sentence.

``rejects.csv`` lists the files data preparation skipped: ``path,reason``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from .. import io
from ..config import DOMAINS

COLUMNS = ["id", "path", "duration", "sample_rate", "domain", "split", "speaker", "text",
           "labels", "caption"]
REJECT_COLUMNS = ["path", "reason"]
SPLITS = ("train", "valid", "test")
LABEL_SEP = ";"
_STR_COLUMNS = ["id", "path", "domain", "split", "speaker", "text", "labels", "caption"]


def empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=float if c == "duration" else
                                      ("int64" if c == "sample_rate" else object))
                         for c in COLUMNS})


def make_manifest(rows: Iterable[Mapping]) -> pd.DataFrame:
    """A manifest DataFrame from row dicts (missing text columns become empty strings)."""
    rows = list(rows)
    if not rows:
        return empty_manifest()
    df = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = ""
    return _normalise(df[COLUMNS].copy())


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    for c in _STR_COLUMNS:
        df[c] = df[c].fillna("").astype(str)
    df["duration"] = df["duration"].astype(float)
    df["sample_rate"] = df["sample_rate"].astype("int64")
    return df.reset_index(drop=True)


def join_labels(labels: Iterable[str]) -> str:
    out = []
    for label in labels:
        if LABEL_SEP in label:
            raise ValueError(f"label {label!r} contains the separator {LABEL_SEP!r}")
        out.append(label)
    return LABEL_SEP.join(out)


def split_labels(labels: str) -> list[str]:
    """``"a;b"`` -> ``["a", "b"]``; ``""`` -> ``[]``."""
    return [x for x in str(labels).split(LABEL_SEP) if x]


def validate(df: pd.DataFrame, source: str | os.PathLike = "manifest") -> pd.DataFrame:
    """Check columns and values; raise ``ValueError("<source>: ...")`` on the first problem."""
    for c in COLUMNS:
        if c not in df.columns:
            raise ValueError(f"{source}: missing column {c!r} (expected columns: {', '.join(COLUMNS)})")
    df = df[COLUMNS].copy()
    for c in _STR_COLUMNS:
        df[c] = df[c].fillna("").astype(str)
    if (df["id"] == "").any():
        row = int((df["id"] == "").to_numpy().nonzero()[0][0])
        raise ValueError(f"{source}: empty id in data row {row + 1}")
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise ValueError(f"{source}: duplicate id {dup.iloc[0]!r}")
    if (df["path"] == "").any():
        raise ValueError(f"{source}: empty path for id {df['id'][df['path'] == ''].iloc[0]!r}")
    for c, allowed in (("domain", DOMAINS), ("split", SPLITS)):
        bad = ~df[c].isin(allowed)
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise ValueError(f"{source}: id {df['id'][i]!r} has {c} {df[c][i]!r} "
                             f"(expected one of {', '.join(allowed)})")
    for c in ("duration", "sample_rate"):
        num = pd.to_numeric(df[c], errors="coerce")
        if num.isna().any() or (num <= 0).any():
            i = int((num.isna() | (num <= 0)).to_numpy().nonzero()[0][0])
            raise ValueError(f"{source}: id {df['id'][i]!r} has invalid {c} {df[c][i]!r}")
        df[c] = num
    return _normalise(df)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a manifest CSV (text columns as str, empty = "")."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: manifest not found")
    try:
        df = pd.read_csv(path, dtype={c: str for c in _STR_COLUMNS}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable manifest CSV ({err})") from None
    return validate(df, path)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate and write a manifest atomically (columns in the canonical order)."""
    path = Path(path)
    df = validate(df, path) if len(df) else empty_manifest()
    io.write_csv(path, df[COLUMNS])
    return path


def resolve_path(manifest_path: str | os.PathLike, row_path: str | os.PathLike) -> Path:
    """A row's audio path: itself if absolute, else relative to the manifest's directory."""
    p = Path(row_path)
    if p.is_absolute():
        return p
    return (Path(manifest_path).resolve().parent / p)


def write_rejects(rows: Iterable, path: str | os.PathLike) -> Path:
    """Write ``path,reason`` rows (tuples or dicts) atomically; header even when empty."""
    records = []
    for r in rows:
        if isinstance(r, Mapping):
            records.append({"path": str(r["path"]), "reason": str(r["reason"])})
        else:
            p, reason = r
            records.append({"path": str(p), "reason": str(reason)})
    df = pd.DataFrame(records, columns=REJECT_COLUMNS)
    io.write_csv(path, df)
    return Path(path)


def read_rejects(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: rejects file not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for c in REJECT_COLUMNS:
        if c not in df.columns:
            raise ValueError(f"{path}: missing column {c!r} (expected: path, reason)")
    return df[REJECT_COLUMNS]
