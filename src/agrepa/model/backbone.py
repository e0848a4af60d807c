"""The interface every flow-matching backbone shares (DiT, Voicebox-, CosyVoice- and F5-style).

A backbone maps ``(x_t, t, tokens, prompt, mask)`` to a velocity [B, T, n_mels] through
``L`` gated units (1-based). Its forward pass is always::

    state_0, ctx = prepare(x_t, t, tokens, prompt, mask, drop_tokens, drop_prompt)
    for l in 1..L:
        base_l  = transition(l, state_{l-1}, ctx)    # structural steps, always on
        u_l     = update(l, base_l, ctx)             # the unit's residual update
        state_l = base_l  with  h = base_l.h + g_l * u_l
    v = output(state_L, ctx)

so ``g_l = 1`` (or no gates) is the ordinary model bitwise, and ``g_l = 0`` removes
exactly u_l: ``state_l == transition_l(state_{l-1})`` bitwise. Transitions are the
parts of an architecture that are not a unit's residual update: pushing, popping and
merging U-Net long skips, down/up-sampling, the 1x1 shortcut convolution of a ResNet
block, the merge of a text encoder into the audio stream. ``ctx`` holds what every
unit reads but no unit changes (time embedding, masks, rotary tables); it is the
same for every ablation of one batch, and ``ctx.repeat(k)`` serves k ablated
streams stacked along the batch dimension (efficient FoG-A).

The residual stream is a :class:`Stream`: the tensor ``h`` the gates act on, the
stack of U-Net skips pushed so far, and ``inp``, the input a unit's update reads when
that is not ``h`` (set by a transition, e.g. the un-projected input of a ResNet block).

Hidden states for probes and heads: ``probe_hidden(l, state_l, ctx)`` returns the
hidden state h_l [B, T_l, D_l] and its frame mask [B, T_l] (True = real frame), with
time or register tokens removed. ``hidden_dims[l]`` is D_l (widths may differ by
layer); T_l may be a U-Net's coarser resolution, whose mask is the full-rate mask
subsampled as the U-Net subsamples it (:func:`frame_mask`).

Every backbone's token front end is a :class:`agrepa.model.tokens.TokenEmbedding`
(``token_emb``: Config A ids or Config B pairs, ``token_dim`` wide). BiT-C aligns its
output: ``embed_tokens(tokens, mask, T)`` is the token embedding interpolated to the mel
frames, before CFG dropout; LASP scores it as layer 0.

A step cache (:mod:`agrepa.model.cache`, layer-selective caching) is supported where
``supports_cache`` is set (the DiT); the context's :meth:`BatchContext.cached` hands a
unit's features to it.

:class:`Recipe` is what differs per architecture besides the network (CFG dropout
scheme and rates, loss mask, flow-time schedules, CFG formula); :func:`recipe` reads
it from the config (docs/fidelity.md compares each with its reference).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn

from ..config import ARCHS
from .cache import StepCache
from .tokens import TokenEmbedding

# config sections this module reads ({arch}: the backbone of the job, model.arch unless a Table 4 rule says)
CONFIG_KEYS = ("model.arch", "model.{arch}", "train.cfg_drop_tokens", "train.cfg_drop_prompt", "train.loss_on_prompt",
               "sample.cfg_scale", "sample.sway", "sample.cfg_uncond_prompt", "train.cfg_mode")


@dataclass(frozen=True)
class Stream:
    """The residual stream between units: ``h`` (gated), U-Net skips, a unit's input."""

    h: Tensor
    skips: tuple[Tensor, ...] = ()
    inp: Tensor | None = None

    def add(self, u: Tensor, gate: Tensor | None = None) -> "Stream":
        """``h + u`` (no gate) or ``h + g * u`` with one gate per sample; ``inp`` is consumed."""
        if gate is None:
            return Stream(self.h + u, self.skips)
        g = gate.to(u.dtype).view(-1, *([1] * (u.dim() - 1)))
        return Stream(self.h + g * u, self.skips)

    def push(self, x: Tensor) -> "Stream":
        return dataclasses.replace(self, skips=self.skips + (x,))

    def pop(self) -> tuple[Tensor, "Stream"]:
        if not self.skips:
            raise RuntimeError("U-Net skip stack is empty")
        return self.skips[-1], dataclasses.replace(self, skips=self.skips[:-1])

    @staticmethod
    def cat(streams: Sequence["Stream"]) -> "Stream":
        """Streams at the same unit stacked along the batch dimension (``inp`` dropped)."""
        depth = {len(s.skips) for s in streams}
        if len(depth) != 1:
            raise ValueError(f"cannot stack streams with different skip depths {sorted(depth)}")
        skips = tuple(torch.cat([s.skips[i] for s in streams]) for i in range(depth.pop()))
        return Stream(torch.cat([s.h for s in streams]), skips)


@dataclass
class BatchContext:
    """Base of the per-forward contexts: ``BATCHED`` names the per-sample fields (dim 0 = B)."""

    BATCHED: ClassVar[tuple[str, ...]] = ()

    def repeat(self, k: int) -> "BatchContext":
        """The same context for a batch stacked ``k`` times along dim 0."""
        def rep(x):
            if x is None:
                return None
            if isinstance(x, (list, tuple)):
                return type(x)(rep(y) for y in x)
            return x.repeat(k, *([1] * (x.dim() - 1)))
        return dataclasses.replace(self, **{name: rep(getattr(self, name)) for name in self.BATCHED})

    def cached(self, kind: str, layer: int, compute) -> Tensor:
        """``compute()``, or what the context's step cache (field ``cache``, if any) returns for
        feature ``kind`` of ``layer``."""
        cache = getattr(self, "cache", None)
        return compute() if cache is None else cache(kind, layer, compute)


def frame_mask(mask: Tensor | None, T: int) -> Tensor | None:
    """The frame mask [B, T0] at a hidden state's resolution T: itself when T == T0, else
    every s-th frame with T == ceil(T0 / s) (how a stride-s U-Net level subsamples it)."""
    if mask is None or mask.shape[1] == T:
        return mask
    T0 = mask.shape[1]
    s = math.ceil(T0 / max(T, 1))
    if T < 1 or math.ceil(T0 / s) != T:
        raise ValueError(f"a hidden state of {T} frames is no stride subsampling of a {T0}-frame mask")
    return mask[:, ::s]


def gate_columns(gates: Tensor | None, B: int, L: int) -> list[Tensor | None]:
    """Per-unit gate vectors [B] from gates [L] or [B, L] (None -> no gating)."""
    if gates is None:
        return [None] * L
    if gates.dim() == 1:
        if gates.shape[0] != L:
            raise ValueError(f"gates must have {L} entries, got {gates.shape[0]}")
        gates = gates[None].expand(B, L)
    elif gates.shape != (B, L):
        raise ValueError(f"gates must be [L] or [B, L] = [{B}, {L}], got {tuple(gates.shape)}")
    return [gates[:, i] for i in range(L)]


def keep(x: Tensor, drop: Tensor | None) -> Tensor:
    """``x`` [B, ...] with the samples where ``drop`` [B] is True set to zero (CFG dropout)."""
    if drop is None:
        return x
    return x * (~drop.bool()).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


class Backbone(nn.Module):
    """Base class: the generic gated forward over the architecture's units.

    Subclasses set ``n_layers`` (L, gated units), ``n_mels``, ``vocab_size``, ``token_dim``,
    ``token_emb`` (a :class:`TokenEmbedding`), ``hidden_dims`` (D_0..D_L), ``unit_names`` (L
    names) and ``token_dim_key`` (the config key of ``token_dim`` when it is free to match the
    layers, else None), and implement :meth:`prepare`, :meth:`update`, :meth:`output`,
    :meth:`probe_hidden`, :meth:`unit_modules` and, where the architecture has structural
    steps, :meth:`transition`.
    """

    arch: ClassVar[str] = ""
    token_dim_key: ClassVar[str | None] = None
    supports_cache: ClassVar[bool] = False
    n_layers: int
    n_mels: int
    vocab_size: int
    token_dim: int
    token_emb: TokenEmbedding

    def embed_tokens(self, tokens: Tensor, mask: Tensor | None, T: int, batch: int | None = None) -> Tensor:
        """The token embedding interpolated to the mel frames [B, T, token_dim], zero beyond each
        sample's real frames (before CFG dropout): the input interface BiT-C aligns (Sec. 4.1).
        ``batch``: the batch size ``tokens`` must have (shape and id range are checked)."""
        B = tokens.shape[0] if batch is None else batch
        n_frames = mask.sum(1) if mask is not None else torch.full((B,), T, device=tokens.device)
        return self.token_emb(tokens, n_frames, T)

    @property
    def hidden_dims(self) -> list[int]:
        raise NotImplementedError

    @property
    def unit_names(self) -> list[str]:
        return [f"block{l}" for l in range(1, self.n_layers + 1)]

    dense_attention = False   # prepare takes ``padded`` (forward)

    def prepare(self, x_t: Tensor, t: Tensor, tokens: Tensor, prompt: Tensor, mask: Tensor | None = None,
                drop_tokens: Tensor | None = None, drop_prompt: Tensor | None = None) -> tuple[Stream, Any]:
        raise NotImplementedError

    def transition(self, l: int, state: Stream, ctx: Any) -> Stream:
        return state

    def update(self, l: int, state: Stream, ctx: Any) -> Tensor:
        raise NotImplementedError

    def output(self, state: Stream, ctx: Any) -> Tensor:
        raise NotImplementedError

    def probe_hidden(self, l: int, state: Stream, ctx: Any) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def unit_modules(self) -> list[nn.Module]:
        """The modules holding each unit's own parameters (index l-1 is unit l)."""
        raise NotImplementedError

    def step(self, l: int, state: Stream, ctx: Any, gate: Tensor | None = None) -> Stream:
        """Unit l: ``transition_l(state) + g_l * u_l``."""
        base = self.transition(l, state, ctx)
        return base.add(self.update(l, base, ctx), gate)

    def forward(self, x_t: Tensor, t: Tensor, tokens: Tensor, prompt: Tensor, mask: Tensor | None = None,
                gates: Tensor | None = None, return_hidden: bool = False,
                drop_tokens: Tensor | None = None, drop_prompt: Tensor | None = None,
                cache: StepCache | None = None, padded: bool | None = None):
        """Velocity [B, T, n_mels]; with ``return_hidden`` also [h_0, ..., h_L] (probe_hidden).
        ``cache``: a step cache of the sampler (backbones with ``supports_cache`` only).
        ``padded=False``: the caller knows on the host that ``mask`` is all True, so a backbone with
        ``dense_attention`` calls attention without a mask (SDPA's flash kernel; the same values
        within fp32 rounding); None or True: the mask as given."""
        extra = {"padded": padded} if padded is not None and self.dense_attention else {}
        if cache is not None:
            if not self.supports_cache:
                raise ValueError(f"{self.arch}: step caching (layer-selective caching) is implemented for "
                                 f"the DiT only")
            extra["cache"] = cache
        state, ctx = self.prepare(x_t, t, tokens, prompt, mask, drop_tokens, drop_prompt, **extra)
        hidden = [self.probe_hidden(0, state, ctx)[0]] if return_hidden else None
        for l, g in enumerate(gate_columns(gates, x_t.shape[0], self.n_layers), start=1):
            state = self.step(l, state, ctx, g)
            if return_hidden:
                hidden.append(self.probe_hidden(l, state, ctx)[0])
        v = self.output(state, ctx)
        return (v, hidden) if return_hidden else v


def attention_mask(mask: Tensor | None, padded: bool | None = None) -> Tensor | None:
    """The [B, 1, 1, T] boolean attention mask of a frame ``mask`` [B, T], or None where no frame is
    padded: ``mask`` None, or ``padded`` False (decided on the host, so no device sync)."""
    return None if mask is None or padded is False else mask.bool()[:, None, None, :]


# --------------------------------------------------------------------------- recipes

@dataclass(frozen=True)
class Recipe:
    """What differs per architecture besides the network (docs/fidelity.md).

    CFG dropout per sample: ``both ~ B(cfg_drop_both)`` blanks tokens and prompt together;
    otherwise tokens are blanked with ``cfg_drop_tokens`` and the prompt with
    ``cfg_drop_prompt``, independently. ``loss_on_prompt``: the FM loss also covers the
    prompt frames. ``t_train``: flow times in training, ``uniform`` or ``cosine``
    (``1 - cos(pi u / 2)``). Sampling: ``t_schedule`` ``sway`` (coefficient ``sway``; 0 is
    uniform) or ``cosine``; CFG ``uncond``: ``v_u + s (v_c - v_u)``, ``cond``:
    ``v_c + s (v_c - v_u)``, with ``s = cfg_scale`` (None: conditional only); the
    unconditional pass drops the tokens and, unless ``cfg_uncond_prompt`` is ``keep``, the prompt.
    """

    arch: str
    cfg_drop_tokens: float
    cfg_drop_prompt: float
    cfg_drop_both: float
    loss_on_prompt: bool
    t_train: str
    cfg_scale: float | None
    cfg_formula: str
    t_schedule: str
    sway: float
    cfg_uncond_prompt: str

    def __post_init__(self):
        where = f"model.{self.arch}"
        for name in ("cfg_drop_tokens", "cfg_drop_prompt", "cfg_drop_both"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{where}: {name} must lie in [0, 1], got {getattr(self, name)}")
        for name, allowed in (("t_train", ("uniform", "cosine")), ("cfg_formula", ("uncond", "cond")),
                              ("t_schedule", ("sway", "cosine")), ("cfg_uncond_prompt", ("keep", "drop"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{where}.{name}: expected one of {allowed}, got {getattr(self, name)!r}")


def architecture(cfg: dict) -> str:
    arch = cfg["model"]["arch"]
    if arch not in ARCHS:
        raise ValueError(f"config key 'model.arch': expected one of {ARCHS}, got {arch!r}")
    return arch


def dit_uncond_prompt(cfg: dict) -> str:
    """``sample.cfg_uncond_prompt`` resolved: ``auto`` is ``drop`` for a run trained with
    ``train.cfg_mode: batch`` (its CFG steps dropped tokens and prompt together, so the
    unconditional pass is the condition training saw), ``keep`` otherwise. For a sampler of a
    trained run ``cfg["train"]["cfg_mode"]`` must be the run's
    (:func:`agrepa.generation.sampling.run_config`)."""
    value = cfg["sample"]["cfg_uncond_prompt"]
    if value == "auto":
        return "drop" if cfg["train"]["cfg_mode"] == "batch" else "keep"
    return value


def recipe(cfg: dict, arch: str | None = None) -> Recipe:
    """The recipe of ``arch`` (default ``model.arch``) in this config. The DiT's rates, loss mask
    and sampling settings are the paper's protocol keys (train.cfg_drop_*, train.loss_on_prompt,
    sample.cfg_scale/sway/cfg_uncond_prompt, ``auto`` resolved by :func:`dit_uncond_prompt`) and
    ``model.dit`` holds the rest; the other architectures keep all of
    theirs in ``model.<arch>``."""
    arch = architecture(cfg) if arch is None else architecture({"model": {"arch": arch}})
    r = cfg["model"][arch]
    if arch == "dit":
        r = {**r, "cfg_drop_tokens": cfg["train"]["cfg_drop_tokens"], "cfg_drop_prompt": cfg["train"]["cfg_drop_prompt"],
             "loss_on_prompt": cfg["train"]["loss_on_prompt"], "cfg_scale": cfg["sample"]["cfg_scale"],
             "sway": cfg["sample"]["sway"], "cfg_uncond_prompt": dit_uncond_prompt(cfg)}
    scale = r["cfg_scale"]
    return Recipe(arch=arch, cfg_drop_tokens=float(r["cfg_drop_tokens"]), cfg_drop_prompt=float(r["cfg_drop_prompt"]),
                  cfg_drop_both=float(r["cfg_drop_both"]), loss_on_prompt=bool(r["loss_on_prompt"]),
                  t_train=str(r["t_train"]), cfg_scale=None if scale is None else float(scale),
                  cfg_formula=str(r["cfg_formula"]), t_schedule=str(r["t_schedule"]), sway=float(r["sway"]),
                  cfg_uncond_prompt=str(r["cfg_uncond_prompt"]))
