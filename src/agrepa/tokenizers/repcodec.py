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

    def forward(self, x: Tensor, commitment: float) -> dict:
        xn = self.normalise(x)
        z = self.project(xn)
        codes, zq, flat = self.quantise(z)
        if self.training:
            self.codebook.update(flat.detach(), codes.reshape(-1))
        commit_loss = F.mse_loss(z, zq.detach())
        recon = F.mse_loss(self.decoder(z + (zq - z).detach()), xn)
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


def _windows(clips: list[Tensor], n: int, length: int, gen: torch.Generator, granularity: int) -> Tensor:
    """``n`` random windows [n, length, D] from clips at least ``length`` frames long,
    starting on a step boundary (a multiple of ``granularity``)."""
    which = torch.randint(len(clips), (n,), generator=gen).tolist()
    out = []
    for i in which:
        c = clips[i]
        n_starts = (c.shape[0] - length) // granularity + 1
        start = int(torch.randint(n_starts, (1,), generator=gen)) * granularity
        out.append(c[start: start + length])
    return torch.stack(out)


def fit_repcodec(clips: list[Tensor], k: int, code_dim: int, hidden: int, steps: int, lr: float,
                 commitment: float, seed: int, batch_size: int = 16, window: int = 16,
                 restart_every: int = 50, ema_decay: float = 0.8, weight_decay: float = 0.0,
                 granularity: int = 1, device: str | torch.device = "cpu") -> tuple[RepCodec, dict]:
    """Train a RepCodec VQ on a list of per-clip frame tensors [T_i, D] (module doc) on ``device``;
    the random draws (windows, restarts) come from a CPU generator, so they do not depend on it."""
    if not clips:
        raise ValueError("repcodec: no training clips")
    torch.manual_seed(int(seed))
    gen = torch.Generator().manual_seed(int(seed))
    shortest = min(c.shape[0] for c in clips)
    window = max(granularity, min(int(window), shortest) // granularity * granularity)
    clips = [c.float() for c in clips if c.shape[0] >= window]
    allx = torch.cat(clips)
    model = RepCodec(allx.shape[1], hidden, code_dim, k, ema_decay)
    model.mean.copy_(allx.mean(0))
    model.std.copy_(allx.std(0).clamp(min=1e-5))
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.no_grad():  # data-dependent codebook init
        x0 = _windows(clips, max(batch_size, math.ceil(k / window) + 1), window, gen, granularity).to(device)
        z0 = model.project(model.normalise(x0)).transpose(1, 2).reshape(-1, code_dim)
        model.codebook.reset(torch.arange(k, device=device),
                             z0[torch.randperm(z0.shape[0], generator=gen)[:k].to(device)])
    last_used = torch.zeros(k, dtype=torch.long)
    history = []
    for step in tqdm(range(1, int(steps) + 1), desc="repcodec", leave=False):
        out = model(_windows(clips, batch_size, window, gen, granularity).to(device), commitment)
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
    codes = torch.cat([model.encode(c.to(device)).cpu() for c in clips])
    with torch.no_grad():  # reconstruction error over every train frame, clip by clip
        recon = sum(float(model(c[None].to(device), commitment)["recon"]) * c.shape[0] for c in clips) / allx.shape[0]
    model.cpu()
    stats = usage_stats(codes, k)
    stats.update({"recon_mse_first": history[0], "recon_mse_last": history[-1], "recon_mse_train": recon,
                  "steps": int(steps), "window": window})
    return model, stats


def repcodec_settings(scfg: dict) -> dict:
    """``fit_repcodec`` keyword arguments from a ``tokens.<stream>`` section."""
    return {"code_dim": int(scfg["dim"]), "hidden": int(scfg["hidden"]), "steps": int(scfg["steps"]),
            "lr": float(scfg["lr"]), "commitment": float(scfg["commitment"]),
            "batch_size": int(scfg["batch_size"]), "window": int(scfg["window"]),
            "restart_every": int(scfg["restart_every"]), "ema_decay": float(scfg["ema_decay"]),
            "weight_decay": float(scfg["weight_decay"])}
