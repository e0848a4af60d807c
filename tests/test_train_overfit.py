"""The model can fit: FM loss falls well below its starting level on 8 fixed clips (CPU, seconds)."""
from __future__ import annotations

import pandas as pd
import torch

from agrepa.training import train
from test_dataset import data_paths, make_corpus, tiny_cfg

torch.set_num_threads(1)


def test_overfits_eight_clips(tmp_path):
    # 4 layers x 64; batch = all 8 clips, crop longer than every clip (whole clips), no CFG dropout
    cfg, _ = tiny_cfg(tmp_path, {
        "model": {"n_layers": 4, "dim": 64, "n_heads": 4},
        "train": {"batch_size": 8, "crop_seconds": 0.9, "lr": 3e-3, "cfg_drop_tokens": 0.0, "cfg_drop_prompt": 0.0,
                  "checkpoint_every": 1000, "log_every": 10, "schedule": "warmup_constant", "warmup_fraction": 0.05}})
    paths = make_corpus(tmp_path / "data", n_speech=4, n_audio=4)
    train.run(cfg, phase="warmup", out=tmp_path / "w", seed=0, steps=200,
              data=data_paths(paths))
    m = pd.read_csv(tmp_path / "w" / "metrics.csv")
    start, end = m["fm"].iloc[0], m["fm"].iloc[-5:].mean()
    # at initialisation the velocity is ~0, so L_FM ~ E|x1 - x0|^2 / n_mels ~ 2 on normalised mels
    assert 1.5 < start < 2.5
    assert end < 0.2 * start, (start, end)
    assert m["bitc"].iloc[-5:].mean() < 0.05
