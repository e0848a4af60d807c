"""``agrepa lsac-probe``: how each layer's self-attention output converges over the ODE
steps of the sampler, and what freezing it does to the output (seed 004, Sec. 2).

On the clips of ``lsac.probe.split`` (``lsac.probe.max_clips`` per domain drawn by the rule of
``agrepa sample``'s evaluation subset, zero-shot prompts and noise exactly as ``agrepa sample``
draws them for ``--seed``), with the sampler of
``sample.*`` (S = ``sample.steps`` Euler steps, sway, CFG in one stacked batch, initial noise of
scale ``train.noise_scale``):

* **relative change** of block l's attention output y_l (before its adaLN gate) at step
  i = 1..S-1, per row over its real frames: ``r_l(i) = ||y_l^i - y_l^{i-1}|| /
  (||y_l^{i-1}|| + lsac.eps)``, streaming (only y^{i-1} is kept). Rows ``rel_change_cond``
  and ``rel_change_uncond`` (the two CFG halves): the mean over the domain's clips.
* **causal freezing**: for each layer l and freeze step k = round(f S), f in
  ``lsac.probe.freeze_at`` (k in 1..S-2), the run that reuses y_l^k at every step i > k
  (steps 0..k are the full run's: it restarts from the full run's state x_k). Row
  ``freeze_mel_snr``: -10 log10 of the mean over the domain's clips of the mel distortion
  against the full run (:mod:`agrepa.caching.quality`); with
  ``lsac.probe.freeze_eval`` also ``freeze_delta_<metric>`` for each of ``lsac.metrics``:
  the frozen run's WER / FAD minus the full run's (vocoded, against the ground truth).

Tidy CSV: ``config, seed, domain, branch, layer, step, t, metric, score`` (``step`` = i for
the changes, k for freezing; ``t`` = the flow time t_step of the sway grid).
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from ..config import DOMAINS
from ..device import autocast
from ..generation.sampling import (batch_inputs, euler_solve, guidance, inference_dtype, length_batches,
                                   split_requests, sway_schedule, target_frames)
from ..model.cache import StepCache
from .quality import QualityScorer, mel_distortion

log = logging.getLogger(__name__)

CONFIG_KEYS = ("lsac.eps", "lsac.metrics", "lsac.probe", "sample", "train.noise_scale")  # config sections this module reads

CSV_COLUMNS = ["config", "seed", "domain", "branch", "layer", "step", "t", "metric", "score"]


def freeze_steps(steps: int, fractions) -> list[int]:
    """k = round(f S) for each fraction, kept where some step follows it to reuse (1 <= k <= S-2)."""
    ks = sorted({int(round(float(f) * steps)) for f in fractions})
    kept = [k for k in ks if 1 <= k <= steps - 2]
    if kept != ks:
        log.warning("freeze steps %s: only %s leave a later step to reuse at (S=%d)", ks, kept, steps)
    return kept


def row_change(y: Tensor, prev: Tensor, weights: Tensor, eps: float) -> Tensor:
    """||y - prev|| / (||prev|| + eps) per row over the real frames (``weights`` [rows, T, 1])."""
    y, prev = y.float(), prev.float()                  # fp32 norms of bf16 features under autocast
    w = weights.to(y.dtype)
    return ((y - prev) * w).flatten(1).norm(dim=1) / ((prev * w).flatten(1).norm(dim=1) + eps)


def trace_changes(model, inputs, times: Tensor, cfg_scale, eps: float, uncond_prompt: str = "drop"):
    """The full run of one batch: (output x, states x_0..x_{S-1}, {(layer, step): r per row})."""
    noise, tokens, prompt, mask = inputs
    weights = (mask if cfg_scale is None else torch.cat([mask, mask])).float()[..., None]
    prev, changes = {}, {}

    def observe(kind, layer, step, y):
        if kind != "attn":
            return
        if layer in prev:
            changes[(layer, step)] = row_change(y, prev[layer], weights, eps).cpu()
        prev[layer] = y

    states: list[Tensor] = []
    x = euler_solve(model, noise, times, tokens, prompt, mask, cfg_scale, StepCache(observe=observe), states,
                    uncond_prompt=uncond_prompt)
    return x, states, changes


def frozen_run(model, inputs, times: Tensor, states: list[Tensor], layer: int, k: int, cfg_scale,
               uncond_prompt: str = "drop") -> Tensor:
    """The run that reuses layer ``layer``'s attention output of step k at every later step."""
    _, tokens, prompt, mask = inputs
    S = times.shape[0] - 1
    cache = StepCache({("attn", layer): range(1, S - k)})
    return euler_solve(model, states[k], times[k:], tokens, prompt, mask, cfg_scale, cache, uncond_prompt=uncond_prompt)


@torch.no_grad()
def probe_runs(model, cfg: dict, split, seed: int, device) -> tuple[dict, dict, dict]:
    """Per clip: the full output, the frozen outputs {(layer, k): {id: mel}} and the changes
    {(half, layer, step): {id: r}} (half = cond | uncond)."""
    sc = cfg["sample"]
    S, cfg_scale, g = int(sc["steps"]), sc["cfg_scale"], guidance(cfg)
    times = sway_schedule(S, float(sc["sway"])).to(device)
    ks = freeze_steps(S, cfg["lsac"]["probe"]["freeze_at"])
    full, frozen, change = {}, defaultdict(dict), defaultdict(dict)
    amp = inference_dtype(cfg, device)
    for idx in length_batches(split.requests, int(sc["batch_size"])):
        batch = [split.requests[i] for i in idx]
        inputs = tuple(x.to(device) for x in batch_inputs(batch, seed, model.n_mels, g["noise_scale"]))
        with autocast(amp, device):
            x, states, changes = trace_changes(model, inputs, times, cfg_scale, float(cfg["lsac"]["eps"]),
                                               g["uncond_prompt"])
        full.update((r.id, m) for r, m in zip(batch, target_frames(x.float().cpu(), batch)))
        for (layer, step), r in changes.items():
            for j, req in enumerate(batch):
                change[("cond", layer, step)][req.id] = float(r[j])
                if cfg_scale is not None:
                    change[("uncond", layer, step)][req.id] = float(r[len(batch) + j])
        freezes = [(k, layer) for k in ks for layer in range(1, model.n_layers + 1)]
        for k, layer in tqdm(freezes, desc=f"causal freezing, batch of {len(batch)}"):
            with autocast(amp, device):
                xf = frozen_run(model, inputs, times, states, layer, k, cfg_scale, g["uncond_prompt"])
            frozen[(layer, k)].update((r.id, m) for r, m in zip(batch, target_frames(xf.float().cpu(), batch)))
    return full, dict(frozen), dict(change)


def lsac_probe(model, cfg: dict, data, seed: int, branch: str, token_config: str, device="cpu") -> pd.DataFrame:
    """The probe's tidy DataFrame (module docstring) for one branch checkpoint's model
    (column ``config`` = the token config, as in the probes CSV); ``data``: the
    ``agrepa.training.dataset.DataPaths`` of the manifest, mel and token stores."""
    pc = cfg["lsac"]["probe"]
    split = split_requests(cfg, data, pc["split"], seed, pc["max_clips"])
    model = model.to(device).eval()
    full, frozen, change = probe_runs(model, cfg, split, seed, device)
    times = sway_schedule(int(cfg["sample"]["steps"]), float(cfg["sample"]["sway"])).tolist()
    domain = {cid: str(split.rows.loc[cid, "domain"]) for cid in split.targets}
    base = {"config": token_config, "seed": int(seed), "branch": branch}
    rows = []
    for (half, layer, step), per_clip in sorted(change.items()):
        for d in DOMAINS:
            vals = [v for cid, v in per_clip.items() if domain[cid] == d]
            if vals:
                rows.append(dict(base, domain=d, layer=layer, step=step, t=times[step],
                                 metric=f"rel_change_{half}", score=float(np.mean(vals))))
    for (layer, k), mels in sorted(frozen.items()):
        for d in DOMAINS:
            dist = [mel_distortion(mels[c], full[c]) for c in split.targets if domain[c] == d]
            if dist:
                m = float(np.mean(dist))
                rows.append(dict(base, domain=d, layer=layer, step=k, t=times[k], metric="freeze_mel_snr",
                                 score=math.inf if m == 0 else -10.0 * math.log10(m)))
    if pc["freeze_eval"]:
        rows += freeze_eval_rows(cfg, data, split, full, frozen, base, times)
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


def freeze_eval_rows(cfg, data, split, full, frozen, base, times) -> list[dict]:
    """``freeze_delta_<metric>`` rows: each frozen run's WER / FAD minus the full run's (TER, which
    needs the tokenizers, is Table L1's only)."""
    scorer = QualityScorer(cfg, data, split, [m for m in cfg["lsac"]["metrics"] if m != "ter"])
    ref = {(r["domain"], r["metric"]): r["value"] for r in scorer.score([full[c] for c in split.targets])[0]}
    rows = []
    for (layer, k), mels in tqdm(sorted(frozen.items()), desc="scoring frozen runs"):
        for r in scorer.score([mels[c] for c in split.targets])[0]:
            key = (r["domain"], r["metric"])
            if r["value"] is None or ref.get(key) is None:
                continue
            rows.append(dict(base, domain=r["domain"], layer=layer, step=k, t=times[k],
                             metric=f"freeze_delta_{r['metric']}", score=float(r["value"]) - float(ref[key])))
    return rows
