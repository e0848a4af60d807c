"""The evaluation subset (agrepa.generation.sampling.select_targets / config_targets, issue 25):
spread over every speaker and primary label of the split, seeded by ``sample.subset_seed``, within
the training window; and the sampling prompt rule held to the training prompt rule."""
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from agrepa import config
from agrepa.audio import frame_rate
from agrepa.generation import sampling
from agrepa.training.dataset import crop_frames
from test_workflow_support import DEFAULT_CONFIG

PAPER = [DEFAULT_CONFIG, DEFAULT_CONFIG.parent / "paper.yaml"]
TEST = [DEFAULT_CONFIG, DEFAULT_CONFIG.parent / "test.yaml"]
CONFIGS = {"default": [DEFAULT_CONFIG], "paper": PAPER}
N_SPEAKERS, N_UTTS, N_CLASSES = 40, 20, 60


def manifest(n_speakers=N_SPEAKERS, n_utts=N_UTTS, n_classes=N_CLASSES, seed=0) -> pd.DataFrame:
    """A test split shaped like LibriSpeech test-clean + AudioSet eval: ids sort by speaker
    (``<speaker>-<chapter>-<utt>``), utterances of 1.5-20 s (some past a 10 s window); audio clips
    of 2-10 s with one to three labels, classes of unequal size (AudioSet's long tail)."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_speakers):
        spk = str(1089 + 37 * s)
        for u in range(n_utts):
            dur = float(rng.uniform(1.5, 20.0)) if u % 3 == 0 else float(rng.uniform(1.5, 9.5))
            rows.append({"id": f"{spk}-{134686 + s}-{u:04d}", "domain": "speech", "speaker": spk, "labels": "",
                         "text": "words", "duration": round(dur, 3)})
    k = 0
    for c in range(n_classes):
        for _ in range(5 + c % 11):                               # 5..15 clips whose first label is c
            extra = [f"/m/{(c + j) % n_classes:04d}" for j in range(1, int(rng.integers(1, 4)))]
            dur = 10.0 if k % 2 else round(float(rng.uniform(2.0, 8.0)), 3)
            rows.append({"id": f"Y{k:06d}", "domain": "audio", "speaker": "", "text": "",
                         "labels": ";".join([f"/m/{c:04d}", *extra]), "duration": dur})
            k += 1
    df = pd.DataFrame(rows)
    df["split"] = "test"
    return df


def cfg_of(name, **sample):
    cfg = config.load(CONFIGS[name])
    cfg["sample"].update(sample)
    return cfg


def groups(df, targets):
    rows = df.set_index("id")
    speech = Counter(rows.loc[t, "speaker"] for t in targets if rows.loc[t, "domain"] == "speech")
    audio = Counter(rows.loc[t, "labels"].split(";")[0] for t in targets if rows.loc[t, "domain"] == "audio")
    return speech, audio


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_subset_covers_every_speaker_and_class_up_to_its_size(name):
    df, cfg = manifest(), cfg_of(name)
    n = cfg["sample"]["max_clips"]
    targets = sampling.config_targets(cfg, df, n)
    speech, audio = groups(df, targets)
    assert sum(speech.values()) == n["speech"] and sum(audio.values()) == n["audio"]
    assert len(set(targets)) == len(targets)
    assert len(speech) == min(N_SPEAKERS, n["speech"])          # paper.yaml: 500 clips -> all 40 speakers
    assert max(speech.values()) - min(speech.values()) <= 1     # 12 or 13 each at 500
    assert len(audio) == min(N_CLASSES, n["audio"])             # every primary label once the sample is big enough
    if name == "paper":
        assert len(speech) == N_SPEAKERS and set(audio) == {f"/m/{c:04d}" for c in range(N_CLASSES)}
        # the old rule (first 500 sorted ids) saw 25 of the 40 speakers (ids sort by speaker)
        first = sorted(df.loc[df["domain"] == "speech", "id"])[:n["speech"]]
        assert len({i.split("-")[0] for i in first}) == math.ceil(n["speech"] / N_UTTS) < N_SPEAKERS


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_targets_stay_within_the_training_window(name):
    df, cfg = manifest(), cfg_of(name)
    targets = sampling.config_targets(cfg, df, cfg["sample"]["max_clips"])
    dur = df.set_index("id")["duration"]
    assert (dur[targets] <= cfg["audio"]["max_seconds"] + 1 / frame_rate(cfg["audio"])).all()
    assert (dur > cfg["audio"]["max_seconds"]).any()            # the split had longer clips to skip
    # a clip of exactly the window counts as within it (AudioSet's 10 s clips under paper.yaml)
    assert sampling.subset_max_seconds(cfg) >= cfg["audio"]["max_seconds"]


def test_too_few_short_clips_falls_back_to_the_shortest():
    df = manifest(n_speakers=3, n_utts=4, n_classes=1)
    df.loc[df["domain"] == "speech", "duration"] = [2.0, 30.0, 12.0, 3.0, 11.0, 25.0, 4.0, 13.0, 14.0, 15.0, 16.0,
                                                    17.0]
    got = sampling.select_targets(df, {"speech": 6, "audio": 1}, seed=0, max_seconds=10.0)
    speech = [t for t in got if t in set(df.loc[df["domain"] == "speech", "id"])]
    dur = df.set_index("id")["duration"]
    assert sorted(dur[speech]) == [2.0, 3.0, 4.0, 11.0, 12.0, 13.0]   # the 3 within 10 s, then the shortest
    assert sampling.select_targets(df, None, 0, 10.0) == sorted(df.loc[df["domain"] == "speech", "id"]) + \
        sorted(df.loc[df["domain"] == "audio", "id"])                 # None: the whole split


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_subset_is_a_function_of_the_config_and_its_seed(name):
    df, cfg = manifest(), cfg_of(name)
    n = cfg["sample"]["max_clips"]
    a = sampling.config_targets(cfg, df, n)
    assert a == sampling.config_targets(cfg_of(name), df, n)
    assert a == sampling.config_targets(cfg, df.sample(frac=1.0, random_state=3), n)   # not of the row order
    assert a == sampling.config_targets(cfg_of(name, seed=7), df, n)                   # nor of the sampling seed
    b = sampling.config_targets(cfg_of(name, subset_seed=cfg["sample"]["subset_seed"] + 1), df, n)
    assert a != b and len(b) == len(a)
    assert [len(g) for g in groups(df, b)] == [len(g) for g in groups(df, a)]
    # each domain is drawn on its own: the audio clips do not move the speech sample
    speech_only = df[df["domain"] == "speech"]
    assert [t for t in a if t in set(speech_only["id"])] == sampling.config_targets(cfg, speech_only, n)
    assert a == sorted(a[:n["speech"]]) + sorted(a[n["speech"]:])


def test_a_multi_label_clip_counts_for_its_first_label():
    df = pd.DataFrame({"id": ["x", "y", "z"], "domain": "audio", "speaker": "", "duration": 5.0, "split": "test",
                       "labels": ["dog;bark", "bark;dog", "dog"]})
    for seed in range(5):
        got = sampling.select_targets(df, 2, seed, 10.0)
        assert "y" in got                        # the only clip whose primary label is bark
    summary = sampling.subset_summary(df, ["x", "y"], 10.0)
    assert summary["n_classes"] == 2 and summary["clips_per_class"] == {"bark": 1, "dog": 1}
    assert summary["n_labels"] == 2 and summary["split_classes"] == 2


def test_subset_summary_counts_speakers_and_classes():
    df, cfg = manifest(), cfg_of("paper")
    targets = sampling.config_targets(cfg, df, cfg["sample"]["max_clips"])
    s = sampling.subset_summary(df, targets, sampling.subset_max_seconds(cfg))
    assert (s["n_speakers"], s["split_speakers"]) == (N_SPEAKERS, N_SPEAKERS)
    assert (s["n_classes"], s["split_classes"]) == (N_CLASSES, N_CLASSES)
    assert sum(s["clips_per_speaker"].values()) == 500 and set(s["clips_per_speaker"].values()) == {12, 13}
    assert sum(s["clips_per_class"].values()) == 500 and s["n_over_max_seconds"] == 0


@pytest.mark.parametrize("files", [[DEFAULT_CONFIG], PAPER, TEST], ids=["default", "paper", "test"])
def test_sampling_prompts_are_drawn_like_training_prompts(files):
    # training: a prefix of at most floor(train.prompt_max_fraction * L) frames of a crop of L <= crop frames
    # (agrepa.training.dataset); sampling: at most sample.prompt_fraction of the model input and at most
    # sample.prompt_max_seconds (agrepa.generation.sampling.prompt_frames)
    cfg = config.load(files)
    tc, sc = cfg["train"], cfg["sample"]
    window = min(float(tc["crop_seconds"]), float(cfg["audio"]["max_seconds"]))
    assert sc["prompt_max_seconds"] == pytest.approx(tc["prompt_max_fraction"] * window)
    fps = frame_rate(cfg["audio"])
    assert round(sc["prompt_max_seconds"] * fps) == math.floor(tc["prompt_max_fraction"] * crop_frames(cfg))
    assert sc["prompt_fraction"] == tc["prompt_max_fraction"]
