"""Benchmark: the four backbones' sizes at paper scale against their references, and their
training-step cost at the embedded default's toy size relative to the DiT (one run).

Parameter counts: each backbone is built from ``config/paper.yaml`` on the meta device (no
memory) with a 4096-token vocabulary (the CosyVoice S3 codebook) and compared with its
reference:

* Voicebox: 330M, the paper's count (Le et al. 2023, Sec. 5.1: 24 layers, 16 heads,
  1024/4096 embedding/feed-forward).
* F5-TTS v1 Base: 336M (SWivid/F5-TTS ``configs/F5TTS_v1_Base.yaml``: 22 x 1024, 16 heads,
  ff_mult 2, text_dim 512, 4 ConvNeXt blocks; its 1.35 GB fp32 checkpoint); also counted
  here from the config's layer shapes (2545 pinyin tokens + filler).
* CosyVoice: what we count is the flow model of CosyVoice-300M
  (``examples/libritts/cosyvoice/conf/cosyvoice.yaml``: ``MaskedDiffWithXvec``): token
  embedding 4096 x 512, 6-block Conformer encoder (512, 8 heads, 2048 units, relative
  positions, no conv module), projections to 80 mels, the length regulator, and the
  ``ConditionalDecoder`` estimator (channels [256, 256], 4 Transformer blocks per stage,
  12 mid stages, 8 x 64 heads). The LLM and the HiFT vocoder are not part of the flow model.
  The published papers give no count for it; the reference is counted here from those
  layer shapes (:func:`cosyvoice_flow_reference`).

Ours differ by design in small parts (100 mels instead of 80, a rotary Transformer token
encoder instead of the relative-position Conformer, no length-regulator convolutions, a
speaker projection of the pooled prompt instead of an x-vector); docs/fidelity.md lists them.

Step cost: one FM training step (forward + backward, batch 8, 1.5 s crops, 1 thread) of each
backbone at the sizes of ``config/config.yaml``, median of ``--repeats`` interleaved
repeats, as a ratio to the DiT. Nothing is asserted about absolute times::

    python benchmarks/bench_backbones.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from agrepa import config as config_mod
from agrepa.model import ARCHS, build_model

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 4096


@dataclass(frozen=True)
class Reference:
    total: int
    source: str


def linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def conv(i: int, o: int, k: int, groups: int = 1) -> int:
    return i // groups * o * k + o


def cosyvoice_flow_reference() -> dict[str, int]:
    """Parameters of CosyVoice-300M's flow model by module, from cosyvoice.yaml's shapes."""
    d, heads, units, mels, spk = 512, 8, 2048, 80, 192
    block = 4 * linear(d, d) + linear(d, d, bias=False) + 2 * heads * (d // heads) \
        + linear(d, units) + linear(units, d) + 2 * 2 * d               # rel-pos attention, FF, 2 LayerNorms
    encoder = linear(d, d) + 2 * d + 6 * block + 2 * d                  # linear input layer + blocks + after_norm
    regulator = 4 * (conv(mels, mels, 3) + 2 * mels) + conv(mels, mels, 1)
    c, tdim, cin = 256, 1024, 320

    def resnet(i, o):
        return linear(tdim, o) + conv(i, o, 3) + 2 * o + conv(o, o, 3) + 2 * o + conv(i, o, 1)

    tf = 2 * 2 * c + 3 * linear(c, 512, bias=False) + linear(512, c) + linear(c, 4 * c) + linear(4 * c, c)
    stage = 4 * tf
    decoder = (linear(cin, tdim) + linear(tdim, tdim)
               + resnet(cin, c) + stage + conv(c, c, 3) + resnet(c, c) + stage + conv(c, c, 3)
               + 12 * (resnet(c, c) + stage)
               + resnet(2 * c, c) + stage + c * c * 4 + c + resnet(2 * c, c) + stage + conv(c, c, 3)
               + conv(c, c, 3) + 2 * c + conv(c, mels, 1))
    return {"token embedding": 4096 * d, "encoder": encoder, "encoder_proj + spk affine": linear(d, mels)
            + linear(spk, mels), "length regulator": regulator, "decoder (estimator)": decoder}


def f5_v1_base_reference() -> int:
    """F5-TTS v1 Base from its config's shapes (pinyin vocabulary 2545 + the filler token)."""
    d, td, mels = 1024, 512, 100
    convnext = conv(td, td, 7, groups=td) + 2 * td + linear(td, 2 * td) + 2 * 2 * td + linear(2 * td, td)
    block = linear(d, 6 * d) + 4 * linear(d, d) + linear(d, 2 * d) + linear(2 * d, d)
    return (2546 * td + 4 * convnext + linear(2 * mels + td, d) + 2 * conv(d, d, 31, groups=16)
            + linear(256, d) + linear(d, d) + 22 * block + linear(d, 2 * d) + linear(d, mels))


REFERENCE_PARAMS = {
    "voicebox": Reference(330_000_000, "Voicebox paper, Sec. 5.1"),
    "f5": Reference(336_000_000, "F5-TTS v1 Base (SWivid/F5-TTS configs/F5TTS_v1_Base.yaml)"),
    "cosyvoice": Reference(sum(cosyvoice_flow_reference().values()),
                           "CosyVoice-300M flow model, counted from cosyvoice.yaml"),
}


def paper_config(arch: str) -> dict:
    cfg = config_mod.load([ROOT / "config" / "config.yaml", ROOT / "config" / "paper.yaml"])
    return config_mod.deep_merge(cfg, {"model": {"arch": arch}})


def count_params(arch: str, vocab: int = VOCAB) -> int:
    """Parameters of ``arch`` at paper.yaml's size, built on the meta device."""
    with torch.device("meta"):
        model = build_model(paper_config(arch), vocab)
    return sum(p.numel() for p in model.parameters())


def step_time(arch: str, cfg: dict, batch: int, frames: int) -> float:
    torch.manual_seed(0)
    model = build_model(config_mod.deep_merge(cfg, {"model": {"arch": arch}}), 64).train()
    n_mels = cfg["audio"]["n_mels"]
    x, prompt = torch.randn(batch, frames, n_mels), torch.randn(batch, frames, n_mels)
    tokens, t = torch.randint(1, 64, (batch, frames // 4)), torch.rand(batch)
    start = time.process_time()
    v, hidden = model(x, t, tokens, prompt, return_hidden=True)
    (v.square().mean() + sum(h.mean() for h in hidden)).backward()
    return time.process_time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print("parameters at paper size (config/paper.yaml, vocabulary 4096):")
    print(f"  dit        {count_params('dit') / 1e6:8.1f}M  (the harness's DiT, 24 x 1024)")
    for arch, ref in REFERENCE_PARAMS.items():
        ours = count_params(arch)
        print(f"  {arch:10s} {ours / 1e6:8.1f}M  reference {ref.total / 1e6:.1f}M ({ref.source}): "
              f"{100 * (ours - ref.total) / ref.total:+.1f}%")
    print(f"  f5 v1 Base counted from its config: {f5_v1_base_reference() / 1e6:.1f}M")
    print("  CosyVoice-300M flow model by module: " + ", ".join(
        f"{k} {v / 1e6:.2f}M" for k, v in cosyvoice_flow_reference().items()))
    cfg = config_mod.load([ROOT / "config" / "config.yaml"])
    frames = int(round(float(cfg["train"]["crop_seconds"]) * cfg["audio"]["sample_rate"] / cfg["audio"]["hop_length"]))
    batch = int(cfg["train"]["batch_size"])
    times = {a: [] for a in ARCHS}
    for a in ARCHS:
        step_time(a, cfg, batch, frames)                           # warm-up
    for _ in range(args.repeats):                                  # interleaved, so drift hits all
        for a in ARCHS:
            times[a].append(step_time(a, cfg, batch, frames))
    print(f"training step at the embedded default's size (batch {batch}, {frames} frames, "
          f"{args.threads} thread(s)), process CPU time, median of {args.repeats}:")
    base = statistics.median(times["dit"])
    for a in ARCHS:
        med = statistics.median(times[a])
        print(f"  {a:10s} {med * 1000:7.1f} ms  ({med / base:.2f} x the DiT)")


if __name__ == "__main__":
    main()
