"""``agrepa data {synth,librispeech,audioset,folder,merge,mels}``.

Every corpus command writes ``OUT/manifest.csv``, ``OUT/rejects.csv`` (``path,reason``,
header even when empty), ``OUT/summary.json`` (counts) and ``OUT/config.resolved.yaml``.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .. import config as config_mod
from .. import io
from ..parts import add_part_args

CONFIG_KEYS = ("audio", "data")  # config sections this module reads

log = logging.getLogger(__name__)


def _write_corpus(out: Path, cfg: dict, rows: list[dict], rejects: list, summary: dict) -> Path:
    from . import manifest as mf

    out.mkdir(parents=True, exist_ok=True)
    config_mod.save_resolved(cfg, out)
    io.write_json(out / "summary.json", summary)
    mf.write_rejects(rejects, out / "rejects.csv")
    path = mf.write_manifest(mf.make_manifest(rows), out / "manifest.csv")
    log.info("wrote %s: %d clips, %d rejects", path, len(rows), len(rejects))
    return path


def _counts(rows: list[dict], rejects: list) -> dict:
    by_split: dict[str, int] = {}
    for r in rows:
        by_split[r["split"]] = by_split.get(r["split"], 0) + 1
    return {"kept": len(rows), "rejected": len(rejects), "kept_by_split": by_split}


def cmd_synth(args) -> int:
    from .synth import build_synth

    cfg = config_mod.from_args(args)
    build_synth(cfg, args.out)
    return 0


def cmd_librispeech(args) -> int:
    from .librispeech import load_librispeech, parse_subsets

    cfg = config_mod.from_args(args)
    root = args.root or cfg["data"]["librispeech"]["root"]
    if not root:
        raise KeyError("data.librispeech.root: no LibriSpeech root given (use --root or set the key)")
    subsets = parse_subsets(args.subset, cfg["data"]["librispeech"]["subsets"])
    rows, rejects = load_librispeech(root, subsets, cfg["audio"])
    _write_corpus(Path(args.out), cfg, rows, rejects, {"librispeech": _counts(rows, rejects),
                                                        "subsets": subsets})
    return 0


def cmd_audioset(args) -> int:
    from .audioset import load_audioset

    cfg = config_mod.from_args(args)
    root = args.root or cfg["data"]["audioset"]["root"]
    if not root:
        raise KeyError("data.audioset.root: no AudioSet root given (use --root or set the key)")
    rows, rejects, summary = load_audioset(root, cfg["data"]["audioset"], cfg["audio"])
    _write_corpus(Path(args.out), cfg, rows, rejects,
                  {"audioset": summary, "missing_clips": sum(s["missing"] for s in summary.values()),
                   **_counts(rows, rejects)})
    return 0


def cmd_folder(args) -> int:
    from .folder import load_folder

    cfg = config_mod.from_args(args)
    rows, rejects = load_folder(args.root, args.domain, cfg["data"]["folder"],
                                cfg["audio"], split=args.split)
    _write_corpus(Path(args.out), cfg, rows, rejects, {"folder": _counts(rows, rejects)})
    return 0


def cmd_merge(args) -> int:
    from .merge import merge_corpora

    cfg = config_mod.from_args(args)
    merge_corpora(args.dirs, args.out)
    config_mod.save_resolved(cfg, args.out)
    return 0


def cmd_mels(args) -> int:
    from ..parts import part_mode
    from .mels import build_mels, build_mels_part, gather_mels

    cfg = config_mod.from_args(args)
    mode = part_mode(args)
    if mode == "part":
        build_mels_part(args.manifest, args.out, cfg, args.part, args.parts)
    elif mode == "gather":
        gather_mels(args.manifest, args.out, cfg, args.parts)
    else:
        build_mels(args.manifest, args.out, cfg)
    return 0


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="corpora: build manifests and mel spectrograms")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    sub.required = True

    p = sub.add_parser("synth", help="build the embedded synthetic corpus (speech + sound events)")
    config_mod.add_cli_args(p)
    p.add_argument("--out", required=True, help="output directory (audio/, manifest.csv, rejects.csv)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("librispeech", help="LibriSpeech from local disk (standard layout)")
    config_mod.add_cli_args(p)
    p.add_argument("--root", default=None, help="LibriSpeech root (default: data.librispeech.root)")
    p.add_argument("--subset", action="append", default=None, metavar="SPLIT=SUBSET[,SUBSET]",
                   help="subsets for one split, e.g. train=train-clean-100 (repeatable; "
                        "default: data.librispeech.subsets)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_librispeech)

    p = sub.add_parser("audioset", help="AudioSet segment lists + a local folder of clips")
    config_mod.add_cli_args(p)
    p.add_argument("--root", default=None, help="AudioSet root (default: data.audioset.root)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_audioset)

    p = sub.add_parser("folder", help="any folder of audio files (sub-folder = speaker or label)")
    config_mod.add_cli_args(p)
    p.add_argument("--root", required=True)
    p.add_argument("--domain", required=True, choices=["speech", "audio"])
    p.add_argument("--split", default=None, choices=["train", "valid", "test"],
                   help="put every clip in this split (default: hash split by data.folder fractions)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_folder)

    p = sub.add_parser("merge", help="merge corpus directories into one manifest")
    config_mod.add_cli_args(p)
    p.add_argument("dirs", nargs="+", metavar="DIR", help="corpus directories (with manifest.csv)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("mels", help="log-mel spectrogram store of a manifest (stats from train)")
    config_mod.add_cli_args(p)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, help="store directory (DIR/index.json written last)")
    add_part_args(p)
    p.set_defaults(func=cmd_mels)
