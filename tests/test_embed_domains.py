"""The embed job runs a teacher only on the clips some stage reads its output of (issue 23
follow-up): ``pooled`` is read with the clip's own domain's teacher only
(:func:`agrepa.teachers.readers.pooled_read`), frames where a tokenizer reads them
(:func:`~agrepa.teachers.readers.frames_read`); the other domain's clips are not embedded, and
a training batch gives zeros for them, as it always did for a clip a store lacks."""
from __future__ import annotations

import json

import pytest
import torch

from agrepa import config as C
from agrepa.store import Store, StoreWriter, part_dir
from agrepa.teachers.base import Teacher
from agrepa.teachers.cache import embed_manifest, gather_embeddings, store_layout
from agrepa.teachers.readers import POOLED_ROLE, embedded_domains, frames_read, pooled_read
from agrepa.training.dataset import DOMAIN_TEACHER, DataPaths, TrainingData
from agrepa.training.objectives import BiTCHeads, REPAHeads
from test_dataset import DIM_AC, DIM_SEM, make_corpus, tiny_cfg
from test_teachers import write_clips
from test_workflow_support import DEFAULT_CONFIG, REPO

PAPER = [DEFAULT_CONFIG, REPO / "config" / "paper.yaml"]
OVERLAYS = {
    "config.yaml": [DEFAULT_CONFIG],
    "test.yaml": [DEFAULT_CONFIG, REPO / "config" / "test.yaml"],
    "paper.yaml": PAPER,
    "rehearsal.yaml": PAPER + [REPO / "config" / "rehearsal.yaml"],
}
# (semantic, acoustic) domains embedded: the clip's own domain for pooled, plus the frames a tokenizer reads
EMBEDDED = {
    "config.yaml": (("speech",), ("speech", "audio")),   # Config B's k-means BEATs stand-in reads speech frames
    "test.yaml": (("speech",), ("audio",)),              # Config A only: no stage reads speech clips' acoustic output
    "paper.yaml": (("speech",), ("audio",)),             # S3 ONNX and BEATs' tokenizer read audio; RepCodec audio frames
    "rehearsal.yaml": (("speech",), ("audio",)),
}


def test_pooled_table_is_the_training_one():
    assert POOLED_ROLE == DOMAIN_TEACHER


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_pooled_read_and_embedded_domains_at_each_config(name):
    cfg = C.load(OVERLAYS[name])
    assert pooled_read(cfg, "semantic") == ("speech",)
    assert pooled_read(cfg, "acoustic") == ("audio",)
    sem, ac = EMBEDDED[name]
    assert embedded_domains(cfg, "semantic") == sem and embedded_domains(cfg, "acoustic") == ac
    for role in ("semantic", "acoustic"):
        layout = store_layout(cfg, role)
        assert layout.domains == embedded_domains(cfg, role)
        assert set(frames_read(cfg, role)) <= set(layout.domains)    # frames are stored for embedded clips only
    with pytest.raises(ValueError, match="teacher role"):
        pooled_read(cfg, "visual")


class CountingTeacher(Teacher):
    """A 3-d teacher (frames: a fixed projection of 10-ms chunks) that counts the clips it runs on."""

    name, dim, frame_rate, sample_rate = "counting", 3, 100.0, 16000

    def __init__(self):
        self.seen = 0

    def frames(self, wave):
        self.seen += 1
        hop = 160
        n = max(1, wave.numel() // hop)
        chunks = torch.nn.functional.pad(wave, (0, n * hop - wave.numel()))[: n * hop].reshape(n, hop)
        return torch.stack([chunks.mean(1), chunks.abs().mean(1), chunks.std(1, unbiased=False)], dim=1)

    def weights_sha256(self):
        return "0" * 64


def test_embed_runs_the_teacher_on_read_clips_only_and_gathers_in_two_parts(tmp_path):
    manifest, rows = write_clips(tmp_path, 6)                  # speech, audio, speech, audio, ...
    cfg = C.load(OVERLAYS["test.yaml"])                        # Config A: acoustic read of audio clips only
    cfg["teachers"]["batch_size"] = 2
    audio = [r["id"] for r in rows if r["domain"] == "audio"]
    t = CountingTeacher()
    one = embed_manifest(cfg, "acoustic", manifest, tmp_path / "one", teacher=t)
    assert t.seen == len(audio) == 3                           # the teacher never ran on a speech clip
    assert one["domains"] == ["audio"] and one["n_clips"] == 3 and one["n_skipped"] == 3
    assert sorted(Store(tmp_path / "one").keys()) == sorted(audio)
    # K = 2 parts: each part embeds its slice of the audio clips; the gather wants exactly those
    t2 = CountingTeacher()
    for k in range(2):
        part = embed_manifest(cfg, "acoustic", manifest, tmp_path / "two", teacher=t2, part=k, parts=2)
        assert part["n_skipped"] == 3
    assert t2.seen == 3
    two = gather_embeddings(cfg, "acoustic", manifest, tmp_path / "two", 2)
    assert two["n_clips"] == 3 and two["domains"] == ["audio"]
    a, b = Store(tmp_path / "one"), Store(tmp_path / "two")
    assert sorted(b.keys()) == sorted(audio)
    for cid in audio:
        assert torch.equal(a.get(cid)["pooled"], b.get(cid)["pooled"])
    # a second run is a cache hit (the teacher is not run); a config that reads the speech clips re-embeds them
    embed_manifest(cfg, "acoustic", manifest, tmp_path / "one", teacher=t)
    assert t.seen == 3
    cfg["token_configs"] = ["A", "B"]                          # the k-means BEATs stand-in reads every clip's frames
    full = embed_manifest(cfg, "acoustic", manifest, tmp_path / "one", teacher=t)
    assert t.seen == 3 + 6 and full["domains"] == ["speech", "audio"] and full["cache_key"] != one["cache_key"]


def test_a_part_lacking_a_read_clip_does_not_gather(tmp_path):
    manifest, rows = write_clips(tmp_path, 4)
    cfg = C.load(OVERLAYS["test.yaml"])
    for k in range(2):
        embed_manifest(cfg, "acoustic", manifest, tmp_path / "emb", teacher=CountingTeacher(), part=k, parts=2)
    for k in range(2):                                         # each part says it embedded both domains
        index = part_dir(tmp_path / "emb", k, 2) / "index.json"
        doc = json.loads(index.read_text())
        doc["meta"]["domains"] = ["speech", "audio"]
        index.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="the parts hold 2 clips, the manifest 4"):
        gather_embeddings(cfg, "acoustic", manifest, tmp_path / "emb", 2)


def test_unread_domain_rows_get_zeros_and_the_same_losses(tmp_path):
    """A semantic store that also holds the audio clips (the store before) and one without them
    give the same batches but for the audio rows' ``emb_semantic`` (zeros, as for any clip a
    store lacks), and bitwise the same REPA and BiT-C losses: no reader looks at those rows."""
    cfg, _ = tiny_cfg(tmp_path)
    paths = make_corpus(tmp_path / "data")                     # semantic: speech clips, acoustic: audio clips
    g = torch.Generator().manual_seed(1)
    for role, dim, other in (("semantic", DIM_SEM, "audio"), ("acoustic", DIM_AC, "speech")):
        src = Store(paths[role])
        w = StoreWriter(tmp_path / f"full_{role}", meta=src.meta, shard_size=5)
        for cid in src.keys():
            w.add(cid, src.get(cid))
        for cid in paths["raw_mels"]:
            if cid.startswith(other):                          # the other domain's entries, as every clip was embedded
                w.add(cid, {"pooled": torch.randn(dim, generator=g)})
        w.close()
    reduced = TrainingData(cfg, DataPaths(paths["manifest"], paths["mels"], paths["tokens"], paths["semantic"],
                                          paths["acoustic"]))
    full = TrainingData(cfg, DataPaths(paths["manifest"], paths["mels"], paths["tokens"], tmp_path / "full_semantic",
                                       tmp_path / "full_acoustic"))
    assert reduced.ids == full.ids and len(reduced) == 12
    plan = {"speech": [(1, 1.0)], "audio": [(2, 0.5)]}
    torch.manual_seed(0)
    repa = REPAHeads(plan, 16, {"semantic": DIM_SEM, "acoustic": DIM_AC}, hidden=8)
    bitc = BiTCHeads(16, {"semantic": DIM_SEM, "acoustic": DIM_AC})
    for br, bf in zip(reduced.eval_batches(4), full.eval_batches(4)):
        assert br["ids"] == bf["ids"]
        speech = br["domain"] == 0
        assert speech.any() and (~speech).any()
        assert torch.equal(br["emb_semantic"][speech], bf["emb_semantic"][speech])
        assert torch.equal(br["emb_acoustic"][~speech], bf["emb_acoustic"][~speech])
        assert br["emb_semantic"][~speech].abs().sum() == 0 and bf["emb_semantic"][~speech].abs().sum() > 0
        assert br["emb_acoustic"][speech].abs().sum() == 0 and bf["emb_acoustic"][speech].abs().sum() > 0
        n, T = br["mask"].shape[0], br["mask"].shape[1]
        hidden = [torch.randn(n, T, 16) for _ in range(3)]
        assert torch.equal(repa.per_sample(hidden, br), repa.per_sample(hidden, bf))
        tok = torch.randn(n, T, 16)
        assert torch.equal(bitc.loss(tok, br), bitc.loss(tok, bf))
