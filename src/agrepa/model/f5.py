"""F5-TTS-style backbone: ConvNeXt-V2 text blocks, then an adaLN-Zero DiT.

As in F5-TTS (Chen et al., 2025; read in SWivid/F5-TTS ``model/backbones/dit.py``,
``model/modules.py``, ``configs/F5TTS_v1_Base.yaml``)::

    s_0   = token embedding interpolated to mel rate + sinusoidal positions   [B, T, text_dim]
    s_c   = s_{c-1} + g_c * ConvNeXtV2(s_{c-1})            text units c = 1..C (padding kept at 0)
    x     = Linear([x_t | prompt mel | s_C]);  m = x + ConvPos(x)     the input interface [B, T, dim]
    h_l   = h_{l-1} + g_l * u_l                            DiT units l = C+1..C+D (adaLN-Zero blocks)
    v     = FinalLayer(h_L, time)                          (adaLN + zero-initialised projection)

The text blocks are gated units numbered before the DiT blocks (units 1..C), so FoG-A
can tell whether the causal driver moved into the text encoder. The merge into the audio
stream is the transition of unit C+1. Hidden states: h_0..h_{C-1} are the text stream
(text_dim wide); h_C is the input interface m (what unit C hands to the trunk);
h_{C+1}.. are the DiT stream. With ``long_skip`` (optional in F5-TTS, off in v1 Base) the
output first merges ``W [h_L | m]``. BiT-C aligns the token embedding (``token_dim`` =
text_dim, before the positions), so LASP scores the text stream when text_dim != dim.

The DiT blocks are :class:`agrepa.model.dit.Block` (the same adaLN-Zero block, rotary
attention, GELU feed-forward with ``ff_mult``), here with dropout on the attention output as
F5-TTS (``Attention.to_out[1]``; the DiT drops attention probabilities). The time embedding is
F5-TTS's basis (:func:`f5_time_embedding`, [sin | cos] of 1000 t; the DiT keeps [cos | sin]), so
an upstream ``DiT`` state dict (f5-tts 1.1.x, e.g. an official checkpoint's
``ema_model.transformer.*``) loads through :func:`load_upstream_state_dict`, all but its
character embedding table (docs/fidelity.md, the F5 rows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .backbone import Backbone, BatchContext, Stream, attention_mask, keep
from .dit import Block, FinalLayer, Rotary, timestep_embedding
from .layers import ConvPositionEmbedding, masked, sinusoidal_positions
from .tokens import CONFIG_A_LAYOUT, TokenEmbedding

CONFIG_KEYS = ("audio.n_mels", "model.{arch}")  # config sections this module reads


@dataclass
class F5Context(BatchContext):
    BATCHED: ClassVar[tuple[str, ...]] = ("c", "attn_mask", "mask", "x_t", "prompt")

    c: Tensor                  # [B, dim] time embedding
    cos: Tensor                # rotary tables [T, head_dim]
    sin: Tensor
    attn_mask: Tensor | None   # [B, 1, 1, T]
    mask: Tensor | None        # [B, T]
    x_t: Tensor                # [B, T, n_mels] (merged at the interface)
    prompt: Tensor             # [B, T, n_mels] after CFG dropout


def f5_time_embedding(t: Tensor, dim: int) -> Tensor:
    """F5-TTS's sinusoidal time basis (``f5_tts/model/modules.py`` ``SinusPositionEmbedding``):
    [sin | cos] of 1000 t x 10000^(-i / (half - 1)). The DiT keeps its own [cos | sin] basis."""
    return timestep_embedding(t, dim, scale=1000.0, order="sin_cos", endpoint=True)


class GRN(nn.Module):
    """Global response normalisation (ConvNeXt-V2), over the real frames."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: Tensor) -> Tensor:
        gx = torch.norm(x, p=2, dim=1, keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    """Depthwise conv (k 7) -> LayerNorm -> Linear -> GELU -> GRN -> Linear; :meth:`update`
    is the residual branch, zero on padded frames."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.grn = GRN(hidden)
        self.pwconv2 = nn.Linear(hidden, dim)

    def update(self, s: Tensor, mask: Tensor | None) -> Tensor:
        x = self.dwconv(s.transpose(1, 2)).transpose(1, 2)
        x = masked(self.act(self.pwconv1(self.norm(x))), mask)      # GRN's norm over real frames only
        return masked(self.pwconv2(self.grn(x)), mask)


class F5(Backbone):
    arch = "f5"
    dense_attention = True

    def __init__(self, n_layers: int = 22, conv_layers: int = 4, dim: int = 1024, n_heads: int = 16,
                 n_mels: int = 100, vocab_size: int = 1024, ff_mult: int = 2, text_dim: int = 512,
                 conv_mult: int = 2, dropout: float = 0.0, long_skip: bool = False, time_freq_dim: int = 256,
                 paired_tokens: bool = False, audio_offset: int | None = None):
        super().__init__()
        self.n_text, self.n_blocks = conv_layers, n_layers
        self.n_layers, self.dim, self.text_dim = conv_layers + n_layers, dim, text_dim
        self.n_mels, self.vocab_size, self.token_dim = n_mels, vocab_size, text_dim
        self.token_emb = TokenEmbedding(vocab_size, text_dim, paired_tokens, audio_offset)
        self.text_blocks = nn.ModuleList([ConvNeXtV2Block(text_dim, text_dim * conv_mult) for _ in range(conv_layers)])
        self.input_proj = nn.Linear(2 * n_mels + text_dim, dim)
        self.conv_pos = ConvPositionEmbedding(dim)
        self.time_freq_dim = time_freq_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.rotary = Rotary(dim // n_heads)
        self.blocks = nn.ModuleList([Block(dim, n_heads, ff_mult, dropout, layer=conv_layers + l,
                                           attn_dropout_on="output")       # F5-TTS drops the attention output
                                     for l in range(1, n_layers + 1)])
        self.long_skip = nn.Linear(2 * dim, dim, bias=False) if long_skip else None
        self.final = FinalLayer(dim, n_mels)

    @property
    def hidden_dims(self) -> list[int]:
        return [self.text_dim] * self.n_text + [self.dim] * (self.n_blocks + 1)

    @property
    def unit_names(self) -> list[str]:
        return [f"text{c}" for c in range(1, self.n_text + 1)] + [f"block{l}" for l in range(1, self.n_blocks + 1)]

    def merge(self, s: Tensor, ctx: F5Context) -> Tensor:
        """The input interface: Linear([x_t | prompt | text]) plus the convolutional positions."""
        x = self.input_proj(torch.cat([ctx.x_t, ctx.prompt, s], dim=-1))
        return x + self.conv_pos(x, ctx.mask)

    def prepare(self, x_t: Tensor, t: Tensor, tokens: Tensor, prompt: Tensor, mask: Tensor | None = None,
                drop_tokens: Tensor | None = None, drop_prompt: Tensor | None = None, padded: bool | None = None):
        B, T, _ = x_t.shape
        tok = keep(self.embed_tokens(tokens, mask, T, batch=B), drop_tokens)
        s0 = masked(tok + sinusoidal_positions(T, self.text_dim, x_t.device).to(tok.dtype), mask)
        c = self.time_mlp(f5_time_embedding(t.reshape(B), self.time_freq_dim).to(s0.dtype))
        cos, sin = self.rotary(T, x_t.device)
        ctx = F5Context(c, cos, sin, attention_mask(mask, padded), None if mask is None else mask.bool(), x_t, keep(prompt, drop_prompt))
        state = Stream(s0)
        if self.n_text == 0:
            state = self._enter_trunk(state, ctx)
        return state, ctx

    def _enter_trunk(self, state: Stream, ctx: F5Context) -> Stream:
        m = self.merge(state.h, ctx)
        return Stream(m, state.skips + ((m,) if self.long_skip is not None else ()))

    def transition(self, l: int, state: Stream, ctx: F5Context) -> Stream:
        if self.n_text and l == self.n_text + 1:
            return self._enter_trunk(state, ctx)
        return state

    def update(self, l: int, state: Stream, ctx: F5Context) -> Tensor:
        if l <= self.n_text:
            return self.text_blocks[l - 1].update(state.h, ctx.mask)
        return self.blocks[l - self.n_text - 1].update(state.h, ctx)

    def output(self, state: Stream, ctx: F5Context) -> Tensor:
        h = state.h
        if self.long_skip is not None:
            skip, state = state.pop()
            h = self.long_skip(torch.cat([h, skip], dim=-1))
        return self.final(h, ctx.c)

    def probe_hidden(self, l: int, state: Stream, ctx: F5Context) -> tuple[Tensor, Tensor | None]:
        if self.n_text and l == self.n_text:
            return self.merge(state.h, ctx), ctx.mask
        return state.h, ctx.mask

    def unit_modules(self) -> list[nn.Module]:
        return list(self.text_blocks) + list(self.blocks)


def build(cfg: dict, vocab_size: int, token_layout: dict | None = None) -> F5:
    m, layout = cfg["model"]["f5"], token_layout or CONFIG_A_LAYOUT
    return F5(n_layers=m["n_layers"], conv_layers=m["conv_layers"], dim=m["dim"], n_heads=m["n_heads"],
              n_mels=cfg["audio"]["n_mels"], vocab_size=vocab_size, ff_mult=m["ff_mult"], text_dim=m["text_dim"],
              conv_mult=m["conv_mult"], dropout=m["dropout"], long_skip=m["long_skip"],
              paired_tokens=bool(layout["paired"]), audio_offset=layout["audio_offset"])


# --------------------------------------------------------------------------- upstream weights

# Upstream keys (f5-tts 1.1.x ``f5_tts/model/backbones/dit.py`` ``DiT``) that have no place in this
# backbone, with the reason; :func:`load_upstream_state_dict` reports them and loads nothing from them.
UPSTREAM_UNMAPPED = {
    "text_embed.text_embed.weight": "upstream embeds characters / pinyin (its vocabulary + the filler "
                                    "token 0, learnt; the null text of CFG is that filler row); this "
                                    "backbone embeds speech / audio codec tokens (token_emb.table, "
                                    "row 0 = padding, and a fixed zero for the null text)",
    "rotary_embed.inv_freq": "a buffer (x_transformers RotaryEmbedding); checked against ours, not loaded "
                             "(ours is computed, Rotary.inv_freq)",
}
# This backbone's parameters no upstream key fills (left as they are).
OURS_UNMAPPED = ("token_emb.",)


def _rope_perm(n_heads: int, head_dim: int) -> Tensor:
    """Row order taking upstream's interleaved rotary pairs (2i, 2i+1) (x_transformers
    ``rotate_half``) to ours (i, i + head_dim/2) (:func:`agrepa.model.dit.apply_rotary`), per head.
    Applied to both q and k it leaves every attention score unchanged."""
    within = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return (torch.arange(n_heads)[:, None] * head_dim + within[None]).reshape(-1)


def upstream_key_map(model: F5) -> dict[str, str]:
    """Our parameter name for every upstream ``DiT`` key that maps one to one (same shape and
    meaning). The attention's q/k/v, rotary row order and the final layer's (scale, shift)
    chunk order need a transform and are handled in :func:`load_upstream_state_dict`."""
    m: dict[str, str] = {}
    for i in (0, 2):                                       # Linear, SiLU, Linear
        for p in ("weight", "bias"):
            m[f"time_embed.time_mlp.{i}.{p}"] = f"time_mlp.{i}.{p}"
    for c in range(model.n_text):
        for sub in ("dwconv.weight", "dwconv.bias", "norm.weight", "norm.bias", "pwconv1.weight", "pwconv1.bias",
                    "grn.gamma", "grn.beta", "pwconv2.weight", "pwconv2.bias"):
            m[f"text_embed.text_blocks.{c}.{sub}"] = f"text_blocks.{c}.{sub}"
    for p in ("weight", "bias"):
        m[f"input_embed.proj.{p}"] = f"input_proj.{p}"
        m[f"input_embed.conv_pos_embed.conv1d.0.{p}"] = f"conv_pos.conv1.{p}"    # Conv1d, Mish, Conv1d, Mish
        m[f"input_embed.conv_pos_embed.conv1d.2.{p}"] = f"conv_pos.conv2.{p}"
        m[f"proj_out.{p}"] = f"final.linear.{p}"
        for l in range(model.n_blocks):
            up, ours = f"transformer_blocks.{l}", f"blocks.{l}"
            m[f"{up}.attn_norm.linear.{p}"] = f"{ours}.ada.1.{p}"   # shift, scale, gate (msa), shift, scale, gate (mlp)
            m[f"{up}.attn.to_out.0.{p}"] = f"{ours}.attn.proj.{p}"
            m[f"{up}.ff.ff.0.0.{p}"] = f"{ours}.mlp.0.{p}"           # (Linear, GELU), Dropout, Linear
            m[f"{up}.ff.ff.2.{p}"] = f"{ours}.mlp.3.{p}"
    if model.long_skip is not None:
        m["long_skip_connection.weight"] = "long_skip.weight"
    return m


def upstream_keys(model: F5) -> list[str]:
    """Every key an upstream ``DiT`` state dict of this model's sizes holds (v1 Base options:
    no qk_norm), mapped or not."""
    keys = list(upstream_key_map(model)) + list(UPSTREAM_UNMAPPED)
    for l in range(model.n_blocks):
        keys += [f"transformer_blocks.{l}.attn.to_{x}.{p}" for x in "qkv" for p in ("weight", "bias")]
    keys += ["norm_out.linear.weight", "norm_out.linear.bias"]
    return keys


def _strip_prefix(sd: dict[str, Tensor], prefix: str | None) -> dict[str, Tensor]:
    """The transformer's keys of ``sd``. ``prefix`` None: found from ``time_embed.time_mlp.0.weight``
    (a bare DiT state dict, ``transformer.`` of a CFM, or ``ema_model.transformer.`` of an official
    checkpoint's EMA weights); keys outside the prefix belong to other modules and are ignored."""
    if prefix is None:
        probe = "time_embed.time_mlp.0.weight"
        found = [k[: -len(probe)] for k in sd if k.endswith(probe)]
        if len(found) != 1:
            raise KeyError(f"upstream state dict: expected one '{probe}' (under any prefix), found "
                           f"{len(found)}: {sorted(found)}; pass prefix=")
        prefix = found[0]
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


@torch.no_grad()
def load_upstream_state_dict(model: F5, sd: dict[str, Tensor], prefix: str | None = None) -> dict:
    """Load an upstream F5-TTS ``DiT`` (the CFM's ``transformer``) state dict into ``model``.

    Mapped: the time MLP, the ConvNeXt-V2 text blocks, the input projection and its conv
    positions, every DiT block (q/k/v stacked into ``qkv`` with the rotary rows reordered from
    interleaved pairs to halves, the output projection, the adaLN modulation, the feed-forward),
    the final adaLN (upstream chunks it (scale, shift), ours (shift, scale): the halves are
    swapped), the output projection and the long skip if any. Not mapped: see
    :data:`UPSTREAM_UNMAPPED` (the character embedding table) and :data:`OURS_UNMAPPED` (our token
    embedding, left as it is). The forward then equals upstream's where both see the same text
    stream (same embeddings, no padding): the time basis is upstream's (:func:`f5_time_embedding`).

    Raises KeyError naming every missing or unexpected upstream key, ValueError naming the key of
    a shape that does not fit (e.g. another head size, qk_norm). Returns ``{"loaded": our names,
    "skipped": {upstream key: reason}, "kept": our names not loaded}``."""
    sd = _strip_prefix(sd, prefix)
    want = upstream_keys(model)
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in set(want)]
    if missing or extra:
        hint = (" (q_norm / k_norm: a qk_norm model, which this backbone does not have)"
                if any(".q_norm." in k or ".k_norm." in k for k in extra) else "")
        raise KeyError(f"upstream F5 state dict does not fit this F5 ({model.n_text} text blocks, "
                       f"{model.n_blocks} DiT blocks, long_skip={model.long_skip is not None}): "
                       f"missing {missing}, unexpected {extra}{hint}")
    ours = model.state_dict()
    n_heads = model.blocks[0].attn.n_heads if model.n_blocks else 1
    head_dim = model.dim // n_heads
    new: dict[str, Tensor] = {}

    def put(name: str, value: Tensor, up_key: str) -> None:
        if tuple(value.shape) != tuple(ours[name].shape):
            raise ValueError(f"upstream key {up_key!r} has shape {tuple(value.shape)}, ours {name!r} "
                             f"{tuple(ours[name].shape)}")
        new[name] = value.to(ours[name].dtype)

    for up, name in upstream_key_map(model).items():
        put(name, sd[up], up)
    inv = sd["rotary_embed.inv_freq"]
    if tuple(inv.shape) != (head_dim // 2,) or not torch.allclose(inv.float().cpu(), model.rotary.inv_freq.cpu(),
                                                                  rtol=1e-6, atol=0):
        raise ValueError(f"upstream key 'rotary_embed.inv_freq' (shape {tuple(inv.shape)}) does not match our "
                         f"rotary table (head_dim {head_dim} = dim {model.dim} / n_heads {n_heads}, base 10000)")
    perm = _rope_perm(n_heads, head_dim)
    for l in range(model.n_blocks):
        up = f"transformer_blocks.{l}.attn"
        for p in ("weight", "bias"):
            q, k, v = (sd[f"{up}.to_{x}.{p}"] for x in "qkv")
            for x, w in zip("qkv", (q, k, v)):
                if w.shape[0] != model.dim:
                    raise ValueError(f"upstream key '{up}.to_{x}.{p}' has {w.shape[0]} rows (heads x dim_head); "
                                     f"ours needs dim {model.dim}")
            idx = perm.to(q.device)
            put(f"blocks.{l}.attn.qkv.{p}", torch.cat([q[idx], k[idx], v]), f"{up}.to_q/k/v.{p}")
    for p in ("weight", "bias"):
        scale, shift = sd[f"norm_out.linear.{p}"].chunk(2, dim=0)
        put(f"final.ada.1.{p}", torch.cat([shift, scale]), f"norm_out.linear.{p}")
    kept = [k for k in ours if k not in new]
    stray = [k for k in kept if not k.startswith(OURS_UNMAPPED)]
    if stray:
        raise KeyError(f"our F5 parameters no upstream key fills: {stray}")
    model.load_state_dict({**ours, **new})
    return {"loaded": sorted(new), "skipped": dict(UPSTREAM_UNMAPPED), "kept": kept}
