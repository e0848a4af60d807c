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
attention, GELU feed-forward with ``ff_mult``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .backbone import Backbone, BatchContext, Stream, keep
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
        self.blocks = nn.ModuleList([Block(dim, n_heads, ff_mult, dropout, layer=conv_layers + l)
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
                drop_tokens: Tensor | None = None, drop_prompt: Tensor | None = None):
        B, T, _ = x_t.shape
        tok = keep(self.embed_tokens(tokens, mask, T, batch=B), drop_tokens)
        s0 = masked(tok + sinusoidal_positions(T, self.text_dim, x_t.device).to(tok.dtype), mask)
        c = self.time_mlp(timestep_embedding(t.reshape(B), self.time_freq_dim).to(s0.dtype))
        cos, sin = self.rotary(T, x_t.device)
        attn_mask = None if mask is None else mask.bool()[:, None, None, :]
        ctx = F5Context(c, cos, sin, attn_mask, None if mask is None else mask.bool(), x_t, keep(prompt, drop_prompt))
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
