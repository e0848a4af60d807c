"""Manifest contract, bad-input checks and the embedded synthetic corpus."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from agrepa import cli, config
from agrepa.corpora import manifest as mf
from agrepa.corpora.validate import check_audio_file
from test_workflow_support import DEFAULT_CONFIG


def _noise(seconds, sr, seed=0, channels=1):
    rng = np.random.default_rng(seed)
    x = 0.3 * rng.standard_normal((int(seconds * sr), channels))
    return x[:, 0] if channels == 1 else x


def salt_folder(root: Path) -> dict[str, str]:
    """A folder of good files plus one of each kind of bad file; returns {bad name: reason word}."""
    root.mkdir(parents=True, exist_ok=True)
    sf.write(root / "good_a.wav", _noise(1.0, 24000, 1), 24000)
    sf.write(root / "good_b.flac", _noise(1.2, 16000, 2), 16000)
    sf.write(root / "good_stereo.wav", _noise(1.0, 44100, 3, channels=2), 44100)
    sf.write(root / "full.flac", _noise(2.0, 16000, 4), 16000)
    data = (root / "full.flac").read_bytes()
    (root / "truncated.flac").write_bytes(data[: len(data) // 3])
    (root / "full.flac").unlink()
    sf.write(root / "zero_length.wav", np.zeros(0), 24000)
    (root / "zero_bytes.wav").write_bytes(b"")
    sf.write(root / "all_zero.wav", np.zeros(24000), 24000)
    nan = _noise(1.0, 24000, 5).astype(np.float32)
    nan[100:200] = np.nan
    sf.write(root / "nan.wav", nan, 24000, subtype="FLOAT")
    sf.write(root / "phone_8k_stereo.wav", _noise(1.0, 8000, 6, channels=2), 8000)
    (root / "text.wav").write_text("RIFF? no, just a text file named .wav\n")
    sf.write(root / "too_short.wav", _noise(0.1, 24000, 7), 24000)
    sf.write(root / "three_channels.wav", _noise(1.0, 24000, 8, channels=3), 24000)
    return {"truncated.flac": "truncated|corrupt", "zero_length.wav": "empty",
            "zero_bytes.wav": "empty", "all_zero.wav": "silent", "nan.wav": "NaN",
            "phone_8k_stereo.wav": "sample rate 8000 Hz below the minimum 16000 Hz",
            "text.wav": "unreadable", "too_short.wav": "too short",
            "three_channels.wav": "3 channels"}


# ---------------------------------------------------------------- manifest


def _row(i, **kw):
    row = {"id": f"c{i}", "path": f"audio/c{i}.wav", "duration": 1.5, "sample_rate": 24000,
           "domain": "audio", "split": "train", "speaker": "", "text": "",
           "labels": "dog;bark", "caption": "the sound of dog and bark"}
    row.update(kw)
    return row


def test_manifest_roundtrip_and_paths(tmp_path):
    df = mf.make_manifest([_row(0), _row(1, domain="speech", speaker="0123", text="HELLO, WORLD",
                                       labels="", split="test")])
    path = mf.write_manifest(df, tmp_path / "m" / "manifest.csv")
    back = mf.read_manifest(path)
    assert list(back.columns) == mf.COLUMNS
    assert back["speaker"][1] == "0123"  # ids / speakers stay strings
    assert back["labels"][1] == "" and mf.split_labels(back["labels"][0]) == ["dog", "bark"]
    assert back["text"][1] == "HELLO, WORLD"
    assert mf.resolve_path(path, "audio/c0.wav") == (tmp_path / "m" / "audio" / "c0.wav").resolve()
    assert mf.resolve_path(path, "/abs/x.wav") == Path("/abs/x.wav")


def test_manifest_errors_name_file_and_problem(tmp_path):
    path = tmp_path / "manifest.csv"
    mf.make_manifest([_row(0)]).drop(columns=["split"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"manifest\.csv: missing column 'split'"):
        mf.read_manifest(path)
    mf.make_manifest([_row(0), _row(1)]).assign(id="same").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"manifest\.csv: duplicate id 'same'"):
        mf.read_manifest(path)
    mf.make_manifest([_row(0, split="dev")]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"manifest\.csv: id 'c0' has split 'dev'"):
        mf.read_manifest(path)
    with pytest.raises(FileNotFoundError, match="nope.csv: manifest not found"):
        mf.read_manifest(tmp_path / "nope.csv")


def test_rejects_header_even_when_empty(tmp_path):
    mf.write_rejects([], tmp_path / "rejects.csv")
    assert (tmp_path / "rejects.csv").read_text().strip() == "path,reason"
    mf.write_rejects([("a.wav", "silent, really"), {"path": "b.wav", "reason": "x"}], tmp_path / "r2.csv")
    assert mf.read_rejects(tmp_path / "r2.csv").values.tolist() == [["a.wav", "silent, really"], ["b.wav", "x"]]


# ---------------------------------------------------------------- bad input


def test_check_audio_file_reasons(tmp_path):
    bad = salt_folder(tmp_path)
    cfg_audio = config.load(DEFAULT_CONFIG)["audio"]
    for name in ["good_a.wav", "good_b.flac", "good_stereo.wav"]:
        ok, reason, info = check_audio_file(tmp_path / name, cfg_audio)
        assert ok and reason == "", (name, reason)
        assert info["duration"] > 0.9 and info["sample_rate"] >= 16000
    import re
    for name, expected in bad.items():
        ok, reason, _ = check_audio_file(tmp_path / name, cfg_audio)
        assert not ok and re.search(expected, reason), (name, reason)
    assert check_audio_file(tmp_path / "absent.wav", cfg_audio)[:2] == (False, "file not found")


def test_folder_with_bad_files_gives_manifest_of_good_ones_and_rejects(tmp_path):
    bad = salt_folder(tmp_path / "in" / "dogs")
    out = tmp_path / "out"
    assert cli.main(["data", "folder", "--config", str(DEFAULT_CONFIG), "--root", str(tmp_path / "in"), "--domain", "audio",
                     "--out", str(out)]) == 0
    df = mf.read_manifest(out / "manifest.csv")
    assert sorted(df["id"]) == ["dogs-good_a", "dogs-good_b", "dogs-good_stereo"]
    assert set(df["labels"]) == {"dogs"}
    rejects = mf.read_rejects(out / "rejects.csv")
    assert sorted(Path(p).name for p in rejects["path"]) == sorted(bad)
    reasons = dict(zip((Path(p).name for p in rejects["path"]), rejects["reason"]))
    assert reasons["phone_8k_stereo.wav"] == "sample rate 8000 Hz below the minimum 16000 Hz"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folder"]["kept"] == 3 and summary["folder"]["rejected"] == len(bad)


# ---------------------------------------------------------------- embedded corpus

TINY = ["data.synth.speech.n_speakers=3", "data.synth.speech.n_utterances=15",
        "data.synth.audio.n_clips=30", "data.synth.audio.mixture_fraction=0.2"]


def _synth(out, seed):
    sets = TINY + [f"data.synth.seed={seed}"]
    argv = ["data", "synth", "--config", str(DEFAULT_CONFIG), "--out", str(out)] + [a for s in sets for a in ("--set", s)]
    assert cli.main(argv) == 0
    return out


def _digest(out: Path) -> tuple[bytes, dict[str, str]]:
    wavs = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "audio").glob("*.wav"))}
    return (out / "manifest.csv").read_bytes(), wavs


@pytest.fixture(scope="module")
def synth_runs(tmp_path_factory):
    """Three builds: seed 0 twice (in one process, one after the other) and seed 1."""
    root = tmp_path_factory.mktemp("synth")
    return {name: _synth(root / name, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1))}


def test_synth_is_deterministic_and_seeded(synth_runs):
    a, b, c = (_digest(synth_runs[k]) for k in "abc")
    assert a == b  # same manifest bytes, same audio bytes
    assert a[0] != c[0]
    assert len(set(a[1].values()) & set(c[1].values())) == 0  # every clip differs under another seed


def test_synth_corpus_contents(synth_runs):
    out = synth_runs["a"]
    cfg = config.load(DEFAULT_CONFIG, TINY)
    df = mf.read_manifest(out / "manifest.csv")
    assert (out / "rejects.csv").read_text().startswith("path,reason")
    speech, events = df[df.domain == "speech"], df[df.domain == "audio"]
    assert len(speech) == 15 and len(events) == 30
    # every file: 24 kHz mono PCM_16, duration as in the manifest and within the configured range
    for row in df.itertuples():
        info = sf.info(mf.resolve_path(out / "manifest.csv", row.path))
        assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
        assert abs(info.duration - row.duration) < 1e-3
    assert speech.duration.between(1.5, 6.0).all() and events.duration.between(1.0, 4.0).all()
    # speech: transcripts, speakers, splits by utterance, >= 2 test utterances per speaker
    assert speech.text.str.match(r"^[a-z ]+\.$").all() and speech.text.is_unique
    assert speech.speaker.nunique() == 3
    train_speakers = set(speech[speech.split == "train"].speaker)
    assert set(speech[speech.split != "train"].speaker) <= train_speakers
    assert (speech[speech.split == "test"].groupby("speaker").size() >= 2).all()
    speakers = json.loads((out / "speakers.json").read_text())
    assert len({(s["voice"], s["variant"], s["pitch"], s["rate"]) for s in speakers}) == 3
    # events: all classes, stratified splits, 20 % two-event mixtures with both labels
    labels = events.labels.map(mf.split_labels)
    classes = cfg["data"]["synth"]["audio"]["classes"]
    first = labels.map(lambda x: x[0])
    for split in ("train", "valid", "test"):
        assert set(first[events.split == split]) == set(classes)
    assert (labels.map(len) == 2).sum() == 6
    assert all(len(set(x)) == len(x) and set(x) <= set(classes) for x in labels)
    assert events.caption.str.len().gt(5).all()


def test_synth_config_errors_fail_before_any_work(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(["data", "synth", "--config", str(DEFAULT_CONFIG), "--out", str(out), "--set", "data.synth.audio.classes=[foo, rain]"]) == 2
    assert "data.synth.audio.classes: unknown event class 'foo'" in capsys.readouterr().err
    assert cli.main(["data", "synth", "--config", str(DEFAULT_CONFIG), "--out", str(out), "--set", "data.synth.speech.n_speakers=500"]) == 2
    assert "data.synth.speech.n_speakers: 500 speakers asked for" in capsys.readouterr().err
    assert cli.main(["data", "synth", "--config", str(DEFAULT_CONFIG), "--out", str(out), "--set", "data.synth.speech.n_utterances=6"]) == 2
    assert "cannot be split" in capsys.readouterr().err
    assert not (out / "manifest.csv").exists()


def test_sentences_are_plain_english_of_the_asked_length():
    import re

    from agrepa.corpora.sentences import VERB_OBJECTS, make_sentence

    rng = np.random.default_rng(0)
    for n in range(4, 17):
        for _ in range(20):
            s = make_sentence(rng, n)
            words = s[:-1].split()
            assert s.endswith(".") and re.fullmatch(r"[a-z ]+", s[:-1])
            assert max(5, min(n, 5)) <= len(words) <= n + 8
            assert not re.search(r"\ba [aeiou]|\ban [^aeiou]", s)  # a/an agreement
            assert any(v in words for v in VERB_OBJECTS)
