"""A tiny real test corpus for the sampling/evaluation tests (espeak-ng speech + synthetic events),
with its mel and token stores, built in a tmp dir. ``make_corpus`` is imported by the other
evaluation tests; the test here checks the corpus itself."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from agrepa import audio, config
from agrepa.corpora.manifest import make_manifest, read_manifest, write_manifest
from agrepa.store import StoreWriter
from test_workflow_support import DEFAULT_CONFIG

SENTENCES = [("spk0", "the cat sat on the mat"), ("spk0", "open the door please"),
             ("spk1", "we have two dogs"), ("spk1", "the sun is very bright")]
EVENTS = [("tone", 440.0), ("tone", 660.0), ("chirp", 300.0)]
VOCAB = 16


@functools.lru_cache(maxsize=None)
def _speech_cached(text: str, speaker: str) -> np.ndarray:
    from agrepa.corpora.synth import speak_fresh
    from agrepa.corpora.synth_speech import Speaker

    variant, pitch = ("m3", 40) if speaker == "spk0" else ("f2", 70)
    # a fresh espeak-ng process per utterance: in-process synthesis depends on what the process spoke
    # before (C statics), which made tests/test_eval.py and tests/test_metrics.py depend on their order
    wave, sr = speak_fresh(text, Speaker(speaker, "en-us", variant, pitch, 160), seed=0)
    wave = audio.resample(wave, sr, 24000)
    wave.setflags(write=False)
    return wave


def _speech(text: str, speaker: str) -> np.ndarray:
    return _speech_cached(text, speaker).copy()


def _event(kind: str, f: float, seconds: float = 1.2, sr: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    if kind == "tone":
        x = np.sin(2 * np.pi * f * t)
    else:
        x = np.sin(2 * np.pi * (f * t + 400 * t ** 2))
    return (0.4 * x * np.hanning(len(t))).astype(np.float32)


def make_corpus(root: Path) -> dict:
    """Write audio, manifest.csv, a mel store and a token store under ``root``; return their paths."""
    root = Path(root)
    rows, waves = [], {}
    for i, (spk, text) in enumerate(SENTENCES):
        cid = f"s{i}"
        waves[cid] = _speech(text, spk)
        rows.append({"id": cid, "domain": "speech", "speaker": spk, "text": text})
    for i, (kind, f) in enumerate(EVENTS):
        cid = f"a{i}"
        waves[cid] = _event(kind, f)
        rows.append({"id": cid, "domain": "audio", "labels": kind, "caption": f"a {kind}"})
    for r in rows:
        path = root / "audio" / f"{r['id']}.wav"
        audio.write_wav(path, waves[r["id"]], 24000)
        r.update(path=f"audio/{r['id']}.wav", duration=len(waves[r["id"]]) / 24000, sample_rate=24000,
                 split="test")
    write_manifest(make_manifest(rows), root / "manifest.csv")
    mels = {cid: audio.log_mel(w, config.load(DEFAULT_CONFIG)["audio"]).T.contiguous() for cid, w in waves.items()}
    allm = torch.cat(list(mels.values()))
    mw = StoreWriter(root / "mels", meta={"stats": {"mean": allm.mean(0).tolist(), "std": allm.std(0).tolist()}})
    tw = StoreWriter(root / "tokens", meta={"vocab_size": VOCAB})
    g = torch.Generator().manual_seed(0)
    for cid, m in mels.items():
        mw.add(cid, {"mel": m})
        tw.add(cid, {"tokens": torch.randint(1, VOCAB, (max(2, m.shape[0] // 4),), generator=g)})
    mw.close()
    tw.close()
    return {"manifest": root / "manifest.csv", "mels": root / "mels", "tokens": root / "tokens", "waves": waves}


def test_corpus_is_a_valid_manifest_with_real_speech(tmp_path):
    c = make_corpus(tmp_path)
    df = read_manifest(c["manifest"])
    assert len(df) == 7 and set(df["domain"]) == {"speech", "audio"}
    assert all(np.abs(w).max() > 0.05 for w in c["waves"].values())
