"""UTMOS and Audiobox Aesthetics (agrepa.evaluation.mos) from checkpoints in their real formats, random weights.

The real models are wav2vec 2.0 / WavLM base (~95 M parameters each); the tests build them with
the packages' own classes at reduced depth (:data:`SHALLOW`; the key layout of the checkpoint
format is the same, and the loaders read the depth from the file) so a checkpoint file is tens
of MB, not hundreds. What cannot be tested here: the published
weights themselves (not downloadable), hence the absolute scores.
"""
import numpy as np
import pytest
import torch

from agrepa import config
from agrepa.evaluation import mos
from test_workflow_support import DEFAULT_CONFIG

SHALLOW = {"encoder_layers": 1, "encoder_ffn_embed_dim": 64}
WAVE = (0.3 * np.sin(2 * np.pi * 220 * np.arange(24000) / 24000)).astype(np.float32)


def _cfg(**kw):
    cfg = config.load(DEFAULT_CONFIG)
    cfg["device"] = "cpu"
    cfg["eval"]["mos"].update(kw)
    return cfg


def test_utmos_from_a_state_dict_and_a_checkpoint_dict(tmp_path):
    torch.manual_seed(0)
    state = mos.utmos_model(SHALLOW).state_dict()
    assert mos.encoder_shape(state, mos.UTMOS_ENCODER, "test") == SHALLOW
    plain = tmp_path / "utmos_state_dict.pt"
    torch.save(state, plain)
    pred = mos.build_mos(_cfg(speech="utmos", utmos_checkpoint=str(plain)), "speech")
    s = pred.score(WAVE, 24000)
    assert np.isfinite(s["mos_ovrl"]) and s["mos_p808"] is None and "UTMOS22" in pred.describe()
    wrapped = tmp_path / "lightning_like.pt"
    torch.save({"state_dict": state, "epoch": 3}, wrapped)
    assert mos.UTMOS(wrapped).score(WAVE, 24000)["mos_ovrl"] == pytest.approx(s["mos_ovrl"], rel=1e-5)
    bad = tmp_path / "bad.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith("output_layers")}, bad)
    with pytest.raises(ValueError, match="missing"):
        mos.UTMOS(bad)
    with pytest.raises(KeyError, match="eval.mos.utmos_checkpoint"):
        mos.build_mos(_cfg(speech="utmos"), "speech")


def test_audiobox_aesthetics_from_the_official_checkpoint_layout(tmp_path):
    torch.manual_seed(0)
    cfg = {"proj_num_layer": 1, "proj_ln": False, "proj_act_fn": "gelu", "proj_dropout": 0.0, "nth_layer": 2,
           "use_weighted_layer_sum": True, "precision": "32", "normalize_embed": True, "output_dim": 1}
    tt = {a: {"mean": 5.0, "std": 1.5} for a in ("CE", "CU", "PC", "PQ")}
    model = mos.aesthetics_model(cfg, tt, SHALLOW)
    assert mos.encoder_shape(model.state_dict(), "wavlm_model.", "test") == SHALLOW
    ck = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()}, "model_cfg": cfg,
                "target_transform": tt}, ck)
    pred = mos.build_mos(_cfg(audio="audiobox", aesthetics_checkpoint=str(ck)), "audio")
    s = pred.score(WAVE, 24000)
    assert set(s) == {"mos_ovrl", "mos_p808", "aes_ce", "aes_cu", "aes_pc", "aes_pq"}
    assert s["mos_ovrl"] == s["aes_pq"] and np.isfinite(s["mos_ovrl"]) and s["mos_p808"] is None
    torch.save({"state_dict": {}, "model_cfg": cfg}, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match="target_transform"):
        mos.AudioboxAesthetics(tmp_path / "broken.pt")


def test_dnsmos_scores_as_speechmos_run_on_the_jobs_threads():
    """Our DNSMOS object (sessions on ``torch.get_num_threads()``, no spinning) scores exactly
    what ``speechmos.dnsmos.run`` does (ONNX Runtime's default sessions)."""
    from speechmos import dnsmos

    rng = np.random.default_rng(0)
    wave = (WAVE[:18000] + 0.05 * rng.standard_normal(18000)).astype(np.float32)   # 0.75 s: tiled
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pred = mos.build_mos(_cfg(speech="dnsmos"), "speech")
        ours = pred.score(wave, 24000)
        sessions = (pred.model().onnx_sess, pred.model().p808_onnx_sess)
    finally:
        torch.set_num_threads(before)
    assert all(s.get_session_options().intra_op_num_threads == 1 for s in sessions)
    ref = dnsmos.run(mos._mono_16k(wave, 24000, "dnsmos"), mos.MOS_SAMPLE_RATE)
    assert ours == pytest.approx({"mos_ovrl": float(ref["ovrl_mos"]), "mos_p808": float(ref["p808_mos"])}, rel=1e-6)
    assert np.isfinite(ours["mos_ovrl"]) and np.isfinite(ours["mos_p808"])
