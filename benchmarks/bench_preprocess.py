"""Benchmark: clips/s of each batched preprocessing stage, batch 1 vs batched.

Stages (each on the same ``--clips`` synthetic clips of random lengths in
[``--min-seconds``, ``--max-seconds``], the embedded default's range):

* ``whisper-ct2-real``: the wheel's tiny.en through CTranslate2, real frames only
  (the embedded default, ``pad_to_window: false``: only equal-length windows batch);
* ``whisper-ct2-30s``: the same with every window padded to 30 s (Whisper's own mode);
* ``events``: the embedded default's acoustic teacher (config architecture, random weights);
* ``beats``: a BEATs teacher (``--beats-layers`` x 768, random weights; BEATs-base has 12);
* ``beats-tokenizer``: its tokenizer (the same trunk + quantizer).

Batch 1 runs :meth:`Teacher.embed` clip by clip; batched runs
:meth:`Teacher.embed_batch` on ``--batch`` clips at a time. Each is timed once after a
warm-up; the worst |batched - batch-1| over frames and pooled is printed beside (token
stages: the fraction of ids that differ). On CUDA (``--device cuda``) BEATs runs under
bf16 autocast, so its difference is bf16-sized there. Example::

    python benchmarks/bench_preprocess.py --clips 16 --batch 8 --threads 2
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from agrepa import config as C
from agrepa.teachers.beats import BEATs, BEATsConfig, BeatsTeacher
from agrepa.teachers.events import EventEncoder, EventsTeacher
from agrepa.teachers.registry import build_teacher

DEFAULT_CONFIG = "config/config.yaml"


def clips(n: int, lo: float, hi: float, sr: int, seed: int) -> list[torch.Tensor]:
    g = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = np.arange(int(g.uniform(lo, hi) * sr)) / sr
        f0 = 120 + 60 * g.random()
        x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 5)) + 0.05 * g.standard_normal(len(t))
        out.append(torch.from_numpy((0.3 * x / np.abs(x).max()).astype(np.float32)))
    return out


def time_it(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_teacher(name, teacher, waves, sr, batch):
    teacher.embed_batch(waves[:2], sr)  # warm-up
    single, batched = [], []
    t1 = time_it(lambda: single.extend(teacher.embed(w, sr) for w in waves))
    tb = time_it(lambda: [batched.extend(teacher.embed_batch(waves[i: i + batch], sr))
                          for i in range(0, len(waves), batch)])
    diff = max(max(float((a[0] - b[0]).abs().max()), float((a[1] - b[1]).abs().max()))
               for a, b in zip(single, batched))
    report(name, len(waves), t1, tb, f"max |diff| {diff:.2e}")


def bench_tokenizer(name, tok, waves, batch):
    arrays = [w.numpy() for w in waves]
    tok.encode_waves(arrays[:2])
    single, batched = [], []
    t1 = time_it(lambda: single.extend(tok.encode_wave(w) for w in arrays))
    tb = time_it(lambda: [batched.extend(tok.encode_waves(arrays[i: i + batch])) for i in range(0, len(arrays), batch)])
    n = sum(len(a) for a in single)
    wrong = sum(int((a != b).sum()) for a, b in zip(single, batched))
    report(name, len(waves), t1, tb, f"ids differing {wrong}/{n}")


def report(name, n, t1, tb, extra):
    print(f"{name:18s} batch 1: {n / t1:7.2f} clips/s   batched: {n / tb:7.2f} clips/s   "
          f"speed-up x{t1 / tb:5.2f}   {extra}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--max-seconds", type=float, default=8.0)
    ap.add_argument("--beats-layers", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--stages", default="whisper-ct2-real,whisper-ct2-30s,events,beats,beats-tokenizer")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    stages = set(args.stages.split(","))
    print(f"device {args.device} ({torch.cuda.get_device_name(0) if args.device.startswith('cuda') else 'cpu'}), "
          f"{args.clips} clips of {args.min_seconds}-{args.max_seconds} s, batch {args.batch}, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    waves16 = clips(args.clips, args.min_seconds, args.max_seconds, 16000, args.seed)
    for name, pad in (("whisper-ct2-real", "false"), ("whisper-ct2-30s", "true")):
        if name in stages:
            cfg = C.load(DEFAULT_CONFIG, overrides=[f"teachers.semantic.pad_to_window={pad}", f"device={args.device}"])
            bench_teacher(name, build_teacher(cfg, "semantic"), waves16, 16000, args.batch)
    if "events" in stages:
        cfg = C.load(DEFAULT_CONFIG)
        e = cfg["teachers"]["acoustic"]["events"]
        torch.manual_seed(args.seed)
        arch = dict(n_mels=int(cfg["audio"]["n_mels"]), dim=e["dim"], n_layers=e["n_layers"], n_heads=e["n_heads"],
                    n_labels=8, ff_mult=e["ff_mult"])
        t = EventsTeacher(EventEncoder(**arch), {"audio": cfg["audio"], "downsample": 4, "arch": arch,
                                                 "labels": list("abcdefgh")}, "0" * 64, device=args.device)
        sr = t.sample_rate
        bench_teacher("events", t, clips(args.clips, args.min_seconds, args.max_seconds, sr, args.seed), sr, args.batch)
    bcfg = BEATsConfig(encoder_layers=args.beats_layers, relative_position_embedding=True, gru_rel_pos=True,
                       deep_norm=True)
    if "beats" in stages:
        torch.manual_seed(args.seed)
        bench_teacher("beats", BeatsTeacher(BEATs(bcfg).eval(), "0" * 64, device=args.device), waves16, 16000,
                      args.batch)
    if "beats-tokenizer" in stages:
        import tempfile
        from pathlib import Path

        from agrepa.tokenizers.beats_tokenizer import BeatsTokenizer, BeatsTokenizerModel, save_checkpoint
        torch.manual_seed(args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(BeatsTokenizerModel(bcfg, quant_n=1024, quant_dim=256).eval(), Path(tmp) / "tok.pt")
            bench_tokenizer("beats-tokenizer", BeatsTokenizer(Path(tmp) / "tok.pt", device=args.device),
                            waves16, args.batch)


if __name__ == "__main__":
    main()
