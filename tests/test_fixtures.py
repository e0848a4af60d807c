"""`agrepa fixtures paper`: every artifact exists in its real format and loads through the
loader production uses (the same classes the workflow's rules build from the config)."""
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from agrepa import config as agrepa_config
from agrepa.fixtures.paper import LAYOUT, build_paper_fixtures
from test_workflow_support import REPO

PAPER = [REPO / "config" / "config.yaml", REPO / "config" / "paper.yaml"]
CFG = agrepa_config.load(PAPER)


def test_librispeech_tree_loads_with_long_and_short_utterances(paper_fixtures):
    from agrepa.corpora.librispeech import load_librispeech

    root = paper_fixtures / LAYOUT["librispeech"]
    subsets = CFG["data"]["librispeech"]["subsets"]
    rows, rejects = load_librispeech(root, subsets, CFG["audio"])
    assert rejects == []
    assert {r["split"] for r in rows} == {"train", "valid", "test"}
    for split, names in subsets.items():
        for name in names:
            assert (root / name).is_dir()
    flac = sorted(root.rglob("*.flac"))[0]
    info = sf.info(str(flac))
    assert (info.format, info.samplerate, info.channels) == ("FLAC", 16000, 1)
    trans = next(flac.parent.glob("*.trans.txt")).read_text().splitlines()
    assert all(line.split(" ", 1)[1].isupper() for line in trans)
    train = [r["duration"] for r in rows if r["split"] == "train"]
    durations = [r["duration"] for r in rows]
    assert 1.5 < min(durations) < 4.0 and 15.0 < max(durations) < 22.0                 # about 2-20 s
    assert min(train) < CFG["train"]["crop_seconds"] <= CFG["audio"]["max_seconds"] < max(train)
    by_speaker = {}
    for r in rows:
        if r["split"] == "test":
            by_speaker.setdefault(r["speaker"], []).append(r)
    assert len(by_speaker) >= 2 and all(len(v) >= 2 for v in by_speaker.values())  # prompts from the same speaker


def test_two_subsets_of_one_split_get_distinct_utterance_ids():
    from agrepa.fixtures.speech import utterance_jobs

    jobs = utterance_jobs(0, {"train": ["train-clean-100", "train-clean-360"], "test": ["test-clean"]})
    ids = [f"{spk}-{chapter}-{u:04d}" for _, spk, chapter, u, _ in jobs]
    assert len(ids) == len(set(ids)) and {j[0] for j in jobs} == {"train-clean-100", "train-clean-360", "test-clean"}
    with pytest.raises(KeyError, match="data.librispeech.subsets.extra"):
        utterance_jobs(0, {"extra": ["other"]})


def test_audioset_tree_loads_with_missing_clips_and_a_hash_valid_split(paper_fixtures):
    from agrepa.corpora.audioset import load_audioset

    root = paper_fixtures / LAYOUT["audioset"]
    segs = CFG["data"]["audioset"]["segments"]
    for name in filter(None, segs.values()):
        lines = (root / name).read_text().splitlines()
        assert lines[0].startswith("# ") and lines[2].startswith("# YTID")
    labels = (root / CFG["data"]["audioset"]["labels_csv"]).read_text().splitlines()
    assert labels[0] == "index,mid,display_name" and '"Beep, bleep"' in labels[1]
    rows, rejects, summary = load_audioset(root, CFG["data"]["audioset"], CFG["audio"])
    assert summary["train"]["missing"] >= 1 and summary["test"]["missing"] >= 1
    assert all("clip not found" in reason for _, reason in rejects)
    assert summary["valid"]["kept"] >= 2        # the hash split (valid: null); a valid clip's prompt is another
    assert all(r["duration"] == pytest.approx(10.0) for r in rows)
    formats = {(sf.info(r["path"]).samplerate, sf.info(r["path"]).channels) for r in rows}
    assert {(44100, 2), (48000, 1), (16000, 1)} <= formats
    assert any(";" in r["labels"] for r in rows)                        # multi-label segments


def test_whisper_directory_is_teacher_and_asr(paper_fixtures):
    from agrepa.evaluation.asr import TransformersWhisperASR
    from agrepa.teachers.whisper import WhisperTeacher

    model = paper_fixtures / LAYOUT["whisper"]
    names = {p.name for p in model.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "preprocessor_config.json",
            "tokenizer.json", "tokenizer_config.json"} <= names
    tcfg = {**CFG["teachers"]["semantic"], "model": str(model)}
    teacher = WhisperTeacher.from_config(tcfg)
    assert (teacher.n_mels, teacher.window_samples) == (128, 30 * 16000)   # large-v3's interface
    wave = 0.1 * np.sin(np.arange(3 * 16000) * 0.05).astype(np.float32)
    frames, pooled = teacher.embed(wave, 16000)
    assert frames.shape == (150, teacher.dim) and torch.isfinite(pooled).all()
    asr = TransformersWhisperASR(str(model), beam_size=CFG["eval"]["asr"]["beam_size"])
    assert isinstance(asr.transcribe(wave, 16000), str)
    assert asr.processor.tokenizer.convert_tokens_to_ids("<|en|>") in asr.model.generation_config.lang_to_id.values()


def test_beats_checkpoint_is_the_official_format(paper_fixtures):
    from agrepa.teachers.beats import BeatsTeacher

    path = paper_fixtures / LAYOUT["beats"]
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"cfg", "model"} and ckpt["cfg"]["deep_norm"] and ckpt["cfg"]["gru_rel_pos"]
    teacher = BeatsTeacher.from_checkpoint(path, frames=CFG["teachers"]["acoustic"]["beats_frames"])
    wave, sr = sf.read(str(next((paper_fixtures / LAYOUT["audioset"]).rglob("*.flac"))), dtype="float32")
    frames, _ = teacher.embed(wave, sr)
    assert CFG["teachers"]["acoustic"]["beats_frames"] == "patches"
    assert frames.shape == (62 * 8, teacher.dim)                        # 10 s: 62 steps x 8 patches (50 /s)


def test_beats_tokenizer_is_the_official_format(paper_fixtures):
    from agrepa.tokenizers.beats_tokenizer import BeatsTokenizer

    path = paper_fixtures / LAYOUT["beats_tokenizer"]
    assert str(path).endswith(CFG["tokens"]["beats"]["checkpoint"].removeprefix("/data"))
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"cfg", "model"} and ckpt["cfg"]["quant_n"] == CFG["tokens"]["beats"]["k"] == 1024
    assert "quantize.embedding.embed_avg" in ckpt["model"]          # the release's EMA state, ignored by the loader
    tok = BeatsTokenizer(path)
    clip = next(p for p in (paper_fixtures / LAYOUT["audioset"]).rglob("*.flac") if sf.info(str(p)).samplerate == 16000)
    wave, _ = sf.read(str(clip), dtype="float32")
    assert tok.k == 1024 and tok.granularity == 8 and tok.frame_rate == 50.0
    ids = tok.encode_wave(wave)
    assert ids.shape == (62 * 8,) and ids.min() >= 0 and ids.max() < 1024       # 10 s: 62 steps x 8 patches


def test_s3_tokenizer_has_the_v1_signature(paper_fixtures):
    import onnxruntime

    from agrepa.tokenizers.s3onnx import S3OnnxTokenizer

    path = paper_fixtures / LAYOUT["s3_tokenizer"]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ins = [(i.name, i.type, i.shape) for i in session.get_inputs()]
    assert ins == [("feats", "tensor(float)", [1, 128, "T"]), ("feats_length", "tensor(int32)", [1])]
    (out,) = session.get_outputs()
    assert (out.name, out.type) == ("indices", "tensor(int32)")
    tok = S3OnnxTokenizer(path, k=CFG["tokens"]["speech"]["k"])
    wave, sr = sf.read(str(sorted((paper_fixtures / LAYOUT["librispeech"]).rglob("*.flac"))[0]), dtype="float32")
    codes = tok.encode_wave(wave)
    assert sr == 16000 and len(codes) == math.ceil(len(wave) // 160 / 2)   # 50 tokens/s
    assert codes.max() < 4096 and len(np.unique(codes)) > 10


def test_vocos_directory_loads_with_the_vocos_package(paper_fixtures):
    from agrepa.generation.vocoder import build_vocoder

    cfg = agrepa_config.deep_merge(CFG, {"sample": {"vocos_model": str(paper_fixtures / LAYOUT["vocos"])}})
    vocoder = build_vocoder(cfg)
    assert vocoder.name == "vocos"
    wave = vocoder(torch.zeros(94, 100) - 5.0)
    assert wave.shape == (93 * 256,) and np.isfinite(wave).all()


def test_vggish_state_dict_is_torchvggish_layout(paper_fixtures):
    from agrepa.evaluation.embeddings import build_embedding

    state = torch.load(paper_fixtures / LAYOUT["vggish"], map_location="cpu", weights_only=True)
    assert {k.split(".")[0] for k in state} == {"features", "embeddings"}
    assert state["embeddings.4.weight"].shape == (128, 4096)
    cfg = agrepa_config.deep_merge(CFG, {"device": "cpu",
                                         "eval": {"fad": {"vggish_checkpoint": str(paper_fixtures / LAYOUT["vggish"])}}})
    emb = build_embedding(cfg)
    rows = emb.embed(np.random.default_rng(0).standard_normal(24000 * 2).astype(np.float32), 24000)
    assert rows.shape == (2, 128)


def _with(cfg_paths: dict, fixtures) -> dict:
    """paper.yaml with its /data/... paths under ``fixtures`` for the keys given (section -> key -> layout)."""
    return agrepa_config.deep_merge(CFG, {"device": "cpu", "eval": {
        section: {key: str(fixtures / rel) for key, rel in keys.items()} for section, keys in cfg_paths.items()}})


def test_beats_classifier_is_a_fine_tuned_checkpoint_with_audioset_labels(paper_fixtures):
    from agrepa.corpora.audioset import read_label_indices
    from agrepa.evaluation.classifier import build_classifier

    path = paper_fixtures / LAYOUT["beats_classifier"]
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"cfg", "model", "label_dict"} and ckpt["cfg"]["finetuned_model"]
    labels_csv = paper_fixtures / LAYOUT["audioset"] / CFG["data"]["audioset"]["labels_csv"]
    assert CFG["eval"]["events"]["classifier"] == "beats"
    clf = build_classifier(_with({"events": {"checkpoint": LAYOUT["beats_classifier"],
                                             "labels_csv": str(labels_csv.relative_to(paper_fixtures))}},
                                 paper_fixtures))
    assert clf.labels == list(read_label_indices(labels_csv).values())
    wave, sr = sf.read(str(next((paper_fixtures / LAYOUT["audioset"]).rglob("*.flac"))), dtype="float32")
    logits = clf.logits(wave, sr)
    assert logits.shape == (len(clf.labels),) and np.isfinite(logits).all()


@pytest.mark.parametrize("domain, key, predictor", [("speech", "utmos_checkpoint", "utmos"),
                                                     ("audio", "aesthetics_checkpoint", "aesthetics")])
def test_mos_predictors_load_in_their_official_formats(paper_fixtures, domain, key, predictor):
    from agrepa.evaluation import mos
    from agrepa.fixtures.predictors import ENCODER

    cfg = _with({"mos": {key: LAYOUT[predictor]}}, paper_fixtures)
    model = mos.build_mos(cfg, domain)
    assert model.name == CFG["eval"]["mos"][domain]                     # utmos / audiobox, as paper.yaml says
    state = model.model.state_dict()
    prefix = mos.UTMOS_ENCODER if predictor == "utmos" else "wavlm_model."
    assert mos.encoder_shape(state, prefix, "fixture") == ENCODER       # the depth read from the file
    score = model.score(0.1 * np.random.default_rng(0).standard_normal(16000).astype(np.float32), 16000)
    assert np.isfinite(score["mos_ovrl"])


def test_index_lists_every_file(paper_fixtures):
    index = json.loads((paper_fixtures / "fixtures.json").read_text())
    files = {str(p.relative_to(paper_fixtures)) for p in paper_fixtures.rglob("*") if p.is_file()}
    assert set(index["sha256"]) == files - {"fixtures.json"}
    assert index["seed"] == 0 and index["layout"] == LAYOUT


@pytest.mark.slow
def test_same_seed_same_bytes(paper_fixtures, tmp_path):
    again = build_paper_fixtures(CFG, tmp_path / "again", seed=0)
    first = json.loads((paper_fixtures / "fixtures.json").read_text())
    assert json.loads(again.read_text())["sha256"] == first["sha256"]


# --scale K (issue 23, item 6). Golden hashes measured with main's code before --scale existed
# (cd29f93): the speech jobs (every utterance's seed key, speaker and length) and the whole AudioSet tree.
SCALE1_JOBS_SHA = "9340d4f08374f9f199f2c4414429331e6e3c7607ed2307bfd35019c28658e1ad"
SCALE1_AUDIOSET_SHA = "e7fd23cba7e716e38173d01647eac986c8bc3f5f33a46f4f7807e3cbdf386cba"


def _tree_sha(root) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_scale_1_writes_todays_corpora(tmp_path):
    import hashlib

    from agrepa.fixtures import audioset, speech

    jobs = speech.utterance_jobs(0, CFG["data"]["librispeech"]["subsets"], scale=1)
    assert hashlib.sha256(repr(jobs).encode()).hexdigest() == SCALE1_JOBS_SHA
    audioset.write_audioset(tmp_path, CFG["data"]["audioset"], 0, scale=1)
    assert _tree_sha(tmp_path) == SCALE1_AUDIOSET_SHA
    with pytest.raises(ValueError, match="--scale"):
        speech.utterance_jobs(0, CFG["data"]["librispeech"]["subsets"], scale=0)


def test_scale_2_doubles_the_smallest_split_with_unique_ids(tmp_path):
    from agrepa.corpora.audioset import load_audioset
    from agrepa.corpora.librispeech import load_librispeech
    from agrepa.fixtures import audioset, speech

    subsets = {"valid": ["dev-clean"]}                              # the smallest speech split (2 utterances)
    counts = {k: len(speech.utterance_jobs(0, subsets, scale=k)) for k in (1, 2)}
    assert counts[2] == 2 * counts[1]
    speech.write_librispeech(tmp_path / "ls", subsets, 0, workers=2, scale=2)
    rows, rejects = load_librispeech(tmp_path / "ls", subsets, CFG["audio"])
    assert rejects == [] and len(rows) == counts[2] and len({r["id"] for r in rows}) == len(rows)
    assert len({r["speaker"] for r in rows}) == 2                  # a new speaker id for the replica
    waves = [sf.read(r["path"])[0] for r in rows]
    assert not any(np.array_equal(waves[0], w) for w in waves[1:])  # new audio

    one = audioset.write_audioset(tmp_path / "as1", CFG["data"]["audioset"], 0, scale=1)
    two = audioset.write_audioset(tmp_path / "as2", CFG["data"]["audioset"], 0, scale=2)
    assert len(two) == 2 * len(one) and len({p["ytid"] for p in two}) == len(two)
    _, _, s1 = load_audioset(tmp_path / "as1", CFG["data"]["audioset"], CFG["audio"])
    rows2, _, s2 = load_audioset(tmp_path / "as2", CFG["data"]["audioset"], CFG["audio"])
    assert all(s2[k]["listed"] == 2 * s1[k]["listed"] for k in s1)
    assert sum(v["kept"] for v in s2.values()) == sum(1 for p in two if not p["missing"])
    assert len({r["id"] for r in rows2}) == len(rows2)
