"""Layers shared by the Voicebox-, F5- and CosyVoice-style backbones (the DiT's own live in dit.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def masked(x: Tensor, mask: Tensor | None) -> Tensor:
    """``x`` [B, T, D] with padded frames (``mask`` [B, T] False) set to zero."""
    return x if mask is None else x * mask.to(x.dtype)[..., None]


class ConvPositionEmbedding(nn.Module):
    """Convolutional position embedding (Voicebox; F5-TTS's InputEmbedding): two grouped
    convolutions with Mish over the frame axis. Padded frames are zeroed before each
    convolution, so a real frame sees exactly what it would see without the padding."""

    def __init__(self, dim: int, kernel_size: int = 31, groups: int = 16):
        super().__init__()
        if kernel_size % 2 == 0 or dim % groups:
            raise ValueError(f"conv position embedding: odd kernel and dim divisible by {groups} needed "
                             f"(kernel {kernel_size}, dim {dim})")
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(dim, dim, kernel_size, groups=groups, padding=pad)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size, groups=groups, padding=pad)
        self.act = nn.Mish()

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        h = self.act(self.conv1(masked(x, mask).transpose(1, 2))).transpose(1, 2)
        h = self.act(self.conv2(masked(h, mask).transpose(1, 2))).transpose(1, 2)
        return masked(h, mask)


def sinusoidal_positions(T: int, dim: int, device) -> Tensor:
    """[T, dim]: cos and sin of position x 10000^(-2i/dim) (F5-TTS's text position table)."""
    freqs = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32)[: dim // 2] / dim))
    angles = torch.outer(torch.arange(T, device=device, dtype=torch.float32), freqs)
    out = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(out, (0, dim - out.shape[-1]))


def masked_group_norm(x: Tensor, mask: Tensor | None, norm: nn.GroupNorm) -> Tensor:
    """GroupNorm of ``x`` [B, C, T] with statistics over the real frames of ``mask`` [B, T] only
    (the weights of ``norm``); padded frames do not change a real frame's output."""
    if mask is None:
        return norm(x)
    B, C, T = x.shape
    G = norm.num_groups
    m = mask.to(x.dtype)[:, None, None, :]                          # [B, 1, 1, T]
    xg = x.view(B, G, C // G, T)
    n = (m.sum(-1, keepdim=True) * (C // G)).sum(-2, keepdim=True).clamp(min=1)
    mean = (xg * m).sum((-1, -2), keepdim=True) / n
    var = (((xg - mean) * m) ** 2).sum((-1, -2), keepdim=True) / n
    y = ((xg - mean) / torch.sqrt(var + norm.eps)).view(B, C, T)
    return y * norm.weight[None, :, None] + norm.bias[None, :, None]


def head_split(x: Tensor, n_heads: int) -> Tensor:
    B, T, D = x.shape
    return x.view(B, T, n_heads, D // n_heads).transpose(1, 2)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

