"""The token front end of every backbone: token ids -> one embedding per mel frame.

Ids come from the unified vocabulary (``agrepa.tokenizers.vocab``: 0 is padding,
then the speech, audio and BEATs codebooks in disjoint ranges, so one table is
the authors' separate per-codebook tables side by side). Sequences are
left-aligned (real tokens first).

* Config A, ids ``[B, N]``: ``e_i = E[id_i]``.
* Config B, ids ``[B, N, 2]`` (primary and BEATs token of each grid position,
  ``agrepa.tokenizers.timing.pair_by_time``): the authors' dual-codebook fusion
  (``REPA_dual_codebook/models.py``, ``embed_and_project_tokens``): the two
  embeddings are concatenated position by position and projected back,
  ``e_i = W_d [E[p_i] ; E[b_i]]`` with one bias-free ``W_d`` (2D -> D, Xavier
  init) per domain d, the domain being the primary codebook's (speech ids lie
  below ``audio_offset``). The model never sees a literal interleaved sequence.

Each sample's real tokens are then linearly resampled to its real mel length
(:func:`interpolate_tokens`, ``F.interpolate(mode="linear", align_corners=False)``
semantics), zero beyond, and -- with ``l2_normalize`` (the authors'
``F.normalize(..., dim=1)`` after the interpolation) -- scaled to unit length
frame by frame (padding frames stay zero).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import DOMAINS, PAD_ID

CONFIG_A_LAYOUT = {"paired": False, "audio_offset": None}   # a token store / checkpoint of single ids


def interpolate_tokens(emb: Tensor, n_tokens: Tensor, n_frames: Tensor, T: int) -> Tensor:
    """Linearly resample each sample's first ``n_tokens[b]`` rows of ``emb`` [B, N, D]
    to ``n_frames[b]`` frames, zero beyond, -> [B, T, D]."""
    B, N, D = emb.shape
    n = n_tokens.clamp(min=1).to(emb.dtype)[:, None]
    nf = n_frames.clamp(min=1).to(emb.dtype)[:, None]
    i = torch.arange(T, device=emb.device, dtype=emb.dtype)[None]
    pos = ((i + 0.5) * n / nf - 0.5).clamp(min=0)
    pos = torch.minimum(pos, n - 1)
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, (n - 1).long())
    w = (pos - lo.to(emb.dtype))[..., None]
    e_lo = torch.gather(emb, 1, lo[..., None].expand(B, T, D))
    e_hi = torch.gather(emb, 1, hi[..., None].expand(B, T, D))
    out = e_lo * (1 - w) + e_hi * w
    valid = i < n_frames[:, None]
    return out * valid[..., None].to(emb.dtype)


class TokenEmbedding(nn.Module):
    """Token ids (+ the real mel length) -> conditioning embedding at mel rate (module doc)."""

    def __init__(self, vocab_size: int, dim: int, paired: bool = False, audio_offset: int | None = None,
                 l2_normalize: bool = False):
        super().__init__()
        self.vocab_size, self.dim, self.paired = int(vocab_size), int(dim), bool(paired)
        self.l2_normalize = bool(l2_normalize)
        self.table = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        if self.paired:
            if audio_offset is None or not 0 < int(audio_offset) < vocab_size:
                raise ValueError(f"paired tokens need the first audio id inside the vocabulary, got {audio_offset}")
            self.audio_offset = int(audio_offset)
            self.fuse = nn.ModuleDict({d: nn.Linear(2 * dim, dim, bias=False) for d in DOMAINS})
            for layer in self.fuse.values():
                nn.init.xavier_uniform_(layer.weight)

    @property
    def embedding_dim(self) -> int:
        return self.dim

    def check(self, tokens: Tensor, batch: int) -> None:
        want = (batch, tokens.shape[1], 2) if self.paired else (batch, tokens.shape[1])
        if tokens.dim() < 2 or tuple(tokens.shape) != want:
            layout = "[B, N, 2] (Config B: primary, BEATs)" if self.paired else "[B, N] (Config A)"
            raise ValueError(f"tokens must be {layout} with B={batch}, got {tuple(tokens.shape)}")
        # the id range is read on the host: checked on the CPU only (a device sync and a graph break
        # elsewhere; on CUDA an id out of range stops the embedding lookup with a device-side assert)
        if tokens.device.type != "cpu" or torch.compiler.is_compiling():
            return
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")

    def embed(self, tokens: Tensor) -> Tensor:
        """Per-position embeddings [B, N, D] (fused for Config B)."""
        e = self.table(tokens)
        if not self.paired:
            return e
        e = e.flatten(2)                                           # [B, N, 2D] = [E[p] ; E[b]]
        is_audio = tokens[:, :1, 0] >= self.audio_offset           # [B, 1]: the primary codebook
        return torch.where(is_audio[..., None], self.fuse["audio"](e), self.fuse["speech"](e))

    def forward(self, tokens: Tensor, n_frames: Tensor, T: int) -> Tensor:
        """[B, T, D]: each sample's tokens interpolated onto its ``n_frames`` real frames."""
        self.check(tokens, n_frames.shape[0])
        primary = tokens[..., 0] if self.paired else tokens
        out = interpolate_tokens(self.embed(tokens), (primary != PAD_ID).sum(1), n_frames, T)
        return F.normalize(out, dim=-1) if self.l2_normalize else out
