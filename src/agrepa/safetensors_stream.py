"""A safetensors file written one tensor at a time, in memory that does not grow with the file.

``safetensors.torch.save_file`` takes the whole dict of tensors and serialises it into one
buffer before writing: a shard of N clips costs its bytes twice in RAM (safetensors issues
#291 and #458; the library has no incremental writer because the header, which lists every
tensor's offsets, comes first). :class:`StreamingSafetensors` writes each added tensor's bytes
straight to an unnamed temporary file beside the target, keeps only the header entries, and at
:meth:`close` writes the header and copies the data behind it in 8-MiB chunks, atomically
(:func:`agrepa.io.atomic_path`). The file is read by ``safetensors.safe_open`` like any other;
memory is one tensor plus the header, at the price of writing each shard's bytes twice to disk
(sequentially).

The format (safetensors' README): an 8-byte little-endian header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}}`` padded with spaces to a multiple of 8,
then the tensors' bytes, contiguous, in the order of their offsets.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import torch

from . import io

DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
          torch.uint8: "U8", torch.bool: "BOOL"}
CHUNK = 8 << 20


class StreamingSafetensors:
    """``add(name, tensor)`` any number of times, then ``close()`` writes ``path``; ``discard()``
    (or garbage collection) drops the spooled bytes without writing anything."""

    def __init__(self, path: str | os.PathLike):
        if sys.byteorder != "little":
            raise RuntimeError("safetensors stores little-endian bytes; this host is big-endian")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._spool = tempfile.TemporaryFile(dir=self.path.parent)   # unnamed: a killed job leaves nothing
        self._entries: dict[str, dict] = {}
        self._offset = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._entries:
            raise ValueError(f"{self.path}: tensor {name!r} added twice")
        t = tensor.detach().cpu().contiguous()
        if t.dtype not in DTYPES:
            raise TypeError(f"{self.path}: tensor {name!r} has dtype {t.dtype}, which the store does not write")
        data = t.reshape(-1).view(torch.uint8).numpy()
        self._spool.write(memoryview(data))
        end = self._offset + data.nbytes
        self._entries[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [self._offset, end]}
        self._offset = end

    def close(self) -> Path:
        header = json.dumps(self._entries, separators=(",", ":")).encode("utf-8")
        header += b" " * (-len(header) % 8)
        self._spool.flush()
        self._spool.seek(0)
        with io.atomic_path(self.path) as tmp, open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            shutil.copyfileobj(self._spool, f, CHUNK)
        self.discard()
        return self.path

    def discard(self) -> None:
        self._spool.close()
        self._entries, self._offset = {}, 0
