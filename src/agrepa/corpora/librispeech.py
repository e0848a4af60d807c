"""LibriSpeech from local disk, in its standard layout::

    ROOT/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    ROOT/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   ("<utt id> WORDS ...")

Which subsets go to which split comes from ``data.librispeech.subsets``
(``{train: [train-clean-100], valid: [dev-clean], test: [test-clean]}``) or from
``--subset split=name[,name]`` on the command line. Every flac is checked with
:func:`agrepa.corpora.validate.check_audio_file`; bad files, flacs without a
transcript line and transcript lines without a flac go to ``rejects.csv``.
Paths in the manifest are absolute; transcripts are kept as LibriSpeech writes
them (upper case); ``speaker`` is the LibriSpeech speaker id.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from tqdm import tqdm

from . import manifest as mf
from .validate import check_audio_file, summarize

log = logging.getLogger(__name__)

LAYOUT = "<subset>/<speaker>/<chapter>/*.flac with <speaker>-<chapter>.trans.txt"


def read_transcripts(path: str | os.PathLike) -> dict[str, str]:
    """``{utterance id: text}`` from a ``*.trans.txt``; malformed lines raise naming file:line."""
    path = Path(path)
    out: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: transcript is not UTF-8 text ({err})") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected '<utterance id> <TRANSCRIPT>', got {line!r}")
        uid, text = parts
        if uid in out:
            raise ValueError(f"{path}:{lineno}: utterance id {uid!r} listed twice")
        out[uid] = text.strip()
    return out


def parse_subsets(items: list[str] | None, default: dict) -> dict[str, list[str]]:
    """``["train=train-clean-100,train-clean-360", "test=test-clean"]`` over the config default."""
    subsets = {k: (list(v) if isinstance(v, (list, tuple)) else ([v] if v else []))
               for k, v in (default or {}).items()}
    given: dict[str, list[str]] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--subset {item!r}: expected SPLIT=SUBSET[,SUBSET]")
        split, names = item.split("=", 1)
        split = split.strip()
        if split not in mf.SPLITS:
            raise ValueError(f"--subset {item!r}: split must be one of {', '.join(mf.SPLITS)}")
        given.setdefault(split, []).extend(n.strip() for n in names.split(",") if n.strip())
    subsets.update(given)
    for split in subsets:
        if split not in mf.SPLITS:
            raise KeyError(f"data.librispeech.subsets.{split}: unknown split "
                           f"(expected {', '.join(mf.SPLITS)})")
    return subsets


def load_librispeech(root: str | os.PathLike, subsets: dict[str, list[str]],
                     cfg_audio: dict) -> tuple[list[dict], list[tuple[str, str]]]:
    """Scan the subsets; returns (manifest rows, rejects)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: LibriSpeech root not found (expected a directory with {LAYOUT})")
    rows, rejects, seen = [], [], {}
    for split, names in subsets.items():
        for name in names:
            sub = root / name
            if not sub.is_dir():
                raise FileNotFoundError(f"{sub}: LibriSpeech subset {name!r} (split {split}) not found "
                                        f"under {root} (expected {LAYOUT})")
            trans_files = sorted(sub.glob("*/*/*.trans.txt"))
            flacs = sorted(sub.glob("*/*/*.flac"))
            if not trans_files and not flacs:
                raise FileNotFoundError(f"{sub}: no LibriSpeech chapters found (expected {LAYOUT})")
            texts: dict[str, str] = {}
            for tf in trans_files:
                texts.update(read_transcripts(tf))
            have = set()
            for flac in tqdm(flacs, desc=f"librispeech {name}", unit="file", leave=False):
                uid = flac.stem
                have.add(uid)
                if uid not in texts:
                    trans = flac.parent / f"{flac.parent.parent.name}-{flac.parent.name}.trans.txt"
                    rejects.append((str(flac.resolve()), f"no transcript line for {uid} in {trans}"))
                    continue
                if uid in seen:
                    rejects.append((str(flac.resolve()), f"duplicate utterance id {uid!r} (also in {seen[uid]})"))
                    continue
                ok, reason, info = check_audio_file(flac, cfg_audio)
                if not ok:
                    rejects.append((str(flac.resolve()), reason))
                    continue
                seen[uid] = name
                rows.append({"id": uid, "path": str(flac.resolve()), "duration": round(info["duration"], 6),
                             "sample_rate": info["sample_rate"], "domain": "speech", "split": split,
                             "speaker": uid.split("-")[0], "text": texts[uid], "labels": "",
                             "caption": texts[uid].lower()})
            for uid in sorted(set(texts) - have):
                spk, chap = (uid.split("-") + ["", ""])[:2]
                rejects.append((str((sub / spk / chap / f"{uid}.flac").resolve()),
                                "listed in the transcript but the flac is missing"))
            log.info("librispeech %s -> %s: %d flac files, %d transcript lines", name, split,
                     len(flacs), len(texts))
    summarize(rejects, len(rows), f"librispeech {root}")
    return rows, rejects
