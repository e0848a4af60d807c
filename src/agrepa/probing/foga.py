"""FoG-A: forward-only gate ablation (paper, Sec. 4.3, Eqs. 7-9).

For every gated unit l (1-based; a DiT block, a Voicebox layer, a CosyVoice ResNet or
Transformer block, an F5 text or DiT block) the ablated velocity ``v^(l)`` is the model's
velocity with gate ``g_l = 0`` and every other gate 1. The score of layer l is::

    FoG-A_l = mean_b  ||v_b - v_b^(l)|| / (||v_b|| + eps)

with the norms taken over every valid (unpadded) element of sample b, i.e.
over the real frames x all mel bins.

:func:`foga` computes all L ablations exactly but shares the work, on any backbone of
:mod:`agrepa.model.backbone`:

* the embedding and the context (time embedding, rotary tables, attention
  masks) are computed once;
* one clean forward caches, for every unit l, its transitioned stream
  ``transition_l(state_{l-1})``; ablating unit l leaves everything before it
  unchanged and makes its output exactly that cached stream (U-Net skips
  included), so each ablated stream starts there and only runs units l+1..L;
* the live ablated streams are stacked along the batch dimension
  (``Stream.cat``, ``ctx.repeat(k)``) and pushed through each unit together.

Cost: L(L+1)/2 unit-sample evaluations (clean L + sum_l (L-l)) against
L(L+1) for the naive loop of L gated forwards (plus the clean one), and every
unit sees one large batch instead of L small ones. ``max_streams`` bounds how
many ablations travel together (memory ~ max_streams x B x T x dim).
:func:`foga_naive` is the reference loop of gated full forwards.

``mode="train"`` (``probe.foga_mode``, the authors' attribution, which runs with the
model in ``train()``): when the model has active dropout, the clean pass and each of the
L ablated passes are full forwards in train mode with their own dropout masks, drawn
from a generator seeded per call (:func:`foga_train_mode`; L + 1 full forwards, no
shared work, since the masks differ). Without dropout train mode computes what eval
mode does, so the exact shared-work path runs.

FoG-A runs in fp32 whatever autocast encloses it (``inference.precision`` included): a score is
the relative difference of two velocities, and bf16's rounding (2^-8 relative) of the two
forwards would put a floor of about 0.5 % under every score, the size of a deep layer's; the
shared-work path also equals :func:`foga_naive` only in exact arithmetic.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn

from ..device import full_precision
from ..model.backbone import Backbone, Stream


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (no dropout) and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def valid_elements(mask: Tensor | None, like: Tensor) -> Tensor:
    """Float weights [B, T, 1] that are 1 on real frames and 0 on padding (all 1 without a mask)."""
    if mask is None:
        return torch.ones(like.shape[0], like.shape[1], 1, dtype=like.dtype, device=like.device)
    if mask.shape != like.shape[:2]:
        raise ValueError(f"mask must be [B, T] = {tuple(like.shape[:2])}, got {tuple(mask.shape)}")
    return mask.to(like.dtype)[..., None]


def relative_deviation(v: Tensor, v_abl: Tensor, mask: Tensor | None, eps: float) -> Tensor:
    """``||v_b - v_abl_b|| / (||v_b|| + eps)`` per sample; norms over valid elements.

    ``v`` is [B, T, C]; ``v_abl`` holds k ablations stacked along dim 0
    ([k*B, T, C], k >= 1). Returns [k, B].
    """
    B = v.shape[0]
    k = v_abl.shape[0] // B
    if k < 1 or v_abl.shape[0] != k * B or v_abl.shape[1:] != v.shape[1:]:
        raise ValueError(f"ablated velocity {tuple(v_abl.shape)} is not k stacked copies of {tuple(v.shape)}")
    w = valid_elements(mask, v)
    ref = (v * w).flatten(1).norm(dim=1)                                   # [B]
    diff = ((v_abl.view(k, *v.shape) - v[None]) * w[None]).flatten(2).norm(dim=2)  # [k, B]
    return diff / (ref[None] + eps)


def _clean_pass(model: Backbone, state: Stream, ctx, hidden: list | None) -> tuple[Stream, list[Stream]]:
    """The clean forward from ``state``; returns the last stream and every unit's transitioned
    stream (= its output when ablated). Appends h_1..h_L to ``hidden`` when given."""
    bases = []
    for l in range(1, model.n_layers + 1):
        base = model.transition(l, state, ctx)
        state = base.add(model.update(l, base, ctx))
        bases.append(Stream(base.h, base.skips))
        if hidden is not None:
            hidden.append(model.probe_hidden(l, state, ctx)[0])
    return state, bases


FOGA_MODES = ("train", "eval")


def has_dropout(model: nn.Module) -> bool:
    """Whether train mode changes ``model``'s forward: a dropout module with p > 0, or an
    attention layer with a dropout rate (SDPA's ``dropout_p``)."""
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            if m.p > 0:
                return True
        elif isinstance(getattr(m, "dropout", None), float) and m.dropout > 0:
            return True
    return False


@torch.no_grad()
def foga_train_mode(model: Backbone, x_t: Tensor, t: Tensor, tokens: Tensor, prompt: Tensor,
                    mask: Tensor | None, eps: float, seed: int) -> Tensor:
    """FoG-A per sample and layer -> [B, L] with the model in train mode: the clean pass and
    each ablated pass (g_l = 0) are full forwards with their own dropout masks, drawn from
    torch's generator seeded by ``seed`` (the global RNG state is restored afterwards)."""
    was_training = model.training
    devices = [x_t.device] if x_t.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        model.train()
        try:
            scores = gated_ablations(model, x_t, t, tokens, prompt, mask, eps)
        finally:
            model.train(was_training)
    return scores.T.contiguous()


def gated_ablations(model: Backbone, x_t: Tensor, t: Tensor, tokens: Tensor, prompt: Tensor,
                    mask: Tensor | None, eps: float) -> Tensor:
    """[L, B]: the relative deviation of one full forward with g_l = 0 (every other gate 1)
    from one clean forward, per layer l and sample, in the model's current mode."""
    L = model.n_layers
    v = model(x_t, t, tokens, prompt, mask)
    scores = torch.empty(L, v.shape[0], dtype=v.dtype, device=v.device)
    for l in range(L):
        gates = torch.ones(L, dtype=v.dtype, device=v.device)
        gates[l] = 0
        scores[l] = relative_deviation(v, model(x_t, t, tokens, prompt, mask, gates=gates), mask, eps)[0]
    return scores


@torch.no_grad()
def foga_per_sample(model: Backbone, x_t: Tensor, t: Tensor, tokens: Tensor, prompt: Tensor,
                    mask: Tensor | None = None, eps: float = 1e-6,
                    max_streams: int | None = None, return_hidden: bool = False,
                    mode: str = "eval", seed: int = 0):
    """FoG-A per sample and layer -> [B, L] (column l-1 is unit l), computed with shared work.

    ``max_streams``: at most this many ablated streams are stacked through a
    unit at once (None: all L). The result does not depend on it.
    ``return_hidden``: also return the clean hidden states [h_0, ..., h_L]
    (as ``model(..., return_hidden=True)``), e.g. for LASP on the same forward;
    they are always the eval-mode states.
    ``mode``: ``eval`` or ``train`` (:func:`foga_train_mode` with ``seed`` when the model
    has dropout; the shared-work path otherwise, which then computes the same).
    """
    if mode not in FOGA_MODES:
        raise ValueError(f"probe.foga_mode: expected one of {list(FOGA_MODES)}, got {mode!r}")
    with full_precision(x_t.device):                      # fp32 under any autocast (module docstring)
        return _foga_per_sample(model, x_t, t, tokens, prompt, mask, eps, max_streams, return_hidden, mode, seed)


def _foga_per_sample(model, x_t, t, tokens, prompt, mask, eps, max_streams, return_hidden, mode, seed):
    if mode == "train" and has_dropout(model):
        scores = foga_train_mode(model, x_t, t, tokens, prompt, mask, eps, seed)
        if not return_hidden:
            return scores
        with eval_mode(model):
            _, hidden = model(x_t, t, tokens, prompt, mask, return_hidden=True)
        return scores, hidden
    L = model.n_layers
    if max_streams is not None and max_streams < 1:
        raise ValueError(f"max_streams must be >= 1 or None, got {max_streams}")
    G = L if max_streams is None else min(max_streams, L)
    with eval_mode(model):
        state, ctx = model.prepare(x_t, t, tokens, prompt, mask)
        hidden = [model.probe_hidden(0, state, ctx)[0]] if return_hidden else None
        state, bases = _clean_pass(model, state, ctx, hidden)
        v = model.output(state, ctx)
        B = v.shape[0]
        ctxs = {1: ctx}

        def ctx_k(k: int):
            if k not in ctxs:
                ctxs[k] = ctx.repeat(k)
            return ctxs[k]

        scores = torch.empty(L, B, dtype=v.dtype, device=v.device)
        for a in range(1, L + 1, G):                      # ablations a..b travel together
            b = min(a + G - 1, L)
            streams: Stream | None = None
            for j in range(a, L + 1):                     # unit j (1-based)
                if streams is not None:                   # ablations a..min(j-1, b) pass unit j
                    streams = model.step(j, streams, ctx_k(streams.h.shape[0] // B))
                if j <= b:                                # ablation j: unit j's output is its transitioned input
                    streams = bases[j - 1] if streams is None else Stream.cat([streams, bases[j - 1]])
            k = b - a + 1
            v_abl = model.output(streams, ctx_k(k))
            scores[a - 1:b] = relative_deviation(v, v_abl, mask, eps).view(k, B)
        scores = scores.T.contiguous()
        return (scores, hidden) if return_hidden else scores


def foga(model: Backbone, x_t: Tensor, t: Tensor, tokens: Tensor, prompt: Tensor,
         mask: Tensor | None = None, eps: float = 1e-6, max_streams: int | None = None) -> Tensor:
    """FoG-A score per layer -> Tensor[L] (index l-1 is block l): mean over samples of
    ``||v - v^(l)|| / (||v|| + eps)``. Exact; see the module docstring for how work is shared."""
    return foga_per_sample(model, x_t, t, tokens, prompt, mask, eps, max_streams).mean(0)


@torch.no_grad()
def foga_naive(model: Backbone, x_t: Tensor, t: Tensor, tokens: Tensor, prompt: Tensor,
               mask: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """Reference FoG-A -> Tensor[L]: one full gated forward per layer (g_l = 0, others 1), fp32."""
    with eval_mode(model), full_precision(x_t.device):
        return gated_ablations(model, x_t, t, tokens, prompt, mask, eps).mean(1)
