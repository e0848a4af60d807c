"""TrainingData: normalisation, crops with consistent token spans, prompts, balanced sampler.

``make_corpus`` builds a tiny corpus in the real artifact formats (manifest CSV and
four stores) and is reused by the training tests.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from agrepa import config as config_mod
from agrepa.training.dataset import BalancedSampler, DataPaths, TrainingData, crop_frames, shard
from agrepa.store import StoreWriter
from test_workflow_support import DEFAULT_CONFIG

N_MELS = 16
VOCAB = 40
DIM_SEM, DIM_AC = 12, 10

TINY = {
    "device": "cpu",
    "audio": {"n_mels": N_MELS, "max_seconds": 1.0},
    "model": {"n_layers": 2, "dim": 32, "n_heads": 2, "ff_mult": 2, "dropout": 0.0, "token_dim": None},
    # 12 train clips at batch 4: an epoch is 3 steps, so each phase is 6 steps
    "train": {"batch_size": 4, "lr": 3e-3, "warmup_epochs": 2.0, "branch_epochs": 2.0, "checkpoint_every": 2,
              "snapshot_fractions": [1 / 3, 2 / 3], "log_every": 1, "crop_seconds": 0.4, "repa_hidden": 16,
              "ema_decay": 0.9, "schedule": "onecycle", "warmup_fraction": 0.2},
    "methods": {"baseline": {"layers": []}, "repa_l2": {"layers": [2]}, "repa_l1_2": {"layers": [1, 2]},
                "ag_repa": {"selection": "foga"}},
    "report": {"table2": {"methods": ["baseline", "repa_l2", "repa_l1_2", "ag_repa"]}},  # in range of 2 layers
}


def tiny_cfg(tmp_path: Path, extra: dict | None = None) -> tuple[dict, Path]:
    """The embedded default with the tiny overlay (also written to tmp_path/tiny.yaml)."""
    over = config_mod.deep_merge(TINY, extra or {})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(over))
    return config_mod.load([DEFAULT_CONFIG, path]), path


TOKEN_RATE = 93.75 / 4     # make_corpus: one token per 4 mel frames


def token_store_meta(vocab: int = VOCAB, rate: float = TOKEN_RATE, paired: bool = False) -> dict:
    """The time/vocabulary meta ``agrepa tokens encode`` writes (same rate for both domains)."""
    return {"vocab_size": vocab, "offsets": {"speech": 1, "audio": 1 + (vocab - 1) // 2}, "paired": paired,
            "position_rate": {"speech": rate, "audio": rate}, "granularity": {"speech": 1, "audio": 1}}


def make_corpus(root: Path, n_speech: int = 6, n_audio: int = 6, seed: int = 0, paired: bool = False) -> dict:
    """Manifest + mel/token/semantic/acoustic stores of random clips; returns their paths.

    Each clip's mel is a smooth random curve per bin plus noise, 30-80 frames; its
    tokens are one id per 4 frames, covering every frame (``[N, 2]`` with ``paired``, Config B); speech clips
    have a semantic embedding only, audio clips an acoustic one (as the teacher stage
    writes them).
    """
    g = torch.Generator().manual_seed(seed)
    rows, mels, toks, sem, ac = [], {}, {}, {}, {}
    for k in range(n_speech + n_audio):
        dom = "speech" if k < n_speech else "audio"
        cid = f"{dom}_{k:03d}"
        T = int(torch.randint(30, 81, (1,), generator=g))
        base = torch.randn(N_MELS, generator=g) * 2 - 4
        wave = torch.sin(torch.linspace(0, 6.28 * (1 + k % 3), T))[:, None] * torch.randn(N_MELS, generator=g)
        mels[cid] = base + wave + 0.1 * torch.randn(T, N_MELS, generator=g)
        n_tok = -(-T // 4)   # ceil: the tokens cover every frame
        lo, hi = (1, 1 + (VOCAB - 1) // 2) if dom == "speech" else (1 + (VOCAB - 1) // 2, VOCAB)
        toks[cid] = torch.randint(lo, hi, (n_tok, 2) if paired else (n_tok,), generator=g)
        if dom == "speech":
            sem[cid] = torch.randn(DIM_SEM, generator=g)
        else:
            ac[cid] = torch.randn(DIM_AC, generator=g)
        rows.append({"id": cid, "path": f"audio/{cid}.wav", "duration": T * 256 / 24000, "sample_rate": 24000,
                     "domain": dom, "split": "train", "speaker": "s1" if dom == "speech" else "",
                     "text": "a b c" if dom == "speech" else "", "labels": "" if dom == "speech" else "x",
                     "caption": ""})
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    allmel = torch.cat(list(mels.values()))
    paths = {"manifest": manifest}
    for name, data, meta, key in (
            ("mels", mels, {"stats": {"mean": allmel.mean(0).tolist(), "std": allmel.std(0).tolist()}}, "mel"),
            ("tokens", toks, token_store_meta(paired=paired), "tokens"),
            ("semantic", sem, {"dim": DIM_SEM}, "pooled"),
            ("acoustic", ac, {"dim": DIM_AC}, "pooled")):
        w = StoreWriter(root / name, meta=meta, shard_size=5)
        for cid, t in data.items():
            w.add(cid, {key: t})
        w.close()
        paths[name] = root / name
    paths["raw_mels"] = mels
    paths["raw_tokens"] = toks
    return paths


def data_paths(paths: dict) -> DataPaths:
    """The five stores of :func:`make_corpus` as the stages take them."""
    return DataPaths(paths["manifest"], paths["mels"], paths["tokens"], paths["semantic"], paths["acoustic"])


def load_data(cfg, paths, split="train") -> TrainingData:
    return TrainingData(cfg, data_paths(paths), split=split)


@pytest.fixture
def corpus(tmp_path):
    cfg, _ = tiny_cfg(tmp_path)
    return cfg, make_corpus(tmp_path / "data")


def test_normalised_mels_and_embeddings(corpus):
    cfg, paths = corpus
    data = load_data(cfg, paths)
    assert len(data) == 12 and data.vocab_size == VOCAB
    assert data.teacher_dims == {"semantic": DIM_SEM, "acoustic": DIM_AC}
    allmel = torch.cat([data.clip_mel(i) for i in range(len(data))])
    assert allmel.mean(0).abs().max() < 1e-4          # train-split stats -> zero mean, unit std
    assert (allmel.std(0) - 1).abs().max() < 1e-3
    b = data.eval_batches(4, limit=1)[0]
    assert b["ids"] == ["speech_000", "audio_006", "speech_001", "audio_007"]   # interleaved domains
    assert b["domain"].tolist() == [0, 1, 0, 1]
    assert b["emb_semantic"][0].abs().sum() > 0 and b["emb_semantic"][1].abs().sum() == 0
    assert b["emb_acoustic"][1].abs().sum() > 0 and b["emb_acoustic"][0].abs().sum() == 0


def test_collate_crop_tokens_prompt(corpus):
    cfg, paths = corpus
    data = load_data(cfg, paths)
    L = crop_frames(cfg)
    assert L == math.ceil(0.4 * 24000 / 256)
    n_crop = math.floor(0.4 * TOKEN_RATE)                                    # whole tokens within crop_seconds
    idx = list(range(len(data)))
    u = torch.linspace(0, 0.999, len(idx))
    v = torch.linspace(0.999, 0, len(idx))
    b = data.collate(idx, u, v)
    B, T, M = b["mel"].shape
    assert (B, M) == (12, N_MELS) and T <= L
    for j, i in enumerate(idx):
        full, tok = data.clip_mel(i), data.clip_tokens(i)
        n = int(b["mask"][j].sum())
        f0, f1 = b["crop"][j].tolist()
        a, e = b["token_span"][j].tolist()
        n_starts = min(tok.shape[0], math.floor(full.shape[0] / 4)) - n_crop + 1
        if n_starts < 1:                                                     # shorter than a crop: whole
            assert (a, e, f0, f1) == (0, tok.shape[0], 0, full.shape[0])
        else:
            assert e - a == n_crop                                           # n_crop tokens
            assert a == min(int(float(u[j]) * n_starts), n_starts - 1)
            assert (f0, f1) == (round(a * 4), round(e * 4))                 # the same time span
        assert n == f1 - f0 <= L
        assert torch.equal(b["mel"][j, :n], full[f0:f1])                    # the crop
        assert b["mel"][j, n:].abs().sum() == 0 and not b["mask"][j, n:].any()
        span = b["tokens"][j][b["tokens"][j] != 0]
        assert torch.equal(span, tok[a:e])                                   # tokens cropped by time
        p = int(b["prompt_mask"][j].sum())
        assert p <= 0.3 * n                                                # prefix <= 30 % of the crop
        assert torch.equal(b["prompt"][j, :p], b["mel"][j, :p]) and b["prompt"][j, p:].abs().sum() == 0
    # the host flag `padded` (attention without a mask when False) says whether any row is padded
    assert b["padded"] is bool((~b["mask"]).any())
    # the host rows per domain (the heads select rows without a sync) are the domain tensor's
    assert b["domain_rows"] == tuple(tuple((b["domain"] == d).nonzero().flatten().tolist()) for d in range(2))
    full = [i for i in idx if b["mask"][i].all()]
    assert len(full) >= 2 and data.collate(full[:2], u[full[:2]], v[full[:2]])["padded"] is False
    # deterministic batches: crop from frame 0, prompt exactly eval_prompt_fraction
    e1, e2 = data.eval_batches(5), data.eval_batches(5)
    assert len(e1) == 3 and all(torch.equal(x["mel"], y["mel"]) for x, y in zip(e1, e2))
    j = e1[0]["ids"].index("speech_000")
    n = int(e1[0]["mask"][j].sum())
    assert e1[0]["crop"][j, 0] == 0 and e1[0]["token_span"][j, 0] == 0
    assert torch.equal(e1[0]["mel"][j, :n], data.clip_mel(data.ids.index("speech_000"))[:n])
    assert int(e1[0]["prompt_mask"][j].sum()) == math.floor(0.3 * n)
    assert all(int(d) == 1 for b in data.eval_batches(3, domain="audio") for d in b["domain"])


def test_config_b_rows_and_rejects(tmp_path):
    """Config B rows ([N, 2]) are cropped as one; a clip whose tokens and mel disagree is rejected."""
    cfg, _ = tiny_cfg(tmp_path)
    paths = make_corpus(tmp_path / "b", 3, 3, paired=True)
    data = load_data(cfg, paths)
    assert data.token_layout == {"paired": True, "audio_offset": 1 + (VOCAB - 1) // 2}
    b = data.collate(list(range(len(data))), torch.full((6,), 0.5), torch.zeros(6))
    assert b["tokens"].shape[2] == 2
    for j in range(6):
        a, e = b["token_span"][j].tolist()
        n = int((b["tokens"][j, :, 0] != 0).sum())
        assert n == e - a and torch.equal(b["tokens"][j, :n], data.clip_tokens(j)[a:e])
    # too many tokens for the audio: rejected with the reason
    w = StoreWriter(tmp_path / "bad_tokens", meta=token_store_meta(), shard_size=5)
    for cid, t in paths["raw_tokens"].items():
        w.add(cid, {"tokens": torch.cat([t[:, 0]] * (2 if cid == "speech_001" else 1))})
    w.close()
    data = TrainingData(cfg, DataPaths(paths["manifest"], paths["mels"], tmp_path / "bad_tokens", paths["semantic"],
                                       paths["acoustic"]))
    assert "speech_001" not in data.ids and len(data) == 5
    assert dict(data.rejected)["speech_001"].startswith(f"{2 * paths['raw_tokens']['speech_001'].shape[0]} tokens")


def test_long_clip_cut_to_max_seconds_with_its_tokens(tmp_path):
    """A clip longer than audio.max_seconds keeps the first whole tokens within it and their mel."""
    cfg, _ = tiny_cfg(tmp_path)   # max_seconds 1.0: 23 tokens, 92 frames
    paths = make_corpus(tmp_path / "c", 1, 1)
    long_mel = torch.randn(400, N_MELS)
    long_tok = torch.randint(1, 20, (100,))
    for name, key, x in (("mels", "mel", long_mel), ("tokens", "tokens", long_tok)):
        store = paths[name]
        meta = json.loads((store / "index.json").read_text())["meta"]
        w = StoreWriter(store, meta=meta, shard_size=5)
        w.add("speech_000", {key: x})
        w.add("audio_001", {key: paths["raw_mels" if name == "mels" else "raw_tokens"]["audio_001"]})
        w.close()
    data = load_data(cfg, paths)
    i = data.ids.index("speech_000")
    assert data.clip_tokens(i).shape[0] == 23 and data.clip_mel(i).shape[0] == round(23 * 4) == 92
    assert torch.equal(data.clip_tokens(i), long_tok[:23])


def test_sampler_balanced_and_resumable():
    domains = [0] * 5 + [1] * 9
    s = BalancedSampler(domains, 4, seed=3, tag="warmup")
    batches = [s.next_batch() for _ in range(7)]
    for b in batches:
        assert sorted(domains[i] for i in b) == [0, 0, 1, 1]
        assert sorted(domains[i] for i in b[shard(4, 0, 2)]) == [0, 1]    # each rank's shard balanced too
    seen = [i for b in batches[:5] for i in b if domains[i] == 0]
    assert sorted(seen[:5]) == [0, 1, 2, 3, 4]                           # epoch = permutation
    state = s.state_dict()
    rest = [s.next_batch() for _ in range(5)]
    s2 = BalancedSampler(domains, 4, seed=3, tag="warmup")
    s2.load_state_dict(state)
    assert [s2.next_batch() for _ in range(5)] == rest
    other = BalancedSampler(domains, 4, seed=4, tag="warmup")
    assert [other.next_batch() for _ in range(7)] != batches
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)
    only = BalancedSampler([1, 1, 1], 2, seed=0)
    assert all(len(only.next_batch()) == 2 for _ in range(3))


def test_bad_inputs(tmp_path):
    cfg, _ = tiny_cfg(tmp_path)
    paths = make_corpus(tmp_path / "d", 2, 2)
    idx = paths["mels"] / "index.json"
    meta = json.loads(idx.read_text())
    del meta["meta"]["stats"]
    idx.write_text(json.dumps(meta))
    with pytest.raises(KeyError, match="stats"):
        load_data(cfg, paths)
    with pytest.raises(FileNotFoundError, match="index.json"):
        TrainingData(cfg, DataPaths(paths["manifest"], tmp_path / "nope", paths["tokens"], paths["semantic"],
                                    paths["acoustic"]))
    with pytest.raises(ValueError, match="split 'valid'"):
        load_data(cfg, make_corpus(tmp_path / "e", 2, 2), split="valid")
