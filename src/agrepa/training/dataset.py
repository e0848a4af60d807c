"""Training data for the flow-matching model: clips, crops, prompts and balanced sampling.

A :class:`TrainingData` indexes one split of the stores (numpy arrays built from the
safetensors headers; no clip data in memory) and reads on demand, by byte range, per
clip the normalised mel ``(mel - mean) / std`` (train-split statistics from the mel
store's meta), its token ids and the cached teacher embeddings.
:meth:`TrainingData.collate` reads the crops of a list of clip indices into a batch dict:

=================  ==================  =============================================
key                shape / type        meaning
=================  ==================  =============================================
``mel``            [B, T, n_mels]      normalised mel crop (x1 of the flow), 0-padded
``mask``           [B, T] bool         True on real frames
``tokens``         [B, N(, 2)] int64   the crop's token span, left-aligned, 0-padded
                                       ([B, N, 2] for Config B: primary, BEATs)
``crop``           [B, 2] int64        the crop's mel frames [f0, f1) in the (cut) clip
``token_span``     [B, 2] int64        its token rows [a, b)
``prompt``         [B, T, n_mels]      reference mel: the crop's first p frames, 0 beyond
``prompt_mask``    [B, T] bool         True on the p prompt frames
``domain``         [B] int64           0 speech, 1 audio (:data:`DOMAINS`)
``emb_semantic``   [B, Ds] float32     cached pooled semantic-teacher embedding (0 if none)
``emb_acoustic``   [B, Da] float32     cached pooled acoustic-teacher embedding (0 if none)
``ids``            list[str]           clip ids
``padded``         bool                whether any item is shorter than T (host-side, no sync)
``domain_rows``    tuple of tuples     per domain index, the rows of that domain (host ints: the
                                       REPA / BiT-C heads select rows without a sync)
=================  ==================  =============================================

Tokens and mel share one time axis (:mod:`agrepa.tokenizers.timing`): the token
store's ``position_rate`` / ``granularity`` per domain give each clip's token grid.
On indexing (from the stored shapes), a clip whose token and mel durations disagree by more than one token
is rejected with the reason (``rejected``), and a clip longer than
``audio.max_seconds`` is cut to its first whole token steps within that length --
tokens and mel to the same span (the durations are compared within that window:
tokens made from the teachers' frames cover the window only, as the teachers embed
it, :mod:`agrepa.teachers.cache`). Crop: ``n = floor(train.crop_seconds * r)``
tokens (whole steps) starting at step ``floor(u * n_starts)``, ``u`` in [0, 1),
and the mel frames of exactly that span (``timing.token_window``); a clip no
longer than the crop is taken whole. Config B's rows hold both streams (primary,
BEATs) placed on the grid by time, so one window cuts both at their own rates.
The model interpolates the window's tokens onto its frames. ``crop`` / ``token_span``
record each item's mel frames ``[f0, f1)`` and token rows ``[a, b)``.

Prompt (as the paper's code): a prefix of ``p = floor(v * (floor(f * L) + 1))``
frames of the crop, ``v`` in [0, 1), ``f = train.prompt_max_fraction`` (so
0 <= p <= f * L), zeros beyond. Deterministic batches (:meth:`eval_batches`) use
``u = 0`` (crop from the start) and ``p = floor(train.eval_prompt_fraction * L)``.

:class:`BalancedSampler` draws global batches with half speech and half audio
(interleaved s, a, s, a, ...; one domain alone when the other has no clips), each
domain walking through its own per-epoch permutation drawn by a ``torch.Generator``
seeded from (run seed, tag, domain, epoch). Its state is three integers per domain,
so resuming restores the exact position.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..config import DOMAIN_TEACHER, DOMAINS  # noqa: F401  (DOMAIN_TEACHER re-exported)
from ..corpora.mels import load_stats
from ..store import SEP, ShardPool, Store, StoreInfo
from ..tokenizers.timing import Grid, duration_mismatch, token_window

CONFIG_KEYS = ("audio", "train")  # config sections this module reads

log = logging.getLogger(__name__)

TEACHERS = ("semantic", "acoustic")


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across runs and platforms)."""
    text = ":".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(*parts) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``parts``."""
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """The validated manifest (``agrepa.corpora.manifest.read_manifest``)."""
    from ..corpora.manifest import read_manifest as _read

    return _read(path)


def frames_per_second(cfg: dict) -> float:
    return cfg["audio"]["sample_rate"] / cfg["audio"]["hop_length"]


def token_meta(toks: Store, mel_rate: float, crop_seconds: float) -> tuple[int, dict, dict[int, Grid]]:
    """``(vocab_size, token_layout, {domain id: Grid})`` from a token store's meta
    (:func:`agrepa.tokenizers.streams.store_timing`); a missing key is named, and a crop
    shorter than one token step is refused."""
    for key in ("vocab_size", "offsets", "paired", "position_rate", "granularity"):
        if key not in toks.meta:
            raise KeyError(f"{toks.dir / 'index.json'}: meta has no {key!r} (re-run `agrepa tokens encode`)")
    meta = toks.meta
    layout = {"paired": bool(meta["paired"]), "audio_offset": int(meta["offsets"]["audio"]) if meta["paired"] else None}
    grids = {DOMAINS.index(d): Grid(float(meta["position_rate"][d]), int(meta["granularity"][d]), mel_rate)
             for d in DOMAINS}
    for d, grid in grids.items():
        if crop_seconds < grid.granularity / grid.rate - 1e-9:
            raise ValueError(f"train.crop_seconds: {crop_seconds} s is shorter than one {DOMAINS[d]} token step "
                             f"({grid.granularity / grid.rate:.4g} s, {toks.dir})")
    return int(meta["vocab_size"]), layout, grids


def crop_frames(cfg: dict) -> int:
    """Longest training crop in mel frames: ``ceil(train.crop_seconds * mel rate)`` (a crop
    is whole token steps within ``crop_seconds``, :mod:`agrepa.tokenizers.timing`)."""
    n = int(math.ceil(float(cfg["train"]["crop_seconds"]) * frames_per_second(cfg) - 1e-9))
    if n < 1:
        raise ValueError(f"train.crop_seconds: gives {n} frames; must give at least 1")
    return n


@dataclass(frozen=True)
class DataPaths:
    """The five stores a model-facing stage reads (train, probe, sample, evaluate); the CLIs
    build it from ``--manifest --mels --tokens --semantic --acoustic``. Sampling and
    evaluation read no teacher store (``semantic``/``acoustic`` None)."""

    manifest: Path
    mels: Path
    tokens: Path
    semantic: Path | None = None
    acoustic: Path | None = None

    def __post_init__(self):
        for name in ("manifest", "mels", "tokens", "semantic", "acoustic"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))

    def teachers(self) -> dict[str, Path]:
        """``{"semantic": dir, "acoustic": dir}``; an error naming the missing option otherwise."""
        missing = [f"--{t}" for t in TEACHERS if getattr(self, t) is None]
        if missing:
            raise ValueError(f"teacher embedding store(s) {missing} needed here")
        return {t: getattr(self, t) for t in TEACHERS}


def split_rows(manifest: str | os.PathLike | pd.DataFrame, split: str) -> pd.DataFrame:
    """The manifest rows of ``split`` (columns id, domain, split checked; errors name the file)."""
    df = manifest if isinstance(manifest, pd.DataFrame) else read_manifest(manifest)
    src = "manifest" if isinstance(manifest, pd.DataFrame) else str(manifest)
    for col in ("id", "domain", "split"):
        if col not in df.columns:
            raise KeyError(f"{src}: manifest has no column {col!r}")
    bad = sorted(set(df["domain"]) - set(DOMAINS))
    if bad:
        raise ValueError(f"{src}: unknown domain value(s) {bad}; expected {list(DOMAINS)}")
    df = df[df["split"] == split]
    if df.empty:
        raise ValueError(f"{src}: no clips in split {split!r}")
    return df


class TrainingData:
    """One split of the corpus (or the clips ``ids`` of it) read from its stores on demand,
    with crop/prompt batching (see module doc).

    Only a per-clip index lives in memory, in numpy arrays (no Python object per clip, so
    DataLoader workers do not copy it page by page): domain, usable token rows and mel
    frames, and which shard file of each store holds the clip. It is built from the
    safetensors headers (shapes), never from tensor data; :meth:`collate` reads the
    crop's rows by byte range through a bounded pool of open shards
    (:class:`agrepa.store.ShardPool`)."""

    def __init__(self, cfg: dict, data: DataPaths, split: str = "train", ids: Sequence[str] | None = None):
        self.cfg = cfg
        self.split = split
        self.n_mels = int(cfg["audio"]["n_mels"])
        self.crop = crop_frames(cfg)
        self.prompt_max_fraction = float(cfg["train"]["prompt_max_fraction"])
        self.eval_prompt_fraction = float(cfg["train"]["eval_prompt_fraction"])
        for key, f in (("train.prompt_max_fraction", self.prompt_max_fraction),
                       ("train.eval_prompt_fraction", self.eval_prompt_fraction)):
            if not 0.0 <= f < 1.0:
                raise ValueError(f"{key}: must lie in [0, 1), got {f}")
        self.max_seconds = float(cfg["audio"]["max_seconds"])
        self.crop_seconds = float(cfg["train"]["crop_seconds"])
        df = split_rows(data.manifest, split)
        if ids is not None:                                  # a subset (the probe sample)
            df = df[df["id"].astype(str).isin(set(ids))]
        mel_store, token_store = Store(data.mels), Store(data.tokens)
        teacher_stores = {name: Store(path) for name, path in data.teachers().items()}
        self.mean, self.std = load_stats(mel_store, self.n_mels)
        self.vocab_size, self.token_layout, self.grids = token_meta(token_store, frames_per_second(cfg),
                                                                    self.crop_seconds)
        self.teacher_dims = {name: self._teacher_dim(store) for name, store in teacher_stores.items()}
        self.token_store = StoreInfo(token_store.dir, token_store.meta)   # meta and place, not the index
        self.dirs = {"mels": mel_store.dir, "tokens": token_store.dir,
                     **{name: s.dir for name, s in teacher_stores.items()}}
        self.pool = ShardPool(int(cfg["train"]["open_shards"]))
        self._index(df, mel_store, token_store, teacher_stores)
        if self.rejected:
            log.warning("%s split: skipped %d clip(s) (e.g. %s)", split, len(self.rejected),
                        "; ".join(f"{i}: {why}" for i, why in self.rejected[:3]))
        if not len(self._ids):
            raise ValueError(f"{data.manifest}: none of the {len(df)} clips of split {split!r} is usable "
                             f"(first: {self.rejected[0][0]}: {self.rejected[0][1]})")
        log.info("%s split: %d clips (%d speech, %d audio)", split, len(self._ids),
                 int((self.domain == 0).sum()), int((self.domain == 1).sum()))

    def _index(self, df: pd.DataFrame, mels: Store, toks: Store, teachers: dict[str, Store]) -> None:
        """The per-clip arrays and ``rejected`` (clip id, why), from the stores' headers."""
        stores = {"mels": mels, "tokens": toks, **teachers}
        self.shard_files = {k: sorted(set(s.shard_names())) for k, s in stores.items()}
        number = {k: {f: n for n, f in enumerate(v)} for k, v in self.shard_files.items()}
        shapes = {k: {} for k in stores}                       # header shapes, read shard by shard
        wanted = set(df["id"].astype(str))
        for k, s in stores.items():
            name = {"mels": "mel", "tokens": "tokens"}.get(k, "pooled")
            shapes[k] = s.shapes(name, wanted)
        keep, dom, f1s, bs, shard = [], [], [], [], {k: [] for k in stores}
        rejected = []
        for cid, d in zip(df["id"].astype(str), df["domain"]):
            teacher = DOMAIN_TEACHER[d]
            missing = [n for n in ("mels", "tokens", teacher) if cid not in shapes[n]]
            if missing:
                rejected.append((cid, "not in " + ", ".join(missing)))
                continue
            mel, tok = shapes["mels"][cid], shapes["tokens"][cid]
            if len(mel) != 2 or mel[1] != self.n_mels:
                raise ValueError(f"{mels.dir}: mel of {cid!r} has shape {tuple(mel)}, expected [T, {self.n_mels}]")
            for name in TEACHERS:
                e = shapes[name].get(cid)
                if e is not None and math.prod(e) != self.teacher_dims[name]:
                    raise ValueError(f"{teachers[name].dir}: pooled embedding of {cid!r} has {math.prod(e)} "
                                     f"entries, expected {self.teacher_dims[name]}")
            grid = self.grids[DOMAINS.index(d)]
            window = grid.positions(self.max_seconds)
            # compared within the training window: tokens of a teacher's frames cover that window only
            why = self._token_problem(tok) or duration_mismatch(min(tok[0], window),
                                                                min(mel[0], grid.frame_at(window)), grid)
            if why:
                rejected.append((cid, why))
                continue
            _, b, _, f1 = token_window(tok[0], mel[0], grid, window)
            keep.append(cid)
            dom.append(DOMAINS.index(d))
            f1s.append(f1)
            bs.append(b)
            for k in stores:
                shard[k].append(number[k][stores[k].shard_of(cid)] if cid in shapes[k] else -1)
        self.rejected = rejected
        self._ids = np.array(keep, dtype=str)
        self.domain = np.array(dom, dtype=np.int64)
        self.frames = np.array(f1s, dtype=np.int64)       # usable mel frames f1 (cut to max_seconds)
        self.rows = np.array(bs, dtype=np.int64)          # usable token rows b
        self.shard = {k: np.array(v, dtype=np.int32) for k, v in shard.items()}

    def _token_problem(self, shape: Sequence[int]) -> str | None:
        want = "[N, 2]" if self.token_layout["paired"] else "[N]"
        if len(shape) != (2 if self.token_layout["paired"] else 1) or (len(shape) == 2 and shape[1] != 2) \
                or shape[0] == 0:
            return f"tokens of shape {tuple(shape)}, expected {want}"
        return None

    @staticmethod
    def _teacher_dim(store: Store) -> int:
        dim = store.meta.get("dim")
        if dim is None:
            keys = store.keys()
            if not keys:
                raise ValueError(f"{store.dir}: embedding store is empty")
            dim = store.load("pooled", keys[:1])[keys[0]].numel()
        return int(dim)

    @property
    def ids(self) -> list[str]:
        """Clip ids in index order (a fresh list; the index holds a numpy array)."""
        return self._ids.tolist()

    def __len__(self) -> int:
        return len(self._ids)

    def indices(self, domain: int | str | None = None) -> list[int]:
        """Clip indices, all or of one domain (id 0/1 or name)."""
        if domain is None:
            return list(range(len(self)))
        d = DOMAINS.index(domain) if isinstance(domain, str) else int(domain)
        return np.flatnonzero(self.domain == d).tolist()

    # -- reading --

    def _read(self, store: str, i: int, name: str, rows: tuple[int, int] | None = None) -> Tensor:
        """Rows ``[r0, r1)`` (or all) of tensor ``name`` of clip ``i`` in ``store``, by byte range."""
        n = int(self.shard[store][i])
        h = self.pool.get(self.dirs[store] / self.shard_files[store][n])
        key = f"{self._ids[i]}{SEP}{name}"
        return h.get_tensor(key) if rows is None else h.get_slice(key)[rows[0]:rows[1]]

    def mel_rows(self, i: int, f0: int, f1: int) -> Tensor:
        """Normalised mel frames ``[f0, f1)`` of clip ``i``."""
        return ((self._read("mels", i, "mel", (f0, f1)).float() - self.mean) / self.std).contiguous()

    def token_rows(self, i: int, a: int, b: int) -> Tensor:
        """Token rows ``[a, b)`` of clip ``i``; ids outside ``[1, vocab_size)`` are an error naming the
        store and the clip (checked on the rows read: the index is built from shapes only)."""
        tok = self._read("tokens", i, "tokens", (a, b)).long()
        if tok.numel() and (int(tok.min()) < 1 or int(tok.max()) >= self.vocab_size):
            raise ValueError(f"{self.dirs['tokens']}: tokens of {str(self._ids[i])!r} rows [{a}, {b}) hold ids outside "
                             f"[1, {self.vocab_size}) (re-run `agrepa tokens encode`)")
        return tok.contiguous()

    def clip_mel(self, i: int) -> Tensor:
        """The whole usable normalised mel of clip ``i`` (cut to ``audio.max_seconds``)."""
        return self.mel_rows(i, 0, int(self.frames[i]))

    def clip_tokens(self, i: int) -> Tensor:
        """The whole usable token rows of clip ``i``."""
        return self.token_rows(i, 0, int(self.rows[i]))

    def embedding(self, teacher: str, i: int) -> Tensor:
        """The cached pooled embedding of ``teacher`` for clip ``i`` (zeros when the store has none)."""
        if self.shard[teacher][i] < 0:
            return torch.zeros(self.teacher_dims[teacher])
        return self._read(teacher, i, "pooled").float().reshape(-1)

    # -- batching --

    def collate(self, indices: Sequence[int], crop_pos: Tensor | None = None,
                prompt_pos: Tensor | None = None) -> dict:
        """The batch dict for clips ``indices`` (see module doc), read from the stores.

        ``crop_pos`` / ``prompt_pos``: per-item uniforms in [0, 1) choosing the crop
        start and the prompt length; ``None`` gives the deterministic crop (start 0)
        and prompt (``train.eval_prompt_fraction`` of the crop).
        """
        B = len(indices)
        if B == 0:
            raise ValueError("collate: empty list of clips")
        crops, spans, plens, windows = [], [], [], []
        for j, i in enumerate(indices):
            grid = self.grids[int(self.domain[i])]
            u = None if crop_pos is None else float(crop_pos[j])
            a, b, f0, f1 = token_window(int(self.rows[i]), int(self.frames[i]), grid,
                                        grid.positions(self.crop_seconds), u)
            windows.append((f0, f1, a, b))
            L = f1 - f0
            crops.append(self.mel_rows(i, f0, f1))
            spans.append(self.token_rows(i, a, b))
            if prompt_pos is None:
                p = int(math.floor(self.eval_prompt_fraction * L))
            else:
                p_max = int(math.floor(self.prompt_max_fraction * L))
                p = min(int(float(prompt_pos[j]) * (p_max + 1)), p_max)
            plens.append(p)
        T = max(c.shape[0] for c in crops)
        N = max(s.shape[0] for s in spans)
        mel = torch.zeros(B, T, self.n_mels)
        mask = torch.zeros(B, T, dtype=torch.bool)
        tokens = torch.zeros(B, N, *spans[0].shape[1:], dtype=torch.long)
        prompt_mask = torch.zeros(B, T, dtype=torch.bool)
        for j, (c, s, p) in enumerate(zip(crops, spans, plens)):
            mel[j, :c.shape[0]] = c
            mask[j, :c.shape[0]] = True
            tokens[j, :s.shape[0]] = s
            prompt_mask[j, :p] = True
        return {
            "mel": mel,
            "mask": mask,
            "tokens": tokens,
            "crop": torch.tensor([w[:2] for w in windows], dtype=torch.long),
            "token_span": torch.tensor([w[2:] for w in windows], dtype=torch.long),
            "prompt": mel * prompt_mask[..., None],
            "prompt_mask": prompt_mask,
            "domain": torch.as_tensor([int(self.domain[i]) for i in indices], dtype=torch.long),
            "emb_semantic": torch.stack([self.embedding("semantic", i) for i in indices]),
            "emb_acoustic": torch.stack([self.embedding("acoustic", i) for i in indices]),
            "ids": [str(self._ids[i]) for i in indices],
            "padded": any(c.shape[0] < T for c in crops),   # a host bool: attention needs no mask when False
            "domain_rows": tuple(tuple(j for j, i in enumerate(indices) if int(self.domain[i]) == d)
                                 for d in range(len(DOMAINS))),   # host ints: per-domain rows without a sync
        }

    def eval_batches(self, batch_size: int, domain: int | str | None = None,
                     limit: int | None = None) -> list[dict]:
        """Fixed batches for probes and evaluation: no randomness at all.

        Clips in manifest order; with ``domain=None`` speech and audio clips are
        interleaved (s, a, s, a, ...; the rest of the longer domain at the end) so the
        first batches cover both domains. Crops start at frame 0; prompts are the
        first ``train.eval_prompt_fraction`` of each crop. ``limit``: at most that
        many batches (only those are read).
        """
        if batch_size < 1:
            raise ValueError(f"eval_batches: batch_size must be >= 1, got {batch_size}")
        if domain is None:
            s, a = self.indices(0), self.indices(1)
            order = [i for pair in zip(s, a) for i in pair] + s[len(a):] + a[len(s):]
        else:
            order = self.indices(domain)
        starts = range(0, len(order), batch_size)
        starts = starts if limit is None else starts[:limit]
        return [self.collate(order[k:k + batch_size]) for k in starts]


class BalancedSampler:
    """Endless domain-balanced global batches of clip indices (see module doc).

    ``next_batch()`` returns ``batch_size`` indices in the order s, a, s, a, ...;
    with an odd batch size the extra slot alternates between the domains from batch
    to batch. Every rank of a multi-process run builds the same sampler and takes
    its contiguous shard (:func:`shard`), which keeps each shard balanced too.
    """

    def __init__(self, domains: Sequence[int], batch_size: int, seed: int, tag: str = "train"):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.batch_size, self.seed, self.tag = batch_size, int(seed), str(tag)
        domains = np.asarray(domains)
        # arrays (not lists of ints): each DataLoader worker holds its own sampler
        self.pools = [np.flatnonzero(domains == k) for k in range(len(DOMAINS))]
        if not any(len(p) for p in self.pools):
            raise ValueError("sampler: no clips")
        self.batches = 0
        self.cursor = [[0, 0] for _ in self.pools]   # per domain: epoch, position
        self._perm: dict[tuple[int, int], np.ndarray] = {}

    def _permutation(self, d: int, epoch: int) -> np.ndarray:
        key = (d, epoch)
        if key not in self._perm:
            self._perm = {k: v for k, v in self._perm.items() if k[0] != d}
            g = generator(self.seed, self.tag, "sampler", DOMAINS[d], epoch)
            self._perm[key] = self.pools[d][torch.randperm(len(self.pools[d]), generator=g).numpy()]
        return self._perm[key]

    def _draw(self, d: int) -> int:
        epoch, pos = self.cursor[d]
        perm = self._permutation(d, epoch)
        item = int(perm[pos])
        pos += 1
        if pos == len(perm):
            epoch, pos = epoch + 1, 0
        self.cursor[d] = [epoch, pos]
        return item

    def next_batch(self) -> list[int]:
        live = [d for d, p in enumerate(self.pools) if len(p)]
        first = live[self.batches % len(live)] if len(live) > 1 else live[0]
        order = [first] + [d for d in live if d != first]
        out = [self._draw(order[k % len(order)]) for k in range(self.batch_size)]
        self.batches += 1
        return out

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"seed": self.seed, "tag": self.tag, "batch_size": self.batch_size,
                "batches": self.batches, "cursor": [list(c) for c in self.cursor],
                "pool_sizes": [len(p) for p in self.pools]}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "tag", "batch_size", "pool_sizes"):
            if state.get(key) != mine[key]:
                raise ValueError(f"sampler state: {key} is {state.get(key)!r}, this run has {mine[key]!r}")
        self.batches = int(state["batches"])
        self.cursor = [[int(e), int(p)] for e, p in state["cursor"]]


def shard(n: int, rank: int, world_size: int) -> slice:
    """The contiguous slice of a global batch of ``n`` items that ``rank`` trains on."""
    if n % world_size:
        raise ValueError(f"train.batch_size {n} is not divisible by the world size {world_size}")
    k = n // world_size
    return slice(rank * k, (rank + 1) * k)
