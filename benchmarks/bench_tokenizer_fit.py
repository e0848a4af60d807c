"""Benchmark: the RepCodec fit's peak memory does not grow with the feature store (issue 23 item 5).

Writes two synthetic acoustic stores (D = 256, clips of 300-700 frames: shorter and longer
than the paper's 496-frame window, granularity 8), fits the audio tokenizer on each in a fresh
process (window 496, ``fit_windows`` 64, a tiny VQ, 2 steps) and prints per store its size,
the process's peak RSS, the clips read, short clips and padded windows.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_tokenizer_fit.py [WORKDIR]

Measured 2026-12-07 (2 shared CPU cores): 100 -> 1600 clips (51 -> 821 MB of fp32 frames),
peak RSS 755 -> 776 MiB (+21 MiB for +770 MB), window 496, 63 clips read of 1600. The code
before (7400d43: every clip's frames in RAM, the window shrunk to the shortest clip, 296 frames),
same stores and settings less fit_windows: 780 -> 2256 MiB (about 1.9 MiB per MB of store).
"""
from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SIZES = (100, 1600)
OVERRIDES = ["tokens.audio.window=496", "tokens.audio.fit_windows=64", "tokens.audio.steps=2",
             "tokens.audio.batch_size=4", "tokens.audio.hidden=16", "tokens.audio.dim=8", "tokens.audio.k=16",
             "device=cpu"]


def make_store(root: Path, n: int) -> None:
    from agrepa.corpora.manifest import make_manifest, write_manifest
    from agrepa.store import StoreWriter

    w = StoreWriter(root / "acoustic", meta={"role": "acoustic", "teacher": "synthetic", "fingerprint": "fp",
                                             "frame_rate": 50.0, "granularity": 8, "dim": 256}, shard_size=64)
    gen, rows = torch.Generator().manual_seed(0), []
    for i in range(n):
        length = 300 + (i % 5) * 100
        f = torch.randn(length, 256, generator=gen)
        w.add(f"a{i}", {"frames": f, "pooled": f.mean(0)})
        rows.append({"id": f"a{i}", "path": "x.wav", "duration": length / 50, "sample_rate": 24000,
                     "domain": "audio", "split": "train", "labels": "x"})
    w.close()
    write_manifest(make_manifest(rows), root / "manifest.csv")


def fit(root: Path) -> None:
    from agrepa import config as C
    from agrepa.tokenizers.streams import fit_stream

    torch.set_num_threads(1)
    cfg = C.load(REPO / "config" / "config.yaml", OVERRIDES)
    m = fit_stream(cfg, "audio", root / "manifest.csv", root / "tok", features=root / "acoustic")
    mb = sum(p.stat().st_size for p in (root / "acoustic").glob("*.safetensors")) / 1e6
    print(f"{root.name}: store {mb:.0f} MB, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB, "
          f"window {m['window']}, clips read {m['clips_read']}, short clips {m['short_clips']}, "
          f"padded windows {m['padded_windows']}", flush=True)


def main() -> None:
    if len(sys.argv) == 3:  # child: fit one store
        fit(Path(sys.argv[2]))
        return
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="bench_fit_"))
    for n in SIZES:
        root = work / f"clips{n}"
        if not (root / "manifest.csv").exists():
            make_store(root, n)
        subprocess.run([sys.executable, __file__, "fit", str(root)], check=True)


if __name__ == "__main__":
    main()
