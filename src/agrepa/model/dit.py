"""DiT flow-matching model for mel spectrograms with per-layer gates (paper, App. A.4).

Input interface (index 0 of the hidden states)::

    h_0 = Linear([x_t | token embedding interpolated to mel rate | reference mel])

Block l (1-based) adds its whole residual update, scaled by a gate g_l::

    a   = gate_msa * Attn(modulate(LN(h), shift_msa, scale_msa))
    m   = gate_mlp * MLP(modulate(LN(h + a), shift_mlp, scale_mlp))
    h_l = h_{l-1} + g_l * (a + m)

with adaLN-Zero modulation from the sinusoidal time embedding (all six
modulation vectors come from one zero-initialised linear layer, so each block
starts as the identity). ``g_l = 1`` is the ordinary model; ``g_l = 0`` removes
block l exactly (``h_l == h_{l-1}`` bitwise), which is what FoG-A measures.

Caching: ``Attn(...)`` (before gate_msa) and ``MLP(...)`` (before gate_mlp) are
requested through the forward's :class:`Context`, which hands them to a step cache when
the sampler passes one (:mod:`agrepa.model.cache`); without one the forward is unchanged.

Positions: rotary position embedding (RoPE) on queries and keys inside every
attention layer. It is relative, needs no maximum length, and leaves the
residual stream free of an additive position signal, so the pooled hidden
states the probes read carry no position bias.

Token ids: 0 is padding (``PAD_ID``); sequences are left-aligned (real tokens
first), ``[B, N]`` (Config A) or ``[B, N, 2]`` (Config B: primary and BEATs token
per position, fused as the authors do). :class:`agrepa.model.tokens.TokenEmbedding`
embeds them and linearly interpolates each sample's real tokens to its real mel
length, so token rate and mel rate are independent.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import Backbone, BatchContext, Stream, attention_mask, gate_columns, keep
from .cache import StepCache
from .tokens import CONFIG_A_LAYOUT, TokenEmbedding

CONFIG_KEYS = ("audio.n_mels", "model.n_layers", "model.dim", "model.n_heads", "model.ff_mult", "model.dropout",
               "model.token_dim", "model.token_l2_normalize")  # config sections this module reads (the DiT's sizes)


TIME_BASES = ("cos_sin", "sin_cos")


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, scale: float = 1000.0,
                       order: str = "cos_sin", endpoint: bool = False) -> Tensor:
    """Sinusoidal embedding of flow time ``t`` in [0, 1] (scaled by ``scale``) -> [B, dim].

    ``order``: ``"cos_sin"`` = [cos | sin] (the DiT's basis, DiT / ADM style) or ``"sin_cos"`` =
    [sin | cos] (F5-TTS's ``SinusPositionEmbedding``). Frequencies ``max_period^(-i / n)``, i = 0..half-1,
    with n = half, or n = half - 1 with ``endpoint`` (F5-TTS: the last frequency is exactly
    1 / max_period). The defaults are the DiT's embedding, unchanged."""
    if order not in TIME_BASES:
        raise ValueError(f"timestep_embedding: order must be one of {TIME_BASES}, got {order!r}")
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=t.device)
    if endpoint:
        if half < 2:
            raise ValueError(f"timestep_embedding: dim {dim} too small for endpoint frequencies")
        freqs = torch.exp(i * -(math.log(max_period) / (half - 1)))     # F5-TTS's rounding, to the bit
    else:
        freqs = torch.exp(-math.log(max_period) * i / half)
    args = (t.float() * scale)[:, None] * freqs[None]
    pair = (torch.cos(args), torch.sin(args)) if order == "cos_sin" else (torch.sin(args), torch.cos(args))
    emb = torch.cat(pair, dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class Rotary(nn.Module):
    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
        inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, T: int, device) -> tuple[Tensor, Tensor]:
        pos = torch.arange(T, device=device, dtype=torch.float32)
        f = torch.outer(pos, self.inv_freq.to(device))
        f = torch.cat([f, f], dim=-1)
        return f.cos(), f.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


@dataclass
class Context(BatchContext):
    """What every block needs besides the residual stream (computed once per forward)."""

    BATCHED: ClassVar[tuple[str, ...]] = ("c", "attn_mask", "mask")

    c: Tensor                 # [B, dim] time embedding
    cos: Tensor               # [T, head_dim] rotary tables
    sin: Tensor
    attn_mask: Tensor | None  # [B, 1, 1, T] bool, True = attend
    mask: Tensor | None       # [B, T] bool, True = real frame
    cache: StepCache | None = None  # reuse of block features across solver steps (model.cache)

    def repeat(self, k: int) -> "Context":
        """The same context for a batch stacked ``k`` times along dim 0 (no step cache: it is per row)."""
        return dataclasses.replace(super().repeat(k), cache=None)


ATTN_DROPOUT = ("probs", "output")


class Attention(nn.Module):
    """Multi-head self-attention with rotary positions. ``dropout_on``: ``"probs"`` drops attention
    probabilities (the DiT's default), ``"output"`` the projected output instead (F5-TTS's
    ``Attention.to_out[1]``)."""

    def __init__(self, dim: int, n_heads: int, dropout: float, dropout_on: str = "probs"):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        if dropout_on not in ATTN_DROPOUT:
            raise ValueError(f"attention dropout_on must be one of {ATTN_DROPOUT}, got {dropout_on!r}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout, self.dropout_on = dropout, dropout_on

    def forward(self, x: Tensor, ctx: Context) -> Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, ctx.cos, ctx.sin), apply_rotary(k, ctx.cos, ctx.sin)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.attn_mask,
                                           dropout_p=p if self.dropout_on == "probs" else 0.0)
        y = self.proj(y.transpose(1, 2).reshape(B, T, D))
        return F.dropout(y, p, training=True) if self.dropout_on == "output" and p > 0 else y


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, ff_mult: int, dropout: float, layer: int,
                 attn_dropout_on: str = "probs"):
        super().__init__()
        self.layer = layer  # 1-based index: names this block's features in a step cache
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, n_heads, dropout, attn_dropout_on)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(approximate="tanh"),
                                 nn.Dropout(dropout), nn.Linear(ff_mult * dim, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def update(self, h: Tensor, ctx: Context) -> Tensor:
        """The block's whole residual update u_l (so that h_l = h_{l-1} + g_l * u_l).

        The attention output (before its gate) and the MLP output pass through
        ``ctx.cached``, so a step cache (:mod:`agrepa.model.cache`) can reuse them."""
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(ctx.c).chunk(6, dim=-1)
        y = ctx.cached("attn", self.layer, lambda: self.attn(modulate(self.norm1(h), sh1, sc1), ctx))
        a = g1[:, None] * y
        m = g2[:, None] * ctx.cached("mlp", self.layer, lambda: self.mlp(modulate(self.norm2(h + a), sh2, sc2)))
        return a + m

    def forward(self, h: Tensor, ctx: Context, gate: Tensor | None = None) -> Tensor:
        u = self.update(h, ctx)
        if gate is None:
            return h + u
        return h + gate.to(u.dtype).view(-1, 1, 1) * u


class FinalLayer(nn.Module):
    def __init__(self, dim: int, n_mels: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, n_mels)
        for layer in (self.ada[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(h), shift, scale))


class DiT(Backbone):
    """Token- and prompt-conditioned DiT predicting the flow-matching velocity of a mel.

    Units are the L blocks (no transitions): ``h_l = h_{l-1} + g_l * u_l``.
    """

    arch = "dit"
    supports_cache = True
    dense_attention = True

    def __init__(self, n_layers: int = 12, dim: int = 192, n_heads: int = 4, n_mels: int = 100,
                 vocab_size: int = 1024, ff_mult: int = 4, dropout: float = 0.0,
                 token_dim: int | None = None, time_freq_dim: int = 256, paired_tokens: bool = False,
                 audio_offset: int | None = None, token_l2_normalize: bool = False):
        super().__init__()
        self.n_layers, self.dim, self.n_mels, self.vocab_size = n_layers, dim, n_mels, vocab_size
        token_dim = token_dim or dim
        self.token_dim = token_dim
        self.token_emb = TokenEmbedding(vocab_size, token_dim, paired_tokens, audio_offset, token_l2_normalize)
        self.time_freq_dim = time_freq_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.input_proj = nn.Linear(2 * n_mels + token_dim, dim)
        self.rotary = Rotary(dim // n_heads)
        self.blocks = nn.ModuleList([Block(dim, n_heads, ff_mult, dropout, layer=l) for l in range(1, n_layers + 1)])
        self.final = FinalLayer(dim, n_mels)

    gate_columns = staticmethod(gate_columns)
    token_dim_key = "model.token_dim"

    @property
    def hidden_dims(self) -> list[int]:
        return [self.dim] * (self.n_layers + 1)

    def prepare(self, x_t: Tensor, t: Tensor, tokens: Tensor, prompt: Tensor, mask: Tensor | None = None,
                drop_tokens: Tensor | None = None, drop_prompt: Tensor | None = None,
                cache: StepCache | None = None, padded: bool | None = None) -> tuple[Stream, Context]:
        """Input interface h_0 [B, T, dim] and the shared per-forward context (with ``cache``, if any;
        no attention mask with ``padded=False``: :func:`agrepa.model.backbone.attention_mask`)."""
        B, T, _ = x_t.shape
        tok = keep(self.embed_tokens(tokens, mask, T, batch=B), drop_tokens)
        h0 = self.input_proj(torch.cat([x_t, tok, keep(prompt, drop_prompt)], dim=-1))
        c = self.time_mlp(timestep_embedding(t.reshape(B), self.time_freq_dim).to(h0.dtype))
        cos, sin = self.rotary(T, x_t.device)
        return Stream(h0), Context(c, cos, sin, attention_mask(mask, padded), None if mask is None else mask.bool(),
                                   cache)

    def update(self, l: int, state: Stream, ctx: Context) -> Tensor:
        return self.blocks[l - 1].update(state.h, ctx)

    def output(self, state: Stream, ctx: Context) -> Tensor:
        return self.final(state.h, ctx.c)

    def probe_hidden(self, l: int, state: Stream, ctx: Context) -> tuple[Tensor, Tensor | None]:
        return state.h, ctx.mask

    def unit_modules(self) -> list[nn.Module]:
        return list(self.blocks)


def build_model(cfg: dict, vocab_size: int, token_layout: dict | None = None) -> DiT:
    """A DiT from the config's ``model`` section (the top-level sizes are the DiT's); ``token_layout``
    = ``{"paired": bool, "audio_offset": int}`` of the token store (None: Config A)."""
    layout = token_layout or CONFIG_A_LAYOUT
    return DiT(n_layers=cfg["model"]["n_layers"], dim=cfg["model"]["dim"], n_heads=cfg["model"]["n_heads"],
               n_mels=cfg["audio"]["n_mels"], vocab_size=vocab_size, ff_mult=cfg["model"]["ff_mult"],
               dropout=cfg["model"]["dropout"], token_dim=cfg["model"]["token_dim"],
               paired_tokens=bool(layout["paired"]), audio_offset=layout["audio_offset"],
               token_l2_normalize=bool(cfg["model"]["token_l2_normalize"]))
