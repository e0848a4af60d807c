"""Tokenizers: k-means / RepCodec fits, unified vocabulary, Config A/B encoding, S3 ONNX front end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agrepa import config as C
from agrepa.cli import main
from agrepa.corpora.manifest import make_manifest, write_manifest
from agrepa.fixtures import onnx as onnx_pb
from agrepa.config import PAD_ID
from agrepa.store import Store, StoreWriter
from agrepa.tokenizers.streams import load_tokenizer
from agrepa.tokenizers.kmeans import KMeans, perplexity
from agrepa.tokenizers.s3onnx import S3OnnxTokenizer, s3_features
from agrepa.tokenizers.timing import Grid, duration_mismatch, pair_by_time, token_window
from agrepa.tokenizers.vocab import Vocab, rate_summary
from test_workflow_support import DEFAULT_CONFIG

torch.set_num_threads(1)

SMALL = ["tokens.speech.k=8", "tokens.audio.k=8", "tokens.audio.dim=8", "tokens.audio.hidden=16",
         "tokens.audio.steps=60", "tokens.audio.window=8", "tokens.audio.restart_every=20",
         "tokens.beats.k=4"]


def clustered_frames(n: int, dim: int, centres: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    which = torch.randint(len(centres), (n,), generator=gen)
    return centres[which] + 0.1 * torch.randn(n, dim, generator=gen)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A manifest plus semantic (50 /s, D=12) and acoustic (23.4375 /s, D=10) feature stores."""
    root = tmp_path_factory.mktemp("tok")
    gen = torch.Generator().manual_seed(0)
    cs, ca = torch.randn(8, 12, generator=gen) * 3, torch.randn(6, 10, generator=gen) * 3
    rows, sem, aco = [], {}, {}
    for i in range(16):
        domain = "speech" if i < 8 else "audio"
        split = "train" if i % 8 < 6 else "valid"
        dur = 1.0 + 0.25 * (i % 4)
        cid = f"{domain}{i}"
        rows.append({"id": cid, "path": f"{cid}.wav", "duration": dur, "sample_rate": 24000, "domain": domain,
                     "split": split, "labels": "" if domain == "speech" else "x"})
        sem[cid] = clustered_frames(int(np.ceil(dur * 50)), 12, cs, gen)
        aco[cid] = clustered_frames(int(dur * 93.75) // 4, 10, ca, gen)
    write_manifest(make_manifest(rows), root / "manifest.csv")
    for name, feats, rate in (("semantic", sem, 50.0), ("acoustic", aco, 93.75 / 4)):
        w = StoreWriter(root / name, meta={"role": name, "teacher": "synthetic", "fingerprint": f"fp-{name}",
                                           "frame_rate": rate, "granularity": 1,
                                           "dim": next(iter(feats.values())).shape[1]})
        for cid, f in feats.items():
            w.add(cid, {"frames": f, "pooled": f.mean(0)})
        w.close()
    return {"root": root, "manifest": root / "manifest.csv", "semantic": root / "semantic",
            "acoustic": root / "acoustic", "sem": sem, "aco": aco, "rows": rows}


def run(*args) -> int:
    argv = [*args[:2], "--config", str(DEFAULT_CONFIG), "--threads", "1", *args[2:]]
    for s in SMALL:
        argv += ["--set", s]
    return main(argv)


def fit_all(corpus, out):
    m = str(corpus["manifest"])
    assert run("tokens", "fit", "--stream", "speech", "--features", str(corpus["semantic"]),
               "--manifest", m, "--out", str(out / "speech")) == 0
    assert run("tokens", "fit", "--stream", "audio", "--features", str(corpus["acoustic"]),
               "--manifest", m, "--out", str(out / "audio")) == 0
    assert run("tokens", "fit", "--stream", "beats", "--features", str(corpus["acoustic"]),
               "--manifest", m, "--out", str(out / "beats")) == 0


@pytest.fixture(scope="module")
def fitted(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    fit_all(corpus, out)
    return out


def test_fit_reports_usage_and_is_deterministic(corpus, fitted, tmp_path):
    for stream, k in (("speech", 8), ("audio", 8), ("beats", 4)):
        metrics = json.loads((fitted / stream / "metrics.json").read_text())
        assert 1.0 < metrics["perplexity"] <= k + 1e-9, (stream, metrics)
        assert metrics["k"] == k and metrics["used_codes"] >= 2
        conf = json.loads((fitted / stream / "config.json").read_text())
        assert conf["stream"] == stream and conf["features"]["fingerprint"].startswith("fp-")
    # k-means on 8 well-separated clusters with K = 8 finds them all: near-uniform usage
    assert json.loads((fitted / "speech" / "metrics.json").read_text())["perplexity"] > 6.0
    audio = json.loads((fitted / "audio" / "metrics.json").read_text())
    assert audio["recon_mse_train"] < audio["recon_mse_first"]
    again = tmp_path / "again"
    fit_all(corpus, again)
    for f in ("speech/kmeans.safetensors", "audio/model.safetensors", "beats/kmeans.safetensors"):
        assert (fitted / f).read_bytes() == (again / f).read_bytes(), f


def test_encode_config_a(corpus, fitted, tmp_path):
    out = tmp_path / "A"
    assert run("tokens", "encode", "--token-config", "A", "--speech-model", str(fitted / "speech"),
               "--audio-model", str(fitted / "audio"), "--semantic", str(corpus["semantic"]),
               "--acoustic", str(corpus["acoustic"]), "--manifest", str(corpus["manifest"]),
               "--out", str(out)) == 0
    store = Store(out)
    meta = store.meta
    assert meta["vocab_size"] == 1 + 8 + 8 and meta["offsets"] == {"speech": 1, "audio": 9}
    assert meta["token_rate"] == {"speech": 50.0, "audio": 93.75 / 4} and meta["mel_rate"] == 93.75
    assert len(store) == 16
    for row in corpus["rows"]:
        tok = store.get(row["id"])["tokens"]
        assert tok.dtype == torch.int64 and (tok != PAD_ID).all()
        if row["domain"] == "speech":
            # not resampled: one token per teacher frame
            assert tok.numel() == corpus["sem"][row["id"]].shape[0]
            assert ((tok >= 1) & (tok < 9)).all()
        else:
            assert tok.numel() == corpus["aco"][row["id"]].shape[0]
            assert ((tok >= 9) & (tok < 17)).all()
    km = load_tokenizer(fitted / "speech")
    cid = corpus["rows"][0]["id"]
    assert torch.equal(store.get(cid)["tokens"], km.encode_frames(corpus["sem"][cid]) + 1)


def test_encode_config_b_pairs_streams_by_time(corpus, fitted, tmp_path):
    out = tmp_path / "B"
    common = ["--speech-model", str(fitted / "speech"), "--audio-model", str(fitted / "audio"),
              "--semantic", str(corpus["semantic"]), "--acoustic", str(corpus["acoustic"]),
              "--manifest", str(corpus["manifest"])]
    assert run("tokens", "encode", "--token-config", "B", "--out", str(out), *common) == 2  # no beats model
    assert run("tokens", "encode", "--token-config", "B", "--beats-model", str(fitted / "beats"),
               "--out", str(out), *common) == 0
    assert run("tokens", "encode", "--token-config", "A", "--out", str(tmp_path / "A"), *common) == 0
    b, a = Store(out), Store(tmp_path / "A")
    assert b.meta["offsets"] == {"speech": 1, "audio": 9, "beats": 17} and b.meta["vocab_size"] == 21
    assert b.meta["paired"] is True and a.meta["paired"] is False
    assert b.meta["position_rate"] == {"speech": 50.0, "audio": 93.75 / 4}     # the faster stream's grid
    assert b.meta["columns"] == {"speech": ["speech", "beats"], "audio": ["audio", "beats"]}
    assert b.meta["granularity"] == {"speech": 2, "audio": 1}   # a 23.4 /s BEATs step spans ~2 speech tokens
    beats = load_tokenizer(fitted / "beats")
    for row in corpus["rows"]:
        x = b.get(row["id"])["tokens"]
        prim = a.get(row["id"])["tokens"]
        assert x.dim() == 2 and x.shape[1] == 2
        assert torch.equal(x[:, 0], prim)                                       # primary column = Config A
        names, _ = Vocab.from_meta(b.meta).to_local(x[:, 1])
        assert set(names) == {"beats"}
        own = beats.encode_frames(corpus["aco"][row["id"]]) + 17
        r = 50.0 if row["domain"] == "speech" else 93.75 / 4
        want = own[((torch.arange(x.shape[0]) + 0.5) * (93.75 / 4) / r).floor().long().clamp(max=own.numel() - 1)]
        assert torch.equal(x[:, 1], want)                                      # the BEATs token under each row


def test_encode_rejects_mismatched_features(corpus, fitted, tmp_path):
    other = tmp_path / "other"
    w = StoreWriter(other, meta={"role": "semantic", "fingerprint": "fp-different", "frame_rate": 50.0})
    w.add("speech0", {"frames": corpus["sem"]["speech0"]})
    w.close()
    rc = main(["tokens", "encode", "--config", str(DEFAULT_CONFIG), "--token-config", "A", "--speech-model", str(fitted / "speech"),
               "--audio-model", str(fitted / "audio"), "--semantic", str(other),
               "--acoustic", str(corpus["acoustic"]), "--manifest", str(corpus["manifest"]),
               "--out", str(tmp_path / "x")])
    assert rc == 2
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_tokenizer(tmp_path / "nothing")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 99), min_size=1, max_size=40), st.lists(st.integers(1, 99), min_size=1, max_size=40),
       st.sampled_from([(50.0, 50.0), (50.0, 6.25), (6.25, 50.0), (50.0, 93.75 / 4)]))
def test_pair_by_time(a, b, rates):
    a, b = torch.tensor(a), torch.tensor(b)
    ra, rb = rates
    pairs, grid = pair_by_time(a, b, ra, rb)
    fast = a if ra >= rb else b
    assert grid == max(ra, rb) and pairs.shape == (fast.numel(), 2)
    assert torch.equal(pairs[:, 0 if ra >= rb else 1], fast)                  # the faster stream is untouched
    for i in range(pairs.shape[0]):                                          # each row: the tokens under its centre
        t = (i + 0.5) / grid
        assert pairs[i, 0] == a[min(int(t * ra), a.numel() - 1)] and pairs[i, 1] == b[min(int(t * rb), b.numel() - 1)]
    if ra == rb:
        n = min(a.numel(), b.numel())                                        # the authors' 1:1 [p1, b1, p2, b2, ...]
        assert torch.equal(pairs[:n].reshape(-1)[0::2], a[:n]) and torch.equal(pairs[:n].reshape(-1)[1::2], b[:n])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2000), st.sampled_from([(50.0, 1), (6.25, 1), (50.0, 8), (93.75 / 4, 1)]),
       st.floats(0.1, 10.0), st.floats(0.0, 0.999), st.integers(-1, 1))
def test_token_window_same_span(T, rate_g, seconds, u, drift):
    """Tokens [a, b) and mel frames [f0, f1) of a window cover the same time to half a mel frame."""
    rate, g = rate_g
    seconds = max(seconds, g / rate)                                         # at least one step (TrainingData checks)
    grid = Grid(rate, g, 93.75)
    N = max(1, round(T * rate / 93.75) + drift * g)                          # within the duration tolerance
    assert duration_mismatch(N, T, grid) is None
    length = grid.positions(seconds)
    a, b, f0, f1 = token_window(N, T, grid, length, u)
    assert 0 <= a < b <= N and 0 <= f0 < f1 <= T and a % g == 0
    assert f1 - f0 <= int(np.ceil(seconds * 93.75 - 1e-9)) or length > min(N, T * rate / 93.75)
    if length <= min(N, np.floor(T * rate / 93.75 + 1e-9)) and grid.frame_at(length) <= T:
        assert b - a == length                                               # a crop: spans agree
        assert abs(f0 / 93.75 - a / rate) <= 0.5 / 93.75 + 1e-9
        assert abs(f1 / 93.75 - b / rate) <= 0.5 / 93.75 + 1e-9
    else:                                                                    # shorter than a crop: whole
        assert (a, b, f0) == (0, N, 0) and f1 == min(T, grid.frame_at(N))
    assert duration_mismatch(round(T * rate / 93.75) + 2 * g + 1, T, grid) is not None
    assert duration_mismatch(round(T * rate / 93.75) - 2 * g - 1, T, grid) is not None


def test_vocab_layout():
    v = Vocab({"speech": 4, "audio": 3, "beats": 2})
    assert PAD_ID == 0 and v.offsets == {"speech": 1, "audio": 5, "beats": 8} and v.vocab_size == 10
    ids = torch.cat([v.to_global("speech", torch.arange(4)), v.to_global("audio", torch.arange(3)),
                     v.to_global("beats", torch.arange(2))])
    assert ids.tolist() == list(range(1, 10))
    names, codes = v.to_local(torch.tensor([0, 1, 5, 9]))
    assert names == ["pad", "speech", "audio", "beats"] and codes.tolist() == [-1, 0, 0, 1]
    with pytest.raises(ValueError, match="outside"):
        v.to_global("audio", torch.tensor([3]))
    assert Vocab.from_meta(v.to_meta()).offsets == v.offsets


def test_frame_rate_bookkeeping():
    """Mel rate 24000 / 256 = 93.75 /s; tokens keep their own rate (never resampled here)."""
    cfg = C.load(DEFAULT_CONFIG)
    r = rate_summary(50.0, cfg["audio"])
    assert r["mel_rate"] == 93.75 and r["mel_frames_per_token"] == pytest.approx(1.875)
    assert rate_summary(93.75 / 4, cfg["audio"])["mel_frames_per_token"] == pytest.approx(4.0)


def test_kmeans_seed_and_perplexity():
    gen = torch.Generator().manual_seed(1)
    x = clustered_frames(400, 5, torch.randn(4, 5, generator=gen) * 4, gen)
    m1, _ = KMeans.fit(x, 4, seed=3)
    m2, _ = KMeans.fit(x, 4, seed=3)
    assert torch.equal(m1.centroids, m2.centroids)
    assert perplexity(torch.tensor([0, 1, 2, 3]), 4) == pytest.approx(4.0)
    assert perplexity(torch.tensor([2, 2, 2]), 4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fewer than k"):
        KMeans.fit(x[:3], 4, seed=0)


def write_argmax_onnx(path) -> None:
    """A real ONNX ModelProto (written by the fixtures' protobuf encoder; the onnx package is not
    a dependency) with CosyVoice's tokenizer signature: feats float [1, 128, T] + feats_length
    int32 [1] -> tokens int64 [1, T] = argmax over the mel axis."""
    node = onnx_pb.node("ArgMax", ["feats"], ["tokens"], axis=1, keepdims=0)
    graph = (onnx_pb.field(1, node) + onnx_pb.field(2, "s3")
             + onnx_pb.field(11, onnx_pb.value_info("feats", onnx_pb.FLOAT, [1, 128, "T"]))
             + onnx_pb.field(11, onnx_pb.value_info("feats_length", onnx_pb.INT32, [1]))
             + onnx_pb.field(12, onnx_pb.value_info("tokens", onnx_pb.INT64, [1, "T"])))
    path.write_bytes(onnx_pb.field(1, 7) + onnx_pb.field(7, graph) + onnx_pb.field(8, onnx_pb.field(2, 13)))


def test_s3_onnx_runs_a_real_session(tmp_path):
    from agrepa import audio as A

    model = tmp_path / "speech_tokenizer_toy.onnx"
    write_argmax_onnx(model)
    tok = S3OnnxTokenizer(model, k=128)
    assert tok.input_names == ["feats", "feats_length"]
    wave = (0.2 * np.sin(np.arange(32000) * 2 * np.pi * 440 / 16000)).astype(np.float32)
    codes = tok.encode_wave(wave)
    feat, _ = s3_features(wave)
    assert codes.dtype == np.int64 and np.array_equal(codes, feat[0].argmax(0))
    long = np.tile(wave, 16)[: 31 * 16000]  # 31 s: two pieces (30 s + 1 s)
    assert tok.encode_wave(long).shape == (3000 + 100,)
    with pytest.raises(ValueError, match="outside"):
        S3OnnxTokenizer(model, k=4).encode_wave(wave)
    # `tokens fit` with the s3-onnx kind: reads 16 kHz audio of the speech train clips
    rows = []
    for i in range(2):
        A.write_wav(tmp_path / f"s{i}.wav", np.roll(wave, 100 * i), 16000)
        rows.append({"id": f"s{i}", "path": f"s{i}.wav", "duration": 2.0, "sample_rate": 16000,
                     "domain": "speech", "split": "train", "text": "x"})
    write_manifest(make_manifest(rows), tmp_path / "m.csv")
    assert main(["tokens", "fit", "--config", str(DEFAULT_CONFIG), "--stream", "speech", "--manifest", str(tmp_path / "m.csv"),
                 "--out", str(tmp_path / "s3"), "--set", "tokens.speech.kind=s3-onnx",
                 "--set", "tokens.speech.k=128", "--set", "tokens.speech.onnx_token_rate=100",
                 "--set", f"tokens.speech.onnx_path={model}"]) == 0
    metrics = json.loads((tmp_path / "s3" / "metrics.json").read_text())
    assert metrics["n_frames"] == 400 and metrics["perplexity"] >= 1.0
    loaded = load_tokenizer(tmp_path / "s3")
    assert loaded.kind == "s3-onnx" and loaded.frame_rate == 100.0 and loaded.input == "audio"
    with pytest.raises(ValueError, match="reads audio"):
        loaded.encode_frames(torch.zeros(3, 4))


def test_s3_onnx_front_end_and_missing_file(tmp_path, corpus):
    wave = (0.1 * np.sin(np.arange(24000) * 0.05)).astype(np.float32)  # 1.5 s at 16 kHz
    feat, length = s3_features(wave)
    assert feat.shape == (1, 128, 150) and feat.dtype == np.float32
    assert length.dtype == np.int32 and length.tolist() == [150]
    # Whisper normalisation: values within [max - 2, max] after (x + 4) / 4 with the max-8 floor
    assert feat.max() - feat.min() <= 2.0 + 1e-6
    with pytest.raises(FileNotFoundError, match="speech_tokenizer_v1.onnx"):
        S3OnnxTokenizer(tmp_path / "speech_tokenizer_v1.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.onnx"):
        S3OnnxTokenizer(tmp_path / "bad.onnx")
    rc = main(["tokens", "fit", "--config", str(DEFAULT_CONFIG), "--stream", "speech", "--manifest", str(corpus["manifest"]),
               "--out", str(tmp_path / "s3"), "--set", "tokens.speech.kind=s3-onnx",
               "--set", f"tokens.speech.onnx_path={tmp_path / 'missing.onnx'}"])
    assert rc == 2


def test_s3_onnx_provider_choice_and_silent_cpu_fallback(tmp_path, monkeypatch, caplog):
    """CUDA provider only on a GPU with onnxruntime-gpu; a session that fell back to the CPU is an error."""
    import logging

    import onnxruntime

    from agrepa.tokenizers.s3onnx import CPU, CUDA, check_session_providers, session_providers

    with caplog.at_level(logging.INFO, logger="agrepa.tokenizers.s3onnx"):
        assert session_providers("cpu", [CUDA, CPU]) == [CPU]
        assert session_providers("cuda:0", [CUDA, CPU]) == [CUDA, CPU]
        assert session_providers("cuda", [CPU]) == [CPU]
    assert "no CUDAExecutionProvider" in caplog.text and "provider CPUExecutionProvider" in caplog.text
    check_session_providers("m.onnx", [CUDA, CPU], [CUDA, CPU])
    check_session_providers("m.onnx", [CPU], [CPU])
    with pytest.raises(RuntimeError, match="m.onnx: asked onnxruntime for CUDAExecutionProvider"):
        check_session_providers("m.onnx", [CUDA, CPU], [CPU])
    # end to end: an onnxruntime that offers CUDA but whose session silently runs on the CPU
    model = tmp_path / "toy.onnx"
    write_argmax_onnx(model)
    real_session = onnxruntime.InferenceSession
    asked = []

    def fake_session(path, sess_options=None, providers=None):
        asked.append(list(providers))
        return real_session(path, sess_options=sess_options, providers=[CPU])

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(onnxruntime, "InferenceSession", fake_session)
    with pytest.raises(RuntimeError, match="toy.onnx: asked onnxruntime for CUDA"):
        S3OnnxTokenizer(model, k=128, device="cuda:0")
    assert asked == [[CUDA, CPU]]
    assert S3OnnxTokenizer(model, k=128, device="cpu").providers == [CPU]


def test_encode_batched_equals_batch_1(corpus, fitted, tmp_path):
    """tokens.batch_size 5 (batches mixing domains, a short last batch) writes the batch-1 store."""
    common = ["tokens", "encode", "--token-config", "B", "--beats-model", str(fitted / "beats"),
              "--speech-model", str(fitted / "speech"), "--audio-model", str(fitted / "audio"),
              "--semantic", str(corpus["semantic"]), "--acoustic", str(corpus["acoustic"]),
              "--manifest", str(corpus["manifest"])]
    assert run(*common, "--out", str(tmp_path / "b1"), "--set", "tokens.batch_size=1") == 0
    assert run(*common, "--out", str(tmp_path / "b5"), "--set", "tokens.batch_size=5") == 0
    one, five = Store(tmp_path / "b1"), Store(tmp_path / "b5")
    assert sorted(one.keys()) == sorted(five.keys()) and len(one) == 16
    for cid in one.keys():
        assert torch.equal(one.get(cid)["tokens"], five.get(cid)["tokens"]), cid


def test_beats_tokenizer_batched_equals_batch_1(tmp_path):
    """The BEATs tokenizer's ids of clips of 1.0, 2.3 and 0.5 s: one masked batch = clip by clip."""
    from agrepa.teachers.beats import BEATsConfig
    from agrepa.tokenizers.beats_tokenizer import BeatsTokenizer, BeatsTokenizerModel, save_checkpoint

    torch.manual_seed(0)
    cfg = BEATsConfig(input_patch_size=16, embed_dim=32, encoder_layers=2, encoder_embed_dim=48,
                      encoder_ffn_embed_dim=96, encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4,
                      relative_position_embedding=True, num_buckets=32, max_distance=128, gru_rel_pos=True,
                      deep_norm=True)
    save_checkpoint(BeatsTokenizerModel(cfg, quant_n=16, quant_dim=8).eval(), tmp_path / "tok.pt")
    tok = BeatsTokenizer(tmp_path / "tok.pt")
    g = np.random.default_rng(0)
    waves = [(0.3 * np.sin(np.arange(int(s * 16000)) * f) + 0.05 * g.standard_normal(int(s * 16000))).astype(np.float32)
             for s, f in ((1.0, 0.05), (2.3, 0.11), (0.5, 0.2))]
    batched = tok.encode_waves(waves)
    for wave, ids in zip(waves, batched):
        single = tok.encode_wave(wave)
        assert ids.dtype == np.int64 and np.array_equal(ids, single)
        assert len(set(single.tolist())) > 1  # not a degenerate codebook
