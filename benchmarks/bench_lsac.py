"""Benchmark: layer-selective attention caching (LSAC) vs naive step reduction, side by side.

On the branch checkpoints of a finished workflow run (``--results``: a results directory
with ``runs/``, ``lsac/<tc>/seed<N>/<method>/plans/`` from ``agrepa lsac-select`` and the
data stores; e.g. the embedded default in a scratch directory), for each ``--methods``:

1. **quality retention at the budget** (``--budget``, default 0.25 of the attention FLOPs):
   the test subset is sampled with full compute, with S' = S-1 .. ceil(S/2) Euler steps, and
   with the LSAC plan, the causal LSAC plan and the three controls at that budget (one
   process, same noise); the
   retention advantage = step reduction's mel distortion at equal FLOPs / the plan's
   (:mod:`agrepa.reports.lsac`), with a bootstrap CI over clips. The seed paper reports "up
   to 6.7x" for LSAC at about 25 % of the self-attention compute.
2. **wall time per clip**: full vs LSAC (and causal LSAC) sampling of the same clips, interleaved
   ``--repeats`` times after a warm-up, median wall and process-CPU seconds per clip and the
   saving; once batched (``sample.batch_size``) and once one clip at a time.

Nothing is asserted about absolute times. Example (after the workflow produced the plans)::

    python benchmarks/bench_lsac.py --results /tmp/lsac_default --methods baseline ag_repa
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from agrepa import config
from agrepa.config import CACHE_STRATEGIES
from agrepa.caching.experiment import lsac_experiment
from agrepa.caching.plan import read_plan
from agrepa.generation.sampling import generate, guidance, split_requests
from agrepa.reports.lsac import table_l1
from agrepa.training.checkpoint import load_run
from agrepa.training.dataset import DataPaths

SEED_PAPER = 6.7


def timed(model, split, cfg, seed, batch_size, plan) -> tuple[float, float]:
    sc = cfg["sample"]
    start, cpu = time.perf_counter(), time.process_time()
    generate(model, split.requests, int(sc["steps"]), sc["cfg_scale"], float(sc["sway"]), seed,
             batch_size=batch_size, progress=False, **guidance(cfg), new_cache=None if plan is None else plan.new_cache)
    n = len(split.requests)
    return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n


def wall_time(model, split, cfg, seed, plan, repeats: int, batch_size: int) -> dict:
    timed(model, split, cfg, seed, batch_size, None)                    # warm-up
    full, cached = [], []
    for _ in range(repeats):                                            # interleaved: drift hits both
        full.append(timed(model, split, cfg, seed, batch_size, None))
        cached.append(timed(model, split, cfg, seed, batch_size, plan))
    fw, fc = statistics.median(x[0] for x in full), statistics.median(x[1] for x in full)
    cw, cc = statistics.median(x[0] for x in cached), statistics.median(x[1] for x in cached)
    return {"batch": batch_size, "full_wall": fw, "lsac_wall": cw, "wall_saved_pct": 100 * (1 - cw / fw),
            "full_cpu": fc, "lsac_cpu": cc, "cpu_saved_pct": 100 * (1 - cc / fc)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", required=True, help="a workflow results directory (with lsac/ plans)")
    p.add_argument("--token-config", default="A")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=["baseline", "ag_repa"])
    p.add_argument("--budget", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    res = Path(args.results)
    cfg = config.load([res / "config.yaml"])
    cfg["lsac"]["metrics"] = []                      # mel SNR only: no ASR / embedding models needed
    sc = cfg["sample"]
    data = DataPaths(res / "data" / "manifest.csv", res / "data" / "mels", res / "tokens" / args.token_config)
    rows, times = [], []
    for method in args.methods:
        run = load_run(res / "runs" / args.token_config / f"seed{args.seed}" / method / "final.pt")
        plans_dir = res / "lsac" / args.token_config / f"seed{args.seed}" / method / "plans"
        plans = [read_plan(plans_dir / f"{s}_f{args.budget:g}.json") for s in CACHE_STRATEGIES]
        var, clips = lsac_experiment(run.model, cfg, data, plans, args.seed, method, args.token_config)
        t = table_l1(var, clips, cfg)
        rows.append(t[t["strategy"].isin(CACHE_STRATEGIES)])
        split = split_requests(cfg, data, "test", args.seed)
        for bs in (int(sc["batch_size"]), 1):
            times.append({"branch": method, **wall_time(run.model, split, cfg, args.seed, plans[0], args.repeats, bs)})
    pd.set_option("display.width", 200)
    table = pd.concat(rows)[["branch", "variant", "attn_saved_pct", "flops_saved_pct", "mel_snr_db",
                             "retention_adv", "retention_ci_low", "retention_ci_high"]]
    print(f"config {cfg['name']}, S = {sc['steps']}, cfg_scale {sc['cfg_scale']}, {len(split.requests)} test clips, "
          f"budget {args.budget:g} of the attention FLOPs; seed paper: up to {SEED_PAPER}x\n")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print()
    print(pd.DataFrame(times).to_string(index=False, float_format=lambda x: f"{x:.4g}"))


if __name__ == "__main__":
    main()
