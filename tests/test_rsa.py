"""Representational similarity analysis of generated clips (agrepa.evaluation.rsa): the
statistic, its bootstrap, and the JSON of a real sample directory (Whisper tiny.en encoder)."""
import json

import numpy as np
import pytest
import torch

from agrepa import cli, config
from agrepa.evaluation import rsa
from agrepa.training.checkpoint import FORMAT
from agrepa.training.dataset import DataPaths
from test_eval_corpus import VOCAB, make_corpus
from test_sampling import tiny_model
from test_workflow_support import DEFAULT_CONFIG


def test_rsa_is_one_for_the_same_similarity_structure():
    g = np.random.default_rng(0)
    cond = g.normal(size=(7, 5))
    q, _ = np.linalg.qr(g.normal(size=(5, 5)))
    same = np.concatenate([cond @ q * g.uniform(0.5, 3, size=(7, 1)), np.zeros((7, 2))], axis=1)
    assert rsa.rsa_value(cond, same) == pytest.approx(1.0)
    other = g.normal(size=(7, 9))
    assert -1 < rsa.rsa_value(cond, other) < 1
    # a bootstrap resample that repeats a clip never pairs it with itself
    assert rsa.rsa_value(cond, same, np.array([0, 0, 1, 2, 3])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 3 pairs"):
        rsa.rsa_value(cond[:2], other[:2])
    cfg = config.load(DEFAULT_CONFIG)
    row = rsa.rsa_row(cond[:2], other[:2], "audio", "rsa", cfg, "emb", "generated")
    assert row["value"] is None and "2 clips" in row["note"]
    row = rsa.rsa_row(cond, same, "speech", "rsa", cfg, "emb", "generated")
    assert row["value"] == pytest.approx(1.0) and row["ci_low"] <= 1.0 <= row["ci_high"] + 1e-12


def _checkpoint(path, model, phase):
    """A checkpoint ``load_run`` reads, holding ``model`` (2 x 32 DiT) as its training weights."""
    from agrepa.training.objectives import BiTCHeads

    cfg = config.load(DEFAULT_CONFIG)
    cfg["model"].update(n_layers=2, dim=32, n_heads=2)
    dims = {"semantic": 8, "acoustic": 8}
    bitc = BiTCHeads(model.dim, dims)
    torch.save({"format": FORMAT, "config": cfg, "vocab_size": VOCAB, "token_layout": {"paired": False, "audio_offset": None},
                "teacher_dims": dims, "ema": {"model": model.state_dict(), "bitc": bitc.state_dict()},
                "model": model.state_dict(), "bitc": bitc.state_dict(), "step": 0, "method": "warmup",
                "phase": phase, "seed": 0, "plan": {}}, path)


def test_rsa_json_of_a_sample_directory(tmp_path):
    from agrepa.generation import sampling
    from agrepa.generation.vocoder import build_vocoder

    torch.set_num_threads(1)
    corpus = make_corpus(tmp_path / "corpus")
    cfg = config.load(DEFAULT_CONFIG)
    cfg["sample"].update(steps=2, griffinlim_iters=4, max_clips={"speech": 4, "audio": 3})
    cfg["eval"]["bootstrap"] = 30
    cfg["device"] = "cpu"
    model = tiny_model()
    sampling.sample_split(model, cfg, DataPaths(corpus["manifest"], corpus["mels"], corpus["tokens"]), "test", 0,
                          tmp_path / "samples", vocoder=build_vocoder(cfg), meta={"method": "rr_max"})
    warm = tmp_path / "warm.pt"
    _checkpoint(warm, model, "warmup")
    out = tmp_path / "rsa.json"
    cli.main(["rsa", "--config", str(DEFAULT_CONFIG), "--set", "eval.bootstrap=30", "--samples",
              str(tmp_path / "samples"), "--manifest", str(corpus["manifest"]), "--tokens", str(corpus["tokens"]),
              "--warmup", str(warm), "--out", str(out)])
    result = json.loads(out.read_text())
    rows = {(m["domain"], m["metric"]): m for m in result["metrics"]}
    assert set(rows) == {(d, m) for d in ("speech", "audio") for m in ("rsa", "rsa_gt")}
    assert rows[("speech", "rsa")]["n"] == 4 and rows[("audio", "rsa_gt")]["n"] == 3
    for key, m in rows.items():
        assert -1 <= m["value"] <= 1 and "whisper-encoder" in m["model"], key
    assert rows[("speech", "rsa_gt")]["input"] == "ground_truth" and result["run"]["pool"] == "max"
    # readers of evaluation JSONs accept it: no per-clip records (RSA is a statistic of pairs)
    from agrepa.reports import paired
    assert result["clips"] == [] and paired._clip_rows(out, {}) == []
    # the conditioning side is the warm-up's token embedding pooled over the clip's tokens
    table = model.state_dict()["token_emb.table.weight"]
    tok = torch.tensor([3, 5, 5, 1])
    assert np.allclose(rsa.conditioning([tok], model.token_emb, "max")[0], table[tok].amax(0).numpy())
    with pytest.raises(ValueError, match="a branch checkpoint"):
        _checkpoint(tmp_path / "b.pt", model, "branch")
        rsa.rsa(cfg, tmp_path / "samples", corpus["manifest"], corpus["tokens"], tmp_path / "b.pt", embedding=object())
