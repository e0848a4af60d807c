"""LibriSpeech / AudioSet loaders on fake trees in the official layouts, and merging."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agrepa import cli
from agrepa.corpora import manifest as mf
from test_workflow_support import DEFAULT_CONFIG


def _tone(path: Path, seconds=0.8, sr=16000, f=300.0, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.3 * np.sin(2 * np.pi * f * t), sr, format=fmt)


def fake_librispeech(root: Path) -> dict[str, str]:
    """Two subsets; returns {utterance id: transcript} of the good utterances."""
    good = {}
    for subset, speakers in (("train-clean-100", ["19", "26"]), ("test-clean", ["61"])):
        for spk in speakers:
            chap = f"{spk}0"
            d = root / subset / spk / chap
            lines = []
            for k in range(2):
                uid = f"{spk}-{chap}-{k:04d}"
                _tone(d / f"{uid}.flac", f=200 + 50 * k + int(spk))
                text = f"HELLO FROM SPEAKER {spk} LINE {k}"
                lines.append(f"{uid} {text}")
                good[uid] = text
            (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    # bad things: a corrupt flac, a flac without a transcript line, a transcript line without a flac
    d = root / "train-clean-100" / "19" / "190"
    (d / "19-190-0002.flac").write_bytes(b"fLaC garbage")
    with open(d / "19-190.trans.txt", "a") as f:
        f.write("19-190-0002 THIS FILE IS CORRUPT\n19-190-0009 THIS FILE IS MISSING\n")
    _tone(d / "19-190-0005.flac")
    return good


def test_librispeech_loader(tmp_path):
    good = fake_librispeech(tmp_path / "LibriSpeech")
    out = tmp_path / "ls"
    rc = cli.main(["data", "librispeech", "--config", str(DEFAULT_CONFIG), "--root", str(tmp_path / "LibriSpeech"),
                   "--subset", "train=train-clean-100", "--subset", "valid=",
                   "--subset", "test=test-clean", "--out", str(out)])
    assert rc == 0
    df = mf.read_manifest(out / "manifest.csv")
    assert dict(zip(df["id"], df["text"])) == good
    assert set(df[df.split == "train"].speaker) == {"19", "26"}
    assert set(df[df.split == "test"].speaker) == {"61"}
    assert (df.domain == "speech").all() and (df.sample_rate == 16000).all()
    assert all(Path(p).is_absolute() and Path(p).exists() for p in df.path)
    assert np.allclose(df.duration, 0.8)
    rej = mf.read_rejects(out / "rejects.csv")
    reasons = {Path(p).name: r for p, r in zip(rej.path, rej.reason)}
    assert set(reasons) == {"19-190-0002.flac", "19-190-0005.flac", "19-190-0009.flac"}
    assert "corrupt" in reasons["19-190-0002.flac"] or "unreadable" in reasons["19-190-0002.flac"]
    assert reasons["19-190-0005.flac"].startswith("no transcript line")
    assert "missing" in reasons["19-190-0009.flac"]


def test_librispeech_errors_name_the_path(tmp_path, capsys):
    rc = cli.main(["data", "librispeech", "--config", str(DEFAULT_CONFIG), "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "nowhere: LibriSpeech root not found" in capsys.readouterr().err
    (tmp_path / "LS").mkdir()
    rc = cli.main(["data", "librispeech", "--config", str(DEFAULT_CONFIG), "--root", str(tmp_path / "LS"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "train-clean-100: LibriSpeech subset" in err
    bad = tmp_path / "LS" / "train-clean-100" / "1" / "2"
    _tone(bad / "1-2-0000.flac")
    (bad / "1-2.trans.txt").write_text("1-2-0000\n")
    rc = cli.main(["data", "librispeech", "--config", str(DEFAULT_CONFIG), "--root", str(tmp_path / "LS"), "--subset", "train=train-clean-100",
                   "--subset", "valid=", "--subset", "test=", "--out", str(tmp_path / "o")])
    assert rc == 2 and "1-2.trans.txt:1: expected '<utterance id> <TRANSCRIPT>'" in capsys.readouterr().err


LABELS = 'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/0bt9lr,"Dog"\n2,/m/05tny_,"Bark"\n3,/m/04rlf,"Music"\n4,/m/0jbk,"Animal, pet"\n'


def fake_audioset(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    (root / "class_labels_indices.csv").write_text(LABELS)
    train = ["# Segments csv created Sun Mar  5 10:54:31 2017",
             "# num_ytids=6, num_segs=6, num_unique_labels=4, num_positive_labels=8",
             "# YTID, start_seconds, end_seconds, positive_labels"]
    train += [f'yt{i:03d}aaaaa, {10 * i}.000, {10 * i + 10}.000, "/m/0bt9lr,/m/05tny_"' for i in range(40)]
    train.append('ytmusic0001, 30.000, 40.000, "/m/04rlf,/m/0jbk"')
    train.append('ytmissing01, 0.000, 10.000, "/m/09x0r"')
    (root / "balanced_train_segments.csv").write_text("\n".join(train) + "\n")
    (root / "eval_segments.csv").write_text(
        "# comment\n# YTID, start_seconds, end_seconds, positive_labels\n"
        'evspeech001, 0.000, 10.000, "/m/09x0r"\nevmissing02, 5.000, 15.000, "/m/04rlf"\n'
        'evsilent003, 0.000, 10.000, "/m/04rlf"\n')
    audio = root / "audio"
    for i in range(40):
        _tone(audio / f"yt{i:03d}aaaaa.wav", sr=24000, f=500 + i)       # <YTID>.wav
    _tone(audio / "sub" / "ytmusic0001_30.flac", sr=44100)              # <YTID>_<start>.flac, nested
    _tone(audio / "Yevspeech001_0.000_10.000.wav", sr=16000)            # Y<YTID>_<start>_<end>.wav
    sf.write(audio / "evsilent003.wav", np.zeros(16000), 16000)


def test_audioset_loader_labels_and_missing_clips(tmp_path):
    fake_audioset(tmp_path / "AS")
    out = tmp_path / "as"
    assert cli.main(["data", "audioset", "--config", str(DEFAULT_CONFIG), "--root", str(tmp_path / "AS"), "--out", str(out),
                     "--set", "data.audioset.valid_fraction=0.25"]) == 0
    df = mf.read_manifest(out / "manifest.csv").set_index("id")
    assert len(df) == 42
    assert df.loc["ytmusic0001", "labels"] == "Music;Animal, pet"
    assert df.loc["ytmusic0001", "caption"] == "the sound of music and animal, pet"
    assert df.loc["yt005aaaaa", "labels"] == "Dog;Bark"
    assert df.loc["evspeech001", "split"] == "test" and df.loc["evspeech001", "labels"] == "Speech"
    assert df.loc["ytmusic0001", "sample_rate"] == 44100 and (df.domain == "audio").all()
    n_valid = int((df.split == "valid").sum())
    assert 0 < n_valid < 41 and (df.split == "train").sum() == 41 - n_valid  # hash split of train
    rej = mf.read_rejects(out / "rejects.csv")
    reasons = dict(zip((Path(p).stem for p in rej.path), rej.reason))
    assert reasons["ytmissing01"].startswith("clip not found for YTID ytmissing01")
    assert reasons["evmissing02"].startswith("clip not found for YTID evmissing02")
    assert reasons["evsilent003"].startswith("silent")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing_clips"] == 2
    assert summary["audioset"]["test"] == {"listed": 3, "kept": 1, "missing": 1, "rejected": 1}
    # the same call again gives the same split (hash-based, not order- or run-dependent)
    assert cli.main(["data", "audioset", "--config", str(DEFAULT_CONFIG), "--root", str(tmp_path / "AS"), "--out", str(tmp_path / "as2"),
                     "--set", "data.audioset.valid_fraction=0.25"]) == 0
    assert (out / "manifest.csv").read_bytes() == (tmp_path / "as2" / "manifest.csv").read_bytes()


def test_audioset_malformed_csv_is_a_clear_error(tmp_path, capsys):
    root = tmp_path / "AS"
    fake_audioset(root)
    seg = root / "eval_segments.csv"
    seg.write_text("# header\nevspeech001, zero, 10.000, \"/m/09x0r\"\n")
    assert cli.main(["data", "audioset", "--config", str(DEFAULT_CONFIG), "--root", str(root), "--out", str(tmp_path / "o")]) == 2
    assert "eval_segments.csv:2: start/end seconds must be numbers" in capsys.readouterr().err
    seg.write_text("evspeech001, 0.0, 10.0\n")
    assert cli.main(["data", "audioset", "--config", str(DEFAULT_CONFIG), "--root", str(root), "--out", str(tmp_path / "o")]) == 2
    assert "eval_segments.csv:1: expected 4 fields" in capsys.readouterr().err
    (root / "class_labels_indices.csv").write_text("mid,name\n")
    assert cli.main(["data", "audioset", "--config", str(DEFAULT_CONFIG), "--root", str(root), "--out", str(tmp_path / "o")]) == 2
    assert "class_labels_indices.csv: expected the header 'index,mid,display_name'" in capsys.readouterr().err
    assert cli.main(["data", "audioset", "--config", str(DEFAULT_CONFIG), "--root", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "none: AudioSet root not found" in capsys.readouterr().err


def test_merge_makes_paths_absolute_and_rejects_duplicates(tmp_path, capsys):
    for name, ids in (("a", ["x1", "x2"]), ("b", ["y1"])):
        d = tmp_path / name
        for i in ids:
            _tone(d / "audio" / f"{i}.wav", sr=24000)
        rows = [{"id": i, "path": f"audio/{i}.wav", "duration": 0.8, "sample_rate": 24000,
                 "domain": "audio", "split": "train", "labels": "tone", "caption": "a tone"} for i in ids]
        mf.write_manifest(mf.make_manifest(rows), d / "manifest.csv")
        mf.write_rejects([(f"audio/bad_{name}.wav", "silent")], d / "rejects.csv")
    assert cli.main(["data", "merge", "--config", str(DEFAULT_CONFIG), str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]) == 0
    df = mf.read_manifest(tmp_path / "m" / "manifest.csv")
    assert list(df.id) == ["x1", "x2", "y1"]
    assert all(Path(p).is_absolute() and Path(p).exists() for p in df.path)
    rej = mf.read_rejects(tmp_path / "m" / "rejects.csv")
    assert [Path(p).name for p in rej.path] == ["bad_a.wav", "bad_b.wav"]
    assert all(Path(p).is_absolute() for p in rej.path)
    rc = cli.main(["data", "merge", "--config", str(DEFAULT_CONFIG), str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path / "m2")])
    assert rc == 2 and "duplicate id 'x1'" in capsys.readouterr().err


def test_speech_folder_speakers_transcripts_and_hash_split(tmp_path):
    for spk in ("anna", "ben"):
        for k in range(10):
            _tone(tmp_path / "in" / spk / f"u{k}.flac", f=200 + 20 * k)
            (tmp_path / "in" / spk / f"u{k}.txt").write_text(f"utterance {k} of {spk}\n")
    args = ["data", "folder", "--config", str(DEFAULT_CONFIG), "--root", str(tmp_path / "in"), "--domain", "speech",
            "--set", "data.folder.valid_fraction=0.2", "--set", "data.folder.test_fraction=0.3"]
    assert cli.main(args + ["--out", str(tmp_path / "o1")]) == 0
    df = mf.read_manifest(tmp_path / "o1" / "manifest.csv").set_index("id")
    assert df.loc["ben-u3", "speaker"] == "ben" and df.loc["ben-u3", "text"] == "utterance 3 of ben"
    assert set(df.split) == {"train", "valid", "test"} and (df.labels == "").all()
    assert cli.main(args + ["--out", str(tmp_path / "o2")]) == 0  # the split is a pure function of the id
    assert (tmp_path / "o1" / "manifest.csv").read_bytes() == (tmp_path / "o2" / "manifest.csv").read_bytes()
    assert cli.main(args + ["--split", "test", "--out", str(tmp_path / "o3")]) == 0
    assert set(mf.read_manifest(tmp_path / "o3" / "manifest.csv").split) == {"test"}
