"""``agrepa listening-test``: a static, blinded MOS listening page over several sample directories.

``agrepa listening-test --samples DIR1 DIR2 ... --out page.html [--names N1 N2 ...] [--max-clips K]
[--audio embed|link]``

* Items: the clip ids present in every sample directory (sorted; at most ``--max-clips``,
  default ``eval.listening_test.max_clips`` per domain), one item per (clip, method).
* Blinding: every item gets a random id (``numpy.random.default_rng(--seed)``) and the items are
  shown in a random order; the page never names a method or a directory. Audio
  (``eval.listening_test.audio``): ``embed`` puts base64 WAV data URIs in the page (one
  self-contained file); ``link`` copies each clip to ``<out stem>_audio/<blinded id>.wav`` beside
  the page and links it relatively. Either way no file name leaks the method.
* Ratings: a 1-5 radio group per item (1 bad, 5 excellent: the ACR scale of ITU-T P.800) and a
  rater-name field; the "Export CSV" button (plain JavaScript, no network) downloads
  ``rater,item,rating`` rows.
* The key: ``<out stem>.key.json`` = ``{"seed", "items": {blinded id: {"method", "clip_id",
  "domain", "samples_dir"}}}``, kept separate so the page itself stays blind.

Method names: ``--names`` if given, else the shortest distinct trailing parts of the directory paths
(``results/samples/A/seed0/baseline`` -> ``baseline``, or ``seed0/baseline`` when two runs share a name).
"""
from __future__ import annotations

import base64
import html
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import DOMAINS
from .. import io

log = logging.getLogger(__name__)


def method_names(dirs: Sequence[str | os.PathLike]) -> list[str]:
    """Shortest distinct trailing path parts of the sample directories."""
    parts = [Path(d).resolve().parts for d in dirs]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    raise ValueError("listening-test: two --samples directories are the same directory")


def build_items(dirs: Sequence[str | os.PathLike], names: Sequence[str], max_clips: dict | int | None,
                seed: int) -> tuple[list[dict], dict]:
    """Blinded items (shuffled) and the key mapping blinded ids to methods."""
    from ..generation.sampling import read_samples

    tables = [read_samples(d) for d in dirs]
    common = set(tables[0]["id"])
    for t in tables[1:]:
        common &= set(t["id"])
    if not common:
        raise ValueError(f"listening-test: the sample directories share no clip id ({', '.join(map(str, dirs))})")
    domain = dict(zip(tables[0]["id"], tables[0]["domain"]))
    chosen = []
    for dom in DOMAINS:
        ids = sorted(c for c in common if domain[c] == dom)
        limit = max_clips.get(dom) if isinstance(max_clips, dict) else max_clips
        chosen += ids if limit is None else ids[:int(limit)]
    rng = np.random.default_rng(seed)
    items, key = [], {}
    for d, name, table in zip(dirs, names, tables):
        paths = dict(zip(table["id"], table["path"]))
        texts = dict(zip(table["id"], table["text"]))
        for cid in chosen:
            wav = Path(d) / paths[cid]
            if not wav.exists():
                raise FileNotFoundError(f"{wav}: listed in {Path(d) / 'samples.csv'} but missing")
            items.append({"wav": wav, "domain": domain[cid], "text": texts.get(cid, ""), "clip_id": cid,
                          "method": name, "samples_dir": str(d)})
    blind_ids = rng.choice(np.arange(10000, 100000), size=len(items), replace=False)
    order = rng.permutation(len(items))
    out = []
    for pos in order:
        it = items[int(pos)]
        bid = f"item{int(blind_ids[int(pos)])}"
        key[bid] = {"method": it["method"], "clip_id": it["clip_id"], "domain": it["domain"],
                    "samples_dir": it["samples_dir"]}
        out.append({**it, "id": bid})
    return out, key


_JS = """
function exportRatings() {
  var rater = document.getElementById('rater').value.replace(/[",\\n]/g, ' ');
  var rows = ['rater,item,rating'];
  var items = document.querySelectorAll('.item');
  for (var i = 0; i < items.length; i++) {
    var id = items[i].getAttribute('data-item');
    var sel = items[i].querySelector('input[type=radio]:checked');
    rows.push('"' + rater + '",' + id + ',' + (sel ? sel.value : ''));
  }
  var blob = new Blob([rows.join('\\n') + '\\n'], {type: 'text/csv'});
  var a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = 'ratings_' + (rater || 'anonymous') + '.csv';
  document.body.appendChild(a); a.click(); document.body.removeChild(a);
}
"""


def render_page(items: list[dict], title: str = "Listening test", audio_dir: str | None = None) -> str:
    """The HTML page (a 1-5 form per item, CSV export). Audio as data URIs, or, with ``audio_dir``,
    relative links ``audio_dir/<item id>.wav``."""
    blocks = []
    labels = {1: "1 bad", 2: "2 poor", 3: "3 fair", 4: "4 good", 5: "5 excellent"}
    for k, it in enumerate(items, 1):
        if audio_dir is None:
            src = "data:audio/wav;base64," + base64.b64encode(Path(it["wav"]).read_bytes()).decode("ascii")
        else:
            src = f"{audio_dir}/{it['id']}.wav"
        prompt = f"<p class='text'>Text: {html.escape(str(it['text']))}</p>" if it["domain"] == "speech" and it["text"] else ""
        radios = " ".join(
            f"<label><input type='radio' name='{it['id']}' value='{v}'> {labels[v]}</label>" for v in range(1, 6))
        blocks.append(f"<div class='item' data-item='{it['id']}'><h3>{k}. {it['id']}</h3>{prompt}"
                      f"<audio controls preload='none' src='{html.escape(src)}'></audio>"
                      f"<div class='rating'>{radios}</div></div>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;max-width:50em;margin:auto}.item{border-bottom:1px solid #ccc;"
            "padding:.5em 0}label{margin-right:1em}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>Rate the overall quality of each clip from 1 (bad) to 5 (excellent). "
            "The clips are in random order and their sources are hidden. When done, press Export CSV and send "
            "the file.</p><p><label>Your name or id: <input id='rater' type='text'></label></p>"
            + "".join(blocks) +
            "<p><button onclick='exportRatings()'>Export CSV</button></p><script>" + _JS + "</script></body></html>\n")


def key_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".key.json")


def write_listening_test(samples: Sequence[str], names: Sequence[str], out: str | os.PathLike, *,
                         max_clips: dict, audio: str, seed: int) -> int:
    """The blinded page ``out`` and its key ``<stem>.key.json`` for sample directories ``samples``
    (one per method, named ``names``); ``audio``: embed the clips or link blinded copies."""
    if len(names) != len(samples):
        raise ValueError(f"--names: {len(names)} names for {len(samples)} sample directories")
    if audio not in ("embed", "link"):
        raise ValueError(f"eval.listening_test.audio: expected embed or link, got {audio!r}")
    items, key = build_items(samples, names, max_clips, seed)
    audio_dir = None
    if audio == "link":
        audio_dir = Path(out).stem + "_audio"
        for it in items:
            io.write_bytes(Path(out).parent / audio_dir / f"{it['id']}.wav", Path(it["wav"]).read_bytes())
    io.write_json(key_path(out), {"seed": seed, "items": key})
    io.write_text(out, render_page(items, audio_dir=audio_dir))
    log.info("listening test: %d items from %d methods -> %s (key %s)", len(items), len(names), out, key_path(out))
    return len(items)
