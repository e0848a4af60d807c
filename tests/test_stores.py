"""Stores keep what downstream stages read (issue 23, item 3): teacher frames only for the
clips a configured tokenizer reads them of, in half precision; ``pooled`` float32 always."""
from __future__ import annotations

import pytest
import torch

from agrepa import config as C
from agrepa.store import Store
from agrepa.teachers.beats import BEATs, save_checkpoint
from agrepa.teachers.cache import FULL_FP32, embed_manifest, store_layout
from agrepa.teachers.readers import frames_read
from agrepa.tokenizers.streams import fit_stream
from test_teachers import tiny_beats_cfg, write_clips
from test_workflow_support import DEFAULT_CONFIG, REPO

PAPER = [DEFAULT_CONFIG, REPO / "config" / "paper.yaml"]


def test_frames_read_at_config_and_paper():
    default = C.load(DEFAULT_CONFIG)
    # k-means speech tokens on the semantic frames of speech clips; RepCodec on the acoustic frames of
    # audio clips and Config B's k-means BEATs stand-in on those of every clip
    assert frames_read(default, "semantic") == ("speech",)
    assert frames_read(default, "acoustic") == ("speech", "audio")
    assert store_layout(default, "acoustic").frames_dtype == "float32"   # the embedded default: tokens bitwise
    # paper.yaml: S3 ONNX reads audio (no semantic frames), BEATs' own tokenizer reads audio, so only the
    # RepCodec AudioSet tokens read BEATs frames, of the audio clips
    paper = C.load(PAPER)
    assert frames_read(paper, "semantic") == ()
    assert frames_read(paper, "acoustic") == ("audio",)
    assert store_layout(paper, "acoustic").frames_dtype == "float16"
    assert frames_read(C.load(PAPER + [REPO / "config" / "rehearsal.yaml"]), "semantic") == ()
    # Config A alone: the BEATs stand-in is never encoded, so speech clips' acoustic frames are unread
    assert frames_read(C.load([DEFAULT_CONFIG, REPO / "config" / "test.yaml"]), "acoustic") == ("audio",)
    with pytest.raises(ValueError, match="teacher role"):
        frames_read(default, "visual")


def test_embed_store_keeps_read_frames_only_in_half_precision(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "beats.pt"
    save_checkpoint(BEATs(tiny_beats_cfg()), ckpt)
    manifest, rows = write_clips(tmp_path, 4)           # speech, audio, speech, audio
    cfg = C.load(DEFAULT_CONFIG, overrides=["teachers.acoustic.name=beats", f"teachers.acoustic.checkpoint={ckpt}",
                                            "token_configs=[A]", "teachers.frames_dtype=float16"])
    meta = embed_manifest(cfg, "acoustic", manifest, tmp_path / "emb")
    assert meta["frames_domains"] == ["audio"] and meta["frames_dtype"] == "float16"
    assert meta["n_frames_clips"] == 2
    # Config A alone: no stage reads a speech clip's acoustic output (frames or pooled): not embedded
    assert meta["domains"] == ["audio"] and meta["n_clips"] == 2 and meta["n_skipped"] == 2
    store = Store(tmp_path / "emb")
    full = embed_manifest(cfg, "acoustic", manifest, tmp_path / "full", layout=FULL_FP32)   # the layout before
    old = Store(tmp_path / "full")
    assert full["domains"] == ["speech", "audio"] and full["n_clips"] == 4
    for row in rows:
        ref = old.get(row["id"])
        if row["domain"] == "speech":
            assert row["id"] not in store and row["id"] in old
        else:
            got = store.get(row["id"])
            assert got["pooled"].dtype == torch.float32 and torch.equal(got["pooled"], ref["pooled"])
            assert got["frames"].dtype == torch.float16
            assert torch.equal(got["frames"], ref["frames"].half())   # round-to-nearest of the fp32 frames
    assert full["cache_key"] != meta["cache_key"]             # another layout is another cache
    # a config that reads the speech clips' frames too (Config B's stand-in) re-embeds
    cfg["token_configs"] = ["A", "B"]
    again = embed_manifest(cfg, "acoustic", manifest, tmp_path / "emb")
    assert again["frames_domains"] == ["speech", "audio"] and again["cache_key"] != meta["cache_key"]
    assert again["domains"] == ["speech", "audio"] and again["n_skipped"] == 0
    assert all(Store(tmp_path / "emb").has(r["id"], "frames") for r in rows)


def test_semantic_store_without_readers_has_no_frames(tmp_path):
    """At a config whose speech tokens read audio (paper.yaml's s3-onnx), the semantic store holds
    ``pooled`` only, and a frame-reading fit on it says why it cannot."""
    manifest, rows = write_clips(tmp_path, 2)
    cfg = C.load(DEFAULT_CONFIG, overrides=["tokens.speech.kind=s3-onnx"])
    meta = embed_manifest(cfg, "semantic", manifest, tmp_path / "sem")
    assert meta["frames_domains"] == [] and meta["n_frames_clips"] == 0
    assert meta["domains"] == ["speech"]               # Whisper's pooled is read of speech clips only
    store = Store(tmp_path / "sem")
    for row in rows:
        if row["domain"] == "audio":
            assert row["id"] not in store
            continue
        assert set(store.get(row["id"])) == {"pooled"}
        assert store.has(row["id"], "pooled") and not store.has(row["id"], "frames")
    assert not store.has("no-such-clip", "pooled")
    with pytest.raises(ValueError, match="no semantic frames"):
        fit_stream(C.load(DEFAULT_CONFIG), "speech", manifest, tmp_path / "tok", features=tmp_path / "sem")


def test_half_precision_out_of_range_is_an_error():
    from agrepa.teachers.cache import stored_frames

    assert stored_frames(torch.tensor([[1.0, -2.0]]), "float16", "x").dtype == torch.float16
    with pytest.raises(ValueError, match="beyond float16"):
        stored_frames(torch.tensor([[7.0e4]]), "float16", "clip.wav")
    assert stored_frames(torch.tensor([[7.0e4]]), "bfloat16", "x").dtype == torch.bfloat16
