"""BEATs audio encoder (Chen et al., 2022, "BEATs: Audio Pre-Training with Acoustic
Tokenizers"), written for this package so the official checkpoints load into it.

Pipeline (``extract_features``)::

    16 kHz wave * 2^15 -> kaldi fbank (128 bins, 25 ms / 10 ms)
    -> (fbank - 15.41663) / (2 * 6.55582)
    -> Conv2d patch embedding (16 x 16 patches, stride 16) -> tokens in (time, freq) order
    -> LayerNorm -> Linear post_extract_proj (embed_dim -> encoder_embed_dim)
    -> x + GELU(weight-normed grouped Conv1d over tokens)  (convolutional position embedding)
    -> LayerNorm (post-norm encoder) -> L transformer layers -> features [B, N, D]

Each layer is a post-norm (or DeepNorm: residual scaled by alpha = (2L)^(1/4))
transformer layer whose self-attention adds a T5-style bucketed relative
position bias, shared by all layers and *gated* per query (gated relative
position bias, "gru_rel_pos")::

    a, b   = sigmoid(sum-of-4 over Linear_{d_h -> 8}(q_raw) reshaped (2, 4))
    gate   = a * (b * grep_a - 1) + 2
    logits = q k^T / sqrt(d_h) + gate * bias[bucket(j - i)]

Frame features for the teacher (``teachers.acoustic.beats_frames``):

* ``patches`` -- the encoder's output sequence as it is, 8 frequency patches per
  16-fbank-frame (160 ms) time step in (time, freq) order: 50 positions/s with a
  granularity of 8 (the authors' AudioSet-tokenizer input, ``extract_features``);
* ``time`` -- the mean over the 8 frequency patches of each time step (6.25 /s).

The pooled embedding is the same either way (mean over all patches).

Checkpoint format (the official one): a ``torch.save``-d dict with ``cfg`` (a
dict of :class:`BEATsConfig` fields) and ``model`` (the state dict); fine-tuned
checkpoints may also carry ``label_dict``. It holds only plain dicts, strings,
numbers and tensors, so it loads with ``torch.load(..., weights_only=True)``,
which refuses to unpickle arbitrary objects (no code runs on load).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from torch import Tensor, nn

from .. import io
from .base import Teacher

log = logging.getLogger(__name__)

FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
SAMPLE_RATE = 16000
FBANK_RATE = 100.0  # fbank frames per second (10 ms shift)
FRAME_KINDS = ("patches", "time")


@dataclass
class BEATsConfig:
    """Fields of the official config dict (names kept so ``cfg`` loads as is)."""
    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_wise_gradient_decay_ratio: float = 1.0
    layer_norm_first: bool = False
    deep_norm: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False
    finetuned_model: bool = False
    predictor_dropout: float = 0.1
    predictor_class: int = 527

    @classmethod
    def from_dict(cls, d: dict) -> "BEATsConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            log.warning("BEATs cfg: ignoring unknown fields %s", unknown)
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def relative_position_bucket(rel: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """Bidirectional T5 bucketing of relative positions ``rel = j - i``: half the
    buckets per direction; exact buckets for |rel| < n/4, log-spaced up to
    ``max_distance`` beyond, clipped to the last bucket."""
    half = num_buckets // 2
    bucket = (rel > 0).long() * half
    dist = rel.abs()
    exact = half // 2
    log_part = exact + (torch.log(dist.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                        * (half - exact)).long()
    log_part = log_part.clamp(max=half - 1)
    return bucket + torch.where(dist < exact, dist, log_part)


class WeightNormConv1d(nn.Module):
    """Grouped Conv1d with weight normalisation over every dim but the kernel
    axis: ``w = g * v / ||v||`` with g, ||v|| of shape [1, 1, K] (the parameter
    names ``weight_g`` / ``weight_v`` match the official checkpoints)."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.padding, self.groups = kernel // 2, groups
        v = torch.empty(channels, channels // groups, kernel)
        nn.init.normal_(v, std=math.sqrt(4.0 / (kernel * channels)))
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight_g * self.weight_v / self.weight_v.norm(dim=(0, 1), keepdim=True)
        return F.conv1d(x, w, self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drop the extra last step an even kernel with padding k // 2 produces."""

    def __init__(self, kernel: int):
        super().__init__()
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        return x[..., :-self.remove] if self.remove else x


class BEATsAttention(nn.Module):
    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        d, h = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        if d % h:
            raise ValueError(f"BEATs cfg: encoder_embed_dim {d} not divisible by {h} heads")
        self.n_heads, self.head_dim = h, d // h
        self.scaling = self.head_dim ** -0.5
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.q_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)
        self.dropout = nn.Dropout(cfg.attention_dropout)
        if cfg.relative_position_embedding:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, h)
        self.gru_rel_pos = cfg.gru_rel_pos
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, h, 1, 1))

    def position_bias(self, n: int) -> Tensor:
        """Relative position bias [H, n, n] (ungated)."""
        pos = torch.arange(n, device=self.relative_attention_bias.weight.device)
        bucket = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
        return self.relative_attention_bias(bucket).permute(2, 0, 1)

    def forward(self, x: Tensor, pad_mask: Tensor | None, bias: Tensor | None) -> Tensor:
        B, N, D = x.shape
        H, dh = self.n_heads, self.head_dim
        q_raw = self.q_proj(x).view(B, N, H, dh).transpose(1, 2)      # [B, H, N, dh]
        k = self.k_proj(x).view(B, N, H, dh).transpose(1, 2)
        v = self.v_proj(x).view(B, N, H, dh).transpose(1, 2)
        logits = (q_raw * self.scaling) @ k.transpose(-1, -2)           # [B, H, N, N]
        if bias is not None:
            if self.gru_rel_pos:
                g = torch.sigmoid(self.grep_linear(q_raw).view(B, H, N, 2, 4).sum(-1))
                gate_a, gate_b = g[..., 0:1], g[..., 1:2]
                gate = gate_a * (gate_b * self.grep_a - 1.0) + 2.0      # [B, H, N, 1]
                logits = logits + gate * bias[None]
            else:
                logits = logits + bias[None]
        if pad_mask is not None:
            logits = logits.masked_fill(pad_mask[:, None, None, :], float("-inf"))
        attn = self.dropout(torch.softmax(logits.float(), dim=-1).type_as(logits))
        out = (attn @ v).transpose(1, 2).reshape(B, N, D)
        return self.out_proj(out)


class BEATsLayer(nn.Module):
    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        if cfg.activation_fn not in ("gelu", "relu"):
            raise ValueError(f"BEATs cfg: activation_fn {cfg.activation_fn!r} not supported (gelu, relu)")
        d = cfg.encoder_embed_dim
        self.self_attn = BEATsAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.act = F.gelu if cfg.activation_fn == "gelu" else F.relu
        self.drop = nn.Dropout(cfg.dropout)
        self.act_drop = nn.Dropout(cfg.activation_dropout)
        self.pre_norm = cfg.layer_norm_first
        self.alpha = (2 * cfg.encoder_layers) ** 0.25 if cfg.deep_norm else 1.0

    def ffn(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act_drop(self.act(self.fc1(x)))))

    def forward(self, x: Tensor, pad_mask: Tensor | None, bias: Tensor | None) -> Tensor:
        if self.pre_norm:
            x = x + self.drop(self.self_attn(self.self_attn_layer_norm(x), pad_mask, bias))
            return x + self.ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x * self.alpha + self.drop(self.self_attn(x, pad_mask, bias)))
        return self.final_layer_norm(x * self.alpha + self.ffn(x))


class BEATsEncoder(nn.Module):
    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        d = cfg.encoder_embed_dim
        self.pos_conv = nn.Sequential(WeightNormConv1d(d, cfg.conv_pos, cfg.conv_pos_groups),
                                      SamePad(cfg.conv_pos), nn.GELU())
        self.layers = nn.ModuleList(BEATsLayer(cfg) for _ in range(cfg.encoder_layers))
        if cfg.relative_position_embedding:  # one bias table shared by every layer
            shared = self.layers[0].self_attn.relative_attention_bias
            for layer in self.layers[1:]:
                layer.self_attn.relative_attention_bias = shared
        self.relative = cfg.relative_position_embedding
        self.layer_norm = nn.LayerNorm(d)
        self.pre_norm = cfg.layer_norm_first
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        if pad_mask is not None:
            x = x.masked_fill(pad_mask[..., None], 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.pre_norm:
            x = self.layer_norm(x)
        x = self.drop(x)
        bias = self.layers[0].self_attn.position_bias(x.shape[1]) if self.relative else None
        for layer in self.layers:
            x = layer(x, pad_mask, bias)
        return self.layer_norm(x) if self.pre_norm else x


class BEATs(nn.Module):
    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.layer_norm_first and cfg.deep_norm:
            raise ValueError("BEATs cfg: deep_norm and layer_norm_first are exclusive")
        p = cfg.input_patch_size
        if p < 1:
            raise ValueError(f"BEATs cfg: input_patch_size must be >= 1, got {p}")
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=p, stride=p, bias=cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
                                  if cfg.embed_dim != cfg.encoder_embed_dim else None)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.encoder = BEATsEncoder(cfg)
        if cfg.finetuned_model:
            self.predictor_dropout = nn.Dropout(cfg.predictor_dropout)
            self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class)
        else:
            self.predictor = None
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def n_freq_patches(self) -> int:
        return 128 // self.cfg.input_patch_size

    @staticmethod
    def fbank(wave: Tensor) -> Tensor:
        """Normalised 128-bin kaldi fbank [T, 128] of a 16 kHz waveform [N] in [-1, 1]."""
        fb = kaldi.fbank(wave[None].float() * 2 ** 15, num_mel_bins=128, sample_frequency=SAMPLE_RATE,
                         frame_length=25, frame_shift=10)
        return (fb - FBANK_MEAN) / (2 * FBANK_STD)

    def extract_features(self, fbank: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """[B, T, 128] normalised fbank -> encoder output [B, (T // p) * (128 // p), D];
        ``pad_mask`` [B, patches] marks padding patches (zeroed, never attended to)."""
        x = self.patch_embedding(fbank[:, None])                 # [B, E, T/p, F/p]
        x = x.flatten(2).transpose(1, 2)                          # time-major patch order
        x = self.layer_norm(x)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.encoder(self.dropout_input(x), pad_mask)

    def patch_frames_batch(self, waves: list[Tensor]) -> list[Tensor]:
        """:meth:`patch_frames` of several 16 kHz waveforms in one encoder call.

        Each clip's fbank is zero-padded in time to the longest; the patch embedding
        does not overlap patches, and the encoder zeroes the padding patches before
        its convolutional position embedding (so a real patch at the edge sees the
        zeros the one-clip convolution pads with) and masks them as attention keys;
        the relative position bias depends on j - i only. Real patches therefore get
        the one-clip values (up to float summation order)."""
        p, nf = self.cfg.input_patch_size, self.n_freq_patches
        fbanks = []
        for wave in waves:
            fb = self.fbank(wave)
            if fb.shape[0] < p:
                fb = F.pad(fb, (0, 0, 0, p - fb.shape[0]))
            fbanks.append(fb)
        steps = [fb.shape[0] // p for fb in fbanks]
        T = max(steps) * p
        batch = torch.stack([F.pad(fb[: n * p], (0, 0, 0, T - n * p)) for fb, n in zip(fbanks, steps)])
        n_patches = torch.tensor(steps, device=batch.device) * nf
        pad_mask = torch.arange(max(steps) * nf, device=batch.device)[None] >= n_patches[:, None]
        out = self.extract_features(batch, pad_mask if bool(pad_mask.any()) else None)
        return [out[b, : int(n)] for b, n in enumerate(n_patches)]

    def patch_frames(self, wave: Tensor) -> Tensor:
        """Encoder output [(T // p) * (128 // p), D] of one 16 kHz waveform, (time, freq) order."""
        fb = self.fbank(wave)
        p = self.cfg.input_patch_size
        if fb.shape[0] < p:  # shorter than one patch: pad with the normalised zero level
            fb = F.pad(fb, (0, 0, 0, p - fb.shape[0]))
        return self.extract_features(fb[None])[0]

    def time_frames(self, wave: Tensor) -> Tensor:
        """Frame features [T // p, D] of one 16 kHz waveform: mean over frequency patches."""
        x = self.patch_frames(wave)
        return x.view(-1, self.n_freq_patches, x.shape[-1]).mean(1)


def save_checkpoint(model: BEATs, path: str | os.PathLike) -> None:
    """Write ``{"cfg": ..., "model": state_dict}`` atomically (the official layout)."""
    io.torch_save(path, {"cfg": model.cfg.to_dict(), "model": model.state_dict()})


def read_official_checkpoint(path: str | os.PathLike, what: str) -> dict:
    """The ``{"cfg", "model"}`` dict of an official-format file (the encoder's or the tokenizer's).

    Read with ``torch.load(..., weights_only=True)``: the official files hold only dicts,
    strings, numbers and tensors, so the restricted unpickler reads them and nothing in the file
    can execute code. ``what`` names the file in errors (e.g. "BEATs checkpoint").
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated files
        raise ValueError(f"{path}: cannot read as a {what} ({err})") from None
    if not isinstance(ckpt, dict) or "cfg" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path}: a {what} is a dict with 'cfg' and 'model'")
    return ckpt


def check_state_keys(path: str | os.PathLike, state: dict, expected: set, what: str) -> None:
    """Raise a ``ValueError`` naming the missing and unexpected state-dict keys, if any."""
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    parts = ([f"missing keys {missing}"] if missing else []) + ([f"unexpected keys {unexpected}"] if unexpected else [])
    if parts:
        raise ValueError(f"{path}: state dict does not match the {what} config: " + "; ".join(parts))


def load_checkpoint(path: str | os.PathLike) -> BEATs:
    """Build a :class:`BEATs` from an official-format checkpoint; strict key check."""
    ckpt = read_official_checkpoint(path, "BEATs checkpoint")
    model = BEATs(BEATsConfig.from_dict(dict(ckpt["cfg"])))
    check_state_keys(path, ckpt["model"], set(model.state_dict()), "BEATs")
    model.load_state_dict(ckpt["model"], strict=True)
    return model.eval()


class BeatsTeacher(Teacher):
    name = "beats"
    sample_rate = SAMPLE_RATE

    def __init__(self, model: BEATs, weights_sha256: str, device: str = "cpu", frames: str = "patches"):
        if frames not in FRAME_KINDS:
            raise ValueError(f"teachers.acoustic.beats_frames: {frames!r}, expected one of {FRAME_KINDS}")
        self.device = device
        self.model = model.to(device).eval()
        self.dim = model.cfg.encoder_embed_dim
        self.frame_kind = frames
        self.granularity = model.n_freq_patches if frames == "patches" else 1
        self.frame_rate = FBANK_RATE / model.cfg.input_patch_size * self.granularity
        self._sha = weights_sha256

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu", frames: str = "patches") -> "BeatsTeacher":
        model = load_checkpoint(path)
        return cls(model, io.sha256_file(path), device=device, frames=frames)

    def weights_sha256(self) -> str:
        return self._sha

    def settings(self) -> dict:
        return {"cfg": self.model.cfg.to_dict(), "fbank": [FBANK_MEAN, FBANK_STD], "frames": self.frame_kind}

    def frames(self, wave: Tensor) -> Tensor:
        if self.frame_kind == "patches":
            return self.model.patch_frames(wave.to(self.device)).cpu()
        return self.model.time_frames(wave.to(self.device)).cpu()

    def frames_batch(self, waves: list[Tensor]) -> list[Tensor]:
        """One padded, masked encoder call for the batch (fp32 on CPU, bf16 autocast on CUDA)."""
        on_cuda = torch.device(self.device).type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda and torch.cuda.is_bf16_supported()):
            patches = self.model.patch_frames_batch([w.to(self.device) for w in waves])
        out = []
        for x in patches:
            x = x.float()
            if self.frame_kind == "time":
                x = x.view(-1, self.model.n_freq_patches, x.shape[-1]).mean(1)
            out.append(x.cpu())
        return out
