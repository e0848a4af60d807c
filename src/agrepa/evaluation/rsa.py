"""``agrepa rsa``: representational similarity analysis of generated clips -- what the
similarity regulariser (seed 003, :mod:`agrepa.training.similarity`) optimises, measured on
the outputs.

For the clips of a sample directory, per domain:

* conditioning similarities ``S_cond[i, j] = cos(T_i, T_j)``: T_i pools (``rr.pool``) the
  warm-up's token embedding (its training weights, as the branches start from them; per
  position, :func:`agrepa.training.similarity.conditioning_features`) over clip i's
  conditioning tokens (the target clip's tokens in the token store) -- the text side RR trains
  against, identical for every branch of a seed;
* output similarities ``S_out[i, j] = cos(E_i, E_j)``: E_i is clip i's embedding in the FAD
  embedding (``eval.fad.embedding``; the mean of its rows when a clip has several);
* ``rsa`` = Spearman's rho between S_cond and S_out over the pairs i < j.

``rsa_gt`` is the same for the ground-truth audio of the same clips (``input``
``ground_truth``): how closely real audio follows the token similarities. CIs: percentile
bootstrap over clips (``eval.bootstrap``, ``eval.bootstrap_seed``, ``eval.ci_level``); a
resample keeps the pairs of distinct draws. The JSON has the rows of an evaluation JSON (and an
empty per-clip list), so ``agrepa report metrics`` reads it as it reads ``agrepa evaluate``'s.
"""
from __future__ import annotations

import logging
import os

import numpy as np
from scipy.stats import spearmanr

from ..config import DOMAINS
from . import metrics

CONFIG_KEYS = ("eval", "rr.pool", "audio", "name")  # config sections this module reads

log = logging.getLogger(__name__)

METRIC, METRIC_GT = "rsa", "rsa_gt"


def upper_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, k=1)


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norm > 0, norm, 1.0)
    return x @ x.T


def rsa_value(cond: np.ndarray, out: np.ndarray, idx: np.ndarray | None = None) -> float:
    """Spearman's rho between the cosine similarities of ``cond`` [n, Dc] and ``out`` [n, Do] over
    the pairs i < j of the rows ``idx`` (default all) whose draws differ (a bootstrap resample may
    repeat a clip: a clip is not paired with itself). ValueError when fewer than 3 pairs remain or
    either side is constant (rho undefined)."""
    idx = np.arange(len(cond)) if idx is None else np.asarray(idx)
    i, j = upper_pairs(len(idx))
    a, b = idx[i], idx[j]
    keep = a != b
    if int(keep.sum()) < 3:
        raise ValueError("RSA needs at least 3 pairs of distinct clips")
    s_c, s_o = cosine_matrix(cond)[a[keep], b[keep]], cosine_matrix(out)[a[keep], b[keep]]
    if np.ptp(s_c) == 0 or np.ptp(s_o) == 0:
        raise ValueError("RSA is undefined for constant similarities")
    return float(spearmanr(s_c, s_o).statistic)


def rsa_row(cond: np.ndarray, out: np.ndarray, domain: str, metric: str, cfg: dict, model: str,
            input_: str) -> dict:
    """One evaluation-JSON row: the RSA of a domain's clips with its bootstrap CI."""
    ec = cfg["eval"]
    n = len(cond)
    row = {"domain": domain, "metric": metric, "value": None, "ci_low": None, "ci_high": None, "n": n,
           "model": model, "note": "", "input": input_}
    try:
        est = metrics.bootstrap_ci(lambda idx: rsa_value(cond, out, idx), n, int(ec["bootstrap"]),
                                   int(ec["bootstrap_seed"]), float(ec["ci_level"]))
    except ValueError as err:
        return {**row, "note": f"{n} clips: {err}"}
    return {**row, "value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high}


def conditioning(tokens: list, token_emb, how: str) -> np.ndarray:
    """T [n, D]: each clip's tokens ([N] or Config B's [N, 2]) through the token embedding
    ``token_emb``, pooled over the real positions (PAD excluded)."""
    import torch

    from ..training.similarity import conditioning_features, masked_pool

    out = []
    with torch.no_grad():
        for tok in tokens:
            x, real = conditioning_features(torch.as_tensor(tok, dtype=torch.long).unsqueeze(0), token_emb)
            out.append(masked_pool(x, real, how)[0].numpy())
    return np.stack(out).astype(np.float64)


def rsa(cfg: dict, samples_dir: str | os.PathLike, manifest: str | os.PathLike, tokens_dir: str | os.PathLike,
        warmup: str | os.PathLike, embedding=None) -> dict:
    """The RSA JSON of a sample directory (module doc)."""
    from ..store import Store
    from ..training.checkpoint import load_run
    from .evaluate import clips_from_samples

    if embedding is None:
        from .embeddings import build_embedding
        embedding = build_embedding(cfg)
    run = load_run(warmup, use_ema=False)    # the training weights: what every branch starts from
    if run.phase != "warmup":
        raise ValueError(f"{warmup}: a {run.phase} checkpoint; --warmup takes the warm-up's final.pt")
    token_emb = run.model.token_emb.float()
    store = Store(tokens_dir)
    clips = clips_from_samples(samples_dir, manifest, cfg)
    missing = [c.id for c in clips if c.id not in store]
    if missing:
        raise KeyError(f"{tokens_dir}: no tokens for clip {missing[0]!r} of {samples_dir}")
    how, name = cfg["rr"]["pool"], embedding.describe()
    rows = []
    for domain in DOMAINS:
        dc = [c for c in clips if c.domain == domain]
        if not dc:
            continue
        cond = conditioning([store.get(c.id)["tokens"] for c in dc], token_emb, how)
        gen = np.stack([embedding.embed(c.wave, c.sample_rate).mean(0) for c in dc])
        ref = np.stack([embedding.embed(c.reference, c.sample_rate).mean(0) for c in dc])
        rows.append(rsa_row(cond, gen, domain, METRIC, cfg, name, "generated"))
        rows.append(rsa_row(cond, ref, domain, METRIC_GT, cfg, name, "ground_truth"))
        log.info("%s: rsa %s, rsa_gt %s (%d clips)", domain, rows[-2]["value"], rows[-1]["value"], len(dc))
    run = {"config": cfg["name"], "samples": str(samples_dir), "warmup": str(warmup), "tokens": str(tokens_dir),
           "pool": how, "embedding": name, "bootstrap": int(cfg["eval"]["bootstrap"])}
    return {"run": run, "metrics": rows, "clips": []}     # no per-clip scores: RSA is a statistic of pairs
