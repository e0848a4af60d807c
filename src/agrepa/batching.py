"""Batched per-clip jobs: fixed-size batches of a list (the size from a named config key)
and the job's closing throughput line (clips/s, issue 23 item 7)."""
from __future__ import annotations

import logging
import time
from typing import Iterator, Sequence


def longest_first(manifest):
    """The manifest's rows by ``duration``, longest first (ties in manifest order). Batches of
    similar lengths pad less, and the job's largest batch comes first, so its memory peak is
    reached on the first batch whatever the corpus size (a job that fits its memory request at
    the start does not run out of it hours later on a long clip)."""
    return manifest.sort_values("duration", ascending=False, kind="stable")


def row_batches(table, size: int, key: str) -> Iterator[list[dict]]:
    """:func:`batches` of a DataFrame's rows as ``{column: value}`` dicts, made one batch at a
    time: a list of every row (``iterrows`` Series: ~1.3 kB each) would grow with the manifest."""
    for first in range(0, len(table), _checked(size, key)):
        yield table.iloc[first: first + int(size)].to_dict("records")


def _checked(size: int, key: str) -> int:
    size = int(size)
    if size < 1:
        raise ValueError(f"{key}: must be >= 1, got {size}")
    return size


def batches(items: Sequence, size: int, key: str) -> Iterator[Sequence]:
    """Consecutive slices of ``size`` items (the last may be shorter); ``key`` names the
    config key ``size`` came from in the error for a size below 1."""
    size = _checked(size, key)
    for first in range(0, len(items), size):
        yield items[first: first + size]


class Throughput:
    """``with Throughput(log, "embed semantic (whisper)", n, batch_size):`` logs
    ``throughput: <what>: n clips in s = r clips/s (batch size b)`` when the block ends."""

    def __init__(self, log: logging.Logger, what: str, n_clips: int, batch_size: int):
        self.log, self.what, self.n, self.batch_size = log, what, int(n_clips), int(batch_size)

    def __enter__(self) -> "Throughput":
        self.started = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            elapsed = time.perf_counter() - self.started
            self.log.info("throughput: %s: %d clips in %.2f s = %.2f clips/s (batch size %d)", self.what,
                          self.n, elapsed, self.n / max(elapsed, 1e-9), self.batch_size)
