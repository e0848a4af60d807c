"""RepCodec-style VQ tokenizer (the paper's "AudioSet tokenizer") on teacher frames.

Model (after Huang et al., 2023, "RepCodec"): frames x [T, D] are normalised
with train-set mean/std, then

    z   = Enc(x)       Conv1d(D->H, k3) - GELU - ResBlock(H) - Conv1d(H->C, k1)
    q   = argmin_k ||z_t - e_k||^2          (codebook e: K x C)
    z_q = e_q,   straight-through: z + sg(z_q - z)
    x^  = Dec(z_q) Conv1d(C->H, k3) - GELU - ResBlock(H) - Conv1d(H->D, k1)

Loss = ||x^ - x||^2 (reconstruction, MSE) + ||sg(z) - z_q||^2 (codebook)
       + beta ||z - sg(z_q)||^2 (commitment, beta = tokens.audio.commitment).

The codebook starts from encoder outputs of the first batch (seeded) and a
code unused for ``restart_every`` steps is moved to a random current encoder
output (dead-code restart). Tokens are the indices q; codebook usage is
reported as the perplexity of the code histogram over the train frames.
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


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.net = nn.Sequential(nn.GELU(), nn.Conv1d(ch, ch, 3, padding=1), nn.GELU(), nn.Conv1d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class RepCodec(nn.Module):
    kind = "repcodec"

    def __init__(self, in_dim: int, hidden: int, code_dim: int, k: int):
        super().__init__()
        self.arch = {"in_dim": in_dim, "hidden": hidden, "code_dim": code_dim, "k": k}
        self.k = k
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.encoder = nn.Sequential(nn.Conv1d(in_dim, hidden, 3, padding=1), nn.GELU(), ResBlock(hidden),
                                     nn.Conv1d(hidden, code_dim, 1))
        self.codebook = nn.Parameter(torch.randn(k, code_dim) * 0.1)
        self.decoder = nn.Sequential(nn.Conv1d(code_dim, hidden, 3, padding=1), nn.GELU(), ResBlock(hidden),
                                     nn.Conv1d(hidden, in_dim, 1))

    def normalise(self, x: Tensor) -> Tensor:
        """[B, T, D] -> normalised [B, D, T]."""
        return ((x - self.mean) / self.std).transpose(1, 2)

    def quantise(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z [B, C, T] -> codes [B, T], z_q [B, C, T]."""
        flat = z.transpose(1, 2).reshape(-1, z.shape[1])
        d2 = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.T + self.codebook.pow(2).sum(1)[None])
        codes = d2.argmin(1)
        zq = self.codebook[codes].view(z.shape[0], z.shape[2], -1).transpose(1, 2)
        return codes.view(z.shape[0], z.shape[2]), zq

    def forward(self, x: Tensor, commitment: float) -> dict:
        xn = self.normalise(x)
        z = self.encoder(xn)
        codes, zq = self.quantise(z)
        codebook_loss = F.mse_loss(zq, z.detach())
        commit_loss = F.mse_loss(z, zq.detach())
        zq_st = z + (zq - z).detach()
        recon = F.mse_loss(self.decoder(zq_st), xn)
        return {"loss": recon + codebook_loss + commitment * commit_loss, "recon": recon,
                "codebook": codebook_loss, "commit": commit_loss, "codes": codes, "z": z}

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """Frames [T, D] -> codes int64 [T]."""
        if frames.dim() != 2 or frames.shape[1] != self.arch["in_dim"]:
            raise ValueError(f"repcodec: frames of shape {tuple(frames.shape)}, expected [T, {self.arch['in_dim']}]")
        self.eval()
        return self.quantise(self.encoder(self.normalise(frames.float()[None])))[0][0]

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


def _windows(clips: list[Tensor], n: int, length: int, gen: torch.Generator) -> Tensor:
    """``n`` random windows [n, length, D] from clips at least ``length`` frames long."""
    which = torch.randint(len(clips), (n,), generator=gen).tolist()
    out = []
    for i in which:
        c = clips[i]
        start = int(torch.randint(c.shape[0] - length + 1, (1,), generator=gen))
        out.append(c[start: start + length])
    return torch.stack(out)


def fit_repcodec(clips: list[Tensor], k: int, code_dim: int, hidden: int, steps: int, lr: float,
                 commitment: float, seed: int, batch_size: int = 16, window: int = 16,
                 restart_every: int = 50) -> tuple[RepCodec, dict]:
    """Train a RepCodec VQ on a list of per-clip frame tensors [T_i, D]."""
    if not clips:
        raise ValueError("repcodec: no training clips")
    torch.manual_seed(int(seed))
    gen = torch.Generator().manual_seed(int(seed))
    window = min(int(window), min(c.shape[0] for c in clips))
    clips = [c.float() for c in clips]
    allx = torch.cat(clips)
    model = RepCodec(allx.shape[1], hidden, code_dim, k)
    model.mean.copy_(allx.mean(0))
    model.std.copy_(allx.std(0).clamp(min=1e-5))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with torch.no_grad():  # data-dependent codebook init
        x0 = _windows(clips, max(batch_size, math.ceil(k / window) + 1), window, gen)
        z0 = model.encoder(model.normalise(x0)).transpose(1, 2).reshape(-1, code_dim)
        model.codebook.copy_(z0[torch.randperm(z0.shape[0], generator=gen)[:k]])
    last_used = torch.zeros(k, dtype=torch.long)
    history = []
    for step in tqdm(range(1, int(steps) + 1), desc="repcodec", leave=False):
        out = model(_windows(clips, batch_size, window, gen), commitment)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        last_used[torch.unique(out["codes"])] = step
        if restart_every and step % restart_every == 0 and step < steps:
            dead = (step - last_used >= restart_every).nonzero().flatten()
            if len(dead):
                z = out["z"].detach().transpose(1, 2).reshape(-1, code_dim)
                with torch.no_grad():
                    model.codebook[dead] = z[torch.randint(z.shape[0], (len(dead),), generator=gen)]
                last_used[dead] = step
        history.append(float(out["recon"].detach()))
        if step % 100 == 0:
            log.info("repcodec step %d: recon %.4f commit %.4f", step, history[-1], float(out["commit"].detach()))
    model.eval()
    codes = torch.cat([model.encode(c) for c in clips])
    with torch.no_grad():  # reconstruction error over every train frame, clip by clip
        recon = sum(float(model(c[None], commitment)["recon"]) * c.shape[0] for c in clips) / allx.shape[0]
    stats = usage_stats(codes, k)
    stats.update({"recon_mse_first": history[0], "recon_mse_last": history[-1], "recon_mse_train": recon,
                  "steps": int(steps), "window": window})
    return model, stats
