"""Streamed training data: batches read by byte range equal the in-memory ones, DataLoader
workers change nothing, the sampler's promises hold through the loader, and the dataset keeps
no mel in memory."""
from __future__ import annotations

import tracemalloc

import pytest
import torch

from agrepa.store import Store, StoreWriter
from agrepa.tokenizers.timing import token_window
from agrepa.training.dataset import BalancedSampler, TrainingData, shard
from agrepa.training.loader import StepBatches, loader, next_batch
from agrepa.training.train import draw_step
from test_dataset import N_MELS, data_paths, make_corpus, tiny_cfg


def in_memory_item(data: TrainingData, paths: dict, i: int, u: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip ``i``'s crop as the former in-memory TrainingData made it: the whole stored mel,
    normalised, cut to the usable frames, then cropped (tokens likewise)."""
    cid = data.ids[i]
    mel = ((paths["raw_mels"][cid].float() - data.mean) / data.std)[:int(data.frames[i])]
    tok = paths["raw_tokens"][cid].long()[:int(data.rows[i])]
    grid = data.grids[int(data.domain[i])]
    a, b, f0, f1 = token_window(tok.shape[0], mel.shape[0], grid, grid.positions(data.crop_seconds), u)
    return mel[f0:f1], tok[a:b]


@pytest.mark.parametrize("paired", [False, True])
def test_streamed_batches_equal_in_memory(tmp_path, paired):
    cfg, _ = tiny_cfg(tmp_path, {"train": {"open_shards": 1}})     # every read may reopen a shard
    paths = make_corpus(tmp_path / "data", paired=paired)
    data = TrainingData(cfg, data_paths(paths))
    n = len(data)
    u, v = torch.rand(n, generator=torch.Generator().manual_seed(1)), torch.rand(n)
    for crop in (u, None):
        b = data.collate(list(range(n)), crop, v if crop is not None else None)
        for j in range(n):
            mel, tok = in_memory_item(data, paths, j, None if crop is None else float(crop[j]))
            L, N = mel.shape[0], tok.shape[0]
            assert torch.equal(b["mel"][j, :L], mel) and b["mel"][j, L:].abs().sum() == 0      # bitwise
            assert torch.equal(b["tokens"][j, :N], tok) and b["tokens"][j, N:].abs().sum() == 0
    assert len(data.pool._open) <= 1                                                           # bounded handles
    raw_sem = Store(paths["semantic"]).load("pooled")
    for j, cid in enumerate(b["ids"]):
        want = raw_sem[cid] if cid in raw_sem else torch.zeros(data.teacher_dims["semantic"])
        assert torch.equal(b["emb_semantic"][j], want)


def test_bad_token_id_named_at_read(tmp_path):
    cfg, _ = tiny_cfg(tmp_path)
    paths = make_corpus(tmp_path / "data", 2, 2)
    w = StoreWriter(tmp_path / "bad", meta=Store(paths["tokens"]).meta, shard_size=5)
    for cid, t in paths["raw_tokens"].items():
        w.add(cid, {"tokens": t * 0 + 99 if cid == "speech_001" else t})
    w.close()
    d = data_paths(paths)
    data = TrainingData(cfg, type(d)(d.manifest, d.mels, tmp_path / "bad", d.semantic, d.acoustic))
    with pytest.raises(ValueError, match=r"bad: tokens of 'speech_001' .* outside \[1, 40\)"):
        data.collate([data.ids.index("speech_001")])


def _steps(cfg, data, workers: int, start: int, total: int, local=slice(None), state=None):
    cfg = {**cfg, "train": {**cfg["train"], "num_workers": workers}}
    sampler = BalancedSampler(data.domain, 4, seed=5, tag="warmup")
    if state is not None:
        sampler.load_state_dict(state)
    it = iter(loader(cfg, StepBatches(data, sampler.state_dict(), batch_size=4, seed=5, stream="warmup", local=local,
                                      start=start, total=total), pin_memory=False))
    out = []
    for step in range(start, total):
        before = sampler.state_dict()
        out.append((next_batch(it, sampler, step), before))
    return out, sampler


def test_loader_workers_equal_in_process_and_keep_promises(tmp_path):
    cfg, _ = tiny_cfg(tmp_path)
    paths = make_corpus(tmp_path / "data", 6, 6)
    data = TrainingData(cfg, data_paths(paths))
    zero, s0 = _steps(cfg, data, 0, 0, 9)
    two, s2 = _steps(cfg, data, 2, 0, 9)
    assert s0.state_dict() == s2.state_dict() and s0.batches == 9                      # consumed position
    for (a, _), (b, _) in zip(zero, two):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)
    # the crops are draw_step's
    d = draw_step(cfg, 5, "warmup", 4, 4)
    again = data.collate([data.ids.index(i) for i in zero[4][0]["ids"]], d.crop, d.prompt)
    assert torch.equal(again["mel"], zero[4][0]["mel"]) and torch.equal(again["prompt"], zero[4][0]["prompt"])
    # balanced global batches; every clip of a domain once per epoch (6 per domain, 2 per step: 3 steps)
    for batch, _ in zero:
        assert sorted(batch["domain"].tolist()) == [0, 0, 1, 1]
    for e in range(3):
        ids = [i for batch, _ in zero[3 * e:3 * e + 3] for i in batch["ids"]]
        assert sorted(ids) == sorted(data.ids)
    # two ranks: disjoint halves of every global batch, together the whole batch
    r0, _ = _steps(cfg, data, 2, 0, 9, local=shard(4, 0, 2))
    r1, _ = _steps(cfg, data, 0, 0, 9, local=shard(4, 1, 2))
    for (g, _), (a, _), (b, _) in zip(zero, r0, r1):
        assert not set(a["ids"]) & set(b["ids"]) and a["ids"] + b["ids"] == g["ids"]
        assert sorted(a["domain"].tolist()) == sorted(b["domain"].tolist()) == [0, 1]     # each rank balanced
        for k, (part, row) in enumerate([(a, 0), (a, 1), (b, 0), (b, 1)]):   # the same crops as the global batch
            n = int(g["mask"][k].sum())
            assert torch.equal(part["mel"][row, :n], g["mel"][k, :n])
    # resuming at step 5 from the consumed state of step 5 gives the same batches
    resumed, _ = _steps(cfg, data, 2, 5, 9, state=zero[5][1])
    for (a, _), (b, _) in zip(zero[5:], resumed):
        assert a["ids"] == b["ids"] and torch.equal(a["mel"], b["mel"]) and torch.equal(a["tokens"], b["tokens"])


def _long_corpus(root, n: int, frames: int = 1500) -> dict:
    """make_corpus's stores with every mel ``frames`` long (and tokens to match)."""
    paths = make_corpus(root, n // 2, n - n // 2)
    g = torch.Generator().manual_seed(0)
    for name, key in (("mels", "mel"), ("tokens", "tokens")):
        meta = Store(paths[name]).meta
        w = StoreWriter(paths[name], meta=meta, shard_size=5)
        for cid, t in paths["raw_tokens"].items():
            w.add(cid, {key: torch.randn(frames, N_MELS, generator=g) if name == "mels"
                        else t[:1].repeat(frames // 4)})
        w.close()
    return paths


def test_dataset_holds_no_mel(tmp_path):
    """Memory kept by the dataset grows by < 1 % of the corpus's mel: 8 vs 32 clips of 1500 frames (the
    in-memory loader kept >= 100 %)."""
    cfg, _ = tiny_cfg(tmp_path, {"audio": {"max_seconds": 20.0}})
    kept = {}
    for n in (8, 32):
        paths = _long_corpus(tmp_path / f"c{n}", n)
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        data = TrainingData(cfg, data_paths(paths))
        kept[n] = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        assert len(data) == n and int(data.frames.min()) > 1000
    mel_growth = (32 - 8) * 1500 * N_MELS * 4
    assert (kept[32] - kept[8]) / mel_growth < 0.01, (kept, mel_growth)
