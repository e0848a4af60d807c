"""``agrepa sample``: zero-shot generation of test clips with the Euler ODE solver.

Flow (as in training): ``x_t = (1 - t) x0 + t x1`` with ``x0 ~ N(0, sigma^2 I)`` at t = 0
(sigma = ``train.noise_scale``) and the (normalised) data mel at t = 1; the model predicts
the velocity ``x1 - x0``.

Time grid, ``u_i = i / steps`` for i = 0..steps: sway sampling (F5-TTS)
``t_i = u_i + s (cos(pi u_i / 2) - 1 + u_i)`` with ``s = sample.sway`` (s = 0: uniform; s < 0
spends more steps near the noise end), or the cosine schedule (CosyVoice)
``t_i = 1 - cos(pi u_i / 2)``. The endpoints stay 0 and 1.

Euler steps: ``x <- x + (t_{i+1} - t_i) v(x, t_i)``. Classifier-free guidance evaluates the
conditional and the unconditional velocity in ONE batch (the batch stacked twice; the second
half with ``drop_tokens = True`` and, unless the unconditional prompt is ``keep`` (the
authors' code for the DiT: ``sample.cfg_uncond_prompt``; ``auto`` drops the prompt exactly when
the run was trained with ``train.cfg_mode: batch``, whose CFG steps drop tokens and prompt
together, so the unconditional pass is the condition training saw), ``drop_prompt = True``) and combines
them with the scale ``s = sample.cfg_scale`` as ``v = v_u + s (v_c - v_u)`` (formula
``uncond``, the DiT's) or ``v = v_c + s (v_c - v_u)`` (formula ``cond``: Voicebox, CosyVoice,
F5-TTS). ``cfg_scale=None`` runs the conditional model alone (the reference path; ``uncond``
with ``cfg_scale = 1`` gives the same result up to float round-off). Schedule, formula, scale
and unconditional prompt are the architecture's recipe (:func:`sampler_settings`:
``sample.*`` for the DiT, ``model.<arch>`` otherwise); the number of steps
(``sample.steps``) and the noise scale (``train.noise_scale``) are shared.

Evaluation subset (:func:`select_targets`, the config's rule :func:`config_targets`). Per
domain, ``sample.max_clips[domain]`` target clips of the split, spread evenly over its groups
(:func:`clip_group`: the speaker for speech; the primary = first label for audio, so a
multi-label AudioSet clip counts for the first label its segments CSV lists): the groups in an
order drawn with ``numpy.random.default_rng`` seeded from ``sample.subset_seed`` and the
domain, each group's clips in a drawn order, then one clip of each group in turn until the
sample is full, so it covers min(#groups, sample size) groups and group counts differ by at
most one while every group has clips left. Only clips no longer than the training window
(``audio.max_seconds``, to one mel frame; manifest ``duration``) are drawn while the split has
enough of them; then the shortest of the rest (logged). Targets are not cut to the window: the
WER reference is the clip's whole transcript and the mel metrics compare whole clips. The
subset is a function of the split's clips (those with a mel and tokens) and the config only
(not of ``sample.seed`` or the run), so every method, seed and the ``--reference`` floor score
the same clips. ``sample_meta.json`` records what it spans (:func:`subset_summary`:
``n_speakers``, ``n_classes``, the split's totals, clips per group).

Zero-shot prompting. For a target test clip the reference is ANOTHER clip of the same split:
another utterance of the same speaker (speech, ``speaker`` column) or another clip with the
same primary (first) label (audio), drawn with ``numpy.random.default_rng(seed)`` over the
targets in sorted id order; when a group has no other clip, any other clip of the same domain
is used (logged). Model input for one clip (exactly the training layout of
:mod:`agrepa.training.dataset`, where the prompt is a prefix of the sequence)::

    frames   [ 0 .. P )            [ P .. P + L )
    x_t      noise -> prompt mel    noise -> generated target
    prompt   reference mel          zeros
    tokens   reference tokens[:ceil(P * N_ref / T_ref)]  ++  all target tokens

``L`` = the target clip's real mel length (ground-truth duration, as standard for this
evaluation). ``P = min(T_ref, floor(f / (1 - f) * L), round(sample.prompt_max_seconds * fps))``
with ``f = sample.prompt_fraction`` (so the prompt is at most that fraction of the model input,
as in training) and at least 1 frame; ``sample.prompt_max_seconds`` is the longest prompt training
draws, ``train.prompt_max_fraction x train.crop_seconds`` (the shipped configs hold it so:
tests/test_eval_sample.py). Mels enter the model normalised with the mel store's train-split
statistics ``(mel - mean) / std``; the output is the last L frames of the final ``x``,
de-normalised. The initial noise of each clip comes from a ``torch.Generator`` seeded
from (seed, clip id), so a clip's sample does not depend on batching or on other clips.

Outputs in ``--out DIR``: ``samples.csv`` (id, domain, path, prompt_id, text, labels,
n_frames; path relative to DIR), ``<id>.wav`` (24 kHz, the configured vocoder),
``mels.safetensors`` (tensor ``<id>`` = generated log-mel [L, n_mels], un-normalised),
``sample_meta.json`` (checkpoint, method, step, seeds, solver settings, vocoder, what the subset
spans) and
``config.resolved.yaml``.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from safetensors.torch import save_file
from tqdm import tqdm

from .. import config as config_mod
from .. import io
from ..audio import frame_rate, write_wav
from ..corpora.manifest import read_manifest
from ..corpora.mels import load_stats
from ..store import Store
from ..config import DOMAINS, PAD_ID
from ..device import autocast, autocast_dtype
from ..model import recipe
from ..model.backbone import dit_uncond_prompt
from ..model.cache import StepCache

CONFIG_KEYS = ('audio', 'inference.precision', 'sample', 'train.noise_scale', 'train.cfg_mode')  # config sections this module reads

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["id", "domain", "path", "prompt_id", "text", "labels", "n_frames"]


# -- the solver ---------------------------------------------------------------

def sway_schedule(steps: int, sway: float) -> Tensor:
    """Flow times t_0 = 0 < ... < t_steps = 1 with F5-TTS sway sampling (module docstring)."""
    if steps < 1:
        raise ValueError(f"sample.steps: must be >= 1, got {steps}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    t = u + float(sway) * (torch.cos(math.pi / 2 * u) - 1 + u)
    return t.float()


def time_grid(steps: int, schedule: str = "sway", sway: float = 0.0) -> Tensor:
    """Flow times of the ``sway`` or ``cosine`` schedule (module docstring)."""
    if schedule == "sway":
        return sway_schedule(steps, sway)
    if schedule == "cosine":
        if steps < 1:
            raise ValueError(f"sample.steps: must be >= 1, got {steps}")
        u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
        return (1 - torch.cos(math.pi / 2 * u)).float()
    raise ValueError(f"t_schedule: expected sway or cosine, got {schedule!r}")


def sampler_settings(cfg: dict, arch: str | None = None) -> dict:
    """Keyword arguments of :func:`generate` (``steps``, ``cfg_scale``, ``sway``, ``schedule``,
    ``formula``, ``uncond_prompt``, ``noise_scale``) from ``sample.steps``,
    ``train.noise_scale`` and the recipe of ``arch`` (default ``model.arch``)."""
    r = recipe(cfg, arch)
    return {"steps": int(cfg["sample"]["steps"]), "cfg_scale": r.cfg_scale, "sway": r.sway,
            "schedule": r.t_schedule, "formula": r.cfg_formula, "uncond_prompt": r.cfg_uncond_prompt,
            "noise_scale": float(cfg["train"]["noise_scale"])}


def run_settings(cfg: dict, run_cfg: dict) -> dict:
    """:func:`sampler_settings` for a checkpoint: its architecture and CFG mode (:func:`run_config`),
    this config's recipe for it."""
    return sampler_settings(run_config(cfg, run_cfg))


def guided_velocity(model, x: Tensor, t: Tensor, tokens: Tensor, prompt: Tensor, mask: Tensor | None,
                    cfg_scale: float | None, uncond_prompt: str = "drop", cache: StepCache | None = None,
                    formula: str = "uncond") -> Tensor:
    """Velocity at (x, t); with ``cfg_scale`` the cond and uncond passes share one batch (rows
    0..B-1 conditional, B..2B-1 unconditional, so a step cache keeps the halves apart; the uncond
    pass keeps the reference mel with ``uncond_prompt="keep"``), combined by ``formula``."""
    B = x.shape[0]
    if cfg_scale is None:
        return model(x, t, tokens, prompt, mask, cache=cache).float()
    if uncond_prompt not in ("keep", "drop"):
        raise ValueError(f"sample.cfg_uncond_prompt: expected keep or drop, got {uncond_prompt!r}")
    if formula not in ("uncond", "cond"):
        raise ValueError(f"cfg_formula: expected uncond or cond, got {formula!r}")
    drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)]).to(x.device)
    drop_prompt = torch.zeros_like(drop) if uncond_prompt == "keep" else drop
    v = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([tokens, tokens]), torch.cat([prompt, prompt]),
              None if mask is None else torch.cat([mask, mask]), drop_tokens=drop, drop_prompt=drop_prompt,
              cache=cache).float()                   # the guidance combination in fp32 (a no-op in fp32)
    v_c, v_u = v[:B], v[B:]
    return (v_u if formula == "uncond" else v_c) + float(cfg_scale) * (v_c - v_u)


@torch.no_grad()
def euler_sample(model, noise: Tensor, tokens: Tensor, prompt: Tensor, mask: Tensor | None, steps: int,
                 cfg_scale: float | None, sway: float, uncond_prompt: str = "drop",
                 cache: StepCache | None = None, schedule: str = "sway", formula: str = "uncond") -> Tensor:
    """Integrate the flow ODE from ``noise`` [B, T, n_mels] (t = 0) to t = 1 with Euler steps."""
    return euler_solve(model, noise, time_grid(steps, schedule, sway), tokens, prompt, mask, cfg_scale, cache,
                       uncond_prompt=uncond_prompt, formula=formula)


@torch.no_grad()
def euler_solve(model, noise: Tensor, times: Tensor, tokens: Tensor, prompt: Tensor, mask: Tensor | None,
                cfg_scale: float | None, cache: StepCache | None = None, states: list | None = None,
                uncond_prompt: str = "drop", formula: str = "uncond") -> Tensor:
    """Euler steps over the time grid ``times`` (t_0 .. t_S); step i evaluates at t_i. A step cache
    (:mod:`agrepa.model.cache`, one per batch) is told the step index before each evaluation;
    ``states`` (a list), if given, receives the state x_i before each step i."""
    times = times.to(noise.device)
    x = noise
    for i in range(times.shape[0] - 1):
        if cache is not None:
            cache.step = i
        if states is not None:
            states.append(x)
        t = times[i].expand(x.shape[0])
        v = guided_velocity(model, x, t, tokens, prompt, mask, cfg_scale, uncond_prompt, cache, formula)
        x = x + (times[i + 1] - times[i]) * v        # the ODE state stays fp32 under autocast
    return x


# -- requests: prompt + target -> model input ----------------------------------

@dataclass
class Request:
    """One clip to generate: normalised reference mel [P, n_mels], tokens (reference span ++ target;
    [N] or, Config B, [N, 2] rows)."""

    id: str
    prompt: Tensor
    tokens: Tensor
    n_frames: int


def prompt_frames(ref_frames: int, target_frames: int, fraction: float, max_frames: int) -> int:
    """P = min(T_ref, floor(f / (1 - f) * L), max_frames), at least 1 (module docstring)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"sample.prompt_fraction: must lie in (0, 1), got {fraction}")
    p = min(int(ref_frames), int(math.floor(fraction / (1.0 - fraction) * target_frames)), int(max_frames))
    return max(1, p)


def make_request(clip_id: str, ref_mel: Tensor, ref_tokens: Tensor, target_tokens: Tensor, target_frames: int,
                 n_prompt: int) -> Request:
    """The request for one target: the first ``n_prompt`` frames of the (normalised) reference mel and
    the reference tokens covering them (``ceil(P * N_ref / T_ref)``, at least 1) followed by the target's."""
    T_ref, N_ref = ref_mel.shape[0], ref_tokens.shape[0]
    n_prompt = min(n_prompt, T_ref)
    n_tok = max(1, min(N_ref, int(math.ceil(n_prompt * N_ref / T_ref))))
    tokens = torch.cat([ref_tokens[:n_tok].long(), target_tokens.long()])
    return Request(clip_id, ref_mel[:n_prompt].float(), tokens, int(target_frames))


def noise_for(seed: int, clip_id: str, n_frames: int, n_mels: int) -> Tensor:
    """The initial noise of one clip: N(0, I) [n_frames, n_mels] from a generator seeded by (seed, id)."""
    from ..training.dataset import generator

    return torch.randn(n_frames, n_mels, generator=generator(seed, "sample", clip_id))


def inference_dtype(cfg: dict, device) -> torch.dtype | None:
    """The autocast dtype of sampling and LSAC on ``device`` (``inference.precision``: auto is bf16
    on CUDA, fp32 on the CPU)."""
    return autocast_dtype(cfg["inference"]["precision"], device, "inference.precision")


def run_config(cfg: dict, trained: dict) -> dict:
    """``cfg`` as a sampler of a trained run uses it: the run's architecture (``model.arch``; this
    config's recipe for it) and CFG mode (``train.cfg_mode``, which ``sample.cfg_uncond_prompt:
    auto`` follows), taken from ``trained``, the config the run was trained with (its checkpoint's)."""
    return config_mod.deep_merge(cfg, {"model": {"arch": trained["model"]["arch"]},
                                       "train": {"cfg_mode": trained["train"]["cfg_mode"]}})


def guidance(cfg: dict) -> dict:
    """The config's initial-noise scale and the DiT's unconditional-pass prompt (``auto``
    resolved: :func:`agrepa.model.backbone.dit_uncond_prompt`; ``cfg`` as :func:`run_config`
    makes it for a trained run), as :func:`generate` takes them (the DiT-only paths, e.g.
    layer-selective caching; :func:`sampler_settings` is the recipe of any backbone)."""
    return {"noise_scale": float(cfg["train"]["noise_scale"]), "uncond_prompt": dit_uncond_prompt(cfg)}


def length_batches(requests: Sequence[Request], batch_size: int) -> list[list[int]]:
    """Request indices in batches of similar length (less padding); each clip's noise is
    seeded by its id, so the grouping does not change any clip."""
    order = sorted(range(len(requests)), key=lambda i: requests[i].prompt.shape[0] + requests[i].n_frames)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def batch_inputs(batch: Sequence[Request], seed: int, n_mels: int,
                 noise_scale: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(noise, tokens, prompt, mask) of one ODE batch, padded to its longest request; the noise
    has standard deviation ``noise_scale``."""
    lengths = [r.prompt.shape[0] + r.n_frames for r in batch]
    T, N, B = max(lengths), max(r.tokens.shape[0] for r in batch), len(batch)
    noise = torch.zeros(B, T, n_mels)
    prompt = torch.zeros(B, T, n_mels)
    mask = torch.zeros(B, T, dtype=torch.bool)
    tokens = torch.full((B, N, *batch[0].tokens.shape[1:]), PAD_ID, dtype=torch.long)  # [B, N(, 2)]
    for j, (r, n) in enumerate(zip(batch, lengths)):
        noise[j, :n] = noise_for(seed, r.id, n, n_mels) * noise_scale
        prompt[j, :r.prompt.shape[0]] = r.prompt
        mask[j, :n] = True
        tokens[j, :r.tokens.shape[0]] = r.tokens
    return noise, tokens, prompt, mask


def target_frames(x: Tensor, batch: Sequence[Request]) -> list[Tensor]:
    """Each request's generated target frames [L, n_mels] from a batch output [B, T, n_mels]."""
    return [x[j, r.prompt.shape[0]:r.prompt.shape[0] + r.n_frames].clone() for j, r in enumerate(batch)]


@torch.no_grad()
def generate(model, requests: Sequence[Request], steps: int, cfg_scale: float | None, sway: float, seed: int,
             batch_size: int = 8, device: str | torch.device = "cpu", progress: bool = True,
             noise_scale: float = 1.0, uncond_prompt: str = "drop",
             new_cache: Callable[[], StepCache] | None = None, schedule: str = "sway",
             formula: str = "uncond", amp: torch.dtype | None = None) -> list[Tensor]:
    """Generated normalised mels [L, n_mels] (target frames only), one per request; x0 has
    standard deviation ``noise_scale`` (``train.noise_scale``; ``**sampler_settings(cfg)`` gives
    every setting of a backbone's recipe).

    ``new_cache``: makes the step cache of each batch (e.g. ``CachePlan.new_cache``; None: no cache).
    ``amp``: the autocast dtype of the model's forward passes (:func:`inference_dtype`; None: fp32);
    the ODE state and the guidance combination stay fp32."""
    out: dict[int, Tensor] = {}
    for idx in tqdm(length_batches(requests, batch_size), desc="sampling", disable=not progress):
        batch = [requests[i] for i in idx]
        noise, tokens, prompt, mask = batch_inputs(batch, seed, model.n_mels, noise_scale)
        with autocast(amp, device):
            x = euler_sample(model, noise.to(device), tokens.to(device), prompt.to(device), mask.to(device),
                             steps, cfg_scale, sway, uncond_prompt, None if new_cache is None else new_cache(),
                             schedule, formula).float().cpu()
        out.update(zip(idx, target_frames(x, batch)))
    return [out[i] for i in range(len(requests))]


# -- zero-shot prompt choice ------------------------------------------------------

def clip_group(row) -> str:
    """The group a clip counts for in the prompt choice and the evaluation subset: its speaker
    (speech, ``speaker:<id>``) or its primary = first label (audio, ``label:<name>``; the manifest's
    ``labels`` are ``;``-joined in the order the corpus lists them)."""
    if row["domain"] == "speech":
        return "speaker:" + str(row.get("speaker", ""))
    labels = [x for x in str(row.get("labels", "")).split(";") if x]
    return "label:" + (labels[0] if labels else "")


def choose_prompts(df: pd.DataFrame, targets: Sequence[str], seed: int) -> dict[str, str]:
    """``{target id: reference id}``: another clip of the same speaker / primary label from ``df``
    (one split), drawn deterministically for ``seed`` (module docstring)."""
    df = df.copy()
    df["id"] = df["id"].astype(str)
    by_id = df.set_index("id", drop=False)
    group = {cid: clip_group(row) for cid, row in by_id.iterrows()}
    members: dict[tuple[str, str], list[str]] = {}
    for cid, row in by_id.iterrows():
        members.setdefault((row["domain"], group[cid]), []).append(cid)
        members.setdefault((row["domain"], "*"), []).append(cid)
    rng = np.random.default_rng(seed)
    out = {}
    for cid in sorted(targets):
        if cid not in by_id.index:
            raise KeyError(f"choose_prompts: target {cid!r} is not in the split")
        dom = by_id.loc[cid, "domain"]
        cands = sorted(c for c in members[(dom, group[cid])] if c != cid)
        if not cands:
            cands = sorted(c for c in members[(dom, "*")] if c != cid)
            log.warning("%s: no other clip with %s; using another %s clip as the prompt", cid, group[cid], dom)
        if not cands:
            raise ValueError(f"choose_prompts: {cid!r} is the only {dom} clip of the split; no prompt available")
        out[cid] = cands[int(rng.integers(len(cands)))]
    return out


def subset_order(d: pd.DataFrame, seed: int, max_seconds: float) -> list[str]:
    """Every clip id of ``d`` (one domain of one split) in the order the evaluation subset takes
    them (module docstring): first the clips no longer than ``max_seconds`` (manifest
    ``duration``), groups (:func:`clip_group`) in a seeded order and one clip of each group in
    turn (seeded order within a group); then the longer clips, shortest first (id breaks ties)."""
    rows = d.to_dict("records")
    fits: dict[str, list[str]] = {}
    longer = []
    for r in rows:
        if float(r["duration"]) <= max_seconds:
            fits.setdefault(clip_group(r), []).append(str(r["id"]))
        else:
            longer.append((float(r["duration"]), str(r["id"])))
    rng = np.random.default_rng(seed)
    strata = [sorted(fits[g]) for g in sorted(fits)]
    strata = [[ids[i] for i in rng.permutation(len(ids))] for ids in strata]
    strata = [strata[i] for i in rng.permutation(len(strata))]
    order = [s[depth] for depth in range(max((len(s) for s in strata), default=0)) for s in strata if depth < len(s)]
    return order + [cid for _, cid in sorted(longer)]


def select_targets(df: pd.DataFrame, max_clips: dict | int | None, seed: int, max_seconds: float) -> list[str]:
    """The evaluation subset of ``df`` (one split): per domain the first ``max_clips[domain]`` (an int:
    the same for both; None: all) clips of :func:`subset_order` (seeded by ``seed`` and the domain),
    so the subset spreads evenly over every speaker / primary label and keeps to clips no longer
    than ``max_seconds`` while the split has enough of them. Ids sorted within each domain."""
    from ..training.dataset import derive_seed

    ids = []
    for dom in DOMAINS:
        d = df[df["domain"] == dom]
        limit = max_clips.get(dom) if isinstance(max_clips, dict) else max_clips
        order = subset_order(d, derive_seed(int(seed), "eval-subset", dom), float(max_seconds))
        chosen = order if limit is None else order[:int(limit)]
        duration = dict(zip(d["id"].astype(str), d["duration"].astype(float)))
        n_long = sum(duration[c] > max_seconds for c in chosen)
        if n_long:
            log.warning("%d of the %d %s clip(s) of the evaluation subset are longer than %.3f s (the split has "
                        "too few shorter ones): the shortest of the rest", n_long, len(chosen), dom, max_seconds)
        ids += sorted(chosen)
    return ids


def subset_max_seconds(cfg: dict) -> float:
    """The longest target clip of the evaluation subset: the training window ``audio.max_seconds``
    plus one mel frame (a clip cut to the window, e.g. a 10 s AudioSet segment, may decode a few
    samples over it and still fits the window training cuts to)."""
    return float(cfg["audio"]["max_seconds"]) + 1.0 / frame_rate(cfg["audio"])


def config_targets(cfg: dict, df: pd.DataFrame, max_clips: dict | int | None) -> list[str]:
    """:func:`select_targets` with the config's rule: seed ``sample.subset_seed``, targets within the
    training window (:func:`subset_max_seconds`)."""
    return select_targets(df, max_clips, int(cfg["sample"]["subset_seed"]), subset_max_seconds(cfg))


def subset_summary(df: pd.DataFrame, targets: Sequence[str], max_seconds: float) -> dict:
    """What the evaluation subset ``targets`` of ``df`` (one split) spans, for ``sample_meta.json``:
    speakers (speech) and primary labels (audio) in the subset and in the split, clips per group,
    every label any audio clip carries, and the clips longer than ``max_seconds``."""
    from ..corpora.manifest import split_labels

    rows = df.set_index(df["id"].astype(str), drop=False)
    sub = rows.loc[list(targets)]
    speech, audio_ = (sub[sub["domain"] == d] for d in DOMAINS)
    split_speech, split_audio = (rows[rows["domain"] == d] for d in DOMAINS)

    def counts(part: pd.DataFrame) -> dict[str, int]:
        keys = [clip_group(r).split(":", 1)[1] for r in part.to_dict("records")]
        return {k: keys.count(k) for k in sorted(set(keys))}

    per_speaker, per_class = counts(speech), counts(audio_)
    return {"n_speakers": len(per_speaker), "split_speakers": len(counts(split_speech)),
            "n_classes": len(per_class), "split_classes": len(counts(split_audio)),
            "n_labels": len({x for s in audio_["labels"] for x in split_labels(s)}),
            "clips_per_speaker": per_speaker, "clips_per_class": per_class,
            "target_max_seconds": float(max_seconds),
            "n_over_max_seconds": int((sub["duration"].astype(float) > max_seconds).sum())}


# -- the stage ----------------------------------------------------------------------

def build_requests(cfg: dict, targets: Sequence[str], prompts: dict[str, str], mels, toks,
                   mean: Tensor, std: Tensor) -> list[Request]:
    """One request per target clip: its real mel length, its own tokens, the prompt clip's normalised
    mel prefix and tokens (module doc); ``mels`` / ``toks`` are the mel and token stores."""
    sc = cfg["sample"]
    max_prompt = int(round(float(sc["prompt_max_seconds"]) * frame_rate(cfg["audio"])))
    requests = []
    for cid in targets:
        ref = prompts[cid]
        ref_mel = (mels.get(ref)["mel"].float() - mean) / std
        L = int(mels.get(cid)["mel"].shape[0])
        P = prompt_frames(ref_mel.shape[0], L, float(sc["prompt_fraction"]), max_prompt)
        requests.append(make_request(cid, ref_mel, toks.get(ref)["tokens"], toks.get(cid)["tokens"], L, P))
    return requests


@dataclass
class SplitRequests:
    """The evaluation subset of one split, ready to sample: its manifest rows (indexed by id),
    target ids, {target: prompt id}, the requests and the mel normalisation."""

    rows: pd.DataFrame
    targets: list[str]
    prompts: dict[str, str]
    requests: list[Request]
    mean: Tensor
    std: Tensor


def split_requests(cfg: dict, data, split: str, seed: int, max_clips: dict | int | None = None) -> SplitRequests:
    """The evaluation subset (:func:`config_targets`; ``max_clips`` clips per domain, default
    ``sample.max_clips``) of the clips of ``split`` that have a mel and tokens, with their zero-shot
    prompts, as sampler requests (module docstring);
    ``data``: the ``agrepa.training.dataset.DataPaths`` of the manifest, mel and token stores."""
    manifest_path = data.manifest
    df = read_manifest(manifest_path)
    df = df[df["split"] == split].copy()
    if df.empty:
        raise ValueError(f"{manifest_path}: no clips in split {split!r}")
    mels, toks = Store(data.mels), Store(data.tokens)
    mean, std = load_stats(mels)
    have = [c for c in df["id"].astype(str) if c in mels and c in toks]
    missing = len(df) - len(have)
    if missing:
        log.warning("%s: %d clip(s) of split %s lack a mel or tokens; skipped", manifest_path, missing, split)
    df = df[df["id"].astype(str).isin(have)]
    targets = config_targets(cfg, df, cfg["sample"]["max_clips"] if max_clips is None else max_clips)
    if not targets:
        raise ValueError(f"{manifest_path}: nothing to sample in split {split!r}")
    prompts = choose_prompts(df, targets, seed)
    requests = build_requests(cfg, targets, prompts, mels, toks, mean, std)
    return SplitRequests(df.set_index(df["id"].astype(str)), targets, prompts, requests, mean, std)


def sample_split(model, cfg: dict, data, split: str, seed: int, out_dir: str | os.PathLike,
                 max_clips: dict | int | None = None, vocoder=None, meta: dict | None = None,
                 device: str | torch.device = "cpu", write_audio: bool = True) -> pd.DataFrame:
    """Generate the split's evaluation subset with ``model`` and write the outputs to ``out_dir``;
    ``data``: the ``agrepa.training.dataset.DataPaths`` of the manifest, mel and token stores."""
    sc = cfg["sample"]
    sr = split_requests(cfg, data, split, seed, max_clips)
    targets, prompts, requests, mean, std, rows = sr.targets, sr.prompts, sr.requests, sr.mean, sr.std, sr.rows
    model = model.to(device).eval()
    settings = sampler_settings(cfg)
    gen = generate(model, requests, seed=seed, batch_size=int(sc["batch_size"]), device=device,
                   amp=inference_dtype(cfg, device), **settings)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mels_out, records = {}, []
    for cid, x in tqdm(list(zip(targets, gen)), desc="vocoding", disable=not write_audio):
        mel = x * std + mean
        mels_out[cid] = mel.contiguous()
        wav_name = f"{cid}.wav"
        if write_audio:
            write_wav(out_dir / wav_name, vocoder(mel), vocoder.sample_rate)
        r = rows.loc[cid]
        records.append({"id": cid, "domain": r["domain"], "path": wav_name, "prompt_id": prompts[cid],
                        "text": r.get("text", ""), "labels": r.get("labels", ""), "n_frames": int(mel.shape[0])})
    with io.atomic_path(out_dir / "mels.safetensors") as tmp:
        save_file(mels_out, str(tmp))
    table = pd.DataFrame(records, columns=SAMPLE_COLUMNS)
    io.write_json(out_dir / "sample_meta.json", {
        **(meta or {}), "split": split, "sample_seed": seed, **settings, "arch": recipe(cfg).arch,
        "prompt_fraction": float(sc["prompt_fraction"]),
        "prompt_max_seconds": float(sc["prompt_max_seconds"]), "n_clips": len(records),
        "subset_seed": int(sc["subset_seed"]), **subset_summary(rows, targets, subset_max_seconds(cfg)),
        "vocoder": vocoder.describe() if vocoder is not None else None, "manifest": str(data.manifest)})
    config_mod.save_resolved(cfg, out_dir)
    io.write_csv(out_dir / "samples.csv", table)  # last: its presence marks a complete directory
    log.info("wrote %d samples to %s", len(records), out_dir)
    return table


def read_samples(samples_dir: str | os.PathLike) -> pd.DataFrame:
    """``samples.csv`` of a sample directory (validated)."""
    path = Path(samples_dir) / "samples.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: samples table not found (run `agrepa sample` first)")
    df = pd.read_csv(path, dtype={"id": str, "prompt_id": str, "text": str, "labels": str, "path": str},
                     keep_default_na=False)
    missing = [c for c in SAMPLE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    return df
