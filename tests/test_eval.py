"""Evaluation (agrepa.evaluation.evaluate): the ground-truth floor, the eval JSON contract, convergence, the CLIs.

Real models throughout: faster-whisper tiny.en (ASR), the Whisper tiny.en encoder (FAD
embedding), DNSMOS (speechmos), resemblyzer; a tiny randomly initialised DiT saved in the
training checkpoint format stands in for a trained run.
"""
import json
import math

import numpy as np
import pytest
import torch

from agrepa import cli, config

from agrepa.evaluation import evaluate, metrics
from agrepa.evaluation.asr import wer_counts
from agrepa.store import Store
from agrepa.training.dataset import DataPaths
from test_eval_corpus import SENTENCES, VOCAB, make_corpus
from test_sampling import tiny_model
from test_workflow_support import DEFAULT_CONFIG

SPEECH_METRICS = {"wer", "wer_utt", "fad", "fad_inf", "mos_ovrl", "mos_p808", "spk_sim", "mel_l1", "mcd", "ter"}
AUDIO_METRICS = {"fad", "fad_inf", "mos_ovrl", "mos_p808", "mel_l1", "mcd", "ter", "event_top1", "event_kl", "event_map"}
EVENT_METRICS = {"event_top1", "event_kl", "event_map"}


def small_cfg(**mos):
    cfg = config.load(DEFAULT_CONFIG)
    cfg["sample"].update(steps=2, griffinlim_iters=4, max_clips={"speech": 2, "audio": 2})
    cfg["eval"]["bootstrap"] = 50
    cfg["eval"]["mos"].update(mos)
    cfg["eval"]["events"]["classifier"] = "none"   # TER and events: tests/test_ter_events.py
    cfg["device"] = "cpu"
    return cfg


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return evaluate.build_models(small_cfg(), ["speech", "audio"])


def _by(result, input_=None):
    return {(m["domain"], m["metric"]): m for m in result["metrics"] if input_ is None or m["input"] == input_}


def speech_subset(cfg, corpus) -> list[str]:
    """The speech clips of the evaluation subset (one utterance of each of the corpus's 2 speakers)."""
    from agrepa.corpora.manifest import read_manifest
    from agrepa.generation.sampling import config_targets

    ids = [c for c in config_targets(cfg, read_manifest(corpus["manifest"]), cfg["sample"]["max_clips"])
           if c.startswith("s")]
    assert len(ids) == 2 and {SENTENCES[int(c[1:])][0] for c in ids} == {"spk0", "spk1"}
    return ids


def test_reference_floor_is_the_ground_truth_through_the_same_pipeline(corpus, models):
    from agrepa.generation.vocoder import build_vocoder

    cfg = small_cfg()
    voc = build_vocoder(cfg)
    result = evaluate.evaluate(cfg, corpus["manifest"], reference=True, mels_dir=corpus["mels"], models=models,
                               vocoder=voc)
    rows = _by(result)
    not_on_gt = {"fad", "fad_inf", "mel_l1", "mcd", "ter"}
    assert {m for d, m in rows if d == "speech"} == SPEECH_METRICS | {m + "_gt" for m in SPEECH_METRICS - not_on_gt}
    assert {m for d, m in rows if d == "audio"} == AUDIO_METRICS | {m + "_gt" for m in AUDIO_METRICS - not_on_gt}
    # the floor numbers are exactly what the pipeline gives on the ground truth
    speech = speech_subset(cfg, corpus)
    texts = [SENTENCES[int(c[1:])][1] for c in speech]
    gt_hyp = [models.asr.transcribe(corpus["waves"][c], 24000) for c in speech]
    assert rows[("speech", "wer_gt")]["value"] == pytest.approx(wer_counts(texts, gt_hyp).corpus_wer())
    mels = Store(corpus["mels"])
    resyn = [voc(mels.get(c)["mel"]) for c in speech]
    re_hyp = [models.asr.transcribe(w, 24000) for w in resyn]
    assert rows[("speech", "wer")]["value"] == pytest.approx(wer_counts(texts, re_hyp).corpus_wer())
    assert rows[("speech", "wer")]["input"] == "resynthesis" and rows[("speech", "wer_gt")]["input"] == "ground_truth"
    assert rows[("speech", "wer_gt")]["value"] < 50.0  # tiny.en understands the espeak test speech
    clips = {(c["id"], c["input"]): c for c in result["clips"]}
    assert models.mos["speech"].score(resyn[0], 24000) == pytest.approx(
        {k: clips[(speech[0], "resynthesis")][k] for k in ("mos_ovrl", "mos_p808")})
    assert rows[("speech", "mos_ovrl")]["value"] == pytest.approx(
        np.mean([clips[(c, "resynthesis")]["mos_ovrl"] for c in speech]))
    assert clips[(speech[1], "ground_truth")]["hyp"] == gt_hyp[1]
    assert {c for c, i in clips if c.startswith("s")} == set(speech)
    subset = result["run"]["subset"]
    assert (subset["n_speakers"], subset["split_speakers"], subset["n_classes"], subset["split_classes"]) == (2, 2, 2, 2)
    assert rows[("audio", "mos_ovrl")]["value"] is None and "general audio" in rows[("audio", "mos_ovrl")]["note"]
    for key, m in rows.items():
        assert m["n"] == 2, key
        if m["value"] is not None:
            assert m["model"] and math.isfinite(m["value"]) and m["ci_low"] is not None, key
    assert rows[("speech", "ter")]["value"] is None and "TER off" in rows[("speech", "ter")]["note"]
    # the resynthesis is close to the ground truth: speaker similarity to the prompt survives
    assert rows[("speech", "spk_sim_gt")]["value"] > 0.5


def test_eval_json_of_generated_samples(corpus, models, tmp_path):
    from agrepa.generation import sampling
    from agrepa.generation.vocoder import build_vocoder

    cfg = small_cfg(speech="none")
    out = tmp_path / "samples"
    sampling.sample_split(tiny_model(), cfg, DataPaths(corpus["manifest"], corpus["mels"], corpus["tokens"]), "test",
                          0, out,
                          vocoder=build_vocoder(cfg), meta={"method": "baseline"})
    models_nomos = evaluate.Models(models.embedding, models.asr, {"speech": None, "audio": None}, models.speaker)
    result = evaluate.evaluate(cfg, corpus["manifest"], samples_dir=out, models=models_nomos, mels_dir=corpus["mels"])
    rows = _by(result, "generated")
    assert {m for d, m in rows if d == "speech"} == SPEECH_METRICS
    assert {m for d, m in rows if d == "audio"} == AUDIO_METRICS
    assert {m for d, m in rows if d == "all"} == {"mel_l1", "mcd"}
    # mel distance: the sampler generates exactly the target's frames, so the mels are frame-aligned
    from safetensors.numpy import load_file

    gen = load_file(str(out / "mels.safetensors"))
    gt = {c: Store(corpus["mels"]).get(c)["mel"].numpy() for c in gen}
    assert all(gen[c].shape == gt[c].shape for c in gen)
    assert sorted(c for c in gen if c.startswith("s")) == speech_subset(cfg, corpus)
    want = np.mean([metrics.mel_l1(gen[c], gt[c]) for c in speech_subset(cfg, corpus)])
    assert rows[("speech", "mel_l1")]["value"] == pytest.approx(want)
    assert rows[("all", "mel_l1")]["value"] == pytest.approx(np.mean([metrics.mel_l1(gen[c], gt[c]) for c in gen]))
    for key, m in rows.items():
        assert set(evaluate.METRIC_FIELDS) <= set(m) and m["n"] == (4 if key[0] == "all" else 2), key
        if m["value"] is None:
            assert m["note"], key
        else:
            assert m["model"] and m["ci_low"] is not None and m["ci_high"] is not None, key
    assert rows[("speech", "fad")]["note"].startswith(evaluate.LOW_RANK)   # 2 clips < 384 dimensions
    fad = rows[("speech", "fad")]
    assert fad["value"] > 0 and "whisper-encoder" in fad["model"]
    assert rows[("speech", "wer")]["value"] >= 50.0  # an untrained model says nothing intelligible
    assert "faster-whisper" in rows[("speech", "wer")]["model"]
    assert result["run"]["sample_meta"]["method"] == "baseline"
    assert result["run"]["sample_meta"]["n_speakers"] == 2 and result["run"]["sample_meta"]["n_classes"] == 2
    assert result["run"]["models"]["embedding"].startswith("whisper-encoder")


def _checkpoint(path, cfg, step, seed):
    from agrepa.training.objectives import BiTCHeads
    from agrepa.training.checkpoint import FORMAT

    model = tiny_model(seed)
    bitc = BiTCHeads(model.dim, {"semantic": 8, "acoustic": 8})
    ck = {"format": FORMAT, "config": cfg, "vocab_size": VOCAB, "token_layout": {"paired": False, "audio_offset": None},
          "teacher_dims": {"semantic": 8, "acoustic": 8},
          "ema": {"model": model.state_dict(), "bitc": bitc.state_dict()},
          "model": model.state_dict(), "bitc": bitc.state_dict(), "step": step, "method": "baseline",
          "phase": "branch", "seed": 0, "plan": {"speech": {"layers": [], "weights": []},
                                                 "audio": {"layers": [], "weights": []}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, path)


def test_sample_and_convergence_clis(corpus, tmp_path):
    cfg = small_cfg()
    cfg["model"].update(n_layers=2, dim=32, n_heads=2)
    cfg["report"]["table2"]["methods"] = ["baseline"]   # the fixed layer sets of the default need 12 layers
    cfg["eval"]["convergence"]["max_clips"] = 2
    run = tmp_path / "run"
    for i, step in enumerate((100, 200)):
        _checkpoint(run / "snapshots" / f"step_{step:06d}.pt", cfg, step, seed=i)
    _checkpoint(run / "final.pt", cfg, 200, seed=1)
    cfg_file = tmp_path / "cfg.yaml"
    config.save_resolved(cfg, tmp_path, "cfg.yaml")
    common = ["--config", str(cfg_file), "--manifest", str(corpus["manifest"]), "--mels", str(corpus["mels"]),
              "--tokens", str(corpus["tokens"])]
    assert cli.main(["sample", "--ckpt", str(run / "final.pt"), "--out", str(tmp_path / "s"), "--seed", "0",
                     *common]) == 0
    assert (tmp_path / "s" / "samples.csv").exists()
    assert all((tmp_path / "s" / f"{c}.wav").exists() for c in speech_subset(cfg, corpus))
    out = tmp_path / "conv.csv"
    assert cli.main(["convergence", "--run", str(run), "--out", str(out), *common]) == 0
    import pandas as pd
    df = pd.read_csv(out)
    assert list(df.columns) == evaluate.CONVERGENCE_COLUMNS
    assert sorted(set(df["step"])) == [100, 200] and set(df["domain"]) == {"speech", "audio"}
    assert (df["n"] == 2).all() and (df["fad"] > 0).all()
    assert df["embedding"].str.startswith("whisper-encoder").all()
    sp = df[df["domain"] == "speech"]
    hi = float(sp["fad"].max()) + 1.0
    assert metrics.steps_to_threshold(sp["step"], sp["fad"], hi) == 100.0
    assert metrics.steps_to_threshold(sp["step"], sp["fad"], float(sp["fad"].min()) / 2) is None
    # bad input is a clear error naming the directory
    assert cli.main(["convergence", "--run", str(tmp_path / "nope"), "--out", str(out), *common]) == 2


def test_evaluate_cli_needs_samples_or_reference(corpus, tmp_path, capsys):
    rc = cli.main(["evaluate", "--config", str(DEFAULT_CONFIG), "--manifest", str(corpus["manifest"]), "--out", str(tmp_path / "e.json")])
    assert rc == 2 and "--samples is required" in capsys.readouterr().err


def test_fad_rows_with_several_rows_per_clip():
    # VGGish gives one row per 0.96 s: FAD uses all rows, n counts clips, the note counts rows
    cfg = small_cfg()
    rng = np.random.default_rng(0)
    gen = [rng.normal(size=(3, 8)) for _ in range(6)]
    ref = [rng.normal(size=(2, 8)) + 1.0 for _ in range(6)]
    fad, inf = evaluate.fad_rows(gen, ref, "audio", "vggish", cfg)
    assert fad["value"] == pytest.approx(metrics.frechet_distance(np.concatenate(ref), np.concatenate(gen), "sqrtm"))
    assert fad["n"] == 6 and "18 generated / 12 reference" in fad["note"]
    assert inf["metric"] == "fad_inf" and "N in [9," in inf["note"] and "R^2" in inf["note"]
    assert fad["note"] == "18 generated / 12 reference embedding rows from 6 clips"   # 18 rows > 8 dims
    # FAD-inf is reported only when its fit explains the points
    cfg["eval"]["fad"]["fad_inf"]["min_r2"] = 0.0
    assert math.isfinite(evaluate.fad_rows(gen, ref, "audio", "vggish", cfg)[1]["value"])
    cfg["eval"]["fad"]["fad_inf"]["min_r2"] = 1.01
    left = evaluate.fad_rows(gen, ref, "audio", "vggish", cfg)[1]
    assert left["value"] is None and "left out" in left["note"] and "R^2" in left["note"]
    # one clip of several rows (a 10 s clip in VGGish): its FAD, with no CI (no clips to resample)
    cfg["eval"]["fad"]["fad_inf"]["min_r2"] = 0.0
    one = evaluate.fad_rows(gen[:1] * 1, [rng.normal(size=(6, 8))], "audio", "vggish", cfg)
    assert one[0]["n"] == 1 and math.isfinite(one[0]["value"]) and one[0]["ci_low"] is None
    # too few rows for FAD: null with the reason, never a number
    few = evaluate.fad_rows([rng.normal(size=(1, 8))], [rng.normal(size=(1, 8))], "speech", "m", cfg)
    assert all(r["value"] is None and "at least 2" in r["note"] for r in few)
