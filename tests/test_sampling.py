"""Sampler (agrepa.generation.sampling): sway schedule, determinism, CFG, zero-shot prompts, the sample stage
(the evaluation subset's rule: tests/test_eval_sample.py)."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from agrepa import config
from agrepa.corpora.manifest import read_manifest

from agrepa.generation import sampling
from agrepa.model.dit import DiT
from agrepa.training.dataset import DataPaths
from test_eval_corpus import VOCAB, make_corpus
from test_workflow_support import DEFAULT_CONFIG


def tiny_model(seed=0, vocab=VOCAB):
    torch.manual_seed(seed)
    m = DiT(n_layers=2, dim=32, n_heads=2, n_mels=100, vocab_size=vocab)
    with torch.no_grad():  # adaLN-Zero starts as the identity: randomise so the output depends on inputs
        for p in m.parameters():
            p.normal_(0, 0.05)
    return m.eval()


def _requests(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    reqs = []
    for i in range(n):
        ref = torch.randn(30 + 5 * i, 100, generator=g)
        reqs.append(sampling.make_request(f"c{i}", ref, torch.randint(1, VOCAB, (8,), generator=g),
                                          torch.randint(1, VOCAB, (6 + i,), generator=g), 20 + 3 * i, 10))
    return reqs


def test_sway_schedule():
    t = sampling.sway_schedule(8, 0.0)
    assert torch.allclose(t, torch.linspace(0, 1, 9))
    t = sampling.sway_schedule(8, -1.0)
    assert t[0] == 0 and t[-1] == pytest.approx(1.0) and bool((t[1:] > t[:-1]).all())
    u = 0.5
    assert float(sampling.sway_schedule(2, -1.0)[1]) == pytest.approx(u - (math.cos(math.pi * u / 2) - 1 + u))
    assert float(t[1]) < 1 / 8  # sway < 0 puts more steps near the noise end


def test_same_seed_same_mel_and_seed_matters():
    m, reqs = tiny_model(), _requests()
    a = sampling.generate(m, reqs, steps=4, cfg_scale=2.0, sway=-1.0, seed=3, progress=False)
    b = sampling.generate(m, reqs, steps=4, cfg_scale=2.0, sway=-1.0, seed=3, progress=False)
    c = sampling.generate(m, reqs, steps=4, cfg_scale=2.0, sway=-1.0, seed=4, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.allclose(a[0], c[0])
    assert [x.shape for x in a] == [(20, 100), (23, 100), (26, 100)]


def test_cfg_scale_one_equals_conditional_only_and_guidance_matters():
    m, reqs = tiny_model(), _requests()
    cond = sampling.generate(m, reqs, steps=4, cfg_scale=None, sway=-1.0, seed=0, progress=False)
    one = sampling.generate(m, reqs, steps=4, cfg_scale=1.0, sway=-1.0, seed=0, progress=False)
    two = sampling.generate(m, reqs, steps=4, cfg_scale=2.0, sway=-1.0, seed=0, progress=False)
    for x, y, z in zip(cond, one, two):
        assert torch.allclose(x, y, atol=1e-5)
        assert (x - z).abs().max() > 1e-3


def test_batching_does_not_change_a_clip():
    m, reqs = tiny_model(), _requests()
    whole = sampling.generate(m, reqs, steps=3, cfg_scale=2.0, sway=0.0, seed=1, batch_size=3, progress=False)
    single = sampling.generate(m, reqs, steps=3, cfg_scale=2.0, sway=0.0, seed=1, batch_size=1, progress=False)
    for x, y in zip(whole, single):
        assert torch.allclose(x, y, atol=1e-4)


def test_prompt_region_layout():
    ref = torch.arange(40 * 100, dtype=torch.float32).reshape(40, 100)
    r = sampling.make_request("x", ref, torch.arange(1, 11), torch.tensor([7, 8, 9]), 25, 12)
    assert torch.equal(r.prompt, ref[:12])
    # ceil(12 * 10 / 40) = 3 reference tokens cover the 12 prompt frames, then all target tokens
    assert r.tokens.tolist() == [1, 2, 3, 7, 8, 9] and r.n_frames == 25
    assert sampling.prompt_frames(500, 70, 0.3, 281) == 30      # floor(0.3 / 0.7 * 70)
    assert sampling.prompt_frames(10, 70, 0.3, 281) == 10       # the whole (short) reference
    assert sampling.prompt_frames(500, 1000, 0.3, 281) == 281   # capped by prompt_max_seconds


def test_choose_prompts_same_speaker_or_label_deterministic():
    df = pd.DataFrame({"id": ["a", "b", "c", "d", "e", "f", "g"],
                       "domain": ["speech"] * 4 + ["audio"] * 3,
                       "speaker": ["s1", "s1", "s1", "s2", "", "", ""],
                       "labels": ["", "", "", "", "dog;rain", "dog", "cat"]})
    p = sampling.choose_prompts(df, ["a", "b", "c", "d", "e", "f", "g"], seed=0)
    assert p == sampling.choose_prompts(df, list("gfedcba"), seed=0)
    assert all(p[x] != x for x in p)
    assert p["a"] in {"b", "c"} and p["b"] in {"a", "c"} and p["e"] == "f" and p["f"] == "e"
    assert p["d"] in {"a", "b", "c"}            # s2 has one clip: falls back to another speech clip
    assert p["g"] in {"e", "f"}
    seeds = {tuple(sorted(sampling.choose_prompts(df, ["a"], seed=s).items())) for s in range(20)}
    assert len(seeds) == 2


def test_sample_split_writes_the_contract(tmp_path):
    from agrepa.generation.vocoder import build_vocoder

    c = make_corpus(tmp_path / "data")
    cfg = config.load(DEFAULT_CONFIG)
    cfg["sample"].update(steps=2, griffinlim_iters=2, max_clips={"speech": 2, "audio": 2})
    out = tmp_path / "samples"
    table = sampling.sample_split(tiny_model(), cfg, DataPaths(c["manifest"], c["mels"], c["tokens"]), "test", 0, out,
                                  vocoder=build_vocoder(cfg), meta={"method": "baseline"})
    assert list(table.columns) == sampling.SAMPLE_COLUMNS
    ids = table["id"].tolist()
    # one utterance of each speaker (spk0: s0 s1, spk1: s2 s3), one clip of each label (tone: a0 a1, chirp: a2)
    assert ids == sampling.config_targets(cfg, read_manifest(c["manifest"]), cfg["sample"]["max_clips"])
    assert ids[0] in {"s0", "s1"} and ids[1] in {"s2", "s3"} and ids[2] in {"a0", "a1"} and ids[3] == "a2"
    df = sampling.read_samples(out)
    other = {"s0": "s1", "s1": "s0", "s2": "s3", "s3": "s2"}
    assert df["prompt_id"].tolist()[:2] == [other[i] for i in ids[:2]]  # the speaker's only other utterance
    meta = json.loads((out / "sample_meta.json").read_text())
    assert (meta["n_speakers"], meta["split_speakers"], meta["n_classes"], meta["split_classes"]) == (2, 2, 2, 2)
    assert meta["clips_per_speaker"] == {"spk0": 1, "spk1": 1} and meta["clips_per_class"] == {"chirp": 1, "tone": 1}
    assert meta["subset_seed"] == cfg["sample"]["subset_seed"] and meta["n_over_max_seconds"] == 0
    mels = load_file(str(out / "mels.safetensors"))
    for _, row in df.iterrows():
        wave, sr = sf.read(out / row["path"])
        assert sr == 24000 and abs(len(wave) - (row["n_frames"] - 1) * 256) <= 256
        assert mels[row["id"]].shape == (row["n_frames"], 100)
        assert row["n_frames"] == c["waves"][row["id"]].shape[0] // 256 + 1  # ground-truth duration
    assert (out / "sample_meta.json").exists() and (out / "config.resolved.yaml").exists()
    # same seed again: identical mels
    sampling.sample_split(tiny_model(), cfg, DataPaths(c["manifest"], c["mels"], c["tokens"]), "test", 0, tmp_path / "again",
                          vocoder=build_vocoder(cfg), write_audio=False)
    again = load_file(str(tmp_path / "again" / "mels.safetensors"))
    assert all(torch.equal(mels[k], again[k]) for k in mels)
