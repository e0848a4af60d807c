"""AudioSet from local disk: the official segment lists plus a folder of clips.

Expected under ``ROOT`` (names from ``data.audioset``)::

    class_labels_indices.csv     index,mid,display_name   (official header)
    balanced_train_segments.csv  official segments format, see below
    eval_segments.csv
    audio/                       the clips (searched recursively)

Segments format: lines starting with ``#`` are comments, every other line is
``YTID, start_seconds, end_seconds, "mid1,mid2,..."`` (the labels quoted,
comma-separated MIDs).

Clip naming accepted (extensions from ``data.audioset.extensions``, first match wins)::

    <YTID>.wav                      the segment already cut out
    <YTID>_<start>.wav              start as written in the CSV ("30.000"), as an
                                    integer ("30") or with one decimal ("30.0")
    <YTID>_<start>_<end>.wav        same forms for start and end
    Y<YTID>... .wav                 any of the above with a leading "Y"

A clip is taken to be the 10 s segment itself (no cutting by start/end). Listed
segments whose clip is absent are *missing*: counted per split, logged, written to
``rejects.csv`` (reason "clip not found ...") and to ``summary.json``; they are not
fatal. Clips that exist but fail :func:`check_audio_file` are rejected with the
reason. Labels are the display names (``;``-joined), the caption is built from them.
When ``segments.valid`` is null, a ``valid_fraction`` of the train list is moved to
valid, chosen by a hash of the YTID (stable across machines and list order).
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
from pathlib import Path

from tqdm import tqdm

from . import manifest as mf
from .validate import check_audio_file

log = logging.getLogger(__name__)

SEGMENTS_FORMAT = "YTID, start_seconds, end_seconds, \"mid1,mid2,...\" (comment lines start with '#')"


def read_label_indices(path: str | os.PathLike) -> dict[str, str]:
    """``{mid: display_name}`` from ``class_labels_indices.csv``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: AudioSet label list not found (expected index,mid,display_name)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header != ["index", "mid", "display_name"]:
            raise ValueError(f"{path}: expected the header 'index,mid,display_name', got {','.join(header)!r}")
        out = {}
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != 3 or not row[1].strip() or not row[2].strip():
                raise ValueError(f"{path}:{lineno}: expected 'index,mid,display_name', got {row!r}")
            out[row[1].strip()] = row[2].strip()
    if not out:
        raise ValueError(f"{path}: no labels listed")
    return out


def read_segments(path: str | os.PathLike) -> list[dict]:
    """Rows ``{ytid, start, end, start_text, end_text, mids, line}`` of an official segments CSV."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: AudioSet segments file not found (expected {SEGMENTS_FORMAT})")
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        lines = [(i, line) for i, line in enumerate(f, 1) if line.strip() and not line.lstrip().startswith("#")]
    for lineno, row in zip((i for i, _ in lines), csv.reader((l for _, l in lines), skipinitialspace=True)):
        if len(row) != 4:
            raise ValueError(f"{path}:{lineno}: expected 4 fields ({SEGMENTS_FORMAT}), got {len(row)}: {row!r}")
        ytid, s_text, e_text, labels = (x.strip() for x in row)
        try:
            start, end = float(s_text), float(e_text)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: start/end seconds must be numbers, got "
                             f"{s_text!r}, {e_text!r}") from None
        mids = [m.strip() for m in labels.split(",") if m.strip()]
        if not ytid or not mids or end <= start:
            raise ValueError(f"{path}:{lineno}: expected a YTID, end > start and at least one label, "
                             f"got {row!r}")
        out.append({"ytid": ytid, "start": start, "end": end, "start_text": s_text, "end_text": e_text,
                     "mids": mids, "line": lineno})
    return out


def index_clips(audio_dir: Path, extensions: list[str]) -> dict[str, Path]:
    """``{file stem: path}`` of every clip under ``audio_dir`` (earlier extensions win)."""
    rank = {e.lower(): i for i, e in enumerate(extensions)}
    found: dict[str, Path] = {}
    for p in sorted(audio_dir.rglob("*")):
        ext = p.suffix.lower()
        if ext in rank and p.is_file():
            old = found.get(p.stem)
            if old is None or rank[ext] < rank[old.suffix.lower()]:
                found[p.stem] = p
    return found


def _time_forms(text: str, value: float) -> list[str]:
    forms = [text, f"{value:.3f}", f"{value:.1f}"]
    if float(value).is_integer():
        forms.append(str(int(value)))
    return list(dict.fromkeys(forms))


def candidate_names(seg: dict) -> list[str]:
    """File stems accepted for one segment, in order of preference."""
    ytid = seg["ytid"]
    names = [ytid]
    starts = _time_forms(seg["start_text"], seg["start"])
    ends = _time_forms(seg["end_text"], seg["end"])
    names += [f"{ytid}_{s}" for s in starts]
    names += [f"{ytid}_{s}_{e}" for s in starts for e in ends]
    return names + ["Y" + n for n in names]


def in_valid(ytid: str, fraction: float) -> bool:
    """Deterministic hash split: True for about ``fraction`` of YTIDs."""
    h = int(hashlib.sha256(ytid.encode()).hexdigest()[:8], 16)
    return h / 2**32 < fraction


def caption_for(names: list[str]) -> str:
    """``["Dog", "Bark"]`` -> ``"the sound of dog and bark"``."""
    parts = [n.lower() for n in names]
    if len(parts) == 1:
        return f"the sound of {parts[0]}"
    return "the sound of " + ", ".join(parts[:-1]) + " and " + parts[-1]


def load_audioset(root: str | os.PathLike, cfg_data_audioset: dict,
                  cfg_audio: dict) -> tuple[list[dict], list[tuple[str, str]], dict]:
    """Returns (manifest rows, rejects, summary ``{split: {listed, kept, missing, rejected}}``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: AudioSet root not found (expected a directory with "
                                f"{cfg_data_audioset['labels_csv']}, segment CSVs and "
                                f"{cfg_data_audioset['audio_dir']}/)")
    names = read_label_indices(root / cfg_data_audioset["labels_csv"])
    audio_dir = root / cfg_data_audioset["audio_dir"]
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"{audio_dir}: AudioSet clip directory not found "
                                "(data.audioset.audio_dir, relative to the root)")
    clips = index_clips(audio_dir, list(cfg_data_audioset["extensions"]))
    segments = cfg_data_audioset["segments"]
    valid_fraction = float(cfg_data_audioset["valid_fraction"])
    lists: list[tuple[str, list[dict], Path]] = []
    for split in mf.SPLITS:
        fname = segments.get(split)
        if fname:
            lists.append((split, read_segments(root / fname), root / fname))
    if not lists:
        raise KeyError("data.audioset.segments: no segments file configured for any split")
    has_valid = any(s == "valid" for s, _, _ in lists)
    rows, rejects, seen = [], [], {}
    summary = {s: {"listed": 0, "kept": 0, "missing": 0, "rejected": 0} for s in mf.SPLITS}
    for split, segs, csv_path in lists:
        for seg in tqdm(segs, desc=f"audioset {csv_path.name}", unit="clip", leave=False):
            target = split
            if split == "train" and not has_valid and in_valid(seg["ytid"], valid_fraction):
                target = "valid"
            summary[target]["listed"] += 1
            where = f"{csv_path.name}:{seg['line']}"
            path = next((clips[n] for n in candidate_names(seg) if n in clips), None)
            if path is None:
                summary[target]["missing"] += 1
                rejects.append((str((audio_dir / f"{seg['ytid']}.wav").resolve()),
                                f"clip not found for YTID {seg['ytid']} ({where})"))
                continue
            unknown = [m for m in seg["mids"] if m not in names]
            if unknown:
                summary[target]["rejected"] += 1
                rejects.append((str(path.resolve()), f"unknown label MID {unknown[0]} ({where})"))
                continue
            if seg["ytid"] in seen:
                summary[target]["rejected"] += 1
                rejects.append((str(path.resolve()), f"duplicate YTID {seg['ytid']} ({where}; "
                                f"first in {seen[seg['ytid']]})"))
                continue
            ok, reason, info = check_audio_file(path, cfg_audio)
            if not ok:
                summary[target]["rejected"] += 1
                rejects.append((str(path.resolve()), reason))
                continue
            seen[seg["ytid"]] = where
            labels = [names[m] for m in seg["mids"]]
            summary[target]["kept"] += 1
            rows.append({"id": seg["ytid"], "path": str(path.resolve()),
                         "duration": round(info["duration"], 6), "sample_rate": info["sample_rate"],
                         "domain": "audio", "split": target, "speaker": "", "text": "",
                         "labels": mf.join_labels(l.replace(mf.LABEL_SEP, ",") for l in labels),
                         "caption": caption_for(labels)})
    for split, c in summary.items():
        if c["listed"]:
            log.info("audioset %s: %d listed, %d kept, %d missing clips, %d rejected", split,
                     c["listed"], c["kept"], c["missing"], c["rejected"])
    return rows, rejects, summary
