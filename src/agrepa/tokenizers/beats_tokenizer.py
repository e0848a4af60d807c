"""BEATs' acoustic tokenizer (Chen et al., 2022): Config B's BEATs stream at paper scale.

The authors' dual-codebook code takes the BEATs tokens from the official
tokenizer checkpoint (``Tokenizer_iter3_plus_AS2M.pt``, ``Tokenizers.extract_labels``).
Pipeline, per 16 kHz clip::

    BEATs trunk (kaldi fbank -> 16 x 16 patches -> LayerNorm -> projection -> encoder),
        exactly :class:`agrepa.teachers.beats.BEATs` -> x [N, D]
    q   = Linear(D, D) - Tanh - Linear(D, quant_dim)        (``quantize_layer``)
    q   = q / ||q||                                          (the quantizer's l2norm)
    id  = argmin_k ||q - e_k||^2,  e = quantize.embedding.weight [quant_n, quant_dim]

one id per patch in (time, freq) order: 8 labels per 160 ms step, 50 labels/s,
granularity 8 (:mod:`agrepa.tokenizers.timing`), ``quant_n`` = 1024 codes.

Checkpoint format (the official one): ``{"cfg": {BEATs fields + quant_n,
quant_dim}, "model": state_dict}``, read with ``torch.load(weights_only=True)``.
The quantizer's EMA statistics (``cluster_size``, ``embed_avg``, ``initted``)
are training state and are not needed to tokenize; any other unknown or missing
key is an error naming it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import io
from ..teachers.beats import SAMPLE_RATE, BEATs, BEATsConfig, check_state_keys, read_official_checkpoint

TRUNK_PREFIXES = ("patch_embedding.", "layer_norm.", "post_extract_proj.", "encoder.")
EMA_STATE = ("quantize.embedding.cluster_size", "quantize.embedding.embed_avg", "quantize.embedding.initted",
             "quantize.cluster_size")


class BeatsTokenizerModel(nn.Module):
    """The BEATs trunk, the quantizer head and the (l2-normalised) codebook."""

    def __init__(self, cfg: BEATsConfig, quant_n: int, quant_dim: int):
        super().__init__()
        self.trunk = BEATs(cfg)
        d = cfg.encoder_embed_dim
        self.quantize_layer = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, quant_dim))
        self.register_buffer("codebook", F.normalize(torch.randn(quant_n, quant_dim), dim=-1))
        self.quant_n, self.quant_dim = int(quant_n), int(quant_dim)

    @torch.no_grad()
    def labels(self, wave: Tensor) -> Tensor:
        """Token ids int64 [(T // 16) * 8] of one 16 kHz waveform [N] in [-1, 1]."""
        return self.quantize(self.trunk.patch_frames(wave))

    @torch.no_grad()
    def labels_batch(self, waves: list[Tensor]) -> list[Tensor]:
        """:meth:`labels` of several waveforms, their patches encoded in one padded, masked
        call (:meth:`BEATs.patch_frames_batch`); the quantizer is per patch."""
        return [self.quantize(x) for x in self.trunk.patch_frames_batch(waves)]

    def quantize(self, patches: Tensor) -> Tensor:
        """Nearest codebook entry (l2-normalised) of each patch feature [P, D] -> int64 [P]."""
        q = F.normalize(self.quantize_layer(patches.float()), dim=-1)
        d2 = q.pow(2).sum(1, keepdim=True) + self.codebook.pow(2).sum(1)[None] - 2 * q @ self.codebook.T
        return d2.argmin(1)

    def official_state(self) -> dict:
        """The state dict in the official key layout."""
        state = dict(self.trunk.state_dict())
        state.update({f"quantize_layer.{k}": v for k, v in self.quantize_layer.state_dict().items()})
        state["quantize.embedding.weight"] = self.codebook
        return state


def save_checkpoint(model: BeatsTokenizerModel, path: str | os.PathLike) -> None:
    """Write ``{"cfg", "model"}`` atomically in the official layout (fixtures, rehearsal)."""
    cfg = {**model.trunk.cfg.to_dict(), "quant_n": model.quant_n, "quant_dim": model.quant_dim}
    io.torch_save(path, {"cfg": cfg, "model": model.official_state()})


def load_checkpoint(path: str | os.PathLike) -> BeatsTokenizerModel:
    ckpt = read_official_checkpoint(path, "BEATs tokenizer checkpoint (tokens.beats.checkpoint)")
    cfg = dict(ckpt["cfg"])
    if "quant_n" not in cfg or "quant_dim" not in cfg:
        raise ValueError(f"{path}: cfg has no quant_n / quant_dim (a BEATs encoder, not its tokenizer?)")
    quant_n, quant_dim = int(cfg.pop("quant_n")), int(cfg.pop("quant_dim"))
    model = BeatsTokenizerModel(BEATsConfig.from_dict(cfg), quant_n, quant_dim)
    state = {k: v for k, v in ckpt["model"].items() if k not in EMA_STATE}
    check_state_keys(path, state, set(model.official_state()), "BEATs tokenizer")
    model.trunk.load_state_dict({k: v for k, v in state.items() if k.startswith(TRUNK_PREFIXES)}, strict=True)
    model.quantize_layer.load_state_dict({k[len("quantize_layer."):]: v for k, v in state.items()
                                          if k.startswith("quantize_layer.")}, strict=True)
    weight = state["quantize.embedding.weight"].float()
    if weight.shape != (quant_n, quant_dim):
        raise ValueError(f"{path}: codebook of shape {tuple(weight.shape)}, cfg says [{quant_n}, {quant_dim}]")
    model.codebook.copy_(weight)
    return model.eval()


class BeatsTokenizer:
    """``encode_wave`` for :class:`agrepa.tokenizers.streams.Tokenizer` (reads 16 kHz audio)."""

    kind = "beats-tokenizer"
    sample_rate = SAMPLE_RATE

    def __init__(self, path: str | os.PathLike, device: str = "cpu"):
        self.path = Path(path) if path else None
        if self.path is None:
            raise FileNotFoundError("tokens.beats.checkpoint: the beats-tokenizer needs the official "
                                    "Tokenizer_iter3_plus_AS2M.pt checkpoint")
        self.model = load_checkpoint(self.path).to(device)
        self.device = device
        self.k = self.model.quant_n
        self.granularity = self.model.trunk.n_freq_patches
        self.frame_rate = 100.0 / self.model.trunk.cfg.input_patch_size * self.granularity
        self.sha256 = io.sha256_file(self.path)

    def encode_wave(self, wave16k: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(wave16k, dtype=np.float32).reshape(-1)).to(self.device)
        return self.model.labels(x).cpu().numpy().astype(np.int64)

    def encode_waves(self, waves16k: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`encode_wave` of several clips in one batch (fp32: an argmin over the codebook
        is where a bf16 rounding would flip ids, so no autocast here)."""
        xs = [torch.from_numpy(np.asarray(w, dtype=np.float32).reshape(-1)).to(self.device) for w in waves16k]
        return [ids.cpu().numpy().astype(np.int64) for ids in self.model.labels_batch(xs)]
