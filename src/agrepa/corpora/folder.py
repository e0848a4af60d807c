"""Any directory of audio files as a corpus (``agrepa data folder``).

``ROOT/**/<name>.<ext>`` for the extensions in ``data.folder.extensions``. The clip id
is the path below ROOT without extension, ``/`` replaced by ``-``. The first-level
sub-directory (if any) is the speaker (``--domain speech``) or the label
(``--domain audio``); a sidecar ``<name>.txt`` next to a speech file is its
transcript. The split is ``--split`` if given, else drawn from a hash of the id
with ``data.folder.valid_fraction`` / ``test_fraction`` (stable, order-free).
Every file goes through :func:`check_audio_file`; bad ones go to the rejects.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from tqdm import tqdm

from . import manifest as mf
from .audioset import caption_for
from .validate import check_audio_file, summarize

log = logging.getLogger(__name__)


def hash_split(key: str, valid_fraction: float, test_fraction: float) -> str:
    """``test`` for a ``test_fraction`` of keys, ``valid`` for the next ``valid_fraction``."""
    u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32
    return "test" if u < test_fraction else ("valid" if u < test_fraction + valid_fraction else "train")


def load_folder(root: str | os.PathLike, domain: str, cfg_folder: dict, cfg_audio: dict,
                split: str | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Scan ``root``; returns (manifest rows, rejects)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: audio folder not found")
    if domain not in mf.DOMAINS:
        raise ValueError(f"--domain {domain!r}: expected one of {', '.join(mf.DOMAINS)}")
    if split is not None and split not in mf.SPLITS:
        raise ValueError(f"--split {split!r}: expected one of {', '.join(mf.SPLITS)}")
    exts = {e.lower() for e in cfg_folder["extensions"]}
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in exts and p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: no audio files ({', '.join(sorted(exts))}) found")
    rows, rejects = [], []
    for path in tqdm(files, desc=f"folder {root.name}", unit="file", leave=False):
        rel = path.relative_to(root)
        uid = "-".join(rel.with_suffix("").parts)
        group = rel.parts[0] if len(rel.parts) > 1 else ""
        ok, reason, info = check_audio_file(path, cfg_audio)
        if not ok:
            rejects.append((str(path.resolve()), reason))
            continue
        text = ""
        if domain == "speech":
            sidecar = path.with_suffix(".txt")
            text = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        labels = [group] if (domain == "audio" and group) else []
        rows.append({"id": uid, "path": str(path.resolve()), "duration": round(info["duration"], 6),
                     "sample_rate": info["sample_rate"], "domain": domain,
                     "split": split or hash_split(uid, float(cfg_folder["valid_fraction"]),
                                                  float(cfg_folder["test_fraction"])),
                     "speaker": group if domain == "speech" else "", "text": text,
                     "labels": mf.join_labels(labels),
                     "caption": caption_for(labels) if labels else text})
    summarize(rejects, len(rows), f"folder {root}")
    return rows, rejects
