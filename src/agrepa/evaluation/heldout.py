"""``agrepa heldout``: the flow-matching loss on held-out clips at a fixed t grid and fixed noise.

The lowest-variance measure of the velocity field the method acts on, and free of sampling,
vocoding and embedding: for a checkpoint's EMA weights (dropout off, no CFG drops), every clip
of the valid split (``eval.heldout.max_clips`` per domain, the first in manifest order; null:
all) in the deterministic batches of :meth:`agrepa.training.dataset.TrainingData.eval_batches`
(crop from frame 0, prompt = ``train.eval_prompt_fraction`` of the crop) is scored with the
training objective :func:`agrepa.training.objectives.flow_matching_loss` (the loss mask of
the model's recipe as in training: ``train.loss_on_prompt`` for the DiT) at every t of ``eval.heldout.t_grid``::

    loss_clip = mean_t  sum_{f,m} w_f (v(x_t, t) - (x1 - x0))^2 / (n_mels * sum_f w_f)

with x0 ~ N(0, sigma^2 I) (sigma = ``train.noise_scale``, as in training) drawn per (``eval.heldout.seed``, clip id, t index) from a seeded generator, so
a clip's noise depends neither on the batch nor on the checkpoint: two checkpoints are compared on
identical inputs (paired by clip). The per-clip value is recomputed from the objective's velocity
and checked against the objective's batch mean, so a change of the objective cannot go unnoticed.
The forward passes run under ``inference.precision`` (auto: bf16 autocast on CUDA, fp32 on the CPU;
the squared errors and their sums are fp32 either way).

Output CSV (one row per checkpoint x clip): ``step, phase, ckpt, id, domain, loss``. ``--init``
adds the warm-up checkpoint as branch step 0 (the shared starting point of every method); every
kept snapshot of ``--run`` and its ``final.pt`` follow with their branch step, so the same file
gives the final value (Table 2) and the curve over training (Table 3, convergence figure).
``--final-only`` scores ``final.pt`` alone (methods no curve is drawn for).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import DOMAINS


log = logging.getLogger(__name__)
CONFIG_KEYS = ("eval.heldout", "inference.precision", "train.loss_on_prompt", "train.noise_scale")  # config sections this module reads

HELDOUT_COLUMNS = ["step", "phase", "ckpt", "id", "domain", "loss"]
SNAPSHOT = re.compile(r"step_(\d+)\.pt$")


def _clip_noise(seed: int, clip_id: str, t_index: int, frames: int, n_mels: int) -> torch.Tensor:
    from ..training.dataset import generator

    return torch.randn(frames, n_mels, generator=generator(seed, "heldout", clip_id, t_index))


def _batch_noise(batch: dict, seed: int, t_index: int) -> torch.Tensor:
    B, T, M = batch["mel"].shape
    x0 = torch.zeros(B, T, M)
    for j, cid in enumerate(batch["ids"]):
        n = int(batch["mask"][j].sum())
        x0[j, :n] = _clip_noise(seed, cid, t_index, n, M)
    return x0


def per_clip_loss(model, batch: dict, t: torch.Tensor, x0: torch.Tensor, loss_on_prompt: bool) -> torch.Tensor:
    """[B] flow-matching loss of every clip of ``batch`` (the objective's per-sample term)."""
    from ..training.objectives import flow_matching_loss, loss_weights, ot_path

    out = flow_matching_loss(model, batch, t, x0, loss_on_prompt=loss_on_prompt)
    _, target = ot_path(x0, batch["mel"], t)
    w = loss_weights(batch, loss_on_prompt)
    err = ((out.velocity.float() - target.float()) ** 2).sum(-1)
    err = torch.where(w > 0, err, torch.zeros_like(err))
    per = (err * w).sum(1) / (w.sum(1).clamp(min=1) * batch["mel"].shape[-1])
    if not torch.allclose(per.mean(), out.loss.float(), rtol=1e-4, atol=1e-6):
        raise RuntimeError(f"heldout: per-clip losses (mean {float(per.mean()):.6g}) disagree with "
                           f"flow_matching_loss ({float(out.loss):.6g}); the objective changed")
    return per


@torch.no_grad()
def heldout_losses(model, data, cfg: dict, device="cpu") -> pd.DataFrame:
    """``id, domain, loss`` of every held-out clip of ``data`` for ``model`` (module docstring)."""
    from ..device import autocast, autocast_dtype, move_batch
    from ..model import recipe
    from ..training.dataset import DOMAINS

    hc = cfg["eval"]["heldout"]
    t_grid = [float(t) for t in hc["t_grid"]]
    if not t_grid or any(not 0.0 <= t <= 1.0 for t in t_grid):
        raise ValueError(f"eval.heldout.t_grid: need flow times in [0, 1], got {hc['t_grid']}")
    seed, bs = int(hc["seed"]), int(hc["batch_size"])
    loss_on_prompt, noise_scale = recipe(cfg).loss_on_prompt, float(cfg["train"]["noise_scale"])  # the model's arch
    model = model.to(device).eval()
    amp = autocast_dtype(cfg["inference"]["precision"], device, "inference.precision")   # bf16 on CUDA (auto)
    rows = []
    for batch in data.eval_batches(bs):
        total = torch.zeros(len(batch["ids"]), dtype=torch.float64)
        dev_batch = move_batch(batch, device)
        for k, t in enumerate(t_grid):
            tt = torch.full((len(batch["ids"]),), t, device=device)
            x0 = _batch_noise(batch, seed, k).to(device) * noise_scale
            with autocast(amp, device):
                total += per_clip_loss(model, dev_batch, tt, x0, loss_on_prompt).double().cpu()
        for cid, d, v in zip(batch["ids"], batch["domain"].tolist(), (total / len(t_grid)).tolist()):
            rows.append({"id": cid, "domain": DOMAINS[d], "loss": v})
    return pd.DataFrame(rows, columns=["id", "domain", "loss"])


def heldout_data(cfg: dict, manifest, mels, tokens, semantic, acoustic, split: str = "valid"):
    """The held-out clips as :class:`~agrepa.training.dataset.TrainingData` (``eval.heldout.max_clips``)."""
    from ..training.dataset import DataPaths, TrainingData, split_rows

    df = split_rows(manifest, split)
    limit = cfg["eval"]["heldout"]["max_clips"]
    ids = None if limit is None else [i for d in DOMAINS for i in df[df["domain"] == d].head(int(limit[d]))["id"]]
    return TrainingData(cfg, DataPaths(manifest, mels, tokens, semantic, acoustic), split=split, ids=ids)


def checkpoints(run_dir, init=None, final_only: bool = False) -> list[tuple[int, str, Path]]:
    """``(branch step, phase, path)``: the warm-up (step 0) if given, every snapshot (unless
    ``final_only``), ``final.pt``."""
    from ..training.checkpoint import load_run

    run_dir = Path(run_dir)
    out = [(0, "warmup", Path(init))] if init is not None else []
    snaps = [] if final_only else sorted((int(m.group(1)), p) for p in (run_dir / "snapshots").glob("step_*.pt")
                                         if (m := SNAPSHOT.search(p.name)))
    out += [(s, "branch", p) for s, p in snaps]
    final = run_dir / "final.pt"
    if not final.exists():
        raise FileNotFoundError(f"{final}: branch run has no final checkpoint")
    step = load_run(final).step
    if step not in {s for s, _ in snaps}:
        out.append((step, "branch", final))
    return out


def heldout_curve(cfg: dict, run_dir, data, init=None, device="cpu", final_only: bool = False) -> pd.DataFrame:
    """Per-clip held-out losses of every checkpoint of a branch run (module docstring)."""
    from ..training.checkpoint import load_run

    frames = []
    for step, phase, path in checkpoints(run_dir, init, final_only):
        run = load_run(path)
        if run.vocab_size != data.vocab_size:
            raise ValueError(f"{path}: vocab_size {run.vocab_size} differs from the token store's {data.vocab_size}")
        df = heldout_losses(run.model, data, {**cfg, "model": run.cfg["model"]}, device)
        df.insert(0, "ckpt", str(path))
        df.insert(0, "phase", phase)
        df.insert(0, "step", step)
        frames.append(df)
        log.info("%s (step %d): held-out FM loss %.5f over %d clips", path.name, step, df["loss"].mean(), len(df))
    return pd.concat(frames, ignore_index=True)[HELDOUT_COLUMNS]


def final_losses(heldout_csv) -> pd.DataFrame:
    """The last step's per-clip rows of a held-out CSV (the branch's final checkpoint)."""
    path = Path(heldout_csv)
    if not path.exists():
        raise FileNotFoundError(f"{path}: held-out loss CSV not found (run `agrepa heldout`)")
    df = pd.read_csv(path, dtype={"id": str})
    missing = [c for c in HELDOUT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    if not np.isfinite(df["loss"]).all():
        raise ValueError(f"{path}: non-finite held-out losses")
    return df[df["step"] == df["step"].max()].reset_index(drop=True)
