"""Log-mel spectrograms of every clip of a manifest, in a tensor store.

``build_mels(manifest, out_dir, cfg)`` writes an :class:`agrepa.store.StoreWriter`
store with one tensor per clip, ``mel`` ``[T, n_mels]`` float32 (time-major,
un-normalised Vocos log-mel, :func:`agrepa.audio.log_mel`) and the meta::

    {"stats": {"mean": [n_mels], "std": [n_mels], "n_frames": int, "n_clips": int,
               "split": "train"},
     "manifest_sha256": sha256 of manifest.csv, "audio": the config's audio section,
     "frame_rate": 93.75, "n_mels": 100}

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
from ..store import Store, StoreWriter
from . import manifest as mf

CONFIG_KEYS = ("audio", "data.mels")  # config sections this module reads

log = logging.getLogger(__name__)


def build_mels(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, cfg: dict) -> Path:
    """Compute and store the log-mel of every clip; returns ``out_dir/index.json``."""
    manifest_path = Path(manifest_path)
    df = mf.read_manifest(manifest_path)
    if not (df["split"] == "train").any():
        raise ValueError(f"{manifest_path}: no train clips to compute the mel statistics from")
    cfg_audio = dict(cfg["audio"])
    sr = int(cfg_audio["sample_rate"])
    n_mels = int(cfg_audio["n_mels"])
    peak = cfg_audio["peak_normalize"]
    floor = float(cfg["data"]["mels"]["std_floor"])
    total = np.zeros(n_mels, dtype=np.float64)
    total_sq = np.zeros(n_mels, dtype=np.float64)
    n_frames, n_train = 0, 0
    # an index from an earlier build must not describe the shards being rewritten
    (Path(out_dir) / "index.json").unlink(missing_ok=True)
    writer = StoreWriter(out_dir, shard_size=int(cfg["data"]["mels"]["shard_size"]))
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
    mean, std = normalisation_stats(total, total_sq, n_frames, cfg["data"]["mels"]["normalization"], floor)
    writer.meta = {
        "stats": {"mean": mean.tolist(), "std": std.tolist(), "n_frames": int(n_frames),
                  "n_clips": int(n_train), "split": "train",
                  "normalization": cfg["data"]["mels"]["normalization"]},
        "manifest_sha256": io.sha256_file(manifest_path),
        "audio": cfg_audio,
        "frame_rate": audio_mod.frame_rate(cfg_audio),
        "n_mels": n_mels,
    }
    index = writer.close()
    log.info("mels: %d clips -> %s (stats from %d train clips, %d frames)", len(df), index,
             n_train, n_frames)
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
