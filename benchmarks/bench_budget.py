"""Benchmark: the embedded default's per-job costs before and after the budget changes of
issue 13, in one run of this script, interleaved on the same machine.

On a finished embedded-default run (``--results``: a results directory holding the data
stores, a Config-A warm-up and its FoG-A selection, and a trained branch), each repeat runs,
as the workflow's jobs do (one ``agrepa`` process, ``--threads 1``):

- ``agrepa train --phase branch --method ag_repa`` from the warm-up, with ``model.dropout``
  0.1 (before) and 0.0 (after); both at the config's ``train.branch_epochs``;
- ``agrepa sample`` of the test clips on the branch checkpoint with ``sample.batch_size`` 8
  (before) and 1 (after).

Prints the median wall time of each variant over ``--repeats`` and the after/before ratio.
Nothing is asserted about absolute times. Example (after ``snakemake --cores 2 results/table2.csv``)::

    python benchmarks/bench_budget.py --results results --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent


def with_setting(cfg: dict, dotted: str, value, path: Path) -> Path:
    """The run's config with one key changed, written to ``path``."""
    out = yaml.safe_load(yaml.safe_dump(cfg))
    *parents, leaf = dotted.split(".")
    node = out
    for key in parents:
        node = node[key]
    node[leaf] = value
    path.write_text(yaml.safe_dump(out))
    return path


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    r = args.results
    cfg = yaml.safe_load((r / "config.yaml").read_text())
    run = r / "runs" / "A" / f"seed{args.seed}"
    data = ["--manifest", str(r / "data/manifest.csv"), "--mels", str(r / "data/mels"), "--tokens", str(r / "tokens/A")]
    embeddings = ["--semantic", str(r / "embeddings/semantic"), "--acoustic", str(r / "embeddings/acoustic")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        variants = {
            "branch, dropout 0.1": ("train", with_setting(cfg, "model.dropout", 0.1, tmp / "drop.yaml")),
            "branch, dropout 0.0": ("train", with_setting(cfg, "model.dropout", 0.0, tmp / "nodrop.yaml")),
            "sample, batch 8": ("sample", with_setting(cfg, "sample.batch_size", 8, tmp / "b8.yaml")),
            "sample, batch 1": ("sample", with_setting(cfg, "sample.batch_size", 1, tmp / "b1.yaml")),
        }
        walls: dict[str, list[float]] = {name: [] for name in variants}
        for rep in range(args.repeats):
            for i, (name, (kind, cfg_path)) in enumerate(variants.items()):
                out = tmp / f"out{rep}_{i}"
                common = [str(BIN / "agrepa"), kind, "--config", str(cfg_path), "--threads", "1"]
                if kind == "train":
                    cmd = common + ["--phase", "branch", "--method", "ag_repa", "--init", str(run / "warmup/final.pt"),
                                    "--selection", str(r / "selection/A" / f"seed{args.seed}" / "foga.json"),
                                    *data, *embeddings, "--seed", str(args.seed), "--out", str(out)]
                else:
                    cmd = common + ["--ckpt", str(run / "ag_repa/final.pt"), *data, "--split", "test",
                                    "--seed", str(args.seed), "--out", str(out)]
                walls[name].append(timed(cmd))
                print(f"repeat {rep}: {name}: {walls[name][-1]:.1f} s", flush=True)
    med = {name: statistics.median(w) for name, w in walls.items()}
    for before, after in (("branch, dropout 0.1", "branch, dropout 0.0"), ("sample, batch 8", "sample, batch 1")):
        print(f"{before}: {med[before]:.1f} s -> {after}: {med[after]:.1f} s, ratio {med[after] / med[before]:.3f} "
              f"(median of {args.repeats})")


if __name__ == "__main__":
    main()
