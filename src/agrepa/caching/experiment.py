"""``agrepa lsac-eval``: the runs behind Table L1 / Figure L2 for one branch checkpoint.

On the evaluation subset of ``agrepa sample`` (test split, ``sample.max_clips``, noise and
prompts from ``--seed``), with S = ``sample.steps`` and the rest of ``sample.*``:

* ``full``: the sampler as it is (the reference of every quality loss);
* ``steps_<S'>``: naive Euler with fewer steps, S' = S-1 .. ceil(S/2);
* every cache plan of ``--plans`` (``agrepa lsac-select``: LSAC and its controls per budget).

Per clip (``clips.csv``): model frames T (prompt + target), analytic GFLOPs of the whole
sampling (total and self-attention, CFG's two rows included; :mod:`agrepa.caching.flops`),
its ratio to the full run's, the mel distortion and SNR against the full run, the word
errors / reference words of its transcript (speech, with ``wer`` in ``lsac.metrics``) and the
token edits / conditioning tokens of its re-tokenised audio (with ``ter``).
Per variant (``variants.csv``, long): corpus WER, FAD and TER with bootstrap CIs per domain
(``lsac.metrics``) and the measured sampling time per clip (``wall_s_per_clip``, process
``cpu_s_per_clip``; domain ``all``), after an untimed warm-up run.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from .plan import CachePlan, read_plan
from .flops import Dims, sampling_flops
from ..generation.sampling import generate, guidance, inference_dtype, split_requests
from .quality import QualityScorer, mel_distortion

log = logging.getLogger(__name__)

CONFIG_KEYS = ("lsac.metrics", "sample", "train.noise_scale")  # config sections this module reads

VARIANT_COLUMNS = ["config", "seed", "branch", "variant", "strategy", "budget", "steps", "attention_savings",
                   "domain", "metric", "value", "ci_low", "ci_high", "n", "model"]
CLIP_COLUMNS = ["config", "seed", "branch", "variant", "strategy", "budget", "steps", "attention_savings",
                "id", "domain", "frames", "gflops", "attn_gflops", "rel_flops", "mel_distortion", "mel_snr_db",
                "wer_errors", "wer_words", "ter_edits", "ter_len"]


@dataclass
class Variant:
    name: str
    strategy: str            # full | steps | a cache-plan strategy
    steps: int
    plan: CachePlan | None = None

    @property
    def budget(self):
        return None if self.plan is None else self.plan.budget

    @property
    def attention_savings(self) -> float:
        return 0.0 if self.plan is None else self.plan.attention_savings()


def read_plans(plans_dir) -> list[CachePlan]:
    """The plans listed in ``plans_dir/index.json`` (written by ``agrepa lsac-select``), in order."""
    from .. import io

    index = io.read_json(Path(plans_dir) / "index.json", required=("plans",))
    return [read_plan(Path(plans_dir) / f"{name}.json") for name in index["plans"]]


def variants(steps: int, plans: list[CachePlan]) -> list[Variant]:
    """full, steps_<S'> for S' = S-1 .. ceil(S/2), then the plans (module docstring)."""
    out = [Variant("full", "full", steps)]
    out += [Variant(f"steps_{s}", "steps", s) for s in range(steps - 1, math.ceil(steps / 2) - 1, -1)]
    out += [Variant(p.name, p.strategy, steps, p) for p in plans]
    return out


def run_variant(model, split, v: Variant, cfg: dict, seed: int, device) -> tuple[list, float, float]:
    """(generated normalised mels, wall seconds, process CPU seconds) of one variant."""
    sc = cfg["sample"]
    start, cpu = time.perf_counter(), time.process_time()
    mels = generate(model, split.requests, v.steps, sc["cfg_scale"], float(sc["sway"]), seed,
                    batch_size=int(sc["batch_size"]), device=device, progress=False, **guidance(cfg),
                    new_cache=None if v.plan is None else v.plan.new_cache, amp=inference_dtype(cfg, device))
    if str(device).startswith("cuda"):
        import torch
        torch.cuda.synchronize()
    return mels, time.perf_counter() - start, time.process_time() - cpu


def clip_rows(model, split, v: Variant, mels, full, sc: dict, base: dict) -> list[dict]:
    d = Dims.of(model)
    cfg_on = sc["cfg_scale"] is not None
    rows = []
    for r, x in zip(split.requests, mels):
        T, N = r.prompt.shape[0] + r.n_frames, r.tokens.shape[0]
        f = sampling_flops(d, T, v.steps, cfg_on, None if v.plan is None else v.plan.cells(), N)
        f_full = sampling_flops(d, T, int(sc["steps"]), cfg_on, n_tokens=N)
        dist = mel_distortion(x, full[r.id])
        rows.append(dict(base, id=r.id, domain=str(split.rows.loc[r.id, "domain"]), frames=T,
                         gflops=f["total"] / 1e9, attn_gflops=f["attention"] / 1e9,
                         rel_flops=f["total"] / f_full["total"], mel_distortion=dist,
                         mel_snr_db=math.inf if dist == 0 else -10.0 * math.log10(dist)))
    return rows


def lsac_experiment(model, cfg: dict, data, plans: list[CachePlan], seed: int, branch: str, token_config: str,
                    device="cpu", tokenizers: dict | None = None, teacher_dir=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(variants, clips) DataFrames for one branch checkpoint (module docstring; column
    ``config`` = the token config; ``data``: the ``agrepa.training.dataset.DataPaths`` of the
    manifest, mel and token stores; ``tokenizers`` and ``teacher_dir``: TER's, as
    :class:`agrepa.caching.quality.QualityScorer` takes them)."""
    sc = cfg["sample"]
    split = split_requests(cfg, data, "test", seed)
    model = model.to(device).eval()
    for p in plans:
        p.check_model(model.n_layers, int(sc["steps"]), f"plan {p.name}")
    scorer = QualityScorer(cfg, data, split, cfg["lsac"]["metrics"], tokenizers, teacher_dir)
    vs = variants(int(sc["steps"]), plans)
    full_mels = run_variant(model, split, vs[0], cfg, seed, device)[0]          # warm-up, untimed
    full = {r.id: x for r, x in zip(split.requests, full_mels)}
    var_rows, clips = [], []
    for v in tqdm(vs, desc="variants"):
        mels, wall, cpu = run_variant(model, split, v, cfg, seed, device)
        base = {"config": token_config, "seed": int(seed), "branch": branch, "variant": v.name,
                "strategy": v.strategy, "budget": v.budget, "steps": v.steps,
                "attention_savings": v.attention_savings}
        rows = clip_rows(model, split, v, mels, full, sc, base)
        quality, per_clip = scorer.score(mels)
        for row in rows:
            row.update(per_clip.get(row["id"], {}))
        clips += rows
        n = len(mels)
        var_rows += [dict(base, **q) for q in quality]
        var_rows += [dict(base, domain="all", metric=m, value=s / n, ci_low=None, ci_high=None, n=n,
                          model="time.perf_counter" if m.startswith("wall") else "time.process_time")
                     for m, s in (("wall_s_per_clip", wall), ("cpu_s_per_clip", cpu))]
        log.info("%s: mel SNR %.2f dB (mean over clips), %.3f s/clip", v.name,
                 pd.Series([r["mel_snr_db"] for r in rows]).replace(math.inf, float("nan")).mean(), wall / n)
    return pd.DataFrame(var_rows, columns=VARIANT_COLUMNS), pd.DataFrame(clips, columns=CLIP_COLUMNS)
