"""The probes CSV (``agrepa probe``'s output): its columns and the validated reader.

Columns ``config, seed, domain, probe, layer, t, score, spread, n``: one row per token
config x seed x domain x probe x layer (x flow time t for FoG-A and LASP; NaN for the
gradient norm). No torch here: selection and the reports read these files.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..config import DOMAINS

PROBES = ("foga", "lasp", "gradnorm")
CSV_COLUMNS = ["config", "seed", "domain", "probe", "layer", "t", "score", "spread", "n"]


def read_probes(path: str | Path) -> pd.DataFrame:
    """Read a probes CSV and check its columns and values; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: probes CSV not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable CSV ({err})") from None
    missing = [c for c in CSV_COLUMNS if c not in df.columns and c != "n"]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (expected {CSV_COLUMNS})")
    bad = sorted(set(df["probe"]) - set(PROBES))
    if bad:
        raise ValueError(f"{path}: unknown probe name(s) {bad}")
    bad = sorted(set(df["domain"]) - set(DOMAINS))
    if bad:
        raise ValueError(f"{path}: unknown domain(s) {bad}")
    df["config"] = df["config"].astype(str)
    return df
