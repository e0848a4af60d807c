"""Voicebox-style backbone: a Transformer with U-Net long skips and time as a prepended token.

As in Voicebox (Le et al., 2023, Sec. 5.1 / App. A.6; read in SWivid/F5-TTS
``model/backbones/unett.py`` and lucidrains/voicebox-pytorch)::

    x      = Linear([x_t | token embedding interpolated to mel rate | prompt mel])
    h_0    = [time token ; x + ConvPos(x)]            [B, 1 + T, dim]
    unit l = pre-norm Transformer layer (RMSNorm, self-attention, feed-forward), no adaLN
    v      = Linear(RMSNorm(h_L))[:, 1:]

Long skips (L even): unit l <= L/2 first pushes its input h_{l-1}; unit l > L/2
first pops the mirrored skip and merges ``h = W [h | skip]`` (Linear 2 dim -> dim,
no bias). Both are transitions, so with gates::

    h_l = transition_l(h_{l-1}) + g_l * (a + m),   a = Attn(N1(h)), m = FF(N2(h + a))

with h the transitioned stream. The time token takes part in attention at every
layer; probes and heads see the frame positions only (``probe_hidden`` drops it).
Positions: the convolutional embedding at the input plus rotary embeddings in every
attention (Voicebox uses ALiBi; rotary as in both reference implementations).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .backbone import Backbone, BatchContext, Stream, keep
from .dit import Attention, Rotary, timestep_embedding
from .layers import ConvPositionEmbedding
from .tokens import CONFIG_A_LAYOUT, TokenEmbedding

CONFIG_KEYS = ("audio.n_mels", "model.{arch}")  # config sections this module reads


@dataclass
class VoiceboxContext(BatchContext):
    BATCHED: ClassVar[tuple[str, ...]] = ("attn_mask", "mask")

    cos: Tensor                # [1 + T, head_dim] rotary tables (time token at position 0)
    sin: Tensor
    attn_mask: Tensor | None   # [B, 1, 1, 1 + T] bool, True = attend (the time token always)
    mask: Tensor | None        # [B, T] real frames


class VoiceboxLayer(nn.Module):
    """Pre-norm Transformer layer; :meth:`update` is its whole residual update a + m."""

    def __init__(self, dim: int, n_heads: int, ff_mult: int, dropout: float):
        super().__init__()
        self.norm1 = nn.RMSNorm(dim, eps=1e-6)
        self.attn = Attention(dim, n_heads, dropout)
        self.norm2 = nn.RMSNorm(dim, eps=1e-6)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                nn.Linear(ff_mult * dim, dim))

    def update(self, h: Tensor, ctx: VoiceboxContext) -> Tensor:
        a = self.attn(self.norm1(h), ctx)
        return a + self.ff(self.norm2(h + a))


class Voicebox(Backbone):
    arch = "voicebox"
    token_dim_key = "model.voicebox.token_dim"

    def __init__(self, n_layers: int = 24, dim: int = 1024, n_heads: int = 16, n_mels: int = 100,
                 vocab_size: int = 1024, ff_mult: int = 4, dropout: float = 0.0, token_dim: int | None = None,
                 time_freq_dim: int = 256, paired_tokens: bool = False, audio_offset: int | None = None):
        super().__init__()
        if n_layers < 2 or n_layers % 2:
            raise ValueError(f"model.voicebox.n_layers: U-Net skips need an even number of layers, got {n_layers}")
        self.n_layers, self.dim, self.n_mels, self.vocab_size = n_layers, dim, n_mels, vocab_size
        token_dim = self.token_dim = token_dim or dim
        self.token_emb = TokenEmbedding(vocab_size, token_dim, paired_tokens, audio_offset)
        self.input_proj = nn.Linear(2 * n_mels + token_dim, dim)
        self.conv_pos = ConvPositionEmbedding(dim)
        self.time_freq_dim = time_freq_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.rotary = Rotary(dim // n_heads)
        self.layers = nn.ModuleList([VoiceboxLayer(dim, n_heads, ff_mult, dropout) for _ in range(n_layers)])
        self.skip_proj = nn.ModuleList([nn.Linear(2 * dim, dim, bias=False) for _ in range(n_layers // 2)])
        self.norm_out = nn.RMSNorm(dim, eps=1e-6)
        self.proj_out = nn.Linear(dim, n_mels)

    @property
    def hidden_dims(self) -> list[int]:
        return [self.dim] * (self.n_layers + 1)

    def prepare(self, x_t: Tensor, t: Tensor, tokens: Tensor, prompt: Tensor, mask: Tensor | None = None,
                drop_tokens: Tensor | None = None, drop_prompt: Tensor | None = None):
        B, T, _ = x_t.shape
        tok = keep(self.embed_tokens(tokens, mask, T, batch=B), drop_tokens)
        x = self.input_proj(torch.cat([x_t, tok, keep(prompt, drop_prompt)], dim=-1))
        x = x + self.conv_pos(x, mask)
        time = self.time_mlp(timestep_embedding(t.reshape(B), self.time_freq_dim).to(x.dtype))
        h0 = torch.cat([time[:, None], x], dim=1)
        cos, sin = self.rotary(T + 1, x_t.device)
        attn_mask = None
        if mask is not None:
            attn_mask = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=mask.device), mask.bool()], 1)
            attn_mask = attn_mask[:, None, None, :]
        return Stream(h0), VoiceboxContext(cos, sin, attn_mask, None if mask is None else mask.bool())

    def transition(self, l: int, state: Stream, ctx: VoiceboxContext) -> Stream:
        half = self.n_layers // 2
        if l <= half:
            return state.push(state.h)
        skip, state = state.pop()
        return Stream(self.skip_proj[l - half - 1](torch.cat([state.h, skip], dim=-1)), state.skips)

    def update(self, l: int, state: Stream, ctx: VoiceboxContext) -> Tensor:
        return self.layers[l - 1].update(state.h, ctx)

    def output(self, state: Stream, ctx: VoiceboxContext) -> Tensor:
        return self.proj_out(self.norm_out(state.h)[:, 1:])

    def probe_hidden(self, l: int, state: Stream, ctx: VoiceboxContext) -> tuple[Tensor, Tensor | None]:
        return state.h[:, 1:], ctx.mask

    def unit_modules(self) -> list[nn.Module]:
        return list(self.layers)


def build(cfg: dict, vocab_size: int, token_layout: dict | None = None) -> Voicebox:
    m, layout = cfg["model"]["voicebox"], token_layout or CONFIG_A_LAYOUT
    return Voicebox(n_layers=m["n_layers"], dim=m["dim"], n_heads=m["n_heads"], n_mels=cfg["audio"]["n_mels"],
                    vocab_size=vocab_size, ff_mult=m["ff_mult"], dropout=m["dropout"], token_dim=m["token_dim"],
                    paired_tokens=bool(layout["paired"]), audio_offset=layout["audio_offset"])
