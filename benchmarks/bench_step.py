"""Benchmark: the training step (issue 24, item 1), the step before it against the new one, in one run.

The step is ``agrepa.training.train``'s own: :func:`~agrepa.training.train.losses` (FM + BiT-C
+ REPA) and :func:`~agrepa.training.train.optimise` (backward, clipping, AdamW, schedule, EMA),
on one synthetic full-length batch (every clip a whole crop: no padding, as at paper scale),
for three methods: the baseline, fixed-layer REPA (one layer) and AG-REPA (a per-domain set of
three layers each). "legacy" is ``StepOptions.legacy()`` (the step before: host noise, a dense
attention mask, host syncs for the metrics each step, unfused AdamW, no TF32); "new" the default
``StepOptions()``; ``--compile`` compiles the model for the new step (as paper.yaml does).

Printed per method and step: median step time, samples/s, achieved TFLOP/s from the analytic
FLOPs of the DiT (``agrepa.caching.flops``: forward x 3 for forward + backward; the small heads
left out) and MFU against ``--peak`` TFLOP/s (default: the H100's dense bf16 989 on CUDA, none on
the CPU), and legacy / new as a ratio. Examples::

    python benchmarks/bench_step.py                                  # CPU: depth 4, width 256, batch 8, 2-s crops
    python benchmarks/bench_step.py --paper --compile                # CUDA: the paper DiT, 24 x 1024, batch 32, 10-s
    python benchmarks/bench_step.py --ddp 2                          # + data parallelism: 2 gloo processes on the CPU

``--padded F`` times the baseline's new step on a batch whose every other clip is ``F`` shorter
(masked attention: SDPA's memory-efficient kernel on CUDA) against the same step unpadded (no
mask: the flash kernel), padded / unpadded as a ratio in the same run. The new step's batches
carry the collate's host fields (``padded``, ``domain_rows``), the legacy step's do not.

``--ddp N`` (issue 24, item 2) adds, for the baseline's new step in N processes (gloo on the CPU,
nccl on CUDA; one GPU each), the data parallelism before DDP (one flat all-reduce of every
gradient after the whole backward, ``distributed.all_reduce_grads``) against torch DDP
(``distributed.wrap``: bucket all-reduces overlapping the backward), each process training its
``batch / N`` shard of the global batch, and flat / DDP as a ratio, in the same run.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from agrepa import config as config_mod
from agrepa.caching import flops as flops_mod
from agrepa.device import autocast_dtype
from agrepa.model import build_model
from agrepa.training import distributed as dist_mod
from agrepa.training import train
from agrepa.training.checkpoint import EMA
from agrepa.training.dataset import crop_frames
from agrepa.training.objectives import BiTCHeads, REPAHeads
from agrepa.training.schedule import Schedule, make_optimizer

TEACHERS = {"semantic": 1024, "acoustic": 768}
H100_BF16_DENSE = 989.0


def config(args) -> dict:
    cfg = config_mod.load([Path(__file__).resolve().parents[1] / "config" / "config.yaml"])
    over = {"device": args.device,
            "model": {"n_layers": args.layers, "dim": args.dim, "n_heads": args.heads, "dropout": 0.0},
            "train": {"batch_size": args.batch, "crop_seconds": args.seconds, "log_every": args.log_every}}
    return config_mod.deep_merge(cfg, over)


def plans(L: int, lam: float) -> dict:
    deep = [L - 2, L - 1, L] if L >= 3 else list(range(1, L + 1))
    shallow = list(range(1, min(L, 3) + 1))
    return {"baseline": {},
            "repa": {d: [(max(1, L // 3), lam)] for d in ("speech", "audio")},
            "ag_repa": {"speech": [(l, lam / len(shallow)) for l in shallow],
                        "audio": [(l, lam / len(deep)) for l in deep]}}


def batch_of(cfg: dict, G: int, vocab: int, device, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    T, n_mels = crop_frames(cfg), int(cfg["audio"]["n_mels"])
    mel = torch.randn(G, T, n_mels, generator=g)
    prompt_mask = torch.arange(T)[None] < (torch.rand(G, generator=g) * 0.3 * T).long()[:, None]
    b = {"mel": mel, "mask": torch.ones(G, T, dtype=torch.bool),
         "tokens": torch.randint(1, vocab, (G, max(1, T // 4)), generator=g),
         "prompt": mel * prompt_mask[..., None], "prompt_mask": prompt_mask,
         "domain": torch.arange(G) % 2,
         **{f"emb_{t}": torch.randn(G, d, generator=g) for t, d in TEACHERS.items()}}
    return {k: v.to(device) for k, v in b.items()}


def setup(cfg: dict, plan: dict, opts: train.StepOptions, device: torch.device, compile_model: bool, seed: int):
    tc = cfg["train"]
    torch.manual_seed(seed)
    model = build_model(cfg, 1024)
    for block in model.blocks:                       # adaLN-Zero: open the blocks so every layer does work
        nn.init.normal_(block.ada[1].weight, std=0.02)
    bitc = BiTCHeads(model.token_dim, TEACHERS, tc["bitc_weight"])
    repa = REPAHeads(plan, model.hidden_dims, TEACHERS, tc["repa_hidden"])
    for m in (model, bitc, repa):
        m.to(device)
    opt = make_optimizer(cfg, [model, bitc, repa], fused=opts.fused_adam and device.type == "cuda")
    G = int(tc["batch_size"])
    amp = autocast_dtype(cfg["train"]["precision"], device, "train.precision")
    loop = train.Loop(cfg, "warmup", seed, None, dist_mod.Dist(), device, amp, G,
                      slice(0, G), float(tc["grad_clip"]) if tc["grad_clip"] else float("inf"), True,
                      float(tc["noise_scale"]), 10 ** 9, int(tc["log_every"]), None, 10 ** 9, 0, False, "bench",
                      set(), opts=opts)
    loop.fast_math()
    state = SimpleNamespace(model=model, bitc=bitc, repa=repa, optimizer=opt, step=0,
                            ema=EMA({"model": model, "bitc": bitc}, float(tc["ema_decay"]), bool(tc["ema_warmup"])),
                            scheduler=Schedule(cfg, opt, 10 ** 6), modules=lambda: [model, bitc, repa])
    forward = torch.compile(model) if compile_model else model
    return loop, state, forward


def pad_batch(batch: dict, short: float) -> dict:
    """The batch with every other clip cut to ``1 - short`` of the crop (0-padded, masked): a
    padded batch, which takes the masked attention path."""
    T = batch["mask"].shape[1]
    mask = batch["mask"].clone()
    mask[1::2, int(round((1 - short) * T)):] = False
    return {**batch, "mask": mask, "mel": batch["mel"] * mask[..., None], "prompt": batch["prompt"] * mask[..., None],
            "prompt_mask": batch["prompt_mask"] & mask, "padded": True}


def time_step(cfg, plan, opts, device, args, short: float = 0.0) -> tuple[float, float]:
    """Median seconds per step over ``--repeats`` steps after ``--warmup`` (the meter read at log
    steps): wall time, and this process's CPU time (which other jobs on shared cores do not inflate).
    ``short`` > 0: a padded batch (:func:`pad_batch`)."""
    loop, state, forward = setup(cfg, plan, opts, device, args.compile and opts != train.StepOptions.legacy(),
                                 args.seed)
    batch = batch_of(cfg, loop.batch_size, 1024, device, args.seed)
    meter, times, cpu = train.Meter(), [], []
    if opts.dense_attention:
        batch["padded"] = False          # what the collate knows on the host (every clip a whole crop)
        rows = batch["domain"].cpu()
        batch["domain_rows"] = tuple(tuple((rows == d).nonzero().flatten().tolist()) for d in range(2))
    if short > 0:
        batch = pad_batch(batch, short)
    for step in range(args.warmup + args.repeats):
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        draw = loop.draw(step)
        loss, terms = train.losses(loop, forward, state, batch, draw)
        if not opts.deferred_metrics:
            train.check_finite(terms, step, Path("/nonexistent"))
        grad_norm, _ = train.optimise(loop, state, loss)
        state.step = step + 1
        meter.add({**terms, "grad_norm": grad_norm}, step if opts.deferred_metrics else None)
        if (step + 1) % loop.log_every == 0:
            meter.check_finite(Path("/nonexistent"))
            meter.means()
            meter.reset()
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return statistics.median(times), statistics.median(cpu)


def ddp_worker(rank: int, world: int, port: int, args, out) -> None:
    """One process of ``--ddp``: median (wall, CPU) seconds per step of the flat all-reduce and of DDP."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(max(1, torch.get_num_threads() // world))
    cfg = config(args)
    use_cuda = args.device != "cpu" and torch.cuda.is_available()
    d = dist_mod.setup("cuda" if use_cuda else "cpu")
    device = torch.device("cuda", rank) if use_cuda else torch.device("cpu")
    G = int(cfg["train"]["batch_size"])
    full = batch_of(cfg, G, 1024, device, args.seed)
    res = {}
    for label in ("flat", "ddp"):
        loop, state, forward = setup(cfg, {}, train.StepOptions(), device, args.compile, args.seed)
        m = G // world
        loop.dist, loop.local = d, slice(rank * m, (rank + 1) * m)
        loop.micro = (loop.local,)
        batch = {k: v[loop.local] for k, v in full.items()}
        batch["padded"] = False
        params = [p for mod in state.modules() for p in mod.parameters()]
        trained = dist_mod.wrap(d, train.Trained(state), device) if label == "ddp" else None
        times, cpu = [], []
        for step in range(args.warmup + args.repeats):
            sync(device)
            dist_mod.barrier(d)
            t0, c0 = time.perf_counter(), time.process_time()
            draw = loop.draw(step)
            if label == "ddp":
                loss, _ = trained(loop, forward, state, batch, draw, loop.local)
                train.backward(loop, state, loss)
            else:
                loss, _ = train.losses(loop, forward, state, batch, draw, loop.local)
                train.backward(loop, state, loss)
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                dist_mod.all_reduce_grads(d, params)
            train.optimise(loop, state)
            state.step = step + 1
            sync(device)
            if step >= args.warmup:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        res[label] = (statistics.median(times), statistics.median(cpu))
    if rank == 0:
        torch.save(res, out)
    dist_mod.teardown(d)


def time_ddp(args) -> dict:
    """``--ddp``: the flat all-reduce against DDP in ``args.ddp`` processes (rank 0's medians)."""
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.pt"
        mp.spawn(ddp_worker, args=(args.ddp, port, args, str(out)), nprocs=args.ddp, join=True)
        return torch.load(out)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(cfg: dict) -> float:
    """Forward + backward FLOPs of the DiT on the global batch (3 x the analytic forward)."""
    m = cfg["model"]
    d = flops_mod.Dims(n_layers=int(m["n_layers"]), dim=int(m["dim"]), ff_mult=int(m["ff_mult"]),
                       n_mels=int(cfg["audio"]["n_mels"]), token_dim=int(m["token_dim"] or m["dim"]), time_freq_dim=256)
    T = crop_frames(cfg)
    fwd = flops_mod.forward_flops(d, int(cfg["train"]["batch_size"]), T, max(1, T // 4))
    return 3.0 * float(fwd["total"])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--paper", action="store_true", help="the paper DiT: 24 x 1024, 16 heads, batch 32, 10-s crops")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--compile", action="store_true", help="torch.compile the model for the new step")
    p.add_argument("--methods", default="baseline,repa,ag_repa")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--peak", type=float, default=None, help="peak TFLOP/s for the MFU (default: H100 bf16 dense "
                                                            "989 on CUDA; none on the CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--padded", type=float, default=0.0, help="also time the baseline's new step on a padded batch "
                                                             "(every other clip this fraction shorter; 0: not)")
    p.add_argument("--ddp", type=int, default=0, help="also time the baseline step in this many processes: the flat "
                                                      "all-reduce before DDP against DDP (0: not)")
    args = p.parse_args(argv)
    if args.paper:
        args.layers, args.dim, args.heads, args.batch, args.seconds = 24, 1024, 16, 32, 10.0
    cfg = config(args)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    peak = args.peak if args.peak is not None else (H100_BF16_DENSE if device.type == "cuda" else None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    flop = step_flops(cfg)
    amp = autocast_dtype(cfg["train"]["precision"], device, "train.precision")
    print(f"device {name}; DiT {args.layers} x {args.dim}, batch {args.batch}, {args.seconds:g}-s crops "
          f"({crop_frames(cfg)} frames); precision {amp or 'fp32'}; "
          f"{flop / 1e12:.3f} TFLOP per step (analytic, forward + backward)"
          + (f"; MFU vs {peak:g} TFLOP/s" if peak else ""))
    time_step(cfg, {}, train.StepOptions.legacy(), device, argparse.Namespace(**{**vars(args), "repeats": 1}))  # warm
    print(f"{'method':10s} {'step':7s} {'ms/step':>9s} {'samples/s':>10s} {'TFLOP/s':>9s} {'MFU':>7s} "
          f"{'legacy/new':>11s} {'cpu ms':>8s} {'cpu legacy/new':>15s}")
    for method, plan in plans(args.layers, float(cfg["train"]["repa_lambda"])).items():
        if method not in args.methods.split(","):
            continue
        res = {}
        for label, opts in (("legacy", train.StepOptions.legacy()), ("new", train.StepOptions())):
            s, c = res[label] = time_step(cfg, plan, opts, device, args)
            tf = flop / s / 1e12
            mfu = f"{100 * tf / peak:6.1f}%" if peak else "    -"
            ratio = f"{res['legacy'][0] / s:10.2f}x" if label == "new" else ""
            cratio = f"{res['legacy'][1] / c:14.2f}x" if label == "new" else ""
            print(f"{method:10s} {label:7s} {1e3 * s:9.1f} {args.batch / s:10.1f} {tf:9.3f} {mfu:>7s} {ratio:>11s} "
                  f"{1e3 * c:8.1f} {cratio:>15s}")
    if args.padded > 0:
        full, _ = time_step(cfg, {}, train.StepOptions(), device, args)
        padded, _ = time_step(cfg, {}, train.StepOptions(), device, args, short=args.padded)
        print(f"padded batch, baseline new step (every other clip {100 * args.padded:g} % shorter, masked attention): "
              f"{1e3 * padded:.1f} ms/step against {1e3 * full:.1f} unpadded (no mask), padded/unpadded "
              f"{padded / full:.2f}x")
    if args.ddp > 1:
        res = time_ddp(args)
        (fs, fc), (ds, dc) = res["flat"], res["ddp"]
        backend = "nccl" if device.type == "cuda" else "gloo"
        print(f"data parallelism, baseline new step, {args.ddp} processes ({backend}), "
              f"global batch {args.batch}: flat all-reduce {1e3 * fs:.1f} ms/step, DDP {1e3 * ds:.1f} ms/step, "
              f"flat/DDP {fs / ds:.2f}x (cpu ms {1e3 * fc:.1f} vs {1e3 * dc:.1f}, {fc / dc:.2f}x)")


if __name__ == "__main__":
    main()
