"""Training objectives: flow matching, BiT-C at the input interface, (AG-)REPA heads.

Flow matching (paper Eq. 23) on the optimal-transport path::

    x_t = (1 - t) x0 + t x1,   x0 ~ N(0, I),  x1 = data mel,   target u = x1 - x0
    L_FM = mean_b [ sum_{f,m} w_bf (v_bfm - u_bfm)^2 / (n_mels * sum_f w_bf) ]

with w_bf = 1 on real frames (and, if ``train.loss_on_prompt`` is false, 0 on the
prompt frames). Each sample is normalised by its own frame count before the batch
mean, so a global batch split across processes gives exactly the mean of the
per-process losses.

BiT-C (Eq. 3-5): pool the input-interface state h_0 over real frames, LayerNorm,
project with a teacher-specific Linear head, cosine to the cached teacher
embedding of the sample's domain (semantic teacher for speech, acoustic for
audio)::

    L_BiT-C = mean_b  w_{d(b)} (1 - cos(W_{d(b)} LN(pool(h_0)_b), e_b))

REPA / AG-REPA (Eq. 10-12): for every selected layer l a two-layer MLP per
teacher on the pooled h_l::

    L_REPA = sum_{l in S} alpha_l  mean_b (1 - cos(MLP_{l,d(b)}(pool(h_l)_b), e_b))

Baseline: S = {} — no heads exist and the term is absent (``None``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import config as config_mod
from .. import io
from .dataset import DOMAIN_TEACHER, DOMAINS, TEACHERS

CONFIG_KEYS = ("methods.{method}", "train.repa_lambda")  # config sections this module reads


@dataclass
class FMOutput:
    loss: Tensor                 # scalar
    velocity: Tensor             # [B, T, n_mels]
    hidden: list[Tensor] | None  # h_0 .. h_L when asked


def ot_path(x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``x_t = (1 - t) x0 + t x1`` and the target velocity ``x1 - x0``."""
    tt = t.to(x1.dtype).view(-1, *([1] * (x1.dim() - 1)))
    return (1 - tt) * x0 + tt * x1, x1 - x0


def loss_weights(batch: dict, loss_on_prompt: bool = True) -> Tensor:
    """[B, T] float weights of the FM loss: real frames, minus the prompt if asked."""
    w = batch["mask"].bool()
    if not loss_on_prompt:
        w = w & ~batch["prompt_mask"].bool()
    return w.float()


def flow_matching_loss(model: nn.Module, batch: dict, t: Tensor, x0: Tensor, *,
                       loss_on_prompt: bool = True, drop_tokens: Tensor | None = None,
                       drop_prompt: Tensor | None = None, return_hidden: bool = False) -> FMOutput:
    """Masked flow-matching MSE of ``model`` on ``batch`` at times ``t`` [B] from noise ``x0``."""
    x1 = batch["mel"]
    if x0.shape != x1.shape:
        raise ValueError(f"x0 has shape {tuple(x0.shape)}, the batch mel {tuple(x1.shape)}")
    x_t, target = ot_path(x0, x1, t)
    out = model(x_t, t, batch["tokens"], batch["prompt"], mask=batch["mask"],
                return_hidden=return_hidden, drop_tokens=drop_tokens, drop_prompt=drop_prompt)
    v, hidden = out if return_hidden else (out, None)
    w = loss_weights(batch, loss_on_prompt)
    err = ((v.float() - target.float()) ** 2).sum(-1)                       # [B, T]
    err = torch.where(w > 0, err, torch.zeros_like(err))                    # padding never counts
    per_sample = (err * w).sum(1) / (w.sum(1).clamp(min=1) * x1.shape[-1])
    return FMOutput(per_sample.mean(), v, hidden)


def pool(h: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``h`` [B, T, D] over the real frames of ``mask`` [B, T] -> [B, D]."""
    if mask is None:
        return h.mean(1)
    m = mask.to(h.dtype)[..., None]
    return (h * m).sum(1) / m.sum(1).clamp(min=1)


def teacher_target(batch: dict, teacher: str) -> Tensor:
    return batch[f"emb_{teacher}"]


def _per_domain_cos(heads: nn.ModuleDict, pooled: Tensor, batch: dict) -> Tensor:
    """cos(head_{teacher(d_b)}(pooled_b), e_b) for every sample -> [B] (float32)."""
    domain = batch["domain"]
    cos = torch.zeros(pooled.shape[0], device=pooled.device, dtype=torch.float32)
    for d, name in enumerate(DOMAINS):
        sel = domain == d
        if not bool(sel.any()):
            continue
        teacher = DOMAIN_TEACHER[name]
        pred = heads[teacher](pooled[sel]).float()
        cos = cos.index_put((sel.nonzero(as_tuple=True)[0],),
                            F.cosine_similarity(pred, teacher_target(batch, teacher)[sel].float(), dim=-1))
    return cos


class BiTCHeads(nn.Module):
    """Per teacher: LayerNorm(dim) + Linear(dim -> teacher_dim) on a pooled hidden state.

    Trained at the input interface (hidden index 0); frozen and shared across all
    layers by the LASP probe (:meth:`cosine`).
    """

    def __init__(self, dim: int, teacher_dims: dict[str, int], weights: dict[str, float] | None = None):
        super().__init__()
        missing = [t for t in TEACHERS if t not in teacher_dims]
        if missing:
            raise KeyError(f"teacher_dims: missing {missing}")
        self.dim = dim
        self.teacher_dims = {t: int(teacher_dims[t]) for t in TEACHERS}
        unknown = sorted(set(weights or {}) - set(DOMAINS))
        if unknown:
            raise KeyError(f"train.bitc_weight: unknown domain(s) {unknown}; expected {list(DOMAINS)}")
        self.weights = {d: float((weights or {}).get(d, 1.0)) for d in DOMAINS}
        self.heads = nn.ModuleDict({t: nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, self.teacher_dims[t]))
                                    for t in TEACHERS})

    def project(self, h: Tensor, mask: Tensor | None, domain_name: str) -> Tensor:
        """Head of ``domain_name``'s teacher on pool(h) -> [B, teacher_dim]."""
        return self.heads[DOMAIN_TEACHER[domain_name]](pool(h, mask))

    def cosine(self, h: Tensor, mask: Tensor | None, domain_name: str, target: Tensor) -> Tensor:
        """cos(head(LN(pool(h))), target) per sample [B], with the head of the teacher of
        ``domain_name`` ("speech" -> semantic, "audio" -> acoustic); ``target`` [B, D_teacher]
        is the cached teacher embedding (``batch["emb_semantic"]`` / ``batch["emb_acoustic"]``)."""
        if domain_name not in DOMAIN_TEACHER:
            raise ValueError(f"domain {domain_name!r}: expected one of {list(DOMAINS)}")
        pred = self.project(h, mask, domain_name).float()
        return F.cosine_similarity(pred, target.to(pred.device).float(), dim=-1)

    def loss(self, h0: Tensor, batch: dict) -> Tensor:
        """L_BiT-C on the interface state ``h0`` (domain weights ``train.bitc_weight``)."""
        cos = _per_domain_cos(self.heads, pool(h0, batch["mask"]), batch)
        w = torch.tensor([self.weights[d] for d in DOMAINS], device=cos.device)[batch["domain"]]
        return (w * (1 - cos)).mean()


class REPAHeads(nn.Module):
    """Per selected layer l (1-based hidden index) and teacher: Linear-SiLU-Linear MLP.

    ``layers=[]`` creates no parameters and :meth:`loss` returns ``None``.
    """

    def __init__(self, layers: list[int], weights: list[float], dim: int, teacher_dims: dict[str, int],
                 hidden: int | None = None):
        super().__init__()
        if len(layers) != len(weights):
            raise ValueError(f"REPA: {len(layers)} layers but {len(weights)} weights")
        if len(set(layers)) != len(layers):
            raise ValueError(f"REPA: repeated layer in {layers}")
        self.layers = [int(l) for l in layers]
        self.weights = [float(w) for w in weights]
        hidden = int(hidden or dim)
        self.heads = nn.ModuleDict({
            str(l): nn.ModuleDict({t: nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(),
                                                    nn.Linear(hidden, int(teacher_dims[t])))
                                   for t in TEACHERS})
            for l in self.layers})

    @property
    def active(self) -> bool:
        """True when there is a REPA term (some layer is aligned); False for the baseline."""
        return bool(self.layers)

    def per_layer(self, hidden: list[Tensor], batch: dict) -> dict[int, Tensor]:
        """Mean (1 - cos) of every selected layer -> {layer: scalar}."""
        out = {}
        for l in self.layers:
            if l < 1 or l >= len(hidden):
                raise ValueError(f"REPA layer {l} outside 1..{len(hidden) - 1}")
            cos = _per_domain_cos(self.heads[str(l)], pool(hidden[l], batch["mask"]), batch)
            out[l] = (1 - cos).mean()
        return out

    def loss(self, hidden: list[Tensor], batch: dict) -> Tensor | None:
        if not self.layers:
            return None
        per = self.per_layer(hidden, batch)
        return sum(w * per[l] for l, w in zip(self.layers, self.weights))


def read_selection(path: str | os.PathLike, n_layers: int) -> tuple[list[int], list[float]]:
    """``(layers, weights)`` from a selection JSON ``{"layers": [...], "weights": [...]}``."""
    sel = io.read_json(path)
    if not isinstance(sel, dict) or "layers" not in sel or "weights" not in sel:
        raise KeyError(f"{path}: selection needs 'layers' and 'weights'")
    layers, weights = [int(l) for l in sel["layers"]], [float(w) for w in sel["weights"]]
    if len(layers) != len(weights) or not layers:
        raise ValueError(f"{path}: 'layers' and 'weights' must be non-empty and of equal length")
    if any(not 1 <= l <= n_layers for l in layers):
        raise ValueError(f"{path}: layers {layers} outside 1..{n_layers}")
    if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-4:
        raise ValueError(f"{path}: weights {weights} must be non-negative and sum to 1")
    return layers, weights


def method_layers(cfg: dict, method: str, selection: str | os.PathLike | None,
                  n_layers: int) -> tuple[list[int], list[float]]:
    """(S, alpha) of a method of the ``methods:`` grid.

    ``{layers: [...]}``: fixed-layer REPA, alpha_l = ``train.repa_lambda`` (empty = baseline);
    ``{selection: <strategy>}``: S and alpha from the selection JSON (required).
    """
    try:
        spec = cfg["methods"][method]
    except KeyError:
        raise KeyError(f"methods.{method}: unknown method (not in the config's methods:)") from None
    if "selection" in spec:
        if selection is None:
            raise ValueError(f"methods.{method}: uses selection {spec['selection']!r}; pass --selection JSON")
        return read_selection(selection, n_layers)
    if "layers" not in spec:
        raise KeyError(f"methods.{method}: needs 'layers' or 'selection'")
    layers = config_mod.check_layers(spec["layers"], n_layers, f"methods.{method}.layers")
    if selection is not None:
        raise ValueError(f"methods.{method}: fixed layers {layers}; --selection is not used by this method")
    lam = float(cfg["train"]["repa_lambda"])
    return layers, [lam] * len(layers)
