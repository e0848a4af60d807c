"""Tokens and mel on one time axis, end to end (issue 12, item 1).

A 20 s utterance in a LibriSpeech-layout tree (``<spk>/<chapter>/*.flac`` +
``*.trans.txt``) goes through the real stages: the LibriSpeech loader, the mel
store, the teachers (Whisper tiny.en; a small random BEATs in the official
checkpoint format), the tokenizers (k-means; the RepCodec AST on BEATs' patch
sequence; BEATs' own tokenizer format for Config B, or k-means stand-ins on
BEATs time frames at 6.25 /s) and Config A / Config B encoding. Clips are cut to
``audio.max_seconds`` (8 s) and cropped as the training loop does; for every
item of every batch the tokens, per stream at the stream's own rate, must cover
exactly the cropped mel span.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from agrepa import config as C
from agrepa.cli import main
from agrepa.store import Store
from agrepa.teachers.beats import BEATs, save_checkpoint
from agrepa.tokenizers.beats_tokenizer import BeatsTokenizerModel, load_checkpoint as load_beats_tokenizer
from agrepa.tokenizers.beats_tokenizer import save_checkpoint as save_beats_tokenizer
from agrepa.tokenizers.streams import load_tokenizer
from agrepa.training.dataset import BalancedSampler, DataPaths, TrainingData
from agrepa.training.train import draw_step
from test_teachers import tiny_beats_cfg
from test_workflow_support import DEFAULT_CONFIG

torch.set_num_threads(1)
FR = 93.75            # mel frames per second
LONG = "103-1240-0000"


def utterance(seconds: float, sr: int, seed: int) -> np.ndarray:
    """A voiced, pitch-gliding signal with syllable-like bursts (not silence, not noise)."""
    g = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.7 * t + seed)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.2 + np.sin(2 * np.pi * 2.5 * t) ** 2)
    return (0.3 * x / np.abs(x).max() + 0.003 * g.standard_normal(len(t))).astype(np.float32)


def librispeech_tree(root: Path) -> None:
    """train-clean-100 with a 20 s utterance among short ones (16 kHz FLAC, trans.txt per chapter)."""
    for spk, chap, lengths in (("103", "1240", [20.0, 2.0, 3.0]), ("19", "198", [2.5, 1.5])):
        d = root / "train-clean-100" / spk / chap
        d.mkdir(parents=True)
        lines = []
        for k, sec in enumerate(lengths):
            uid = f"{spk}-{chap}-{k:04d}"
            sf.write(d / f"{uid}.flac", utterance(sec, 16000, seed=int(spk) + k), 16000)
            lines.append(f"{uid} SOME WORDS OF UTTERANCE {k}")
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")


def sound_folder(root: Path) -> None:
    g = np.random.default_rng(7)
    for label, f in (("hum", 110.0), ("whistle", 1800.0)):
        (root / label).mkdir(parents=True)
        for k in range(3):
            t = np.arange(int((2.0 + 0.5 * k) * 24000)) / 24000
            x = np.sin(2 * np.pi * f * (1 + 0.1 * k) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
            sf.write(root / label / f"{label}{k}.wav", (0.3 * x + 0.01 * g.standard_normal(len(t))).astype(np.float32),
                     24000)


def run(*args, sets=()) -> None:
    argv = [*args[:2], "--config", str(DEFAULT_CONFIG), "--threads", "1", *args[2:]]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0, argv


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    librispeech_tree(root / "LibriSpeech")
    sound_folder(root / "sounds")
    torch.manual_seed(0)
    save_checkpoint(BEATs(tiny_beats_cfg()), root / "beats.pt")
    save_beats_tokenizer(BeatsTokenizerModel(tiny_beats_cfg(), 32, 16), root / "beats_tokenizer.pt")
    run("data", "librispeech", "--root", str(root / "LibriSpeech"), "--subset", "train=train-clean-100",
        "--subset", "valid=", "--subset", "test=", "--out", str(root / "ls"))
    run("data", "folder", "--root", str(root / "sounds"), "--domain", "audio", "--split", "train",
        "--out", str(root / "fx"))
    run("data", "merge", str(root / "ls"), str(root / "fx"), "--out", str(root / "corpus"))
    manifest = str(root / "corpus" / "manifest.csv")
    run("data", "mels", "--manifest", manifest, "--out", str(root / "mels"))
    run("teacher", "embed", "--role", "semantic", "--manifest", manifest, "--out", str(root / "semantic"))
    out = {"root": root, "manifest": manifest}
    tok = ["tokens.speech.k=8", "tokens.audio.k=16", "tokens.audio.dim=16", "tokens.audio.hidden=16",
           "tokens.audio.steps=20", "tokens.audio.window=64", "tokens.beats.k=8"]
    for frames in ("patches", "time"):            # BEATs' patch sequence (50 /s) / time frames (6.25 /s)
        beats = ["teachers.acoustic.name=beats", f"teachers.acoustic.checkpoint={root / 'beats.pt'}",
                 f"teachers.acoustic.beats_frames={frames}"]
        if frames == "patches":                   # Config B's BEATs stream: BEATs' own tokenizer
            beats += ["tokens.beats.kind=beats-tokenizer", "tokens.beats.k=32",
                      f"tokens.beats.checkpoint={root / 'beats_tokenizer.pt'}"]
        sets = tok + beats
        ac, models = root / f"acoustic_{frames}", root / f"models_{frames}"
        run("teacher", "embed", "--role", "acoustic", "--manifest", manifest, "--out", str(ac), sets=sets)
        for stream, feats in (("speech", root / "semantic"), ("audio", ac), ("beats", ac)):
            run("tokens", "fit", "--stream", stream, "--features", str(feats), "--manifest", manifest,
                "--out", str(models / stream), sets=sets)
        for tc in ("A", "B"):
            run("tokens", "encode", "--token-config", tc, "--speech-model", str(models / "speech"),
                "--audio-model", str(models / "audio"), "--beats-model", str(models / "beats"),
                "--semantic", str(root / "semantic"), "--acoustic", str(ac), "--manifest", manifest,
                "--out", str(root / f"tokens_{tc}_{frames}"), sets=sets)
        out[frames] = {"acoustic": ac, "models": models, "sets": sets}
    return out


def training_batches(cfg, data: TrainingData, n_steps: int = 20):
    """The batches the training loop builds (its sampler and its per-step crop draws)."""
    G = int(cfg["train"]["batch_size"])
    sampler = BalancedSampler(data.domain, G, seed=0, tag="warmup")
    for step in range(n_steps):
        idx = sampler.next_batch()
        draw = draw_step(cfg, 0, "warmup", step, G)
        yield idx, data.collate(idx, draw.crop, draw.prompt)


def own_tokens(stores, frames: str, clip_id: str) -> dict[str, tuple[torch.Tensor, float]]:
    """Each stream's tokens for the clip, computed by its tokenizer alone, and its rate."""
    models, ac = stores[frames]["models"], Store(stores[frames]["acoustic"])
    sem = Store(stores["root"] / "semantic")
    out = {}
    for stream in ("speech", "beats"):
        tok = load_tokenizer(models / stream)
        if tok.input == "audio":
            from agrepa import audio as A
            from agrepa.corpora.manifest import read_manifest
            row = read_manifest(stores["manifest"]).set_index("id").loc[clip_id]
            codes = tok.encode_wave(A.load_audio(row["path"], 16000, peak=0.95))
        else:
            codes = tok.encode_frames((sem if stream == "speech" else ac).get(clip_id)["frames"])
        out[stream] = (codes, tok.frame_rate)
    return out


@pytest.mark.parametrize("frames", ["patches", "time"])
@pytest.mark.parametrize("token_config", ["A", "B"])
def test_batches_hold_the_tokens_of_the_cropped_mel(stores, frames, token_config):
    cfg = C.load(DEFAULT_CONFIG, overrides=stores[frames]["sets"] + ["train.batch_size=4", "train.crop_seconds=1.5"])
    root = stores["root"]
    tokens_dir = root / f"tokens_{token_config}_{frames}"
    data = TrainingData(cfg, DataPaths(stores["manifest"], root / "mels", tokens_dir, root / "semantic",
                                       stores[frames]["acoustic"]))
    assert data.rejected == [] and len(data) == 11
    i_long = data.ids.index(LONG)
    mel_store, tok_store = Store(root / "mels"), Store(tokens_dir)
    full_mel = mel_store.get(LONG)["mel"]
    assert full_mel.shape[0] == 1 + 20 * 24000 // 256                     # the 20 s clip ...
    assert data.clip_mel(i_long).shape[0] <= math.ceil(8.0 * FR)              # ... cut to max_seconds
    own = own_tokens(stores, frames, LONG)
    grid = data.grids[0]
    # Config B's speech grid: 50 /s; a BEATs step (160 ms) spans 8 rows, whichever BEATs stream
    assert grid.rate == 50.0 and grid.granularity == (8 if token_config == "B" else 1)
    seen = 0
    for idx, batch in training_batches(cfg, data):
        for j, i in enumerate(idx):
            f0, f1 = batch["crop"][j].tolist()
            a, b = batch["token_span"][j].tolist()
            n = int(batch["mask"][j].sum())
            assert n == f1 - f0 and torch.equal(batch["mel"][j, :n], data.clip_mel(i)[f0:f1])
            stored = tok_store.get(data.ids[i])["tokens"]
            assert torch.equal(batch["tokens"][j, :b - a], stored[a:b])     # exactly the stored rows
            assert (batch["tokens"][j, b - a:] == 0).all()
            if i != i_long:
                continue
            seen += 1
            s, e = f0 / FR, f1 / FR                                          # the crop, in seconds
            assert 0 < f1 - f0 <= math.ceil(1.5 * FR) and f1 <= data.clip_mel(i).shape[0]
            rows = batch["tokens"][j, :b - a]
            columns = {"speech": rows} if token_config == "A" else {"speech": rows[:, 0], "beats": rows[:, 1]}
            for stream, got in columns.items():
                codes, rate = own[stream]
                offset = 1 if stream == "speech" else tok_store.meta["offsets"]["beats"]
                # the stream's own token index under each grid row, and the time its kept tokens cover
                first = math.floor((a + 0.5) * rate / grid.rate)
                last = math.floor((b - 0.5) * rate / grid.rate)
                centres = ((torch.arange(a, b) + 0.5) * rate / grid.rate).floor().long()
                assert torch.equal(got, codes[centres] + offset), stream
                t0, t1 = first / rate, (last + 1) / rate
                assert abs(t0 - s) <= 0.5 / FR + 1e-9 and abs(t1 - e) <= 0.5 / FR + 1e-9, (stream, t0, t1, s, e)
    assert seen >= 5                                                         # the long clip was cropped often


def test_rejects_a_clip_whose_tokens_do_not_match_its_audio(stores, tmp_path):
    """A token store written for other audio (here: the 20 s clip's tokens halved) is caught.
    The durations are compared within the training window (8 s): the teachers embedded the
    clip's first 8 s, so its 400 tokens halved are 200 against the window's 750 mel frames."""
    from agrepa.store import StoreWriter

    root = stores["root"]
    src = Store(root / "tokens_A_time")
    w = StoreWriter(tmp_path / "tokens", meta=src.meta)
    for cid in src.keys():
        t = src.get(cid)["tokens"]
        w.add(cid, {"tokens": t[: t.shape[0] // 2] if cid == LONG else t})
    w.close()
    cfg = C.load(DEFAULT_CONFIG, overrides=stores["time"]["sets"])
    data = TrainingData(cfg, DataPaths(stores["manifest"], root / "mels", tmp_path / "tokens", root / "semantic",
                                       stores["time"]["acoustic"]))
    assert LONG not in data.ids and [i for i, _ in data.rejected] == [LONG]
    assert "200 tokens at 50/s (4.000 s) but 750 mel frames (8.000 s)" in dict(data.rejected)[LONG]


def test_beats_tokenizer_checkpoint_format(stores, tmp_path):
    """The official layout loads (EMA training state ignored); anything else is named."""
    path = stores["root"] / "beats_tokenizer.pt"
    model = load_beats_tokenizer(path)
    raw = torch.load(path, weights_only=True)
    assert raw["cfg"]["quant_n"] == 32 and "quantize_layer.2.weight" in raw["model"]
    assert "quantize.embedding.weight" in raw["model"] and "encoder.layers.0.fc1.weight" in raw["model"]
    wave = torch.from_numpy(utterance(1.0, 16000, 3))
    labels = model.labels(wave)
    assert labels.shape == ((1 + (16000 - 400) // 160) // 16 * 8,) and labels.max() < 32
    state = dict(raw["model"], **{"quantize.embedding.cluster_size": torch.zeros(32),
                                  "quantize.embedding.initted": torch.ones(1)})
    torch.save({"cfg": raw["cfg"], "model": state}, tmp_path / "with_ema.pt")
    assert torch.equal(load_beats_tokenizer(tmp_path / "with_ema.pt").labels(wave), labels)
    del state["quantize_layer.0.bias"]
    torch.save({"cfg": raw["cfg"], "model": state}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="quantize_layer.0.bias"):
        load_beats_tokenizer(tmp_path / "bad.pt")
    cfg = {k: v for k, v in raw["cfg"].items() if k != "quant_n"}
    torch.save({"cfg": cfg, "model": raw["model"]}, tmp_path / "encoder.pt")
    with pytest.raises(ValueError, match="quant_n"):
        load_beats_tokenizer(tmp_path / "encoder.pt")


def test_config_b_trains_checkpoints_and_samples(tmp_path):
    """Config B rows go through the training loop, the checkpoint (token layout kept), the
    loader and the sampler; a Config A warm-up cannot seed a Config B branch."""
    from agrepa.generation import sampling
    from agrepa.training import train
    from agrepa.training.checkpoint import load_run
    from test_dataset import data_paths, make_corpus, tiny_cfg

    cfg, _ = tiny_cfg(tmp_path)
    kw = lambda p: {"data": data_paths(p)}
    b = make_corpus(tmp_path / "b", 3, 3, paired=True)
    warm = train.run(cfg, phase="warmup", out=tmp_path / "wb", seed=0, steps=2, **kw(b))
    run = load_run(warm)
    assert run.model.token_emb.paired and torch.load(warm, weights_only=True)["token_layout"]["paired"]
    tok = b["raw_tokens"]["speech_000"]
    ref = torch.randn(12, 16)
    reqs = [sampling.make_request("x", ref, tok, b["raw_tokens"]["speech_001"], 20, 6),
            sampling.make_request("y", ref, b["raw_tokens"]["audio_003"], b["raw_tokens"]["audio_004"], 15, 5)]
    assert reqs[0].tokens.shape[1] == 2 and torch.equal(reqs[0].tokens[-3:], b["raw_tokens"]["speech_001"][-3:])
    out = sampling.generate(run.model, reqs, steps=2, cfg_scale=2.0, sway=-1.0, seed=0, progress=False)
    assert [o.shape for o in out] == [(20, 16), (15, 16)] and all(torch.isfinite(o).all() for o in out)
    a = make_corpus(tmp_path / "a", 3, 3)
    warm_a = train.run(cfg, phase="warmup", out=tmp_path / "wa", seed=0, steps=1, **kw(a))
    with pytest.raises(ValueError, match="token layout"):
        train.run(cfg, phase="branch", method="baseline", init=warm_a, out=tmp_path / "ba", seed=0, steps=1, **kw(b))
