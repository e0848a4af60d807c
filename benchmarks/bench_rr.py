"""Benchmark: the cost of the similarity regulariser (seed 003) on one training step.

One process, one randomly initialised DiT (adaLN gates opened with small noise), one padded
batch: a training step (forward with hidden states, FM loss, backward) without RR and with
RR (max pooling of h_L, the frozen text side, the B x B similarity loss) on every sample, each
timed ``--repeats`` times after a warm-up; the medians and their ratio are printed (wall time,
and this process's CPU time, which other jobs sharing the cores do not inflate). Nothing is
asserted about absolute times. Example (the embedded default's model and batch)::

    python benchmarks/bench_rr.py --layers 12 --dim 64 --batch 8 --frames 141
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from agrepa.model.dit import DiT
from agrepa.training import distributed as dist_mod
from agrepa.training.objectives import flow_matching_loss
from agrepa.training.similarity import RRSettings, SimilarityRegulariser, frozen_embedding


def build(args):
    torch.manual_seed(args.seed)
    model = DiT(n_layers=args.layers, dim=args.dim, n_heads=args.heads, n_mels=100, vocab_size=512)
    for block in model.blocks:
        nn.init.normal_(block.ada[1].weight, std=0.02)
    B, T = args.batch, args.frames
    g = torch.Generator().manual_seed(args.seed + 1)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = torch.arange(T)[None] < lengths[:, None]
    mel = torch.randn(B, T, 100, generator=g) * mask[..., None]
    batch = {"mel": mel, "mask": mask, "tokens": torch.randint(1, 512, (B, T // 4), generator=g),
             "prompt": torch.zeros_like(mel), "prompt_mask": torch.zeros_like(mask),
             "domain": torch.arange(B) % 2}
    reg = SimilarityRegulariser(RRSettings(3.0, "max", args.layers, "always", "warmup", False),
                                frozen_embedding(model.token_emb, model.state_dict(), "benchmark model"))
    return model, batch, reg, torch.rand(B, generator=g), torch.randn(B, T, 100, generator=g)


def step(model, batch, t, x0, reg) -> None:
    model.zero_grad(set_to_none=True)
    fm = flow_matching_loss(model, batch, t, x0, return_hidden=True)
    loss = fm.loss
    if reg is not None:
        drop = torch.zeros(batch["mel"].shape[0], dtype=torch.bool)
        loss = loss + reg.settings.lam * reg.loss(fm.hidden, batch, drop, model.token_emb, dist_mod.Dist())
    loss.backward()


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=141)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, batch, reg, t, x0 = build(args)
    plain = timed(lambda: step(model, batch, t, x0, None), args.repeats)
    with_rr = timed(lambda: step(model, batch, t, x0, reg), args.repeats)
    print(f"training step, median of {args.repeats}: without RR {plain[0] * 1e3:.1f} ms wall / "
          f"{plain[1] * 1e3:.1f} ms CPU; with RR {with_rr[0] * 1e3:.1f} ms wall / {with_rr[1] * 1e3:.1f} ms CPU")
    print(f"ratio with / without RR: wall {with_rr[0] / plain[0]:.3f}, CPU {with_rr[1] / plain[1]:.3f}")


if __name__ == "__main__":
    main()
