"""Benchmark: peak anonymous memory of a training job against the corpus size.

Writes two synthetic corpora (the stores `agrepa train` reads: manifest, mels, tokens,
semantic and acoustic embeddings; clips of `audio.max_seconds`, half speech, half audio, in
shards of 64 clips, as tests/test_dataset.py's make_corpus but at growing size), runs a short
warm-up (`agrepa train --phase warmup --steps N`, a small DiT) on each and samples the RssAnon
of the job's process tree (DataLoader workers included) from /proc every 20 ms. Prints both
peaks and the growth ratio: growth of peak memory / growth of the train split's fp32 mel
bytes (goal <= 0.10; the in-memory loader of issue 23 scored 2.5).

Synthetic stores rather than `agrepa fixtures paper --scale K`: the paper path's preprocessing
(mels, teachers, tokens) of the larger scale takes far longer than the job measured here on a
2-core machine. `--before REV` measures that revision's `src/` and `config/` as well (extracted
with `git archive`, run with the same interpreter), on the same corpora. Example::

    python benchmarks/bench_scale.py --clips 64 --scale 16 --before 7400d43
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
N_MELS, VOCAB, DIM_SEM, DIM_AC = 100, 64, 32, 32
FPS = 24000 / 256
TOKEN_RATE = FPS / 4


def write_corpus(root: Path, n: int, seconds: float) -> int:
    """``n`` clips of ``seconds``; returns the fp32 mel bytes of the train split."""
    from agrepa.store import StoreWriter

    g = torch.Generator().manual_seed(0)
    T = int(seconds * FPS)
    rows = []
    meta_tok = {"vocab_size": VOCAB, "offsets": {"speech": 1, "audio": 1 + (VOCAB - 1) // 2}, "paired": False,
                "position_rate": {"speech": TOKEN_RATE, "audio": TOKEN_RATE}, "granularity": {"speech": 1, "audio": 1}}
    writers = {"mels": StoreWriter(root / "mels", {"stats": {"mean": [-4.0] * N_MELS, "std": [2.0] * N_MELS}}, 64),
               "tokens": StoreWriter(root / "tokens", meta_tok, 64),
               "semantic": StoreWriter(root / "semantic", {"dim": DIM_SEM}, 64),
               "acoustic": StoreWriter(root / "acoustic", {"dim": DIM_AC}, 64)}
    for k in range(n):
        dom = "speech" if k % 2 == 0 else "audio"
        cid = f"{dom}_{k:06d}"
        writers["mels"].add(cid, {"mel": torch.randn(T, N_MELS, generator=g) * 2 - 4})
        lo, hi = (1, 1 + (VOCAB - 1) // 2) if dom == "speech" else (1 + (VOCAB - 1) // 2, VOCAB)
        writers["tokens"].add(cid, {"tokens": torch.randint(lo, hi, (-(-T // 4),), generator=g)})
        teacher, dim = ("semantic", DIM_SEM) if dom == "speech" else ("acoustic", DIM_AC)
        writers[teacher].add(cid, {"pooled": torch.randn(dim, generator=g)})
        rows.append({"id": cid, "path": f"audio/{cid}.wav", "duration": T / FPS, "sample_rate": 24000, "domain": dom,
                     "split": "train", "speaker": "s1" if dom == "speech" else "", "text": "a" if dom == "speech" else "",
                     "labels": "" if dom == "speech" else "x", "caption": ""})
    for w in writers.values():
        w.close()
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return n * T * N_MELS * 4


def tree_rss_anon(pid: int) -> int:
    """RssAnon (bytes) of ``pid`` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1]) * 1024
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def run_job(src: Path, corpus: Path, out: Path, steps: int, workers: int | None, seconds: float) -> int:
    """Peak tree RssAnon of one `agrepa train --phase warmup` job (src's code and config)."""
    train = {"batch_size": 8, "crop_seconds": 1.5, "checkpoint_every": 1000, "log_every": 1000, "compile": False}
    if workers is not None:
        train["num_workers"] = workers
    over = {"device": "cpu", "audio": {"max_seconds": seconds},
            "model": {"dim": 64, "n_heads": 2, "ff_mult": 2, "token_dim": None}, "train": train}
    out.mkdir(parents=True, exist_ok=True)
    (out / "over.yaml").write_text(yaml.safe_dump(over))
    cmd = [sys.executable, "-m", "agrepa.cli", "train", "--config", str(src / "config" / "config.yaml"),
           "--config", str(out / "over.yaml"), "--phase", "warmup", "--seed", "0", "--steps", str(steps),
           "--manifest", str(corpus / "manifest.csv"), "--out", str(out / "run"),
           *[a for s in ("mels", "tokens", "semantic", "acoustic") for a in (f"--{s}", str(corpus / s))]]
    env = dict(os.environ, PYTHONPATH=str(src / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_anon(proc.pid))
            time.sleep(0.02)

    t = threading.Thread(target=sample)
    t.start()
    err = proc.stderr.read().decode()
    proc.wait()
    t.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return peak[0]


def measure(name: str, src: Path, corpora: dict, steps: int, workers: int | None, seconds: float, tmp: Path) -> None:
    peaks = {k: run_job(src, path, tmp / f"{name}-{k}", steps, workers, seconds) for k, (path, _) in corpora.items()}
    (k1, (_, m1)), (kk, (_, mk)) = corpora.items()
    ratio = (peaks[kk] - peaks[k1]) / (mk - m1)
    print(f"{name} ({src}): scale {k1}: mel {m1 / 2**20:.0f} MiB, peak RssAnon {peaks[k1] / 2**20:.0f} MiB; "
          f"scale {kk}: mel {mk / 2**20:.0f} MiB, peak RssAnon {peaks[kk] / 2**20:.0f} MiB; "
          f"growth ratio {ratio:.3f} (goal <= 0.10)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=64, help="train clips at scale 1")
    ap.add_argument("--scale", type=int, default=16, help="the larger corpus has this many times the clips")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of every clip (audio.max_seconds)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2, help="train.num_workers of this checkout's run")
    ap.add_argument("--before", help="also measure this git revision (its src/ and config/)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpora = {k: (tmp / f"corpus-{k}", write_corpus(tmp / f"corpus-{k}", args.clips * k, args.seconds))
                   for k in (1, args.scale)}
        measure("after", REPO, corpora, args.steps, args.workers, args.seconds, tmp)
        if args.before:
            old = tmp / "before"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "src", "config"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            measure("before", old, corpora, args.steps, None, args.seconds, tmp)


if __name__ == "__main__":
    main()
