"""Training objectives: flow matching, BiT-C at the input interface, (AG-)REPA heads.

Flow matching (paper Eq. 23) on the optimal-transport path::

    x_t = (1 - t) x0 + t x1,   x0 ~ N(0, sigma^2 I),  x1 = data mel,   target u = x1 - x0
    L_FM = mean_b [ sum_{f,m} w_bf (v_bfm - u_bfm)^2 / (n_mels * sum_f w_bf) ]

with sigma = ``train.noise_scale`` and w_bf = 1 on real frames (and, if
``train.loss_on_prompt`` is false, 0 on the prompt frames). Each sample is normalised by
its own frame count before the batch mean, so a global batch split across processes
gives exactly the mean of the per-process losses.

BiT-C (Eq. 3-5) at the input interface, the token-embedding output (Sec. 4.1): pool the
token embedding e_tok (interpolated to the mel frames, before CFG dropout) over real
frames, LayerNorm, project with a teacher-specific Linear head, cosine to the cached
teacher embedding of the sample's domain (semantic teacher for speech, acoustic for
audio); samples whose tokens were CFG-dropped carry no loss (k_b = 0)::

    L_BiT-C = mean_b  k_b w_{d(b)} (1 - cos(W_{d(b)} LN(pool(e_tok)_b), e_b))

The head is the authors' (``train.bitc_head_affine: false``): LN without affine
parameters and W without bias, orthogonally initialised. ``true`` gives LN its scale and
shift and W a bias. A bias can point every layer's projection at the teacher's mean
direction, which shrinks the LASP contrasts between layers. ``train.bitc_objective``
(per token config) decides what the loss trains: ``full`` the heads and the token
embedding, ``heads`` the heads only (the token embedding detached, so BiT-C leaves the
model as FM alone would train it while the heads stay fit for LASP and Cos-SEM), ``none``
nothing (no term).

REPA / AG-REPA (Eq. 10-12): a plan gives each domain d its aligned layers S_d with
weights alpha_{d,l}; for each a two-layer MLP (Linear-GELU-Linear) of the domain's
teacher on the L2-normalised pooled h_l (as the authors' code)::

    L_REPA = mean_b  sum_{l in S_d(b)} alpha_{d(b),l} (1 - cos(MLP_{l,d(b)}(pool(h_l)_b / |.|), e_b))

Per-domain selection gives S_speech != S_audio; fixed layer sets and the merged
selection give both domains the same set. Weights (``train.repa_weighting``):
``total`` makes sum_l alpha_{d,l} = ``train.repa_lambda`` for every method (fixed sets
split lambda uniformly, selections by their scores); ``literal`` reads Eq. 11 as
printed (selection alpha_l = s_l / sum s, summing to 1) and gives every fixed layer
lambda (REPA's per-layer weight). Baseline: S = {} — no heads, no term.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import config as config_mod
from .. import io
from ..model.backbone import frame_mask
from .dataset import DOMAIN_TEACHER, DOMAINS, TEACHERS

CONFIG_KEYS = ('methods.{method}', 'model.arch', 'train.repa_lambda', 'train.repa_weighting')  # config sections this module reads


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
                       drop_prompt: Tensor | None = None, return_hidden: bool = False,
                       padded: bool | None = None) -> FMOutput:
    """Masked flow-matching MSE of ``model`` on ``batch`` at times ``t`` [B] from noise ``x0``.
    ``padded=False`` (known on the host): the batch has no padding, so attention needs no mask
    (:meth:`agrepa.model.backbone.Backbone.forward`); None: the model reads the mask."""
    x1 = batch["mel"]
    if x0.shape != x1.shape:
        raise ValueError(f"x0 has shape {tuple(x0.shape)}, the batch mel {tuple(x1.shape)}")
    x_t, target = ot_path(x0, x1, t)
    extra = {} if padded is None else {"padded": padded}
    out = model(x_t, t, batch["tokens"], batch["prompt"], mask=batch["mask"],
                return_hidden=return_hidden, drop_tokens=drop_tokens, drop_prompt=drop_prompt, **extra)
    v, hidden = out if return_hidden else (out, None)
    w = loss_weights(batch, loss_on_prompt)
    err = ((v.float() - target.float()) ** 2).sum(-1)                       # [B, T]
    err = torch.where(w > 0, err, torch.zeros_like(err))                    # padding never counts
    per_sample = (err * w).sum(1) / (w.sum(1).clamp(min=1) * x1.shape[-1])
    return FMOutput(per_sample.mean(), v, hidden)


def pool(h: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``h`` [B, T_l, D] over the real frames of ``mask`` [B, T] -> [B, D]. A hidden state
    at a U-Net's coarser rate (T_l < T) uses the mask subsampled as the U-Net subsamples it
    (:func:`agrepa.model.backbone.frame_mask`)."""
    if mask is None:
        return h.mean(1)
    m = frame_mask(mask, h.shape[1]).to(h.dtype)[..., None]
    return (h * m).sum(1) / m.sum(1).clamp(min=1)


def teacher_target(batch: dict, teacher: str) -> Tensor:
    return batch[f"emb_{teacher}"]


def domain_rows(batch: dict, d: int) -> Tensor:
    """The row indices [n] of the batch's domain-``d`` samples, in order. From the host-side
    ``domain_rows`` that :meth:`~agrepa.training.dataset.TrainingData.collate` writes (a tensor
    made from host ints: no device-to-host read, so the step needs no sync), else from the
    ``domain`` tensor (a sync on a GPU). Both give the same indices, hence the same arithmetic."""
    host = batch.get("domain_rows")
    if host is not None:
        return torch.tensor(host[d], dtype=torch.long, device=batch["domain"].device)
    return (batch["domain"] == d).nonzero(as_tuple=True)[0]


def _per_domain_cos(heads: nn.ModuleDict, pooled: Tensor, batch: dict) -> Tensor:
    """cos(head_{teacher(d_b)}(pooled_b), e_b) for every sample -> [B] (float32)."""
    cos = torch.zeros(pooled.shape[0], device=pooled.device, dtype=torch.float32)
    for d, name in enumerate(DOMAINS):
        rows = domain_rows(batch, d)
        if rows.numel() == 0:
            continue
        teacher = DOMAIN_TEACHER[name]
        pred = heads[teacher](pooled[rows]).float()
        cos = cos.index_put((rows,), F.cosine_similarity(pred, teacher_target(batch, teacher)[rows].float(), dim=-1))
    return cos


BITC_OBJECTIVES = ("full", "heads", "none")


class BiTCHeads(nn.Module):
    """Per teacher: LayerNorm(dim) + Linear(dim -> teacher_dim) on a pooled state.

    ``affine=False`` (the authors'): LayerNorm without scale and shift, Linear without bias,
    orthogonal init; ``affine=True``: both affine (the form of checkpoints written before
    ``train.bitc_head_affine``; :meth:`affine_of` tells a state dict's form).
    Trained on the token embedding (the input interface, width ``model.token_dim``);
    frozen and shared across all layers by the LASP probe (:meth:`cosine`), which needs
    the token embedding as wide as the hidden states.
    """

    def __init__(self, dim: int, teacher_dims: dict[str, int], weights: dict[str, float] | None = None,
                 affine: bool = False):
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
        self.affine = bool(affine)
        self.heads = nn.ModuleDict({t: self._head(dim, self.teacher_dims[t]) for t in TEACHERS})

    def _head(self, dim: int, out: int) -> nn.Sequential:
        if self.affine:
            return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out))
        head = nn.Sequential(nn.LayerNorm(dim, elementwise_affine=False), nn.Linear(dim, out, bias=False))
        nn.init.orthogonal_(head[1].weight)
        return head

    @staticmethod
    def affine_of(state_dict: dict) -> bool:
        """Whether a BiT-C state dict holds the affine head (LayerNorm weight and Linear bias)."""
        return any(k.endswith(".0.weight") for k in state_dict)

    def project(self, h: Tensor, mask: Tensor | None, domain_name: str) -> Tensor:
        """Head of ``domain_name``'s teacher on pool(h) -> [B, teacher_dim]."""
        return self.heads[DOMAIN_TEACHER[domain_name]](pool(h, mask))

    def cosine(self, h: Tensor, mask: Tensor | None, domain_name: str, target: Tensor) -> Tensor:
        """cos(head(LN(pool(h))), target) per sample [B], with the head of the teacher of
        ``domain_name`` ("speech" -> semantic, "audio" -> acoustic); ``target`` [B, D_teacher]
        is the cached teacher embedding (``batch["emb_semantic"]`` / ``batch["emb_acoustic"]``)."""
        if domain_name not in DOMAIN_TEACHER:
            raise ValueError(f"domain {domain_name!r}: expected one of {list(DOMAINS)}")
        if h.shape[-1] != self.dim:
            raise ValueError(f"the BiT-C heads take states of width {self.dim} (model.token_dim), got "
                             f"{h.shape[-1]}: LASP shares them across layers only when model.token_dim "
                             f"equals model.dim (set model.token_dim: null)")
        pred = self.project(h, mask, domain_name).float()
        return F.cosine_similarity(pred, target.to(pred.device).float(), dim=-1)

    def loss(self, tok: Tensor, batch: dict, keep: Tensor | None = None, objective: str = "full") -> Tensor:
        """L_BiT-C on the token embedding ``tok`` [B, T, token_dim] (domain weights
        ``train.bitc_weight``); ``keep`` [B] bool: False for CFG-dropped samples (no loss).
        ``objective`` (``train.bitc_objective`` of the run's token config): ``full`` trains the
        heads and ``tok``, ``heads`` the heads only (``tok`` detached), ``none`` gives 0."""
        if objective not in BITC_OBJECTIVES:
            raise ValueError(f"train.bitc_objective: expected one of {list(BITC_OBJECTIVES)}, got {objective!r}")
        if objective == "none":
            return tok.new_zeros(()).float()
        if objective == "heads":
            tok = tok.detach()
        cos = _per_domain_cos(self.heads, pool(tok, batch["mask"]), batch)
        w = torch.tensor([self.weights[d] for d in DOMAINS], device=cos.device)[batch["domain"]]
        if keep is not None:
            w = w * keep.to(device=w.device, dtype=w.dtype)
        return (w * (1 - cos)).mean()


Plan = dict[str, list[tuple[int, float]]]   # domain -> [(layer, alpha)], layers 1-based


class REPAHeads(nn.Module):
    """Per aligned (layer l, teacher): Linear-GELU-Linear MLP on the L2-normalised pool(h_l).

    ``plan[d]`` lists the layers (1-based hidden index) samples of domain d are aligned
    at and their alpha; a head exists for each (layer, teacher of a domain aligned
    there). ``dim`` is the width of every hidden state (int) or a list indexed by hidden
    index (``model.hidden_dims``: backbones whose layers differ in width); each head is
    ``repa_hidden`` (or its layer's width) wide. An empty plan (baseline) creates no
    parameters and :meth:`loss` returns ``None``.
    """

    def __init__(self, plan: Plan, dim: int | list[int], teacher_dims: dict[str, int], hidden: int | None = None):
        super().__init__()
        unknown = sorted(set(plan) - set(DOMAINS))
        if unknown:
            raise ValueError(f"REPA plan: unknown domain(s) {unknown}; expected {list(DOMAINS)}")
        self.plan = {d: [(int(l), float(a)) for l, a in plan.get(d, [])] for d in DOMAINS}
        for d, pairs in self.plan.items():
            if len({l for l, _ in pairs}) != len(pairs):
                raise ValueError(f"REPA: repeated layer in the {d} set {[l for l, _ in pairs]}")
        if not isinstance(dim, int) and any(not 1 <= l < len(dim) for l in self.layers):
            raise ValueError(f"REPA layers {self.layers} outside 1..{len(dim) - 1}")
        dims = {l: int(dim if isinstance(dim, int) else dim[l]) for l in self.layers}
        wanted = {(l, DOMAIN_TEACHER[d]) for d, pairs in self.plan.items() for l, _ in pairs}
        self.heads = nn.ModuleDict({
            str(l): nn.ModuleDict({t: nn.Sequential(nn.Linear(dims[l], int(hidden or dims[l])), nn.GELU(),
                                                    nn.Linear(int(hidden or dims[l]), int(teacher_dims[t])))
                                   for t in TEACHERS if (l, t) in wanted})
            for l in self.layers})

    @property
    def layers(self) -> list[int]:
        """Every aligned layer (any domain), ascending."""
        return sorted({l for pairs in self.plan.values() for l, _ in pairs})

    @property
    def active(self) -> bool:
        """True when there is a REPA term (some layer is aligned); False for the baseline."""
        return bool(self.layers)

    def per_sample(self, hidden: list[Tensor], batch: dict) -> Tensor:
        """sum over the sample's domain's layers of alpha (1 - cos) -> [B] (float32)."""
        domain, mask = batch["domain"], batch["mask"]
        out = torch.zeros(domain.shape[0], device=domain.device, dtype=torch.float32)
        for d_idx, d in enumerate(DOMAINS):
            rows = domain_rows(batch, d_idx)
            if not self.plan[d] or rows.numel() == 0:
                continue
            teacher = DOMAIN_TEACHER[d]
            target = teacher_target(batch, teacher)[rows].float()
            for l, alpha in self.plan[d]:
                if l < 1 or l >= len(hidden):
                    raise ValueError(f"REPA layer {l} outside 1..{len(hidden) - 1}")
                z = F.normalize(pool(hidden[l][rows], None if mask is None else mask[rows]), dim=-1)
                cos = F.cosine_similarity(self.heads[str(l)][teacher](z).float(), target, dim=-1)
                out = out.index_add(0, rows, alpha * (1 - cos))
        return out

    def loss(self, hidden: list[Tensor], batch: dict) -> Tensor | None:
        if not self.active:
            return None
        return self.per_sample(hidden, batch).mean()


def plan_to_json(plan: Plan) -> dict:
    """``{domain: {"layers": [...], "weights": [...]}}`` (checkpoints, logs)."""
    return {d: {"layers": [l for l, _ in plan.get(d, [])], "weights": [a for _, a in plan.get(d, [])]}
            for d in DOMAINS}


def plan_from_json(data: dict) -> Plan:
    return {d: list(zip((int(l) for l in data[d]["layers"]), (float(a) for a in data[d]["weights"])))
            for d in DOMAINS}


def read_selection(path: str | os.PathLike, n_layers: int) -> dict[str, tuple[list[int], list[float]]]:
    """The layer sets training uses from a selection JSON (``agrepa select``): per domain
    ``(layers, weights)`` with weights summing to 1 — each domain's own set
    (``"mode": "per_domain"``) or the merged set for both (``"merged"``)."""
    sel = io.read_json(path)
    if not isinstance(sel, dict) or not {"mode", "sets"} <= set(sel):
        raise KeyError(f"{path}: a selection JSON needs 'mode' and 'sets' (written by `agrepa select`)")
    if sel["mode"] not in ("per_domain", "merged"):
        raise ValueError(f"{path}: mode {sel['mode']!r}: expected per_domain or merged")
    out = {}
    for d in DOMAINS:
        key = d if sel["mode"] == "per_domain" else "merged"
        if key not in sel["sets"]:
            raise KeyError(f"{path}: sets has no {key!r} entry")
        layers = [int(l) for l in sel["sets"][key]["layers"]]
        weights = [float(w) for w in sel["sets"][key]["weights"]]
        if len(layers) != len(weights) or not layers:
            raise ValueError(f"{path}: sets.{key}: 'layers' and 'weights' must be non-empty and of equal length")
        if any(not 1 <= l <= n_layers for l in layers):
            raise ValueError(f"{path}: sets.{key}: layers {layers} outside 1..{n_layers}")
        if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-4:
            raise ValueError(f"{path}: sets.{key}: weights {weights} must be non-negative and sum to 1")
        out[d] = (layers, weights)
    return out


def method_plan(cfg: dict, method: str, selection: str | os.PathLike | None, n_layers: int) -> Plan:
    """The REPA plan of a method of the ``methods:`` grid (see the module doc for the weights).

    ``{layers: [...]}``: fixed-layer REPA, the same set for both domains (empty = baseline);
    ``{selection: <strategy>}``: per-domain (or merged) sets and weights from the selection JSON.
    """
    try:
        spec = cfg["methods"][method]
    except KeyError:
        raise KeyError(f"methods.{method}: unknown method (not in the config's methods:)") from None
    lam, weighting = float(cfg["train"]["repa_lambda"]), cfg["train"]["repa_weighting"]
    if weighting not in ("total", "literal"):
        raise ValueError(f"train.repa_weighting: expected total or literal, got {weighting!r}")
    if "selection" in spec:
        if selection is None:
            raise ValueError(f"methods.{method}: uses selection {spec['selection']!r}; pass --selection JSON")
        scale = lam if weighting == "total" else 1.0
        return {d: [(l, scale * w) for l, w in zip(*lw)] for d, lw in read_selection(selection, n_layers).items()}
    if "layers" not in spec:
        raise KeyError(f"methods.{method}: needs 'layers' or 'selection'")
    layers = config_mod.check_layers(spec["layers"], n_layers, f"methods.{method}.layers")
    if selection is not None:
        raise ValueError(f"methods.{method}: fixed layers {layers}; --selection is not used by this method")
    alpha = (lam / len(layers) if weighting == "total" else lam) if layers else 0.0
    return {d: [(l, alpha) for l in layers] for d in DOMAINS}


def method_config(cfg: dict, method: str) -> dict:
    """The config a Phase II branch of ``method`` trains with: the method's ``train:`` entry
    (if any; :func:`agrepa.config.branch_train` checks it) overrides the CFG dropout of its
    branch -- ``train.cfg_mode`` and the drop rates, nothing else, so data, length and
    optimiser stay those of every other branch."""
    over = config_mod.branch_train(cfg, method)
    return config_mod.deep_merge(cfg, {"train": over}) if over else cfg
