"""Sharded tensor store keyed by clip id (mels, teacher embeddings, tokens).

Layout of a store directory::

    DIR/shard-00000.safetensors   tensors named "<clip id>::<name>"
    DIR/shard-00001.safetensors
    DIR/index.json                {"meta": {...}, "shards": {clip id: shard file}}

``index.json`` is written last and atomically, so a store without it is
incomplete (a killed job) and is never read. Rules name ``DIR/index.json`` as
their output.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import io

SEP = "::"


class StoreWriter:
    """Write ``{clip id: {name: tensor}}`` into shards of ``shard_size`` clips."""

    def __init__(self, out_dir: str | os.PathLike, meta: dict[str, Any] | None = None,
                 shard_size: int = 512):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.meta = dict(meta or {})
        self.shard_size = shard_size
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_keys: list[str] = []
        self._shards: dict[str, str] = {}
        self._n_shard = 0

    def add(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        if SEP in key:
            raise ValueError(f"clip id {key!r} contains the reserved separator {SEP!r}")
        if key in self._shards or key in self._pending_keys:
            raise ValueError(f"clip id {key!r} added twice")
        for name, t in tensors.items():
            self._pending[f"{key}{SEP}{name}"] = t.detach().cpu().contiguous()
        self._pending_keys.append(key)
        if len(self._pending_keys) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending_keys:
            return
        name = f"shard-{self._n_shard:05d}.safetensors"
        with io.atomic_path(self.out_dir / name) as tmp:
            save_file(self._pending, str(tmp))
        for key in self._pending_keys:
            self._shards[key] = name
        self._n_shard += 1
        self._pending, self._pending_keys = {}, []

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
