"""Layer probes of a warm-up checkpoint: FoG-A, LASP (BiT-C across depth) and gradient norm.

* **FoG-A** ("what a layer does", Sec. 4.3): :mod:`agrepa.probing.foga`.
* **LASP** ("what a layer knows", Sec. 4.2, Eq. 6): the input interface (layer 0: the
  token embedding BiT-C is trained on) and every unit output h_l, l = 1..L, is pooled
  over its valid frames and scored by ONE frozen head per teacher, shared by all layers
  (the BiT-C head): ``cos(head(LN(pool(h_l))), teacher embedding)``. Speech samples use
  the semantic head and teacher (Cos-SEM), audio samples the acoustic ones (Cos-EVT).
  The head is as wide as the token embedding; a layer of another width (an F5 trunk
  block beside a narrower text stream, a CosyVoice decoder level) has no LASP score (NaN).
* **Gradient norm** (Table 3's baseline): for unit l, the L2 norm over all of
  unit l's parameters (``model.unit_modules()[l-1]``) of dL_FM/dtheta_l, where L_FM is the training
  flow-matching loss (``agrepa.training.objectives.flow_matching_loss``) of one probe batch
  averaged over the probe t grid (same x0, x1 for every t;
  ``probe.gradnorm_t_grid`` overrides the grid).
  Each batch gives one norm per block; the CSV reports the mean and std of the
  per-batch norms over the probe batches of a domain.

The probe CLI (``agrepa probe``) runs all three on real training clips (the
paper probes on the training set): per domain, ``probe.n_clips`` clips drawn by
:func:`probe_sample` (seeded by ``probe.seed`` and the run seed, stratified over
speakers for speech and primary labels for audio) in batches of ``probe.batch_size``
(``TrainingData.eval_batches``: crops from frame 0, prompt = the first
``train.eval_prompt_fraction`` of the crop), the TRAINING weights of the warm-up model
and its BiT-C heads (exactly the weights every branch starts from); x_t = (1 - t) x0 + t x1
with x1 the normalised mel and x0 fixed Gaussian noise of scale ``train.noise_scale``
(``probe.seed``, one draw per batch shared by every t), for every t in ``probe.t_grid``;
and writes a tidy CSV with columns
``config, seed, domain, probe, layer, t, score, spread, n`` (``spread`` = std of
the per-batch scores across batches, NaN with one batch; ``n`` = samples).
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from ..config import DOMAINS
from ..corpora.manifest import split_labels
from ..device import autocast, autocast_dtype, full_precision, move_batch, resolve_device
from ..model import Backbone, recipe
from ..store import Store
from ..training.checkpoint import load_run
from ..training.dataset import DataPaths, TrainingData, derive_seed, split_rows
from ..training.objectives import flow_matching_loss, ot_path
from .foga import eval_mode, foga_per_sample
from .records import CSV_COLUMNS, PROBES

CONFIG_KEYS = ('inference.precision', 'probe', 'train.loss_on_prompt', 'train.noise_scale')  # config sections this module reads

log = logging.getLogger(__name__)


# score_fn(h [B, T, D], mask [B, T] | None) -> cosine per sample [B]
ScoreFn = Callable[[Tensor, "Tensor | None"], Tensor]


# --------------------------------------------------------------------------- LASP

@torch.no_grad()
def lasp_per_sample(model: Backbone, x_t: Tensor, t: Tensor, tokens: Tensor, prompt: Tensor,
                    mask: Tensor | None, score_fn: ScoreFn) -> Tensor:
    """LASP per sample and hidden state -> [B, L+1] (column l is h_l; 0 = input interface).

    ``score_fn`` is the one frozen head (with its teacher targets) applied to
    every layer, so all depths are scored in the same space.
    """
    with eval_mode(model), full_precision(x_t.device):   # fp32 as FoG-A's forward it otherwise reuses
        _, hidden = model(x_t, t, tokens, prompt, mask, return_hidden=True)
        return lasp_from_hidden(with_interface(model, hidden, tokens, mask), mask, score_fn)


def with_interface(model: Backbone, hidden: Sequence[Tensor], tokens: Tensor, mask: Tensor | None) -> list[Tensor]:
    """``[token embedding, h_1, ..., h_L]``: LASP's layer 0 is the input interface BiT-C aligns."""
    return [model.embed_tokens(tokens, mask, hidden[0].shape[1]), *hidden[1:]]


@torch.no_grad()
def lasp_from_hidden(hidden: Sequence[Tensor], mask: Tensor | None, score_fn: ScoreFn) -> Tensor:
    """LASP per sample from given hidden states [h_0, ..., h_L] -> [B, L+1] (same head for all)."""
    return torch.stack([score_fn(h, mask) for h in hidden], dim=1)


def lasp(model: Backbone, x_t: Tensor, t: Tensor, tokens: Tensor, prompt: Tensor,
         mask: Tensor | None, score_fn: ScoreFn) -> Tensor:
    """LASP score per hidden state -> Tensor[L+1]: mean over samples of the shared head's cosine."""
    return lasp_per_sample(model, x_t, t, tokens, prompt, mask, score_fn).mean(0)


def bitc_scorer(heads, domain: str, target: Tensor) -> ScoreFn:
    """The shared frozen BiT-C head of ``domain`` ("speech" -> semantic, "audio" -> acoustic)
    as a LASP ``score_fn`` against teacher embeddings ``target`` [B, D_teacher].

    ``heads`` is an ``agrepa.training.objectives.BiTCHeads``; its ``cosine`` pools over
    valid frames, applies LayerNorm and the teacher head and returns the cosine per sample.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")

    def score(h: Tensor, mask: Tensor | None) -> Tensor:
        if h.shape[-1] != heads.dim:                  # the shared head does not apply to this width
            return torch.full((h.shape[0],), math.nan, device=h.device)
        return heads.cosine(h, mask, domain, target)

    return score


# --------------------------------------------------------------------------- gradient norm

def gradnorm(model: Backbone, batch: dict, x0: Tensor, t_grid: Sequence[float],
             loss_on_prompt: bool = True) -> Tensor:
    """Per-unit gradient norm -> Tensor[L] (index l-1 is unit l).

    ``||d L_FM / d theta_l||_2`` over all parameters of unit l, with
    L_FM = mean over ``t_grid`` of ``agrepa.training.objectives.flow_matching_loss`` on
    ``batch`` (keys mel, mask, tokens, prompt[, prompt_mask]) from noise ``x0``
    at flow time t for every sample. Model in eval mode (no dropout, no CFG drop).
    The model's ``.grad`` fields and ``requires_grad`` flags are left untouched.
    """
    if len(t_grid) == 0:
        raise ValueError("gradnorm needs a non-empty t grid")
    params = [list(unit.parameters()) for unit in model.unit_modules()]
    flat = [p for ps in params for p in ps]
    flags = [p.requires_grad for p in flat]
    x1 = batch["mel"]
    B = x1.shape[0]
    total = [torch.zeros_like(p) for p in flat]
    try:
        for p in flat:
            p.requires_grad_(True)
        with eval_mode(model), torch.enable_grad():
            for t in t_grid:
                tt = torch.full((B,), float(t), dtype=x1.dtype, device=x1.device)
                loss = flow_matching_loss(model, batch, tt, x0, loss_on_prompt=loss_on_prompt).loss
                grads = torch.autograd.grad(loss / len(t_grid), flat, allow_unused=True)
                for acc, g in zip(total, grads):
                    if g is not None:
                        acc.add_(g)
    finally:
        for p, f in zip(flat, flags):
            p.requires_grad_(f)
    out, i = [], 0
    for ps in params:
        out.append(torch.sqrt(sum(g.double().pow(2).sum() for g in total[i:i + len(ps)])))
        i += len(ps)
    return torch.stack(out).float()


# --------------------------------------------------------------------------- the probe sweep

def batch_seed(seed: int, domain_index: int, batch_index: int) -> int:
    """The seed of one probe batch (its noise; with ``* 1_009 + k``, its k-th flow time's dropout)."""
    return int(seed) * 1_000_003 + domain_index * 10_007 + batch_index


def fixed_noise(like: Tensor, seed: int, domain_index: int, batch_index: int) -> Tensor:
    """x0 for one probe batch: standard normal drawn on CPU from a generator seeded by
    (seed, domain, batch), so it depends on nothing else (device, other batches)."""
    g = torch.Generator().manual_seed(batch_seed(seed, domain_index, batch_index))
    return torch.randn(like.shape, generator=g, dtype=torch.float32).to(device=like.device, dtype=like.dtype)


def _summarise(per_batch: list[Tensor], n: int, meta: dict, first_layer: int) -> list[dict]:
    stacked = torch.stack(per_batch).double()              # [n_batches, layers]
    mean = stacked.mean(0)
    spread = stacked.std(0, unbiased=True) if stacked.shape[0] > 1 else torch.full_like(mean, math.nan)
    return [dict(meta, layer=first_layer + i, score=float(mean[i]), spread=float(spread[i]), n=n)
            for i in range(stacked.shape[1])]


def _checked_probes(probes: Iterable[str], scorers) -> list[str]:
    probes = list(probes)
    unknown = set(probes) - set(PROBES)
    if unknown:
        raise ValueError(f"unknown probe(s) {sorted(unknown)}; choose from {PROBES}")
    if "lasp" in probes and not scorers:
        raise ValueError("the lasp probe needs scorers (one shared head per domain)")
    return probes


def run_probes(model: Backbone, batches: dict[str, list[dict]], t_grid: Sequence[float], *,
               noise_seed: int, eps: float = 1e-6, scorers: dict[str, Callable[[dict], ScoreFn]] | None = None,
               probes: Iterable[str] = PROBES, config_name: str = "", seed: int = 0,
               max_streams: int | None = None, gradnorm_t_grid: Sequence[float] | None = None,
               loss_on_prompt: bool = True, noise_scale: float = 1.0, foga_mode: str = "eval",
               amp: torch.dtype | None = None) -> pd.DataFrame:
    """Run the probes over per-domain batches -> tidy DataFrame (:data:`CSV_COLUMNS`).

    ``batches[domain]`` is a list of batch dicts with ``mel`` [B, T, n_mels]
    (normalised x1), ``mask`` [B, T], ``tokens`` [B, N], ``prompt`` [B, T, n_mels].
    ``scorers[domain](batch)`` returns the LASP ``score_fn`` for that batch
    (the shared head against the batch's teacher embeddings); needed for "lasp".
    Scores are per-batch means over samples; the row's score is the mean over
    batches and ``spread`` their std. ``gradnorm_t_grid`` (default ``t_grid``)
    are the flow times averaged in the gradient-norm loss; with
    ``loss_on_prompt=False`` that loss leaves out the batch's ``prompt_mask`` frames
    (as ``train.loss_on_prompt`` does in training; needs ``prompt_mask``). ``noise_scale``:
    the standard deviation of x0 (``train.noise_scale``). ``foga_mode``: ``probe.foga_mode``
    (``train``: each (domain, batch, t) draws its dropout masks from its own seed). ``amp``: the
    autocast dtype of the gradient-norm passes (``inference.precision``; None: fp32); FoG-A and
    LASP always run in fp32 (:func:`agrepa.probing.foga.foga_per_sample`).
    """
    grad_grid = list(t_grid if gradnorm_t_grid is None else gradnorm_t_grid)
    probes = _checked_probes(probes, scorers)
    rows: list[dict] = []
    for domain, blist in batches.items():
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
        if not blist:
            log.warning("no probe batches for domain %s; skipped", domain)
            continue
        d_idx = DOMAINS.index(domain)
        foga_b = {t: [] for t in t_grid}
        lasp_b = {t: [] for t in t_grid}
        grad_b: list[Tensor] = []
        n = 0
        steps = tqdm(total=len(blist) * (len(t_grid) + ("gradnorm" in probes)), desc=f"probe {domain}",
                     leave=False)
        for i, batch in enumerate(blist):
            x1, mask = batch["mel"], batch.get("mask")
            tokens, prompt = batch["tokens"], batch["prompt"]
            x0 = fixed_noise(x1, noise_seed, d_idx, i) * noise_scale
            if mask is not None:
                x0 = x0 * mask.to(x0.dtype)[..., None]
            n += x1.shape[0]
            score_fn = scorers[domain](batch) if "lasp" in probes else None
            for k, t in enumerate(t_grid):
                tt = torch.full((x1.shape[0],), float(t), dtype=x1.dtype, device=x1.device)
                x_t, _ = ot_path(x0, x1, tt)
                if "foga" in probes:                   # LASP reuses FoG-A's clean forward
                    dropout_seed = batch_seed(noise_seed, d_idx, i) * 1_009 + k
                    scores, hidden = foga_per_sample(model, x_t, tt, tokens, prompt, mask, eps,
                                                     max_streams, return_hidden=True, mode=foga_mode,
                                                     seed=dropout_seed)
                    foga_b[t].append(scores.mean(0).cpu())
                    if "lasp" in probes:
                        with torch.no_grad():
                            layers = with_interface(model, hidden, tokens, mask)
                        lasp_b[t].append(lasp_from_hidden(layers, mask, score_fn).mean(0).cpu())
                    del hidden
                elif "lasp" in probes:
                    lasp_b[t].append(lasp(model, x_t, tt, tokens, prompt, mask, score_fn).cpu())
                steps.update()
            if "gradnorm" in probes:
                with autocast(amp, x1.device):
                    grad_b.append(gradnorm(model, batch, x0, grad_grid, loss_on_prompt).cpu())
                steps.update()
        steps.close()
        base = {"config": config_name, "seed": seed, "domain": domain}
        for t in t_grid:
            if "foga" in probes:
                rows += _summarise(foga_b[t], n, dict(base, probe="foga", t=float(t)), 1)
            if "lasp" in probes:
                rows += _summarise(lasp_b[t], n, dict(base, probe="lasp", t=float(t)), 0)
        if "gradnorm" in probes:
            rows += _summarise(grad_b, n, dict(base, probe="gradnorm", t=math.nan), 1)
        log.info("probed %s: %d batches, %d samples", domain, len(blist), n)
    return pd.DataFrame(rows, columns=CSV_COLUMNS)


# --------------------------------------------------------------------------- a checkpoint

def token_config_name(tokens_dir, given: str | None = None) -> str:
    """The token config name for the CSV: ``given``, else the token store's meta
    (``token_config``), else the token store's directory name (``results/tokens/A`` -> ``A``)."""
    if given:
        return str(given)
    store = Store(tokens_dir)
    name = store.meta.get("token_config") or store.meta.get("config")
    return str(name) if name else store.dir.name


def probe_checkpoint(cfg: dict, ckpt, data: DataPaths, *, split: str = "train", probes: Sequence[str] = PROBES,
                     seed: int | None = None, token_config: str | None = None) -> pd.DataFrame:
    """Every probe of ``probes`` on the training weights of checkpoint ``ckpt`` (:func:`probed_run`)
    over ``split`` clips of the stores ``data`` (manifest, mels, tokens, semantic, acoustic)
    -> the tidy probes frame."""
    pcfg = cfg["probe"]
    t_grid = [float(t) for t in pcfg["t_grid"]]
    if not t_grid or any(not 0.0 <= t <= 1.0 for t in t_grid) or len(set(t_grid)) != len(t_grid):
        raise ValueError(f"config key 'probe.t_grid': need distinct flow times in [0, 1], got {t_grid}")
    unknown = sorted(set(probes) - set(PROBES))
    if not probes or unknown:
        raise ValueError(f"--probes: unknown or no probe(s) {unknown}; choose from {list(PROBES)}")
    run = probed_run(ckpt)
    device = resolve_device(cfg)
    model, heads = run.model.to(device).eval(), run.bitc.to(device).eval()
    for p in heads.parameters():                              # frozen interface heads
        p.requires_grad_(False)
    if seed is not None and seed != run.seed:
        log.warning("--seed %d differs from the checkpoint's seed %d; the CSV records %d", seed, run.seed, seed)
    batches = probe_batches(cfg, data, split, device, seed=run.seed)
    scorers = {
        "speech": lambda b: bitc_scorer(heads, "speech", b["emb_semantic"]),
        "audio": lambda b: bitc_scorer(heads, "audio", b["emb_acoustic"]),
    }
    df = run_probes(model, batches, t_grid, noise_seed=int(pcfg["seed"]), eps=float(pcfg["eps"]),
                    scorers=scorers, probes=list(probes), config_name=token_config_name(data.tokens, token_config),
                    seed=int(run.seed if seed is None else seed), max_streams=pcfg["foga_max_streams"],
                    gradnorm_t_grid=pcfg["gradnorm_t_grid"],
                    loss_on_prompt=recipe(cfg, run.cfg["model"]["arch"]).loss_on_prompt,
                    noise_scale=float(cfg["train"]["noise_scale"]), foga_mode=pcfg["foga_mode"],
                    amp=autocast_dtype(cfg["inference"]["precision"], device, "inference.precision"))
    log.info("probed %s (step %d): %d rows", ckpt, run.step, len(df))
    return df


def probed_run(ckpt):
    """The model the probes read: the warm-up's TRAINING weights (not its EMA), exactly the
    weights every branch starts from (``agrepa.training.train.initial_state``)."""
    return load_run(ckpt, use_ema=False)


def probe_sample(rows: pd.DataFrame, n_clips: int, seed: int) -> dict[str, list[str]]:
    """Per domain, ``n_clips`` clip ids of the manifest ``rows`` (all if fewer): strata (the
    speaker for speech, the primary = first label for audio) in a seeded random order, and
    one clip from each stratum in turn (seeded order within a stratum) until ``n_clips``, so
    the sample spans min(#strata, n_clips) strata. The same seed gives the same sample."""
    if n_clips < 1:
        raise ValueError(f"config key 'probe.n_clips' must be >= 1, got {n_clips}")
    rng = np.random.default_rng(int(seed))
    out = {}
    for domain in DOMAINS:
        sub = rows[rows["domain"] == domain]
        key = sub["speaker"] if domain == "speech" else sub["labels"].map(lambda s: (split_labels(s) or [""])[0])
        strata = [list(g["id"].astype(str)) for _, g in sub.groupby(key.astype(str), sort=True)]
        strata = [[ids[i] for i in rng.permutation(len(ids))] for ids in strata]
        strata = [strata[i] for i in rng.permutation(len(strata))]
        picked: list[str] = []
        for depth in range(max((len(s) for s in strata), default=0)):
            picked += [s[depth] for s in strata if depth < len(s)]
            if len(picked) >= n_clips:
                break
        out[domain] = picked[:n_clips]
    return out


def probe_batches(cfg: dict, data: DataPaths, split: str, device: torch.device,
                  seed: int = 0) -> dict[str, list[dict]]:
    """Batches of ``probe.batch_size`` clips per domain over the :func:`probe_sample` of
    ``split`` (seeded by ``probe.seed`` and the run ``seed``; crops from frame 0, fixed
    prompt fraction: ``TrainingData.eval_batches``)."""
    n_clips, bs = int(cfg["probe"]["n_clips"]), int(cfg["probe"]["batch_size"])
    if bs < 1:
        raise ValueError(f"config key 'probe.batch_size' must be >= 1, got {bs}")
    sample = probe_sample(split_rows(data.manifest, split), n_clips,
                          derive_seed(int(cfg["probe"]["seed"]), "probe-sample", int(seed)))
    clips = TrainingData(cfg, data, split=split, ids=[i for ids in sample.values() for i in ids])
    out: dict[str, list[dict]] = {}
    for domain in DOMAINS:
        got = clips.eval_batches(bs, domain=domain)
        n = sum(len(b["ids"]) for b in got)
        if n < n_clips:
            log.warning("%s split: %d %s clip(s) to probe (probe.n_clips = %d)", split, n, domain, n_clips)
        out[domain] = [move_batch(b, device) for b in got]
    return out
