"""Log-mel spectrograms of every clip of a manifest, in a tensor store.

``build_mels(manifest, out_dir, cfg)`` writes an :class:`agrepa.store.StoreWriter`
store with one tensor per clip, ``mel`` ``[T, n_mels]`` float32 (time-major,
un-normalised Vocos log-mel, :func:`agrepa.audio.log_mel`) and the meta::

    {"stats": {"mean": [n_mels], "std": [n_mels], "n_frames": int, "n_clips": int,
               "split": "train"},
     "manifest_sha256": sha256 of manifest.csv, "audio": the config's audio section,
     "frame_rate": 93.75, "n_mels": 100, "parts": K}

Scatter / gather (``shards.mels``): :func:`build_mels_part` writes part k of K (a store of its
contiguous slice of the manifest, with its train clips' float64 sums in ``meta.sums``) and
:func:`gather_mels` writes the top-level index over the parts (:func:`agrepa.store.gather`) with
the stats of the summed sums; :func:`build_mels` is K = 1 through the same two steps.

``mean``/``std`` come from all frames of the **train** clips only (valid/test
never leak into the normalisation), by ``data.mels.normalization``:

* ``global`` (the authors' ``mel_mean`` / ``mel_std``): one mean and one std over
  every bin of every frame, ``mean = sum_tb x_tb / (N M)``, ``std =
  max(sqrt(sum_tb x_tb^2 / (N M) - mean^2), std_floor)``, repeated for each bin;
* ``per_bin``: ``mean_b = sum_t x_tb / N``, ``std_b = max(sqrt(sum_t x_tb^2 / N -
  mean_b^2), std_floor)``.

Normalise with ``(mel - mean) / std`` (either way a vector of ``n_mels`` entries).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import audio as audio_mod
from .. import io
from ..batching import Throughput
from ..store import Store, StoreWriter, gather, merge_meta, part_metas, part_range, start_part
from . import manifest as mf

CONFIG_KEYS = ("audio", "data.mels")  # config sections this module reads

log = logging.getLogger(__name__)


def build_mels(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, cfg: dict) -> Path:
    """Compute and store the log-mel of every clip; returns ``out_dir/index.json``. The whole
    manifest as part 0 of 1 and its gather: the path K parts take (:func:`build_mels_part`)."""
    build_mels_part(manifest_path, out_dir, cfg, 0, 1)
    return gather_mels(manifest_path, out_dir, cfg, 1)


def build_mels_part(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, cfg: dict,
                    part: int, parts: int) -> Path:
    """Part ``part`` of ``parts`` (:func:`agrepa.store.part_range` of the manifest's rows) into
    ``out_dir/part-...``; its meta holds the float64 per-bin sums of x and x^2 and the frame count
    of its train clips (``sums``), which :func:`gather_mels` adds up. Returns the part's index."""
    manifest_path = Path(manifest_path)
    full = mf.read_manifest(manifest_path)
    if not (full["split"] == "train").any():
        raise ValueError(f"{manifest_path}: no train clips to compute the mel statistics from")
    start, stop = part_range(len(full), part, parts)
    df = full.iloc[start:stop]
    cfg_audio = dict(cfg["audio"])
    sr = int(cfg_audio["sample_rate"])
    n_mels = int(cfg_audio["n_mels"])
    peak = cfg_audio["peak_normalize"]
    total = np.zeros(n_mels, dtype=np.float64)
    total_sq = np.zeros(n_mels, dtype=np.float64)
    n_frames, n_train = 0, 0
    # an index from an earlier build must not describe the shards being rewritten
    writer = StoreWriter(start_part(out_dir, part, parts), shard_size=int(cfg["data"]["mels"]["shard_size"]))
    with Throughput(log, "mels", len(df), 1):
        for row in tqdm(df.itertuples(index=False), total=len(df), desc="mels", unit="clip"):
            wave = audio_mod.load_audio(mf.resolve_path(manifest_path, row.path), sr, peak=peak,
                                        resampler=cfg_audio["resample"])
            mel = audio_mod.log_mel(torch.from_numpy(wave), cfg_audio).T.contiguous()  # [T, n_mels]
            writer.add(row.id, {"mel": mel})
            if row.split == "train":
                m = mel.double().numpy()
                total += m.sum(axis=0)
                total_sq += (m * m).sum(axis=0)
                n_frames += m.shape[0]
                n_train += 1
    writer.meta = {
        "sums": {"total": total.tolist(), "total_sq": total_sq.tolist(), "n_frames": int(n_frames),
                 "n_clips": int(n_train)},
        "part": {"index": part, "of": parts, "n_clips": len(df)},
        "manifest_sha256": io.sha256_file(manifest_path),
        "audio": cfg_audio,
        "frame_rate": audio_mod.frame_rate(cfg_audio),
        "n_mels": n_mels,
    }
    index = writer.close()
    log.info("mels: part %d of %d, clips %d-%d -> %s (%d train clips, %d frames)", part, parts, start,
             stop, index, n_train, n_frames)
    return index


def gather_mels(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, cfg: dict, parts: int) -> Path:
    """``out_dir/index.json`` over the ``parts`` parts: the train statistics from the parts' summed
    float64 sums (module doc), the rest of the meta checked equal across the parts and against the
    manifest's bytes. K = 1 goes through the same sums; K > 1 adds the same per-frame terms in
    another order (float64 rounding: relative 1e-12 here, far below the float32 the stats are read in)."""
    manifest_path = Path(manifest_path)
    df = mf.read_manifest(manifest_path)
    metas = part_metas(out_dir, parts)
    meta = merge_meta(metas, str(out_dir), dropped=("sums",))
    if meta["manifest_sha256"] != io.sha256_file(manifest_path):
        raise ValueError(f"{out_dir}: parts built from another manifest than {manifest_path}; rebuild them")
    if meta["audio"] != dict(cfg["audio"]):
        raise ValueError(f"{out_dir}: parts built with another audio config; rebuild them")
    total = np.sum([np.asarray(m["sums"]["total"], dtype=np.float64) for m in metas], axis=0)
    total_sq = np.sum([np.asarray(m["sums"]["total_sq"], dtype=np.float64) for m in metas], axis=0)
    n_frames = sum(int(m["sums"]["n_frames"]) for m in metas)
    n_train = sum(int(m["sums"]["n_clips"]) for m in metas)
    kind = cfg["data"]["mels"]["normalization"]
    mean, std = normalisation_stats(total, total_sq, n_frames, kind, float(cfg["data"]["mels"]["std_floor"]))
    meta["stats"] = {"mean": mean.tolist(), "std": std.tolist(), "n_frames": int(n_frames),
                     "n_clips": int(n_train), "split": "train", "normalization": kind}
    index = gather(out_dir, parts, df["id"].tolist(), meta)
    log.info("mels: gathered %d parts, %d clips -> %s (stats from %d train clips, %d frames)", parts,
             len(df), index, n_train, n_frames)
    return index


def normalisation_stats(total: np.ndarray, total_sq: np.ndarray, n_frames: int, kind: str,
                        floor: float) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` [n_mels] from per-bin sums of x and x^2 over ``n_frames`` frames (module doc)."""
    if kind == "global":
        n = n_frames * total.shape[0]
        m = total.sum() / n
        sd = max(float(np.sqrt(max(total_sq.sum() / n - m * m, 0.0))), floor)
        return np.full_like(total, m), np.full_like(total, sd)
    if kind == "per_bin":
        mean = total / n_frames
        return mean, np.maximum(np.sqrt(np.maximum(total_sq / n_frames - mean**2, 0.0)), floor)
    raise ValueError(f"data.mels.normalization: {kind!r}, expected 'global' or 'per_bin'")


def load_stats(store: Store | str | os.PathLike, n_mels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, std)``, float32 ``[n_mels]`` each, of a mel store (train-split statistics, written by
    :func:`build_mels`); errors name the store's index."""
    store = store if isinstance(store, Store) else Store(store)
    index = store.dir / "index.json"
    stats = store.meta.get("stats")
    if not isinstance(stats, dict) or "mean" not in stats or "std" not in stats:
        raise KeyError(f"{index}: meta has no stats.mean / stats.std (not a mel store built by `agrepa data mels`)")
    mean = torch.tensor(stats["mean"], dtype=torch.float32)
    std = torch.tensor(stats["std"], dtype=torch.float32)
    if n_mels is not None and (mean.shape != (n_mels,) or std.shape != (n_mels,)):
        raise ValueError(f"{index}: stats must have {n_mels} entries (audio.n_mels), "
                         f"got {tuple(mean.shape)}/{tuple(std.shape)}")
    if not bool((std > 0).all()):
        raise ValueError(f"{index}: stats.std must be positive")
    return mean, std
