"""Teacher embedding cache: run a teacher once over the clips of a manifest that are read.

Output: an :mod:`agrepa.store` with, per clip id, ``pooled`` [D] float32 (mean over real
frames, the REPA / BiT-C training target) and, only where a configured stage reads them,
``frames`` [T', D] in ``teachers.frames_dtype`` (float16 by default). What is stored is
decided in one place, :func:`store_layout`: frames are kept for the clips of the domains
:func:`agrepa.teachers.readers.frames_read` names (the domains a frame-reading tokenizer
fits on or encodes; none at paper.yaml's semantic role, whose speech stream is the S3 ONNX
tokenizer reading audio). Readers upcast frames with ``.float()``. The clips embedded at all
are those of :func:`agrepa.teachers.readers.embedded_domains` (``layout.domains``): the
domains whose ``pooled`` a stage reads (only the clip's own domain's teacher: speech clips with
the semantic teacher, audio clips with the acoustic one) and those whose frames a tokenizer
reads; the teacher is not run on the other domain's clips and the store has no entry for them
(``TrainingData.embedding`` gives zeros, as for any clip a store lacks). ``index.json`` meta::

    role, teacher, fingerprint, dim, frame_rate, granularity, sample_rate, window_seconds,
    domains, frames_domains, frames_dtype, pooled_dtype,
    manifest_sha256, cache_key = sha256(role, fingerprint, window, manifest_sha256, layout),
    n_clips (embedded), n_skipped (clips of the other domains), n_frames_clips, n_cut

The teacher sees the clip's training window: its first ``audio.max_seconds``
(``window_seconds``), the span training cuts the mel and the tokens to
(:mod:`agrepa.training.dataset`), so a clip's target describes the audio the model
trains on; ``n_cut`` counts the clips that were longer.

Clips go through the teacher ``teachers.batch_size`` at a time
(:meth:`Teacher.embed_batch`; each clip pools over its own real frames only) and
the job ends with a throughput line (clips/s).

A second run with the same teacher (same fingerprint: weights + settings) and
the same manifest bytes finds ``cache_key`` in the existing index and returns
without running the teacher; any change to either recomputes everything.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm import tqdm

from .. import audio as A
from .. import config as C
from .. import io
from ..batching import Throughput, longest_first, row_batches
from ..store import Store, StoreWriter, gather, merge_meta, part_dir, part_metas, part_range, start_part
from ..config import DOMAINS
from .readers import embedded_domains, frames_read
from .base import Teacher
from .registry import build_teacher

CONFIG_KEYS = ("audio", "teachers.shard_size", "teachers.batch_size", "teachers.frames_dtype",
               "teachers.{role}")  # config sections this module reads (frames_read: its own)

log = logging.getLogger(__name__)


FRAMES_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class StoreLayout(NamedTuple):
    """What an embedding store holds: ``pooled`` (float32) for the clips of ``domains`` (the
    others are not embedded) and ``frames`` for the clips of ``frames_domains``, in
    ``frames_dtype`` (a :data:`FRAMES_DTYPES` name)."""

    frames_domains: tuple[str, ...]
    frames_dtype: str
    domains: tuple[str, ...] = DOMAINS


#: the layout before stores kept only what is read (every clip embedded, every clip's frames,
#: float32): the "before" of benchmarks/bench_store_bytes.py
FULL_FP32 = StoreLayout(DOMAINS, "float32", DOMAINS)


def store_layout(cfg: dict, role: str) -> StoreLayout:
    """The ``role`` store's layout at ``cfg``: the clips of the domains some stage reads
    (:func:`agrepa.teachers.readers.embedded_domains`), frames of the domains a configured stage
    reads them of (:func:`agrepa.teachers.readers.frames_read`), in ``teachers.frames_dtype``."""
    dtype = str(cfg["teachers"]["frames_dtype"])
    if dtype not in FRAMES_DTYPES:
        raise ValueError(f"teachers.frames_dtype: {dtype!r}, expected one of {sorted(FRAMES_DTYPES)}")
    return StoreLayout(frames_read(cfg, role), dtype, embedded_domains(cfg, role))


def stored_frames(frames: torch.Tensor, dtype: str, path) -> torch.Tensor:
    """``frames`` cast to the store's ``dtype``; an error (not an inf) when a value is out of its range."""
    target = FRAMES_DTYPES[dtype]
    frames = frames.float()
    big = float(frames.abs().max()) if frames.numel() else 0.0
    if big > torch.finfo(target).max:
        raise ValueError(f"{path}: teacher frames reach |x| = {big:.4g}, beyond {dtype}'s range; set "
                         f"teachers.frames_dtype: bfloat16 or float32")
    return frames.to(target)


def cache_key(role: str, fingerprint: str, manifest_sha256: str, window_seconds: float,
              layout: StoreLayout | None = None) -> str:
    key = {"role": role, "fingerprint": fingerprint, "manifest": manifest_sha256,
           "window_seconds": float(window_seconds)}
    if layout is not None:
        key["layout"] = {"frames_domains": list(layout.frames_domains), "frames_dtype": layout.frames_dtype}
        if tuple(layout.domains) != tuple(DOMAINS):   # every clip embedded: the key of the stores before
            key["layout"]["domains"] = list(layout.domains)
    return io.sha256_json(key)


def embedded_rows(manifest, domains):
    """The manifest rows of the clips of ``domains`` (in manifest order): the clips an embed job
    with that layout embeds; its parts are slices of these."""
    return manifest[manifest["domain"].isin(list(domains))]


def training_window(wave, sample_rate: int, max_seconds: float):
    """The first ``max_seconds`` of a waveform (the whole one if shorter)."""
    return wave[: int(round(float(max_seconds) * sample_rate))]


def cached_meta(out_dir: str | os.PathLike, key: str, ids: list[str]) -> dict | None:
    """The existing store's meta if it is complete for ``key`` and exactly ``ids``; else None."""
    index = Path(out_dir) / "index.json"
    if not index.exists():
        return None
    try:
        store = Store(out_dir)
    except (ValueError, FileNotFoundError):
        return None
    if store.meta.get("cache_key") != key or sorted(store.keys()) != sorted(ids):
        return None
    return store.meta


def part_rows(manifest_path, role: str, layout: StoreLayout, part: int, parts: int):
    """(the manifest rows part ``part`` of ``parts`` embeds: its contiguous slice of the clips of
    ``layout.domains``, the number of the manifest's clips of the other domains: not embedded)."""
    from ..corpora.manifest import read_manifest

    manifest = read_manifest(manifest_path)
    if manifest.empty:
        raise ValueError(f"{manifest_path}: manifest has no clips to embed")
    rows = embedded_rows(manifest, layout.domains)
    if rows.empty:
        raise ValueError(f"{manifest_path}: no clips of the domains {list(layout.domains)} that the {role} "
                         f"store is read for")
    start, stop = part_range(len(rows), part, parts)
    return rows.iloc[start:stop], len(manifest) - len(rows)


def embed_manifest(cfg: dict, role: str, manifest_path: str | os.PathLike, out_dir: str | os.PathLike,
                   teacher: Teacher | None = None, teacher_dir: str | os.PathLike | None = None,
                   layout: StoreLayout | None = None, part: int | None = None, parts: int = 1) -> dict:
    """Embed the manifest's clips of ``layout.domains`` (the domains some stage reads this
    teacher's output of, :func:`agrepa.teachers.readers.embedded_domains`) with the ``role`` teacher
    into the store ``out_dir``; a no-op when the cache is current. Returns the meta.
    ``layout``: what to store (default :func:`store_layout` of ``cfg``).
    With ``part`` k: only part k of ``parts`` (its contiguous slice of those clips) into
    ``out_dir/part-...`` (:mod:`agrepa.store`; :func:`gather_embeddings` writes the top-level
    index); without: the whole manifest as part 0 of 1 and its gather."""
    if part is None:
        if parts != 1:
            raise ValueError(f"parts={parts}: embed one part at a time (part=k), then gather_embeddings")
        embed_manifest(cfg, role, manifest_path, out_dir, teacher, teacher_dir, layout, part=0, parts=1)
        return gather_embeddings(cfg, role, manifest_path, out_dir, 1)
    from ..corpora.manifest import resolve_path

    layout = store_layout(cfg, role) if layout is None else layout
    manifest, n_skipped = part_rows(manifest_path, role, layout, part, parts)
    top = out_dir
    out_dir = part_dir(top, part, parts)
    if teacher is None:
        teacher = build_teacher(cfg, role, teacher_dir=teacher_dir)
    fingerprint = teacher.fingerprint()
    manifest_sha = io.sha256_file(manifest_path)
    window = float(cfg["audio"]["max_seconds"])
    key = cache_key(role, fingerprint, manifest_sha, window, layout)
    ids = manifest["id"].tolist()
    hit = cached_meta(out_dir, key, ids)
    if hit is not None:
        log.info("embedding cache hit: %s (%s, %d clips) -- teacher not run", out_dir, teacher.name, len(ids))
        return hit

    out = start_part(top, part, parts)  # never leave an old index pointing at shards being rewritten
    meta = {"role": role, "teacher": teacher.name, "fingerprint": fingerprint, "dim": teacher.dim,
            "frame_rate": teacher.frame_rate, "granularity": int(teacher.granularity),
            "sample_rate": teacher.sample_rate, "window_seconds": window,
            "domains": list(layout.domains), "n_skipped": n_skipped,
            "frames_domains": list(layout.frames_domains), "frames_dtype": layout.frames_dtype,
            "pooled_dtype": "float32", "manifest_sha256": manifest_sha, "cache_key": key, "n_clips": len(ids),
            "part": {"index": part, "of": parts, "n_clips": len(ids)}}
    peak = cfg["audio"]["peak_normalize"]
    writer = StoreWriter(out, meta=meta, shard_size=int(cfg["teachers"]["shard_size"]))
    batch_size = int(cfg["teachers"]["batch_size"])
    n_cut = n_frames_clips = 0
    with Throughput(log, f"embed {role} ({teacher.name})", len(manifest), batch_size), \
            tqdm(total=len(manifest), desc=f"embed {role} ({teacher.name})") as bar:
        for batch in row_batches(longest_first(manifest), batch_size, "teachers.batch_size"):
            paths, cuts = [], []
            for row in batch:
                path = resolve_path(manifest_path, row["path"])
                wave = A.load_audio(path, sample_rate=teacher.sample_rate, peak=peak)
                cut = training_window(wave, teacher.sample_rate, window)
                n_cut += len(cut) < len(wave)
                paths.append(path)
                cuts.append(torch.from_numpy(cut))
            for row, path, (frames, pooled) in zip(batch, paths, teacher.embed_batch(cuts, teacher.sample_rate)):
                if not torch.isfinite(frames).all():
                    raise ValueError(f"{path}: teacher {teacher.name} produced non-finite features")
                tensors = {"pooled": pooled.float()}
                if row["domain"] in layout.frames_domains:
                    tensors["frames"] = stored_frames(frames, layout.frames_dtype, path)
                    n_frames_clips += 1
                writer.add(row["id"], tensors)
            bar.update(len(batch))
    writer.meta.update({"n_cut": n_cut, "n_frames_clips": n_frames_clips})
    writer.close()
    C.save_resolved(cfg, out)
    if n_skipped:
        log.info("skipped the manifest's %d clips outside %s: no stage reads their %s embedding",
                 n_skipped, ", ".join(layout.domains), role)
    log.info("embedded %d clips with %s into %s (%d longer than the %.3g-s training window: their first %.3g s)",
             len(ids), teacher.name, out, n_cut, window, window)
    log.info("stored %s frames of %d clips (domains: %s); pooled float32 for every embedded clip", layout.frames_dtype,
             n_frames_clips, ", ".join(layout.frames_domains) or "none: no configured stage reads them")
    return {**meta, "n_cut": n_cut, "n_frames_clips": n_frames_clips}


def gather_embeddings(cfg: dict, role: str, manifest_path: str | os.PathLike, out_dir: str | os.PathLike,
                      parts: int) -> dict:
    """``out_dir/index.json`` over the ``parts`` finished parts (no tensor copied): their metas
    must agree (role, teacher fingerprint, window, layout, manifest bytes: one ``cache_key``);
    ``n_clips``, ``n_cut`` and ``n_frames_clips`` are summed. The parts must hold exactly the
    manifest's clips of the embedded ``domains`` (meta; all domains for a store written before
    it). Returns the gathered meta."""
    from ..corpora.manifest import read_manifest

    manifest = read_manifest(manifest_path)
    metas = part_metas(out_dir, parts)
    meta = merge_meta(metas, str(out_dir), summed=("n_clips", "n_cut", "n_frames_clips"))
    if meta.get("role") != role:
        raise ValueError(f"{out_dir}: parts of role {meta.get('role')!r}, expected {role!r}")
    if meta["manifest_sha256"] != io.sha256_file(manifest_path):
        raise ValueError(f"{out_dir}: parts embedded from another manifest than {manifest_path}; rebuild them")
    gather(out_dir, parts, embedded_rows(manifest, meta.get("domains", DOMAINS))["id"].tolist(), meta)
    C.save_resolved(cfg, out_dir)
    log.info("embeddings %s: gathered %d parts, %d clips -> %s", role, parts, meta["n_clips"], out_dir)
    return {**meta, "parts": parts}
