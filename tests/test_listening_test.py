"""Listening test page (agrepa listening-test): blinded, complete, self-contained, with a separate key."""
import json
import re

import numpy as np
import pandas as pd

from agrepa import audio, cli, io

from agrepa.evaluation import listening_test
from agrepa.generation.sampling import SAMPLE_COLUMNS
from test_workflow_support import DEFAULT_CONFIG


def _samples_dir(root, ids, f0):
    rows = []
    for i, cid in enumerate(ids):
        t = np.arange(4800) / 24000
        audio.write_wav(root / f"{cid}.wav", 0.3 * np.sin(2 * np.pi * (f0 + 10 * i) * t), 24000)
        rows.append({"id": cid, "domain": "speech" if cid.startswith("s") else "audio", "path": f"{cid}.wav",
                     "prompt_id": "", "text": "hello there" if cid.startswith("s") else "", "labels": "",
                     "n_frames": 19})
    io.write_csv(root / "samples.csv", pd.DataFrame(rows, columns=SAMPLE_COLUMNS))
    return root


def test_page_is_blinded_and_complete(tmp_path):
    a = _samples_dir(tmp_path / "A" / "seed0" / "baseline", ["s0", "s1", "a0"], 200)
    b = _samples_dir(tmp_path / "A" / "seed0" / "ag_repa", ["s0", "s1", "a0", "a9"], 300)
    out = tmp_path / "lt" / "index.html"
    assert cli.main(["listening-test", "--config", str(DEFAULT_CONFIG), "--samples", str(a), str(b), "--out", str(out), "--seed", "3",
                     "--max-clips", "5"]) == 0
    page = out.read_text()
    key = json.loads(listening_test.key_path(out).read_text())
    items = re.findall(r"data-item='(item\d+)'", page)
    assert len(items) == 6 and set(items) == set(key["items"])      # 3 shared clips x 2 methods
    assert {v["method"] for v in key["items"].values()} == {"baseline", "ag_repa"}
    for leak in ("baseline", "ag_repa", "seed0", str(tmp_path)):
        assert leak not in page
    assert page.count("data:audio/wav;base64,") == 6 and page.count("type='radio'") == 30
    assert "exportRatings" in page and "text/csv" in page and "http" not in page.replace("http-equiv", "")
    # the order is shuffled but reproducible for a seed
    out2 = tmp_path / "lt2.html"
    assert cli.main(["listening-test", "--config", str(DEFAULT_CONFIG), "--samples", str(a), str(b), "--out", str(out2), "--seed", "3",
                     "--max-clips", "5"]) == 0
    assert re.findall(r"data-item='(item\d+)'", out2.read_text()) == items
    shown = [(key["items"][i]["method"], key["items"][i]["clip_id"]) for i in items]
    unshuffled = [(m, c) for m in ("baseline", "ag_repa") for c in ("s0", "s1", "a0")]
    assert sorted(shown) == sorted(unshuffled) and shown != unshuffled


def test_linked_audio_is_blinded_too(tmp_path):
    a = _samples_dir(tmp_path / "baseline", ["s0", "a0"], 200)
    b = _samples_dir(tmp_path / "ag_repa", ["s0", "a0"], 300)
    out = tmp_path / "lt" / "page.html"
    assert cli.main(["listening-test", "--config", str(DEFAULT_CONFIG), "--samples", str(a), str(b), "--out", str(out), "--audio", "link",
                     "--max-clips", "1"]) == 0
    page = out.read_text()
    items = re.findall(r"data-item='(item\d+)'", page)
    assert len(items) == 4 and "base64" not in page
    for i in items:
        assert f"src='page_audio/{i}.wav'" in page and (tmp_path / "lt" / "page_audio" / f"{i}.wav").exists()
    key = json.loads(listening_test.key_path(out).read_text())["items"]
    i = items[0]
    src = tmp_path / key[i]["method"] / f"{key[i]['clip_id']}.wav"
    assert (tmp_path / "lt" / "page_audio" / f"{i}.wav").read_bytes() == src.read_bytes()


def test_method_names_are_distinct_suffixes(tmp_path):
    assert listening_test.method_names([tmp_path / "x" / "seed0" / "m", tmp_path / "x" / "seed1" / "m"]) == \
        ["seed0/m", "seed1/m"]
    assert listening_test.method_names([tmp_path / "a", tmp_path / "b"]) == ["a", "b"]


def test_no_shared_clips_is_an_error(tmp_path, capsys):
    a = _samples_dir(tmp_path / "a", ["s0"], 200)
    b = _samples_dir(tmp_path / "b", ["s1"], 200)
    assert cli.main(["listening-test", "--config", str(DEFAULT_CONFIG), "--samples", str(a), str(b), "--out", str(tmp_path / "p.html")]) == 2
    assert "share no clip id" in capsys.readouterr().err
