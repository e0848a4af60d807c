"""Sharded tensor store keyed by clip id (mels, teacher embeddings, tokens).

Layout of a store directory::

    DIR/shard-00000.safetensors   tensors named "<clip id>::<name>"
    DIR/shard-00001.safetensors
    DIR/index.json                {"meta": {...}, "shards": {clip id: shard file}}

``index.json`` is written last and atomically, so a store without it is
incomplete (a killed job) and is never read. Rules name ``DIR/index.json`` as
their output.

Scatter / gather (``shards.<stage>`` of the config, docs/architecture.md): part ``k`` of
``K`` is a complete store of the ``k``-th contiguous slice of the manifest (:func:`part_range`)
in ``DIR/part-0000kof0000K/`` (its own ``index.json`` last), and :func:`gather` writes
``DIR/index.json`` whose shard entries name files inside the parts
(``part-00003of00008/shard-00000.safetensors``); no tensor is copied, and :class:`Store`
(which opens ``DIR / <entry>``) reads a gathered store like any other.
"""
from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import torch
from safetensors import safe_open

from . import io
from .safetensors_stream import StreamingSafetensors
from .parts import part_name, part_range  # noqa: F401  (re-exported)

SEP = "::"


class StoreWriter:
    """Write ``{clip id: {name: tensor}}`` into shards of ``shard_size`` clips. Each tensor goes to
    disk as it is added (:class:`agrepa.safetensors_stream.StreamingSafetensors`), so memory does not
    grow with the shard or the store."""

    def __init__(self, out_dir: str | os.PathLike, meta: dict[str, Any] | None = None,
                 shard_size: int = 512):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.meta = dict(meta or {})
        self.shard_size = shard_size
        self._shard: StreamingSafetensors | None = None
        self._pending_keys: list[str] = []
        self._shards: dict[str, str] = {}
        self._n_shard = 0

    def _shard_name(self) -> str:
        return f"shard-{self._n_shard:05d}.safetensors"

    def add(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        if SEP in key:
            raise ValueError(f"clip id {key!r} contains the reserved separator {SEP!r}")
        if key in self._shards or key in self._pending_keys:
            raise ValueError(f"clip id {key!r} added twice")
        if self._shard is None:
            self._shard = StreamingSafetensors(self.out_dir / self._shard_name())
        for name, t in tensors.items():
            self._shard.add(f"{key}{SEP}{name}", t)
        self._pending_keys.append(key)
        if len(self._pending_keys) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending_keys:
            return
        self._shard.close()
        for key in self._pending_keys:
            self._shards[key] = self._shard_name()
        self._n_shard += 1
        self._shard, self._pending_keys = None, []

    def close(self) -> Path:
        self._flush()
        live = set(self._shards.values())
        for stale in self.out_dir.glob("shard-*.safetensors"):
            if stale.name not in live:
                stale.unlink()
        index = self.out_dir / "index.json"
        io.write_json(index, {"meta": self.meta, "shards": self._shards})
        return index


class Store:
    """Read a store written by :class:`StoreWriter`."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        self.dir = path.parent if path.name == "index.json" else path
        index_path = self.dir / "index.json"
        if not index_path.exists():
            raise FileNotFoundError(f"{index_path}: store index missing (incomplete or never built)")
        index = io.read_json(index_path)
        if not isinstance(index, dict) or "shards" not in index:
            raise ValueError(f"{index_path}: not a store index (no 'shards' key)")
        self.meta: dict[str, Any] = index.get("meta", {})
        self._shards: dict[str, str] = index["shards"]
        self._handles: dict[str, Any] = {}
        self._names: dict[str, set[str]] = {}      # tensor names per shard, read on first use

    def shard_of(self, key: str) -> str:
        """The shard file name holding clip ``key``."""
        try:
            return self._shards[key]
        except KeyError:
            raise KeyError(f"{self.dir}: no entry for clip id {key!r}") from None

    def shard_names(self) -> list[str]:
        """The shard file names the index refers to."""
        return sorted(set(self._shards.values()))

    def shapes(self, name: str, keys: Iterable[str] | None = None) -> dict[str, list[int]]:
        """``{clip id: shape}`` of tensor ``name`` for the stored clips among ``keys`` (all by
        default), read from the safetensors headers shard by shard (no tensor data)."""
        wanted = set(self.keys() if keys is None else keys)
        by_shard: dict[str, list[str]] = {}
        for key in wanted:
            if key in self._shards:
                by_shard.setdefault(self._shards[key], []).append(key)
        out = {}
        for shard, ks in sorted(by_shard.items()):
            with safe_open(str(self.dir / shard), framework="pt") as h:
                names = set(h.keys())
                for key in ks:
                    t = f"{key}{SEP}{name}"
                    if t not in names:
                        raise KeyError(f"{self.dir / shard}: clip {key!r} has no tensor {name!r}")
                    out[key] = list(h.get_slice(t).get_shape())
        return out

    def keys(self) -> list[str]:
        return list(self._shards)

    def __contains__(self, key: str) -> bool:
        return key in self._shards

    def __len__(self) -> int:
        return len(self._shards)

    def _handle(self, shard: str):
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.dir / shard), framework="pt")
        return self._handles[shard]

    def has(self, key: str, name: str) -> bool:
        """Whether clip ``key`` is stored with a tensor ``name`` (from the shard header; a teacher
        store keeps ``frames`` only for the clips a configured stage reads them of)."""
        shard = self._shards.get(key)
        if shard is None:
            return False
        names = self._names.get(shard)
        if names is None:
            names = self._names[shard] = set(self._handle(shard).keys())
        return f"{key}{SEP}{name}" in names

    def get(self, key: str) -> dict[str, torch.Tensor]:
        try:
            shard = self._shards[key]
        except KeyError:
            raise KeyError(f"{self.dir}: no entry for clip id {key!r}") from None
        h = self._handle(shard)
        prefix = f"{key}{SEP}"
        return {k[len(prefix):]: h.get_tensor(k) for k in h.keys() if k.startswith(prefix)}

    def shape(self, name: str, key: str) -> list[int]:
        """The shape of one clip's tensor ``name``, read from the shard header (no data read)."""
        shard = self._shards.get(key)
        if shard is None:
            raise KeyError(f"{self.dir}: no entry for clip id {key!r}")
        return list(self._handle(shard).get_slice(f"{key}{SEP}{name}").get_shape())

    def load(self, name: str, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """``{clip id: tensor}`` for one tensor name, for all (or the given) clips."""
        out = {}
        for key in (self.keys() if keys is None else keys):
            shard = self._shards.get(key)
            if shard is None:
                raise KeyError(f"{self.dir}: no entry for clip id {key!r}")
            out[key] = self._handle(shard).get_tensor(f"{key}{SEP}{name}")
        return out


class StoreInfo(NamedTuple):
    """A store's place and meta, without its per-clip index."""

    dir: Path
    meta: dict[str, Any]


class ShardPool:
    """At most ``max_open`` open shard files (least recently used closed first), so a reader of
    thousands of shards stays within the file-descriptor limit. Handles are not shared across a
    fork: a DataLoader worker opens its own."""

    def __init__(self, max_open: int = 64):
        if max_open < 1:
            raise ValueError(f"train.open_shards: must be >= 1, got {max_open}")
        self.max_open = max_open
        self._open: OrderedDict[Path, Any] = OrderedDict()
        self._pid = os.getpid()

    def get(self, path: Path):
        if os.getpid() != self._pid:                      # a forked worker: its own handles
            self._open, self._pid = OrderedDict(), os.getpid()
        h = self._open.get(path)
        if h is None:
            if not path.exists():
                raise FileNotFoundError(f"{path}: shard missing (store changed since it was indexed?)")
            h = self._open[path] = safe_open(str(path), framework="pt")
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(path)
        return h

    def __getstate__(self):
        return {"max_open": self.max_open}

    def __setstate__(self, state):
        self.__init__(state["max_open"])


# ----------------------------------------------------------------------------- scatter / gather
PART_META = "part"          # a part's meta: {"index": k, "of": K, "n_clips": clips in its slice}


def part_dir(out_dir: str | os.PathLike, k: int, parts: int) -> Path:
    return Path(out_dir) / part_name(k, parts)


def start_part(out_dir: str | os.PathLike, k: int, parts: int) -> Path:
    """Before part ``k`` is (re)written: drop its index and the gathered one (neither may describe
    shards being rewritten); returns the part's directory."""
    (Path(out_dir) / "index.json").unlink(missing_ok=True)
    d = part_dir(out_dir, k, parts)
    (d / "index.json").unlink(missing_ok=True)
    return d


def part_metas(out_dir: str | os.PathLike, parts: int) -> list[dict]:
    """The metas of the ``parts`` parts, read at the start of a gather (the gathered index, about
    to be rewritten, is dropped first: a failed gather leaves none). FileNotFoundError names a
    missing or incomplete part."""
    (Path(out_dir) / "index.json").unlink(missing_ok=True)
    return [Store(part_dir(out_dir, k, parts)).meta for k in range(parts)]


def merge_meta(metas: list[dict], where: str, summed: tuple[str, ...] = (),
               dropped: tuple[str, ...] = ()) -> dict:
    """One meta from the parts' metas: every key but ``summed`` / ``dropped`` / ``part`` must be
    equal in all parts (a part built with another config, teacher or manifest is an error naming
    the key); ``summed`` keys are added up."""
    skip = set(summed) | set(dropped) | {PART_META}
    first = {k: v for k, v in metas[0].items() if k not in skip}
    for i, m in enumerate(metas[1:], 1):
        mine = {k: v for k, v in m.items() if k not in skip}
        for key in sorted(set(first) | set(mine)):
            if first.get(key) != mine.get(key):
                raise ValueError(f"{where}: part {i} differs from part 0 in meta {key!r} "
                                 f"({str(mine.get(key))[:60]} vs {str(first.get(key))[:60]}): "
                                 "parts built from different inputs; rebuild them")
    out = dict(first)
    for key in summed:
        out[key] = sum(m[key] for m in metas)
    return out


def gather(out_dir: str | os.PathLike, parts: int, ids: Iterable[str], meta: dict[str, Any]) -> Path:
    """Write ``out_dir/index.json`` over the ``parts`` complete parts, whose clips must be exactly
    ``ids`` (the manifest's); ``meta`` is the gathered store's meta (see :func:`merge_meta`).
    Top-level shards and parts of another ``K`` (an earlier layout) are removed."""
    out = Path(out_dir)
    (out / "index.json").unlink(missing_ok=True)
    shards: dict[str, str] = {}
    names = [part_name(k, parts) for k in range(parts)]
    for k, name in enumerate(names):
        store = Store(out / name)         # FileNotFoundError if that part is missing or incomplete
        info = store.meta.get(PART_META) or {}
        if info.get("index") != k or info.get("of") != parts:
            raise ValueError(f"{out / name / 'index.json'}: meta part {info} is not part {k} of {parts}")
        for cid, shard in store._shards.items():
            if cid in shards:
                raise ValueError(f"{out / name}: clip id {cid!r} is also in {shards[cid].split('/')[0]}")
            shards[cid] = f"{name}/{shard}"
    want = set(ids)
    if set(shards) != want:
        missing, extra = sorted(want - set(shards)), sorted(set(shards) - want)
        raise ValueError(f"{out}: the parts hold {len(shards)} clips, the manifest {len(want)} "
                         f"(missing {missing[:3]}, not in the manifest {extra[:3]}): rebuild the parts")
    for stale in out.glob("shard-*.safetensors"):
        stale.unlink()
    for stale in out.glob("part-*of*"):
        if stale.is_dir() and stale.name not in names:
            shutil.rmtree(stale)
    index = out / "index.json"
    io.write_json(index, {"meta": {**meta, "parts": parts}, "shards": shards})
    return index
