"""Analytic FLOPs of the DiT per function evaluation and per sampled clip.

Counted as ``torch.utils.flop_counter.FlopCounterMode`` counts them: 2 FLOPs per
multiply-add of every matrix product (linear layers, the two attention products under
the math SDPA kernel); elementwise work (LayerNorm, modulation, softmax, RoPE, GELU,
bias adds) is not counted. One evaluation on ``rows`` sequences of T frames (a CFG
evaluation stacks the conditional and unconditional halves: 2 rows per clip)::

    time MLP        rows * 2 (F D + D^2)                F = time_freq_dim
    token fusion    rows * 8 N d_tok^2                  Config B only: N paired tokens, both
                                                        domains' 2 d_tok -> d_tok projections
    input proj      rows * 2 T (2 n_mels + d_tok) D
    per block:
      adaLN         rows * 2 D 6D
      attention     rows * (8 T D^2 + 4 T^2 D)          qkv 6TD^2, out 2TD^2, QK^T 2T^2D, AV 2T^2D
      MLP           rows * 4 ff T D^2
    final layer     rows * (2 D 2D + 2 T D n_mels)

A step cache that reuses the attention output of block l at one step saves
``rows * (8 T D^2 + 4 T^2 D)``; reusing its MLP output saves ``rows * 4 ff T D^2``
(the adaLN modulation is still computed: the reused output is multiplied by the
current step's gate).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dims:
    """The sizes that fix the DiT's FLOPs."""

    n_layers: int
    dim: int
    ff_mult: int
    n_mels: int
    token_dim: int
    time_freq_dim: int
    paired_tokens: bool = False      # Config B: [B, N, 2] ids fused by a projection per domain

    @classmethod
    def of(cls, model) -> "Dims":
        """The sizes of a built :class:`agrepa.model.dit.DiT`."""
        return cls(n_layers=model.n_layers, dim=model.dim,
                   ff_mult=model.blocks[0].mlp[0].out_features // model.dim, n_mels=model.n_mels,
                   token_dim=model.token_emb.embedding_dim, time_freq_dim=model.time_freq_dim,
                   paired_tokens=model.token_emb.paired)


def attention_flops(d: Dims, T: int) -> int:
    """One block's self-attention (projections included) on one row of T frames."""
    return 8 * T * d.dim ** 2 + 4 * T * T * d.dim


def mlp_flops(d: Dims, T: int) -> int:
    """One block's MLP on one row of T frames."""
    return 4 * d.ff_mult * T * d.dim ** 2


def forward_flops(d: Dims, rows: int, T: int, n_tokens: int = 0) -> dict[str, int]:
    """FLOPs of one function evaluation: ``total``, ``attention`` (all blocks) and ``mlp``
    (``n_tokens``: the token positions, counted only for Config B's fusion)."""
    D = d.dim
    outside = 2 * (d.time_freq_dim * D + D * D) + 2 * T * (2 * d.n_mels + d.token_dim) * D \
        + 2 * D * 2 * D + 2 * T * D * d.n_mels
    if d.paired_tokens:
        outside += 8 * n_tokens * d.token_dim ** 2
    attention = d.n_layers * attention_flops(d, T)
    mlp = d.n_layers * mlp_flops(d, T)
    blocks = d.n_layers * 2 * D * 6 * D + attention + mlp
    return {"total": rows * (outside + blocks), "attention": rows * attention, "mlp": rows * mlp}


def sampling_flops(d: Dims, T: int, steps: int, cfg: bool, reused: dict[str, int] | None = None,
                   n_tokens: int = 0) -> dict[str, int]:
    """FLOPs to sample one clip of T model frames (prompt + target) and ``n_tokens`` token
    positions with ``steps`` Euler steps (2 rows per evaluation with CFG), minus what a step
    cache saves: ``reused`` counts the reused (step, layer) cells per kind (``{"attn": n,
    "mlp": m}``, as ``CachePlan.cells()``)."""
    rows = 2 if cfg else 1
    one = forward_flops(d, rows, T, n_tokens)
    out = {k: steps * v for k, v in one.items()}
    reused = reused or {}
    saved_attn = rows * reused.get("attn", 0) * attention_flops(d, T)
    saved_mlp = rows * reused.get("mlp", 0) * mlp_flops(d, T)
    out["total"] -= saved_attn + saved_mlp
    out["attention"] -= saved_attn
    out["mlp"] -= saved_mlp
    return out
