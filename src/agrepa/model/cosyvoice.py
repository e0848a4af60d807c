"""CosyVoice-style backbone: token encoder -> mel-rate condition -> 1-D U-Net decoder.

As the CosyVoice (v1/v2) flow model (Du et al., 2024; read in FunAudioLLM/CosyVoice
``cosyvoice/flow/flow.py``, ``flow_matching.py``, ``decoder.py`` and
``examples/libritts/cosyvoice/conf/cosyvoice.yaml``)::

    e     = TransformerEncoder(token embedding)            token rate   [B, N, enc_dim]
    mu    = interpolate(Linear(e) -> n_mels, to the mel length)          [B, T, n_mels]
    spk   = Linear(normalize(mean of the prompt frames))   the speaker vector (no x-vector here)
    x     = [x_t | mu | spk broadcast | prompt]                           [B, T, 4 n_mels]
    U-Net: down1 (full rate, c0) -> stride-2 conv -> down2 (half rate, c1) -> mid x n_mid
           -> up1 (merge skip 2, half rate) -> transposed conv -> up2 (merge skip 1, full rate)
    each stage = a time-conditioned ResNet1D block + n_blocks Transformer blocks
    v     = Conv1x1(Block1D(conv(h)))

Units (gated) are every ResNet block and every Transformer block: (1 + n_blocks) x
(4 + n_mid) of them. A ResNet block computes ``res_conv(x) + block2(block1(x) + mlp(t))``:
the 1x1 shortcut ``res_conv`` is its transition (always on), the conv branch its update
u_l; before it come the structural steps of the U-Net (push the stage output as a skip,
down-sample; or up-sample, pop a skip and concatenate). So with gates::

    h_l = transition_l(h_{l-1}) + g_l * u_l

The first ResNet block's shortcut acts on the decoder input, so h_0 = res_conv(x) (c0
wide) is the input interface. Hidden states live at two rates (full, half) and widths
(c0, c1): ``probe_hidden`` returns each with the mask of its rate (the full-rate mask's
every second frame, as the U-Net subsamples it). GroupNorm statistics use real frames
only, so padding never reaches a real frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import Backbone, BatchContext, Stream, keep
from ..config import PAD_ID
from .dit import Attention, Rotary, timestep_embedding
from .layers import masked, masked_group_norm
from .tokens import CONFIG_A_LAYOUT, TokenEmbedding, interpolate_tokens

CONFIG_KEYS = ("audio.n_mels", "model.{arch}")  # config sections this module reads


@dataclass
class CosyContext(BatchContext):
    BATCHED: ClassVar[tuple[str, ...]] = ("c", "masks", "attn_masks")

    c: Tensor                          # [B, time_dim] time embedding
    masks: tuple[Tensor, Tensor]       # real frames at full rate [B, T] and half rate [B, ceil(T/2)]
    attn_masks: tuple[Tensor, Tensor]  # the same as [B, 1, 1, T_rate] attention masks


@dataclass
class EncoderContext:
    cos: Tensor
    sin: Tensor
    attn_mask: Tensor


def conv_frames(conv: nn.Module, h: Tensor, mask: Tensor) -> Tensor:
    """A Conv1d/ConvTranspose1d over the frames of ``h`` [B, T, C] with padding zeroed first."""
    return conv(masked(h, mask).transpose(1, 2)).transpose(1, 2)


class Block1D(nn.Module):
    """Conv1d (k 3) -> GroupNorm (real frames) -> Mish, on [B, C, T]."""

    def __init__(self, c_in: int, c_out: int, groups: int = 8):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, 3, padding=1)
        self.norm = nn.GroupNorm(groups, c_out)
        self.act = nn.Mish()

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        m = mask.to(x.dtype)[:, None]
        return self.act(masked_group_norm(self.conv(x * m), mask, self.norm)) * m


class ResBlock(nn.Module):
    """The time-conditioned ResNet1D block: shortcut (transition) + conv branch (update)."""

    def __init__(self, c_in: int, c_out: int, time_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_dim, c_out))
        self.block1 = Block1D(c_in, c_out)
        self.block2 = Block1D(c_out, c_out)
        self.res_conv = nn.Conv1d(c_in, c_out, 1)

    def shortcut(self, x: Tensor, mask: Tensor) -> Tensor:
        return conv_frames(self.res_conv, x, mask)

    def update(self, x: Tensor, mask: Tensor, c: Tensor) -> Tensor:
        h = self.block1(x.transpose(1, 2), mask) + self.mlp(c)[..., None]
        return self.block2(h, mask).transpose(1, 2)


class DecoderAttention(nn.Module):
    """Self-attention with ``n_heads x head_dim`` inner width (no q/k/v bias), no positions."""

    def __init__(self, dim: int, n_heads: int, head_dim: int, dropout: float):
        super().__init__()
        inner = n_heads * head_dim
        self.n_heads = n_heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, inner, bias=False) for _ in range(3))
        self.to_out = nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        B, T, _ = x.shape
        q, k, v = (f(x).view(B, T, self.n_heads, -1).transpose(1, 2) for f in (self.to_q, self.to_k, self.to_v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.dropout(self.to_out(y.transpose(1, 2).reshape(B, T, -1)))


class DecoderLayer(nn.Module):
    """Pre-norm Transformer block of the decoder; :meth:`update` = a + m."""

    def __init__(self, dim: int, n_heads: int, head_dim: int, ff_mult: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = DecoderAttention(dim, n_heads, head_dim, dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Dropout(dropout),
                                nn.Linear(ff_mult * dim, dim))

    def update(self, h: Tensor, attn_mask: Tensor) -> Tensor:
        a = self.attn(self.norm1(h), attn_mask)
        return a + self.ff(self.norm3(h + a))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, n_heads: int, ff_mult: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, n_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.SiLU(), nn.Dropout(dropout),
                                nn.Linear(ff_mult * dim, dim))

    def forward(self, x: Tensor, ctx: EncoderContext) -> Tensor:
        x = x + self.attn(self.norm1(x), ctx)
        return x + self.ff(self.norm2(x))


class TokenEncoder(nn.Module):
    """Token embeddings -> Linear + LayerNorm -> pre-norm Transformer (rotary) -> LayerNorm -> Linear."""

    def __init__(self, dim: int, n_layers: int, n_heads: int, ff_mult: int, dropout: float, out_dim: int):
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.rotary = Rotary(dim // n_heads)
        self.layers = nn.ModuleList([EncoderLayer(dim, n_heads, ff_mult, dropout) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, emb: Tensor, real: Tensor) -> Tensor:
        """``emb`` [B, N, dim] token embeddings, ``real`` [B, N] the real (non-padding) positions."""
        x = self.inp(emb)
        cos, sin = self.rotary(emb.shape[1], emb.device)
        ctx = EncoderContext(cos, sin, (real | ~real.any(1, keepdim=True))[:, None, None, :])
        for layer in self.layers:
            x = layer(x, ctx)
        return masked(self.proj(self.norm(x)), real)


@dataclass(frozen=True)
class UnitPlan:
    kind: str     # "res" | "tf"
    index: int    # into the ResNet blocks / Transformer blocks
    rate: int     # 0 full rate, 1 half rate
    width: int
    pre: str      # structural steps before a ResNet block: input | plain | down0 | down1 | merge | upmerge
    name: str


def unit_plan(channels: tuple[int, int], n_blocks: int, n_mid: int) -> list[UnitPlan]:
    """The decoder's units in order (see the module docstring)."""
    c0, c1 = channels
    stages = [("down1", 0, c0, "input"), ("down2", 1, c1, "down0")]
    stages += [(f"mid{i + 1}", 1, c1, "down1" if i == 0 else "plain") for i in range(n_mid)]
    stages += [("up1", 1, c0, "merge"), ("up2", 0, c0, "upmerge")]
    plan = []
    for s, (name, rate, width, pre) in enumerate(stages):
        plan.append(UnitPlan("res", s, rate, width, pre, f"{name}.res"))
        plan += [UnitPlan("tf", s * n_blocks + b, rate, width, "", f"{name}.tf{b + 1}") for b in range(n_blocks)]
    return plan


class CosyVoice(Backbone):
    arch = "cosyvoice"

    def __init__(self, channels=(256, 256), n_blocks: int = 4, n_mid: int = 12, n_heads: int = 8,
                 head_dim: int = 64, ff_mult: int = 4, dropout: float = 0.0, n_mels: int = 100,
                 vocab_size: int = 1024, enc_layers: int = 6, enc_dim: int = 512, enc_heads: int = 8,
                 enc_ff_mult: int = 4, enc_dropout: float = 0.1, paired_tokens: bool = False,
                 audio_offset: int | None = None):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 2 or any(c % 8 for c in channels):
            raise ValueError(f"model.cosyvoice.channels: two widths divisible by 8 (GroupNorm) needed, got {channels}")
        self.channels, self.n_mels, self.vocab_size, self.token_dim = channels, n_mels, vocab_size, enc_dim
        self.plan = unit_plan(channels, n_blocks, n_mid)
        self.n_layers = len(self.plan)
        c0, c1 = channels
        self.token_emb = TokenEmbedding(vocab_size, enc_dim, paired_tokens, audio_offset)
        self.encoder = TokenEncoder(enc_dim, enc_layers, enc_heads, enc_ff_mult, enc_dropout, n_mels)
        self.spk_proj = nn.Linear(n_mels, n_mels)
        self.in_dim = 4 * n_mels
        time_dim = 4 * c0
        self.time_mlp = nn.Sequential(nn.Linear(self.in_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        res_io = [(self.in_dim, c0), (c0, c1)] + [(c1, c1)] * n_mid + [(2 * c1, c0), (2 * c0, c0)]
        self.res = nn.ModuleList([ResBlock(a, b, time_dim) for a, b in res_io])
        self.tfs = nn.ModuleList([DecoderLayer(p.width, n_heads, head_dim, ff_mult, dropout)
                                  for p in self.plan if p.kind == "tf"])
        self.down = nn.ModuleList([nn.Conv1d(c0, c0, 3, stride=2, padding=1), nn.Conv1d(c1, c1, 3, padding=1)])
        self.up = nn.ModuleList([nn.ConvTranspose1d(c0, c0, 4, stride=2, padding=1), nn.Conv1d(c0, c0, 3, padding=1)])
        self.final_block = Block1D(c0, c0)
        self.final_proj = nn.Conv1d(c0, n_mels, 1)

    @property
    def hidden_dims(self) -> list[int]:
        return [self.channels[0]] + [p.width for p in self.plan]

    @property
    def unit_names(self) -> list[str]:
        return [p.name for p in self.plan]

    def prepare(self, x_t: Tensor, t: Tensor, tokens: Tensor, prompt: Tensor, mask: Tensor | None = None,
                drop_tokens: Tensor | None = None, drop_prompt: Tensor | None = None):
        B, T, _ = x_t.shape
        self.token_emb.check(tokens, B)
        m0 = torch.ones(B, T, dtype=torch.bool, device=x_t.device) if mask is None else mask.bool()
        real = (tokens[..., 0] if self.token_emb.paired else tokens) != PAD_ID
        mu = interpolate_tokens(self.encoder(self.token_emb.embed(tokens), real), real.sum(1), m0.sum(1), T)
        in_prompt = (prompt.abs().sum(-1) > 0) & m0
        pooled = (prompt * in_prompt[..., None]).sum(1) / in_prompt.sum(1, keepdim=True).clamp(min=1)
        spk = keep(self.spk_proj(F.normalize(pooled, dim=-1)), drop_prompt)
        x = torch.cat([x_t, keep(mu, drop_tokens), spk[:, None].expand(B, T, -1), keep(prompt, drop_prompt)], -1)
        x = masked(x, m0)
        m1 = m0[:, ::2]
        c = self.time_mlp(timestep_embedding(t.reshape(B), self.in_dim).to(x.dtype))
        ctx = CosyContext(c, (m0, m1), (m0[:, None, None, :], m1[:, None, None, :]))
        return Stream(self.res[0].shortcut(x, m0), inp=x), ctx

    def _structural(self, pre: str, state: Stream, ctx: CosyContext) -> tuple[Tensor, Stream]:
        """The U-Net steps before a ResNet block -> (its input, the stream without it)."""
        m0, m1 = ctx.masks
        if pre in ("down0", "down1"):
            i = int(pre[-1])
            state = state.push(state.h)
            return conv_frames(self.down[i], state.h, (m0, m1)[i]), state
        if pre == "merge":
            skip, state = state.pop()
            return torch.cat([state.h, skip], dim=-1), state
        if pre == "upmerge":
            h = conv_frames(self.up[0], state.h, m1)[:, :m0.shape[1]]
            skip, state = state.pop()
            return torch.cat([h, skip], dim=-1), state
        return state.h, state

    def transition(self, l: int, state: Stream, ctx: CosyContext) -> Stream:
        p = self.plan[l - 1]
        if p.kind == "tf" or p.pre == "input":         # unit 1's shortcut ran in prepare (h_0)
            return state
        x, state = self._structural(p.pre, state, ctx)
        return Stream(self.res[p.index].shortcut(x, ctx.masks[p.rate]), state.skips, inp=x)

    def update(self, l: int, state: Stream, ctx: CosyContext) -> Tensor:
        p = self.plan[l - 1]
        if p.kind == "tf":
            return self.tfs[p.index].update(state.h, ctx.attn_masks[p.rate])
        return self.res[p.index].update(state.inp, ctx.masks[p.rate], ctx.c)

    def output(self, state: Stream, ctx: CosyContext) -> Tensor:
        m0 = ctx.masks[0]
        h = conv_frames(self.up[1], state.h, m0).transpose(1, 2)
        h = self.final_block(h, m0)
        return masked(conv_frames(self.final_proj, h.transpose(1, 2), m0), m0)

    def probe_hidden(self, l: int, state: Stream, ctx: CosyContext) -> tuple[Tensor, Tensor | None]:
        return state.h, ctx.masks[0 if l == 0 else self.plan[l - 1].rate]

    def unit_modules(self) -> list[nn.Module]:
        return [self.res[p.index] if p.kind == "res" else self.tfs[p.index] for p in self.plan]


def build(cfg: dict, vocab_size: int, token_layout: dict | None = None) -> CosyVoice:
    m, layout = cfg["model"]["cosyvoice"], token_layout or CONFIG_A_LAYOUT
    return CosyVoice(channels=m["channels"], n_blocks=m["n_blocks"], n_mid=m["n_mid"], n_heads=m["n_heads"],
                     head_dim=m["head_dim"], ff_mult=m["ff_mult"], dropout=m["dropout"], n_mels=cfg["audio"]["n_mels"],
                     vocab_size=vocab_size, enc_layers=m["enc_layers"], enc_dim=m["enc_dim"],
                     enc_heads=m["enc_heads"], enc_ff_mult=m["enc_ff_mult"], enc_dropout=m["enc_dropout"],
                     paired_tokens=bool(layout["paired"]), audio_offset=layout["audio_offset"])
