"""K-means tokenizer (the "S3-like" speech stream and Config B's BEATs stream).

Fit (Lloyd's algorithm; distances in float32, centre sums in float64):

* k-means++ initialisation: the first centre is a uniformly drawn frame, every
  next one a frame drawn with probability proportional to D(x)^2, its squared
  distance to the nearest centre chosen so far (seeded generator);
* repeat: assign every frame to its nearest centre, ``c_k = mean{x : a(x) = k}``;
  an emptied cluster is re-seeded with the frame farthest from its centre;
  stop when no assignment changes or after ``iters`` rounds.

Tokens are the nearest-centre indices. Codebook usage is summarised by the
perplexity ``exp(-sum_k p_k log p_k)`` of the code histogram (K when every code
is used equally, 1 when one code takes everything).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .. import io

log = logging.getLogger(__name__)


def sq_distances(x: Tensor, c: Tensor, xx: Tensor | None = None) -> Tensor:
    """Squared Euclidean distances [N, K] = |x|^2 - 2 x.c + |c|^2 (float32);
    ``xx`` = |x|^2 [N] when already known."""
    x, c = x.float(), c.float()
    if xx is None:
        xx = (x * x).sum(1)
    return (xx[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None]).clamp(min=0)


def kmeans_pp_init(x: Tensor, k: int, gen: torch.Generator, xx: Tensor | None = None) -> Tensor:
    n = x.shape[0]
    xx = (x * x).sum(1) if xx is None else xx
    centres = [x[torch.randint(n, (1,), generator=gen)].double()[0]]
    d2 = sq_distances(x, centres[0][None], xx)[:, 0]
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # fewer distinct points than k: fall back to uniform draws
            idx = torch.randint(n, (1,), generator=gen)
        else:
            idx = torch.multinomial((d2 / total).float(), 1, generator=gen)
        c = x[idx].double()[0]
        centres.append(c)
        d2 = torch.minimum(d2, sq_distances(x, c[None], xx)[:, 0])
    return torch.stack(centres)


def assign(x: Tensor, centroids: Tensor, chunk: int = 65536) -> Tensor:
    """Nearest-centre index of every row of ``x`` -> int64 [N]."""
    return torch.cat([sq_distances(x[i: i + chunk], centroids).argmin(1) for i in range(0, x.shape[0], chunk)]) \
        if x.shape[0] else torch.zeros(0, dtype=torch.long)


def perplexity(codes: Tensor, k: int) -> float:
    """exp(entropy) of the code-usage histogram."""
    if codes.numel() == 0:
        return float("nan")
    p = torch.bincount(codes.flatten(), minlength=k).double() / codes.numel()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def usage_stats(codes: Tensor, k: int) -> dict:
    return usage_from_counts(torch.bincount(codes.flatten(), minlength=k), k)


def usage_from_counts(counts: Tensor, k: int) -> dict:
    """:func:`usage_stats` from a code histogram [k] (accumulated clip by clip)."""
    n = int(counts.sum())
    p = counts.double() / max(1, n)
    p = p[p > 0]
    return {"perplexity": float(torch.exp(-(p * p.log()).sum())) if n else float("nan"),
            "used_codes": int((counts > 0).sum()), "k": k,
            "usage_fraction": float((counts > 0).float().mean()), "n_frames": n}


# randperm over more frames than this would cost more memory than the sample (8 B per frame)
PERMUTE_MAX = 1 << 27


def sample_frames(lengths: list[int], read, cap: int | None, seed: int) -> tuple[Tensor, dict]:
    """At most ``cap`` frames [N, D] of clips of ``lengths`` frames, read one clip at a time with
    ``read(i)`` -> [T_i, D] (memory: the sample plus one clip; clips without a sampled frame are
    not read). Every frame when ``cap`` is falsy or covers them all; else the frames at
    ``randperm(total)[:cap]`` of the clips' concatenation (seeded), in that order, or, beyond
    ``PERMUTE_MAX`` frames in all, ``cap`` uniform draws with replacement."""
    total = int(sum(lengths))
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    if not cap or total <= int(cap):
        pick = torch.arange(total)
    else:
        gen = torch.Generator().manual_seed(int(seed))
        pick = torch.randperm(total, generator=gen)[: int(cap)] if total <= PERMUTE_MAX else \
            torch.randint(total, (int(cap),), generator=gen)
    clip = torch.searchsorted(offsets, pick, right=True) - 1   # the clip of each picked frame
    order = clip.argsort(stable=True)
    out, read_clips = None, 0
    bounds = torch.searchsorted(clip[order], torch.arange(len(lengths) + 1))
    for c in range(len(lengths)):
        rows = order[bounds[c]: bounds[c + 1]]
        if len(rows) == 0:
            continue
        frames = read(c).float()
        if frames.shape[0] != lengths[c]:
            raise ValueError(f"k-means: clip {c} has {frames.shape[0]} frames, its header says {lengths[c]}")
        if out is None:
            out = torch.zeros(len(pick), frames.shape[1])
        out[rows] = frames[pick[rows] - offsets[c]]
        read_clips += 1
    return out, {"sampled_frames": len(pick), "total_frames": total, "clips_read": read_clips}


class KMeans:
    kind = "kmeans"

    def __init__(self, centroids: Tensor):
        self.centroids = centroids.double()
        self.k, self.dim = centroids.shape

    @classmethod
    def fit(cls, x: Tensor, k: int, seed: int, iters: int = 50) -> tuple["KMeans", dict]:
        if x.dim() != 2:
            raise ValueError(f"k-means: expected frames [N, D], got {tuple(x.shape)}")
        if x.shape[0] < k:
            raise ValueError(f"k-means: {x.shape[0]} frames are fewer than k = {k} clusters")
        x = x.float()
        x64 = x.double()
        xx = (x * x).sum(1)
        gen = torch.Generator().manual_seed(int(seed))
        c = kmeans_pp_init(x, k, gen, xx)
        a = None
        for it in range(max(1, int(iters))):
            d2 = sq_distances(x, c, xx)
            new = d2.argmin(1)
            if a is not None and torch.equal(new, a):
                break
            a = new
            sums = torch.zeros_like(c).index_add_(0, a, x64)
            counts = torch.bincount(a, minlength=k)
            empty = (counts == 0).nonzero().flatten()
            c = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], c)
            if len(empty):
                far = d2.gather(1, a[:, None])[:, 0].argsort(descending=True)[: len(empty)]
                c[empty] = x64[far]
        inertia = float(sq_distances(x, c, xx).min(1).values.mean())
        log.info("k-means: k=%d on %d frames, %d iterations, mean sq. distance %.4g", k, x.shape[0], it + 1, inertia)
        return cls(c), {"iterations": it + 1, "inertia": inertia}

    def encode(self, frames: Tensor) -> Tensor:
        if frames.dim() != 2 or frames.shape[1] != self.dim:
            raise ValueError(f"k-means: frames of shape {tuple(frames.shape)}, expected [T, {self.dim}]")
        return assign(frames, self.centroids)

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / "kmeans.safetensors"
        with io.atomic_path(path) as tmp:
            save_file({"centroids": self.centroids.contiguous()}, str(tmp))
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "KMeans":
        path = Path(directory) / "kmeans.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"{path}: k-means tokenizer weights missing")
        state = load_file(str(path))
        if "centroids" not in state:
            raise KeyError(f"{path}: no 'centroids' tensor")
        return cls(state["centroids"])
