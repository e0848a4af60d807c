"""Benchmark: a whole workflow run with every job started cold (a fresh `agrepa` process per
job) against the same run with warm start (every job forked from one server that imported the
libraries once; agrepa/warm.py), in one run of this script, back to back on the same machine.

Each run starts from an empty results directory of its own; the tables it ends with are
compared (they must be equal: warm start changes no result). Prints the wall time of each
run and the warm/cold ratio; nothing is asserted about absolute times. Example::

    python benchmarks/bench_warm.py                                   # config/test.yaml, all
    python benchmarks/bench_warm.py --configfile config/config.yaml --target results/table2.csv
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TABLES = ["table2.csv", "table3.csv"]


def run(results: Path, warm: bool, configfile: str, target: str, cores: int) -> float:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(BIN / "snakemake"), target, "--cores", str(cores), "--configfile", configfile,
           "--config", f"results_dir={results}", f"warm_start={warm}"]
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configfile", default="config/test.yaml")
    ap.add_argument("--target", default="all")
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        walls, tables = {}, {}
        for mode in ("cold", "warm"):
            results = Path(tmp) / mode
            walls[mode] = run(results, mode == "warm", args.configfile, args.target, args.cores)
            tables[mode] = {t: pd.read_csv(results / t) for t in TABLES if (results / t).exists()}
            print(f"{mode}: {walls[mode]:.1f} s", flush=True)
        same = all(tables["cold"][t].equals(tables["warm"][t]) for t in tables["cold"])
    print(f"{args.configfile} {args.target}, --cores {args.cores}: cold {walls['cold']:.1f} s, "
          f"warm {walls['warm']:.1f} s, ratio warm/cold {walls['warm'] / walls['cold']:.3f}; "
          f"{', '.join(tables['cold'])} equal: {same}")


if __name__ == "__main__":
    main()
