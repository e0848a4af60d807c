"""Benchmark: shared-work FoG-A (agrepa.probing.foga.foga) vs the naive loop of gated forwards.

Both run in one process on the same random inputs (with padding) and the same
randomly initialised DiT (adaLN and final layers re-initialised with small noise
so no block is an identity); each is timed ``--repeats`` times after a warm-up,
and the medians and their ratio are printed (wall time, and on CPU also this process's CPU time,
which other jobs sharing the cores do not inflate). Nothing is asserted about absolute
times. Example::

    python benchmarks/bench_foga.py --layers 12 --dim 192 --batch 8 --frames 300
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from agrepa.probing.foga import foga, foga_naive
from agrepa.model.dit import DiT


def build(args) -> tuple[DiT, tuple]:
    torch.manual_seed(args.seed)
    model = DiT(n_layers=args.layers, dim=args.dim, n_heads=args.heads, n_mels=100, vocab_size=512)
    for layer in [b.ada[1] for b in model.blocks] + [model.final.ada[1], model.final.linear]:
        nn.init.normal_(layer.weight, std=0.02)
        nn.init.normal_(layer.bias, std=0.02)
    model.to(args.device).eval()
    B, T = args.batch, args.frames
    g = torch.Generator().manual_seed(args.seed + 1)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = torch.arange(T)[None] < lengths[:, None]
    tokens = torch.randint(1, 512, (B, T // 4), generator=g)
    inputs = (torch.randn(B, T, 100, generator=g), torch.rand(B, generator=g), tokens,
              torch.randn(B, T, 100, generator=g), mask)
    return model, tuple(x.to(args.device) for x in inputs)


def timed(fn, device: str) -> tuple[float, float, torch.Tensor]:
    """(wall seconds, process CPU seconds, result) of one call."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-streams", type=int, default=None, help="foga(max_streams=...)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, inputs = build(args)
    fast_fn = lambda: foga(model, *inputs, max_streams=args.max_streams)
    slow_fn = lambda: foga_naive(model, *inputs)
    fast_fn(), slow_fn()                                   # warm-up
    fast_t, slow_t, fast_c, slow_c = [], [], [], []
    for _ in range(args.repeats):                          # interleaved, so drift hits both
        t, c, fast = timed(fast_fn, args.device)
        fast_t.append(t), fast_c.append(c)
        t, c, slow = timed(slow_fn, args.device)
        slow_t.append(t), slow_c.append(c)
    f, s = statistics.median(fast_t), statistics.median(slow_t)
    fc, sc = statistics.median(fast_c), statistics.median(slow_c)
    print(f"DiT {args.layers} x {args.dim}, B={args.batch}, T={args.frames}, device={args.device}, "
          f"threads={args.threads}, max_streams={args.max_streams}, repeats={args.repeats}")
    print(f"max |efficient - naive| = {float((fast - slow).abs().max()):.2e}")
    print(f"efficient FoG-A: median {f:.4f} s  (all: {', '.join(f'{x:.4f}' for x in fast_t)})")
    print(f"naive FoG-A:     median {s:.4f} s  (all: {', '.join(f'{x:.4f}' for x in slow_t)})")
    print(f"speed-up (naive / efficient), wall time: {s / f:.2f}x")
    if args.device == "cpu":   # CPU seconds of this process: robust to other jobs sharing the cores
        print(f"speed-up (naive / efficient), process CPU time: {sc / fc:.2f}x "
              f"(medians {sc:.4f} s / {fc:.4f} s)")


if __name__ == "__main__":
    main()
