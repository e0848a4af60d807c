"""RepCodec VQ-VAE (Huang et al., 2024) on teacher frames: the paper's "AudioSet tokenizer".

The layer layout is RepCodec's, as the authors instantiate it for the AudioSet
tokenizer (``models.AudioSetTokenizer``: no striding, hidden = code width).
Frames x [T, D] are standardised with train-set mean/std (ours, see below), then::

    ResUnit(x)  = x + Conv1x1(ELU(Conv_k3(ELU(x))))                 (no biases)
    Enc(x)      = Conv_k3(D->H) -> 2 x [ResUnit, ResUnit, Conv_k3(H->H)]
    z           = Proj(Enc(x)) = Conv_k3(H->C)                       (no bias)
    q_t         = argmin_k ||z_t - e_k||^2,  z_q = e_q,  straight-through z + sg(z_q - z)
    x^          = Dec(z_q) = Conv_k3(C->H) -> 2 x [Conv_k3(H->H), ResUnit, ResUnit] -> Conv_k3(H->D)

Codebook e (K x C): exponential moving averages as in RepCodec's VectorQuantize,
``n_k <- d n_k + (1-d) count_k``, ``m_k <- d m_k + (1-d) sum{z : q = k}``,
``e_k = m_k / n~_k`` with Laplace-smoothed counts ``n~_k = (n_k + eps) / (n + K eps) n``
(d = ``tokens.audio.ema_decay``, RepCodec's 0.8).

Loss = ||x^ - x||^2 (reconstruction, MSE) + w ||z - sg(z_q)||^2 (commitment,
w = ``tokens.audio.commitment``; the authors' AST config: 10), AdamW.

Ours on top of RepCodec (recorded in docs/fidelity.md): the codebook starts from
encoder outputs of the first batch instead of N(0, 1) draws, a code unused for
``restart_every`` steps is moved to a random current encoder output (dead-code
restart; without it most of 4096 codes never win an assignment), and inputs are
standardised per dimension. Tokens are the indices q; codebook usage is reported
as the perplexity of the code histogram over the train frames.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from .. import io
from .kmeans import usage_stats

log = logging.getLogger(__name__)


def conv(cin: int, cout: int, k: int = 3, bias: bool = True) -> nn.Conv1d:
    return nn.Conv1d(cin, cout, k, padding=(k - 1) // 2, bias=bias)


class ResUnit(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1, self.conv2 = conv(ch, ch, 3, bias=False), conv(ch, ch, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.elu(self.conv1(F.elu(x))))


class EncoderBlock(nn.Sequential):
    def __init__(self, ch: int):
        super().__init__(ResUnit(ch), ResUnit(ch), conv(ch, ch, 3))


class DecoderBlock(nn.Sequential):
    def __init__(self, ch: int):
        super().__init__(conv(ch, ch, 3), ResUnit(ch), ResUnit(ch))


class EMACodebook(nn.Module):
    """Nearest-code quantiser whose codebook follows EMAs of its assigned vectors."""

    def __init__(self, k: int, dim: int, decay: float, eps: float = 1e-5):
        super().__init__()
        self.k, self.decay, self.eps = int(k), float(decay), float(eps)
        self.register_buffer("embed", torch.randn(k, dim))
        self.register_buffer("cluster_size", torch.zeros(k))
        self.register_buffer("embed_avg", self.embed.clone())

    def assign(self, flat: Tensor) -> Tensor:
        d2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed.T + self.embed.pow(2).sum(1)[None]
        return d2.argmin(1)

    @torch.no_grad()
    def update(self, flat: Tensor, codes: Tensor) -> None:
        onehot = F.one_hot(codes, self.k).type(flat.dtype)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(onehot.T @ flat, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.k * self.eps) * n
        self.embed.copy_(self.embed_avg / smoothed[:, None])

    @torch.no_grad()
    def reset(self, which: Tensor, vectors: Tensor) -> None:
        """Put codes ``which`` at ``vectors`` (with the weight of one assignment)."""
        self.embed[which] = vectors
        self.embed_avg[which] = vectors
        self.cluster_size[which] = 1.0


class RepCodec(nn.Module):
    kind = "repcodec"

    def __init__(self, in_dim: int, hidden: int, code_dim: int, k: int, ema_decay: float = 0.8):
        super().__init__()
        self.arch = {"in_dim": in_dim, "hidden": hidden, "code_dim": code_dim, "k": k, "ema_decay": ema_decay}
        self.k = k
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.encoder = nn.Sequential(conv(in_dim, hidden, 3, bias=False), EncoderBlock(hidden), EncoderBlock(hidden))
        self.projector = conv(hidden, code_dim, 3, bias=False)
        self.codebook = EMACodebook(k, code_dim, ema_decay)
        self.decoder = nn.Sequential(conv(code_dim, hidden, 3, bias=False), DecoderBlock(hidden),
                                     DecoderBlock(hidden), conv(hidden, in_dim, 3, bias=False))

    def normalise(self, x: Tensor) -> Tensor:
        """[B, T, D] -> normalised [B, D, T]."""
        return ((x - self.mean) / self.std).transpose(1, 2)

    def project(self, xn: Tensor) -> Tensor:
        """Normalised [B, D, T] -> z [B, C, T]."""
        return self.projector(self.encoder(xn))

    def quantise(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z [B, C, T] -> codes [B, T], z_q [B, C, T], flat z [B*T, C]."""
        flat = z.transpose(1, 2).reshape(-1, z.shape[1])
        codes = self.codebook.assign(flat)
        zq = self.codebook.embed[codes].view(z.shape[0], z.shape[2], -1).transpose(1, 2)
        return codes.view(z.shape[0], z.shape[2]), zq, flat

    def forward(self, x: Tensor, commitment: float, mask: Tensor | None = None) -> dict:
        """Losses on x [B, T, D]; ``mask`` [B, T] (True: a real frame) keeps padding out of the
        losses, the codebook EMA and the returned codes / z (padded positions are zero after
        normalisation, as the convolutions' own padding)."""
        xn = self.normalise(x)
        if mask is not None:
            xn = xn * mask[:, None, :].to(xn.dtype)
        z = self.project(xn)
        codes, zq, flat = self.quantise(z)
        real = None if mask is None else mask.reshape(-1)
        if real is not None:
            flat, codes = flat[real], codes.reshape(-1)[real]
        if self.training:
            self.codebook.update(flat.detach(), codes.reshape(-1))
        recon = _masked_mse(self.decoder(z + (zq - z).detach()), xn, mask)
        commit_loss = _masked_mse(z, zq.detach(), mask)
        return {"loss": recon + commitment * commit_loss, "recon": recon, "commit": commit_loss,
                "codes": codes, "z": flat.detach()}

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """Frames [T, D] -> codes int64 [T]."""
        if frames.dim() != 2 or frames.shape[1] != self.arch["in_dim"]:
            raise ValueError(f"repcodec: frames of shape {tuple(frames.shape)}, expected [T, {self.arch['in_dim']}]")
        self.eval()
        return self.quantise(self.project(self.normalise(frames.float()[None])))[0][0]

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / "model.safetensors"
        with io.atomic_path(path) as tmp:
            save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(tmp))
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike, arch: dict) -> "RepCodec":
        path = Path(directory) / "model.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"{path}: RepCodec tokenizer weights missing")
        model = cls(**arch)
        try:
            model.load_state_dict(load_file(str(path)), strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: does not match the architecture in config.json ({err})") from None
        return model.eval()


def _masked_mse(a: Tensor, b: Tensor, mask: Tensor | None) -> Tensor:
    """Mean squared error of [B, C, T] tensors over the positions where ``mask`` [B, T] is True."""
    if mask is None:
        return F.mse_loss(a, b)
    m = mask[:, None, :].to(a.dtype)
    return ((a - b).pow(2) * m).sum() / (m.sum() * a.shape[1]).clamp(min=1)


def fit_window(window: int, granularity: int) -> int:
    """The configured window, rounded down to whole steps of ``granularity`` frames (at least one)."""
    return max(int(granularity), int(window) // int(granularity) * int(granularity))


def sample_windows(lengths: list[int], read, n: int, window: int, seed: int,
                   granularity: int = 1) -> tuple[Tensor, Tensor, dict]:
    """A seeded sample of ``n`` windows of exactly ``window`` frames from clips of ``lengths`` frames,
    read one clip at a time with ``read(i)`` -> frames [T_i, D] (memory: the sample plus one clip).

    Rule (generator seeded with ``seed``): window j takes clip ``c_j`` uniform over the clips and,
    when the clip is at least ``window`` long, a start uniform over the step boundaries (multiples of
    ``granularity``) that keep the window inside it. A shorter clip gives its whole length, zero-padded
    to ``window``: ``mask`` [n, window] is False on the padding. Returns (windows [n, window, D],
    mask, info: windows, window, clips_read, padded_windows, short_clips in the store)."""
    if not lengths:
        raise ValueError("repcodec: no training clips")
    if n < 1:
        raise ValueError(f"repcodec: fit_windows = {n}, expected at least 1")
    gen = torch.Generator().manual_seed(int(seed))
    which = torch.randint(len(lengths), (int(n),), generator=gen).tolist()
    starts = []
    for c in which:
        n_starts = max(0, (lengths[c] - window) // granularity + 1)
        starts.append(int(torch.randint(n_starts, (1,), generator=gen)) * granularity if n_starts else 0)
    by_clip: dict[int, list[int]] = {}
    for j, c in enumerate(which):
        by_clip.setdefault(c, []).append(j)
    x = mask = None
    for c in sorted(by_clip):  # each sampled clip is read once, in store order
        frames = read(c)
        if frames.shape[0] != lengths[c]:
            raise ValueError(f"repcodec: clip {c} has {frames.shape[0]} frames, its header says {lengths[c]}")
        if x is None:
            x = torch.zeros(int(n), window, frames.shape[1])
            mask = torch.zeros(int(n), window, dtype=torch.bool)
        for j in by_clip[c]:
            piece = frames[starts[j]: starts[j] + window]
            x[j, : piece.shape[0]] = piece.float()
            mask[j, : piece.shape[0]] = True
    info = {"windows": int(n), "window": int(window), "clips_read": len(by_clip),
            "padded_windows": int((~mask[:, -1]).sum()),
            "short_clips": sum(1 for t in lengths if t < window), "clips": len(lengths)}
    return x, mask, info


def _masked_moments(x: Tensor, mask: Tensor, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and (unbiased) std of the real frames, accumulated in float64 by chunks."""
    s1 = torch.zeros(x.shape[2], dtype=torch.float64)
    s2 = torch.zeros_like(s1)
    count = 0
    for i in range(0, x.shape[0], chunk):
        real = x[i: i + chunk][mask[i: i + chunk]].double()
        s1 += real.sum(0)
        s2 += real.pow(2).sum(0)
        count += real.shape[0]
    mean = s1 / count
    var = (s2 - count * mean.pow(2)) / max(1, count - 1)
    return mean.float(), var.clamp(min=0).sqrt().float()


def fit_repcodec(windows: Tensor, mask: Tensor, k: int, code_dim: int, hidden: int, steps: int, lr: float,
                 commitment: float, seed: int, batch_size: int = 16, restart_every: int = 50,
                 ema_decay: float = 0.8, weight_decay: float = 0.0,
                 device: str | torch.device = "cpu") -> tuple[RepCodec, dict]:
    """Train a RepCodec VQ (module doc) on ``device`` on a fixed sample of windows [N, L, D] with their
    padding ``mask`` [N, L] (:func:`sample_windows`): every step a batch of ``batch_size`` windows drawn
    from the sample, each of the full length L. The random draws (batches, restarts) come from a CPU
    generator, so they do not depend on the device. Usage and reconstruction are reported on the sample."""
    if windows.dim() != 3 or mask.shape != windows.shape[:2]:
        raise ValueError(f"repcodec: windows {tuple(windows.shape)} / mask {tuple(mask.shape)}, "
                         "expected [N, L, D] / [N, L]")
    n, window, dim = windows.shape
    torch.manual_seed(int(seed))
    gen = torch.Generator().manual_seed(int(seed))
    model = RepCodec(dim, hidden, code_dim, k, ema_decay)
    mean, std = _masked_moments(windows, mask)
    model.mean.copy_(mean)
    model.std.copy_(std.clamp(min=1e-5))
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def batch(size: int) -> tuple[Tensor, Tensor]:
        idx = torch.randint(n, (size,), generator=gen)
        return windows[idx].to(device), mask[idx].to(device)

    with torch.no_grad():  # data-dependent codebook init
        x0, m0 = batch(max(batch_size, math.ceil(k / window) + 1))
        z0 = model.project(model.normalise(x0) * m0[:, None, :]).transpose(1, 2)[m0]
        pick = torch.randperm(z0.shape[0], generator=gen)[:k] if z0.shape[0] >= k else \
            torch.randint(z0.shape[0], (k,), generator=gen)
        model.codebook.reset(torch.arange(k, device=device), z0[pick.to(device)])
    last_used = torch.zeros(k, dtype=torch.long)
    history, shapes = [], set()
    for step in tqdm(range(1, int(steps) + 1), desc="repcodec", leave=False):
        xb, mb = batch(batch_size)
        shapes.add(tuple(xb.shape))
        out = model(xb, commitment, mb)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        last_used[torch.unique(out["codes"]).cpu()] = step
        if restart_every and step % restart_every == 0 and step < steps:
            dead = (step - last_used >= restart_every).nonzero().flatten()
            if len(dead):
                z = out["z"]
                pick = torch.randint(z.shape[0], (len(dead),), generator=gen).to(device)
                model.codebook.reset(dead.to(device), z[pick])
                last_used[dead] = step
        history.append(float(out["recon"].detach()))
        if step % 100 == 0:
            log.info("repcodec step %d: recon %.4f commit %.4f", step, history[-1], float(out["commit"].detach()))
    model.eval()
    codes, sq, real = [], 0.0, 0
    with torch.no_grad():  # usage and reconstruction error over the sample's real frames
        for i in range(0, n, batch_size):
            xb, mb = windows[i: i + batch_size].to(device), mask[i: i + batch_size].to(device)
            out = model(xb, commitment, mb)
            codes.append(out["codes"].cpu())
            frames = int(mb.sum())
            sq += float(out["recon"]) * frames
            real += frames
    model.cpu()
    stats = usage_stats(torch.cat(codes), k)
    stats.update({"recon_mse_first": history[0] if history else float("nan"),
                  "recon_mse_last": history[-1] if history else float("nan"),
                  "recon_mse_train": sq / max(1, real), "steps": int(steps), "window": int(window),
                  "batch_shapes": sorted(list(s) for s in shapes)})
    return model, stats


def repcodec_settings(scfg: dict) -> dict:
    """``fit_repcodec`` keyword arguments from a ``tokens.<stream>`` section (the window length and
    ``fit_windows`` go to :func:`sample_windows`)."""
    return {"code_dim": int(scfg["dim"]), "hidden": int(scfg["hidden"]), "steps": int(scfg["steps"]),
            "lr": float(scfg["lr"]), "commitment": float(scfg["commitment"]),
            "batch_size": int(scfg["batch_size"]),
            "restart_every": int(scfg["restart_every"]), "ema_decay": float(scfg["ema_decay"]),
            "weight_decay": float(scfg["weight_decay"])}
