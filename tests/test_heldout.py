"""Held-out flow-matching loss (agrepa.evaluation.heldout): deterministic, sensitive to one weight, per clip."""
import pandas as pd
import pytest
import torch

from agrepa import cli, config
from agrepa.evaluation import heldout
from agrepa.model.dit import build_model
from agrepa.training.objectives import BiTCHeads
from agrepa.training.checkpoint import FORMAT, load_run as load_checkpoint
from test_dataset import DIM_AC, DIM_SEM, VOCAB, make_corpus, tiny_cfg
from test_workflow_support import DEFAULT_CONFIG


def _save(path, cfg, model, step, phase="branch"):
    bitc = BiTCHeads(model.dim, {"semantic": DIM_SEM, "acoustic": DIM_AC})
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    ck = {"format": FORMAT, "config": cfg, "vocab_size": VOCAB, "teacher_dims": {"semantic": DIM_SEM, "acoustic": DIM_AC},
          "ema": {"model": sd, "bitc": bitc.state_dict()}, "model": sd, "bitc": bitc.state_dict(), "step": step,
          "method": "baseline", "phase": phase, "seed": 0,
          "plan": {"speech": {"layers": [], "weights": []}, "audio": {"layers": [], "weights": []}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    cfg, cfg_path = tiny_cfg(root)
    cfg["eval"]["heldout"].update(t_grid=[0.2, 0.5, 0.8], batch_size=4)
    paths = make_corpus(root / "data")
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB)
    return cfg, cfg_path, paths, model, root


def _data(cfg, paths):
    return heldout.heldout_data(cfg, paths["manifest"], paths["mels"], paths["tokens"], paths["semantic"],
                                paths["acoustic"], split="train")


def test_same_checkpoint_same_loss_one_weight_changes_it(setup):
    cfg, _, paths, model, root = setup
    _save(root / "a.pt", cfg, model, 10)
    data = _data(cfg, paths)
    first = heldout.heldout_losses(load_checkpoint(root / "a.pt").model, data, cfg)
    second = heldout.heldout_losses(load_checkpoint(root / "a.pt").model, _data(cfg, paths), cfg)
    pd.testing.assert_frame_equal(first, second)                  # bitwise: same noise, same t, same batches
    assert len(first) == 12 and set(first["domain"]) == {"speech", "audio"} and (first["loss"] > 0).all()
    # the EMA weights are scored (a change in the raw weights alone changes nothing)
    other = build_model(cfg, VOCAB)
    with torch.no_grad():
        other.load_state_dict(model.state_dict())
        other.final.linear.weight[0, 0] += 0.05                  # one weight of the output projection
    _save(root / "b.pt", cfg, other, 10)
    changed = heldout.heldout_losses(load_checkpoint(root / "b.pt").model, data, cfg)
    assert not first["loss"].equals(changed["loss"])
    assert (first["loss"] - changed["loss"]).abs().max() > 1e-6


def test_loss_is_the_training_objective_per_clip(setup):
    cfg, _, paths, model, _ = setup
    from agrepa.training.objectives import flow_matching_loss

    data = _data(cfg, paths)
    batch = data.eval_batches(4)[0]
    t = torch.full((4,), 0.5)
    x0 = heldout._batch_noise(batch, 0, 1)
    with torch.no_grad():
        per = heldout.per_clip_loss(model.eval(), batch, t, x0, True)
        whole = flow_matching_loss(model, batch, t, x0).loss
    assert per.shape == (4,) and float(per.mean()) == pytest.approx(float(whole), rel=1e-5)
    # a clip's noise does not depend on its batch
    solo = data.collate([0])
    assert torch.equal(heldout._batch_noise(solo, 0, 1)[0, :int(solo["mask"][0].sum())],
                       x0[0, :int(batch["mask"][0].sum())])


def test_cli_scores_warmup_snapshots_and_final(setup, tmp_path, capsys):
    cfg, cfg_path, paths, model, root = setup
    run = tmp_path / "run"
    _save(tmp_path / "warmup.pt", cfg, model, 6, phase="warmup")
    for step in (2, 4):
        _save(run / "snapshots" / f"step_{step:06d}.pt", cfg, model, step)
    _save(run / "final.pt", cfg, model, 6)
    out = tmp_path / "heldout.csv"
    args = ["heldout", "--config", str(DEFAULT_CONFIG), "--config", str(cfg_path), "--run", str(run), "--init", str(tmp_path / "warmup.pt"),
            "--manifest", str(paths["manifest"]), "--mels", str(paths["mels"]), "--tokens", str(paths["tokens"]),
            "--semantic", str(paths["semantic"]), "--acoustic", str(paths["acoustic"]), "--out", str(out),
            "--set", "eval.heldout.max_clips={speech: 2, audio: 3}"]
    # the tiny corpus has only a train split: score it as the held-out split through the API instead
    df = heldout.heldout_curve(cfg, run, _data(cfg, paths), init=tmp_path / "warmup.pt")
    assert list(df.columns) == heldout.HELDOUT_COLUMNS
    assert sorted(set(df["step"])) == [0, 2, 4, 6] and (df.groupby("step").size() == 12).all()
    assert set(df[df["step"] == 0]["phase"]) == {"warmup"}
    # identical weights at every step: identical losses (the noise is fixed per clip and t)
    assert (df.groupby("id")["loss"].nunique() == 1).all()
    assert cli.main(args) == 2                                   # no valid split: a clear error, exit code 2
    assert "no clips in split 'valid'" in capsys.readouterr().err
