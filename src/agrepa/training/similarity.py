"""Representation-similarity regularisation (RR; seed 003, arXiv 2309.08773) for Phase II.

Within a (global) training batch, make the similarity structure of the model's pooled
audio-side states follow that of the conditioning::

    T_i = pool_{n real tokens of clip i} E(tok_i)[n]            text side, no gradient
    A_i = pool_{f real frames of clip i} h_l[i, f]               audio side (l = rr.layer, default L)
    S_T = T^ T^T,  S_A = A^ A^T   with  x^ = x / |x|             cosine similarities, B x B
    L_RR = mean_{(i, j) in P} (S_T[i, j] - S_A[i, j])^2          P: ordered pairs i != j of eligible samples

``pool`` is ``max`` (the paper's choice; padded positions are set to -inf before the max, so
they never win) or ``mean`` over the real positions. ``E`` (``rr.text``) is the model's token
embedding (:class:`agrepa.model.tokens.TokenEmbedding`: per token position, Config B's
(primary, BEATs) pair fused, L2-normalised per position when ``model.token_l2_normalize``
normalises the conditioning) with the warm-up's weights, frozen at the branch start
(``warmup``, default: the paper's text encoder is frozen, and with both sides trainable the
loss collapses to all-ones similarities), the model's live embedding without gradient
(``live``), or the tokenizers' codebook vectors (``codebook``: each stream in its own block
of dimensions, a Config B pair the sum of its two rows, i.e. their concatenation; streams of
different domains are orthogonal by construction, so it requires ``rr.within_domain``). The
tokens are the conditioning of the sample, i.e. the crop's token span; a position is real
where its (primary) token is not PAD.

When it applies (``rr.when``): ``cfg`` -- on the samples whose conditioning was CFG-dropped
(the paper applies RR "exclusively during the CFG phase"; with ``train.cfg_mode: batch``
these are all samples of a CFG step and none of the others); ``always`` -- every sample,
every step. ``rr.within_domain`` keeps only pairs of the same domain (speech-speech,
audio-audio). A step with no eligible pair adds nothing.

Total Phase II loss: ``L = L_FM + L_BiT-C + L_REPA + rr.lambda * L_RR``.

Multi-process: the B x B matrices need the global batch. The pooled audio states are
all-gathered WITH gradient (``torch.distributed.nn.functional.all_gather``: its backward
sums every rank's gradient into the owner's rows), the text side, domains and eligibility
without; every rank then computes the same global L_RR, and the gradient averaging of the
training loop turns the summed gradients back into the one-process gradient.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import DOMAINS, PAD_ID
from ..model.backbone import frame_mask
from . import distributed as dist_mod

CONFIG_KEYS = ("rr", "methods.{method}")  # config sections this module reads

log = logging.getLogger(__name__)

POOLS = ("max", "mean")
WHEN = ("cfg", "always")
TEXT = ("warmup", "live", "codebook")


# -- the formula --------------------------------------------------------------------------

def masked_pool(x: Tensor, mask: Tensor, how: str) -> Tensor:
    """``x`` [B, N, D] pooled over the positions where ``mask`` [B, N] is True -> [B, D] (float32).
    ``max``: padded positions are -inf before the max; ``mean``: the mean of the real ones.
    A row with no real position pools to zeros."""
    if how not in POOLS:
        raise ValueError(f"rr.pool: expected one of {POOLS}, got {how!r}")
    x, m = x.float(), mask.bool()[..., None]
    if how == "max":
        out = x.masked_fill(~m, float("-inf")).amax(1)
        return torch.where(m.any(1), out, torch.zeros_like(out))
    return torch.where(m, x, torch.zeros_like(x)).sum(1) / m.sum(1).clamp(min=1)


def conditioning_features(tokens: Tensor, source: nn.Module | Tensor) -> tuple[Tensor, Tensor]:
    """The text side per position: features [B, N, D] of ``tokens`` ([B, N], Config A, or
    [B, N, 2], Config B) and the real positions [B, N] (primary token not PAD). ``source``: a
    token embedding (its ``embed``; L2-normalised per position when it normalises the
    conditioning) or a codebook table [vocab, D] (a Config B pair: the sum of its two rows)."""
    real = (tokens[..., 0] if tokens.dim() == 3 else tokens) != PAD_ID
    if isinstance(source, Tensor):
        x = F.embedding(tokens, source.float())
        return (x.sum(2) if tokens.dim() == 3 else x), real
    x = source.embed(tokens).float()
    return (F.normalize(x, dim=-1) if source.l2_normalize else x), real


def cosine_matrix(z: Tensor) -> Tensor:
    """S = z^ z^T with rows L2-normalised (a zero row stays zero) -> [B, B] float32."""
    z = F.normalize(z.float(), dim=-1)
    return z @ z.T


def pair_mask(eligible: Tensor, domain: Tensor, within_domain: bool) -> Tensor:
    """[B, B] bool: ordered pairs (i, j), i != j, of eligible samples (of one domain if asked)."""
    e = eligible.bool()
    pairs = e[:, None] & e[None, :] & ~torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    if within_domain:
        pairs = pairs & (domain[:, None] == domain[None, :])
    return pairs


def similarity_loss(text: Tensor, audio: Tensor, pairs: Tensor) -> Tensor:
    """L_RR = mean over the True entries of ``pairs`` of (S_T - S_A)^2 (module doc); ``text``
    carries no gradient. No pair: a zero that keeps ``audio``'s graph."""
    n = int(pairs.sum())
    if n == 0:
        return audio.float().sum() * 0.0
    diff = cosine_matrix(text.detach()) - cosine_matrix(audio)
    return torch.where(pairs, diff * diff, torch.zeros_like(diff)).sum() / n


# -- settings ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RRSettings:
    """The regulariser of one Phase II method: the config's ``rr:`` section overridden by the
    method's own ``rr:`` entry (whose presence turns RR on)."""

    lam: float
    pool: str
    layer: int                 # hidden-state index (1..n_layers)
    when: str
    text: str
    within_domain: bool

    def to_json(self) -> dict:
        return {"lambda": self.lam, "pool": self.pool, "layer": self.layer, "when": self.when,
                "text": self.text, "within_domain": self.within_domain}


def method_settings(cfg: dict, method: str, n_layers: int) -> RRSettings | None:
    """The RR settings of Phase II method ``method`` (None: it has no ``rr:`` entry)."""
    if "rr" not in cfg["methods"][method]:
        return None
    merged = {**cfg["rr"], **(cfg["methods"][method]["rr"] or {})}
    where = f"methods.{method}.rr / rr"
    checks = (("pool", POOLS), ("when", WHEN), ("text", TEXT))
    for key, allowed in checks:
        if merged[key] not in allowed:
            raise ValueError(f"{where}: {key} must be one of {allowed}, got {merged[key]!r}")
    lam = float(merged["lambda"])
    if lam < 0:
        raise ValueError(f"{where}: lambda must be >= 0, got {lam}")
    layer = n_layers if merged["layer"] is None else int(merged["layer"])
    if not 1 <= layer <= n_layers:
        raise ValueError(f"{where}: layer {layer} outside 1..{n_layers} (the backbone's gated units)")
    if merged["text"] == "codebook" and not merged["within_domain"]:
        raise ValueError(f"{where}: text codebook puts the speech and audio codebooks in separate blocks "
                         f"(cross-domain similarity 0 by construction); set within_domain: true")
    return RRSettings(lam, merged["pool"], layer, merged["when"], merged["text"], bool(merged["within_domain"]))


# -- the text side ------------------------------------------------------------------------------

def codebook_table(token_meta: dict, where: str) -> Tensor:
    """[vocab_size, sum of code dims] from the tokenizers the token store was encoded with (its
    meta): stream s's code c at row ``offset_s + c``, in stream s's own block of columns; row
    PAD_ID is zero."""
    from ..tokenizers.streams import load_tokenizer

    for key in ("tokenizers", "offsets", "vocab_size"):
        if key not in token_meta:
            raise KeyError(f"{where}: token store meta has no {key!r} (re-run `agrepa tokens encode`)")
    books = {}
    for stream, info in token_meta["tokenizers"].items():
        impl = load_tokenizer(info["dir"]).impl
        book = getattr(impl, "centroids", None)
        book = getattr(impl, "codebook", None) if book is None else book
        if book is None:
            raise ValueError(f"rr.text codebook: the {stream} tokenizer ({info['kind']}, {info['dir']}) exposes no "
                             f"codebook vectors; use rr.text warmup or live")
        books[stream] = book.detach().float()
    table = torch.zeros(int(token_meta["vocab_size"]), sum(b.shape[1] for b in books.values()))
    col = 0
    for stream, book in books.items():
        off = int(token_meta["offsets"][stream])
        table[off:off + book.shape[0], col:col + book.shape[1]] = book
        col += book.shape[1]
    table[PAD_ID] = 0
    return table


def frozen_embedding(template: nn.Module, model_state: dict, where: str) -> nn.Module:
    """A frozen copy of the token embedding ``template`` holding the ``token_emb.*`` weights of a
    model state dict (the warm-up checkpoint's training weights: what every branch starts from)."""
    state = {k[len("token_emb."):]: v for k, v in model_state.items() if k.startswith("token_emb.")}
    if not state:
        raise KeyError(f"{where}: the model state has no token embedding (token_emb.*)")
    frozen = copy.deepcopy(template)
    frozen.load_state_dict(state)
    return frozen.float().eval().requires_grad_(False)


def text_source(settings: RRSettings, token_emb: nn.Module, init_ck: dict | None, token_meta: dict,
                where: str) -> nn.Module | Tensor | None:
    """The frozen text side of ``settings.text``: the warm-up's token embedding, the codebook
    table, or None for ``live`` (the model's embedding, read at each step)."""
    if settings.text == "live":
        return None
    if settings.text == "codebook":
        return codebook_table(token_meta, where)
    if init_ck is None:
        raise ValueError("rr.text warmup: the warm-up's token embedding needs the warm-up checkpoint (--init)")
    return frozen_embedding(token_emb, init_ck["model"], "warm-up checkpoint (--init)")


# -- the term ---------------------------------------------------------------------------------

class SimilarityRegulariser:
    """L_RR of a Phase II method on a batch (module doc); holds no trainable parameter."""

    def __init__(self, settings: RRSettings, source: nn.Module | Tensor | None):
        self.settings = settings
        self.source = source          # frozen text side (text_source); None: the live embedding

    def to(self, device) -> "SimilarityRegulariser":
        if self.source is not None:
            self.source = self.source.to(device)
        return self

    @torch.no_grad()
    def text_side(self, tokens: Tensor, live: nn.Module) -> Tensor:
        """T [B, D]: the pooled conditioning-token features over the real (non-PAD) positions;
        ``live`` is the model's token embedding (used by ``rr.text: live``)."""
        x, real = conditioning_features(tokens, self.source if self.source is not None else live)
        return masked_pool(x, real, self.settings.pool)

    def audio_side(self, hidden: list[Tensor], mask: Tensor) -> Tensor:
        """A [B, D_l]: h_layer pooled over its real frames (with gradient); ``mask`` [B, T] is the
        full-rate frame mask, subsampled to a U-Net level's resolution as the backbone does
        (:func:`agrepa.model.backbone.frame_mask`)."""
        h = hidden[self.settings.layer]
        return masked_pool(h, frame_mask(mask, h.shape[1]), self.settings.pool)

    def eligible(self, drop_tokens: Tensor) -> Tensor:
        """[B] bool: the samples RR applies to this step (``rr.when``)."""
        return drop_tokens.bool() if self.settings.when == "cfg" else torch.ones_like(drop_tokens, dtype=torch.bool)

    def loss(self, hidden: list[Tensor], batch: dict, drop_tokens: Tensor, live: nn.Module,
             d: dist_mod.Dist) -> Tensor | None:
        """L_RR over the global batch (this process's shard gathered with the others'), or None
        when no pair is eligible this step (then nothing is added, on every rank alike)."""
        text = dist_mod.all_gather_cat(d, self.text_side(batch["tokens"], live))
        eligible = dist_mod.all_gather_cat(d, self.eligible(drop_tokens).long()).bool()
        domain = dist_mod.all_gather_cat(d, batch["domain"])
        pairs = pair_mask(eligible, domain, self.settings.within_domain)
        if not bool(pairs.any()):
            return None
        audio = dist_mod.all_gather_with_grad(d, self.audio_side(hidden, batch["mask"]))
        return similarity_loss(text, audio, pairs)


def build(cfg: dict, method: str, model: nn.Module, init_ck: dict | None, token_meta: dict,
          where: str | Path = "token store") -> SimilarityRegulariser | None:
    """The regulariser of a Phase II method on ``model`` (any backbone: its gated units, whose
    hidden states ``forward(..., return_hidden=True)`` returns, and its token embedding
    ``token_emb``), or None when the method has no ``rr:`` entry."""
    settings = method_settings(cfg, method, model.n_layers)
    if settings is None:
        return None
    log.info("RR on (%s): %s over %s", method, settings.to_json(), list(DOMAINS))
    return SimilarityRegulariser(settings, text_source(settings, model.token_emb, init_ck, token_meta, str(where)))
