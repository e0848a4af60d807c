"""The embedded corpus: synthetic speech (espeak-ng) + synthetic sound events, no downloads.

``build_synth(cfg, out_dir)`` writes::

    out_dir/audio/<id>.wav     24 kHz mono PCM_16
    out_dir/manifest.csv       see agrepa.corpora.manifest
    out_dir/rejects.csv        path,reason (generated clips that failed validation)
    out_dir/speakers.json      the voice, variant, pitch and rate of every synthetic speaker
    out_dir/config.resolved.yaml

Everything is a function of ``data.synth.seed`` (and the sizes): the same seed gives
the same manifest and byte-identical audio; every utterance / clip draws from its own
generator ``default_rng([seed, stream, index])`` so clips do not depend on each other.

Splits. Speech is split by utterance within each speaker: every speaker has at
least ``min_test_per_speaker`` test utterances (a zero-shot prompt for one test
utterance comes from another utterance of the same speaker), valid utterances
when ``valid_fraction > 0``, and the rest in train -- so every test and valid
speaker is also a train speaker. Sound events are split within each (first)
class, so every class appears in train, valid and test.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import audio as audio_mod
from .. import config as config_mod
from .. import io
from . import manifest as mf
from . import synth_events, synth_speech
from .validate import check_waveform, summarize

CONFIG_KEYS = ("audio", "data.synth")  # config sections this module reads

log = logging.getLogger(__name__)

SPEECH_STREAM, EVENT_STREAM, SPLIT_STREAM = 1, 2, 3


def split_counts(n: int, valid_fraction: float, test_fraction: float, min_test: int,
                 what: str) -> tuple[int, int, int]:
    """(train, valid, test) sizes for one group of ``n`` items; at least one train item,
    ``min_test`` test items, and one valid item when ``valid_fraction > 0``."""
    n_test = max(min_test, int(round(n * test_fraction)))
    n_valid = max(1 if valid_fraction > 0 else 0, int(round(n * valid_fraction)))
    n_train = n - n_test - n_valid
    if n_train < 1:
        raise ValueError(f"{what}: {n} items cannot be split into >= 1 train, {n_valid} valid "
                         f"and {n_test} test items; increase the corpus size")
    return n_train, n_valid, n_test


def _assign_splits(groups: dict[str, list[int]], rng: np.random.Generator, valid_fraction: float,
                   test_fraction: float, min_test: int, what: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for key in sorted(groups):
        items = [groups[key][int(i)] for i in rng.permutation(len(groups[key]))]
        n_train, n_valid, n_test = split_counts(len(items), valid_fraction, test_fraction, min_test,
                                                f"{what} {key!r}")
        for i, idx in enumerate(items):
            out[idx] = "test" if i < n_test else ("valid" if i < n_test + n_valid else "train")
    return out


def synth_speech_corpus(cfg: dict, audio_dir: Path, rel_dir: str) -> tuple[list[dict], list, list]:
    """Generate the speech half; returns (manifest rows, rejects, speaker dicts)."""
    sc = cfg["data"]["synth"]["speech"]
    seed = int(cfg["data"]["synth"]["seed"])
    sr = int(cfg["audio"]["sample_rate"])
    peak = cfg["audio"]["peak_normalize"]
    n_utt, n_spk = int(sc["n_utterances"]), int(sc["n_speakers"])
    if n_utt <= 0:
        return [], [], []
    if n_spk <= 0:
        raise ValueError("data.synth.speech.n_speakers: must be >= 1")
    speakers = synth_speech.make_speakers(n_spk, sc, np.random.default_rng([seed, SPEECH_STREAM]))
    by_speaker = {s.id: [j for j in range(n_utt) if j % n_spk == k] for k, s in enumerate(speakers)}
    splits = _assign_splits(by_speaker, np.random.default_rng([seed, SPLIT_STREAM, SPEECH_STREAM]),
                            float(cfg["data"]["synth"]["valid_fraction"]),
                            float(cfg["data"]["synth"]["test_fraction"]),
                            int(sc["min_test_per_speaker"]), "data.synth.speech: speaker")
    lo, hi = float(sc["min_seconds"]), float(sc["max_seconds"])
    job_cfg = {k: sc[k] for k in ("min_seconds", "max_seconds", "min_words", "max_words",
                                  "max_tries", "trim_threshold", "trim_margin")}
    jobs = [(seed, SPEECH_STREAM, j, 0, speakers[j % n_spk], job_cfg) for j in range(n_utt)]
    rows, rejects, seen = [], [], set()
    with speech_pool(int(cfg["data"]["synth"]["workers"])) as pool:
        results = pool.imap(synth_speech.speak_utterance, jobs, chunksize=1)
        for j, result in enumerate(tqdm(results, total=n_utt, desc="speech", unit="utt", leave=False)):
            attempt = 0
            while result[0] is not None and result[0] in seen and attempt < int(sc["max_tries"]):
                attempt += 1  # the same sentence as an earlier utterance: draw again
                job = (seed, SPEECH_STREAM, j, attempt, speakers[j % n_spk], job_cfg)
                result = pool.apply(synth_speech.speak_utterance, (job,))
            text, raw, raw_sr = result
            spk = speakers[j % n_spk]
            uid = f"{spk.id}_u{j:04d}"
            rel = f"{rel_dir}/{uid}.wav"
            if text is None or text in seen:
                rejects.append((rel, f"no new sentence of {lo:g}-{hi:g} s after {sc['max_tries']} tries"))
                continue
            wave = audio_mod.peak_normalize(audio_mod.resample(raw, raw_sr, sr), peak)[: int(hi * sr)]
            reason = check_waveform(wave, sr, cfg["audio"])
            if reason:
                rejects.append((rel, reason))
                continue
            seen.add(text)
            audio_mod.write_wav(audio_dir / f"{uid}.wav", wave, sr)
            rows.append({"id": uid, "path": rel, "duration": round(wave.size / sr, 6),
                         "sample_rate": sr, "domain": "speech", "split": splits[j],
                         "speaker": spk.id, "text": text, "labels": "",
                         "caption": f"{spk.id} says: {text}"})
    min_test = int(sc["min_test_per_speaker"])
    for spk in speakers:
        n_test = sum(1 for r in rows if r["speaker"] == spk.id and r["split"] == "test")
        if n_test < min_test:
            log.warning("speaker %s has %d test utterances (< %d) after %d rejects", spk.id, n_test,
                        min_test, len(rejects))
    return rows, rejects, [s.to_dict() for s in speakers]


def speech_pool(workers: int):
    """Worker processes for espeak-ng, each started fresh for one utterance.

    espeak-ng keeps synthesis state in C statics that nothing resets (e.g. the
    pitch-flutter phase in wavegen), so an utterance's samples would depend on
    everything spoken before it in the process. Each utterance therefore runs in
    its own new worker (``maxtasksperchild=1``), forked from a small fork server
    that has imported :mod:`.synth_speech` (numpy only, no torch) but never spoken,
    which makes every clip a function of (seed, index, config) alone.
    """
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["agrepa.corpora.synth_speech"])
    else:
        ctx = mp.get_context("spawn")
    return ctx.Pool(max(1, workers), maxtasksperchild=1)


def speak_fresh(text: str, speaker: synth_speech.Speaker, seed: int = 0) -> tuple[np.ndarray, int]:
    """One utterance spoken in a fresh worker of :func:`speech_pool`: (samples, espeak's rate).

    The same (text, speaker, seed) gives the same samples whatever the calling process
    spoke before (in-process :meth:`Espeak.synth` does not: see :func:`speech_pool`).
    """
    with speech_pool(1) as pool:
        return pool.apply(synth_speech.speak_text, ((text, speaker, int(seed)),))


def _event_caption(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else f"{phrases[0]} together with {phrases[1]}"


def check_event_config(cfg: dict) -> None:
    """Fail early (before any speech is made) on a bad ``data.synth.audio`` section."""
    ac = cfg["data"]["synth"]["audio"]
    classes = list(ac["classes"])
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError("data.synth.audio.classes: at least two distinct event classes are needed")
    for c in classes:
        if c not in synth_events.EVENTS:
            raise KeyError(f"data.synth.audio.classes: unknown event class {c!r} "
                           f"(known: {', '.join(synth_events.EVENTS)})")
    frac = float(ac["mixture_fraction"])
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"data.synth.audio.mixture_fraction: {frac} is not in [0, 1]")
    n = int(ac["n_clips"])
    if n > 0:
        per_class = n // len(classes)
        split_counts(per_class, float(cfg["data"]["synth"]["valid_fraction"]),
                     float(cfg["data"]["synth"]["test_fraction"]), 1,
                     f"data.synth.audio.n_clips: the smallest class ({per_class} clips)")


def synth_event_corpus(cfg: dict, audio_dir: Path, rel_dir: str) -> tuple[list[dict], list]:
    """Generate the sound-event half; returns (manifest rows, rejects)."""
    ac = cfg["data"]["synth"]["audio"]
    seed = int(cfg["data"]["synth"]["seed"])
    sr = int(cfg["audio"]["sample_rate"])
    peak = cfg["audio"]["peak_normalize"]
    n, classes = int(ac["n_clips"]), list(ac["classes"])
    if n <= 0:
        return [], []
    check_event_config(cfg)
    frac = float(ac["mixture_fraction"])
    plan_rng = np.random.default_rng([seed, EVENT_STREAM])
    primary = [classes[i % len(classes)] for i in plan_rng.permutation(n)]
    mixed = set(int(i) for i in plan_rng.choice(n, size=int(round(frac * n)), replace=False))
    by_class = {c: [i for i in range(n) if primary[i] == c] for c in classes}
    splits = _assign_splits(by_class, np.random.default_rng([seed, SPLIT_STREAM, EVENT_STREAM]),
                            float(cfg["data"]["synth"]["valid_fraction"]),
                            float(cfg["data"]["synth"]["test_fraction"]), 1,
                            "data.synth.audio: class")
    lo, hi = float(ac["min_seconds"]), float(ac["max_seconds"])
    g_lo, g_hi = (float(x) for x in ac["mixture_gain"])
    rows, rejects = [], []
    for i in tqdm(range(n), desc="events", unit="clip", leave=False):
        rng = np.random.default_rng([seed, EVENT_STREAM, i])
        n_samples = int(round(rng.uniform(lo, hi) * sr))
        labels = [primary[i]]
        wave, words = synth_events.render(primary[i], rng, sr, n_samples)
        phrases = [words]
        if i in mixed:
            other = [c for c in classes if c != primary[i]]
            second = other[int(rng.integers(len(other)))]
            n2 = int(round(rng.uniform(0.3, 1.0) * n_samples))
            w2, words2 = synth_events.render(second, rng, sr, n2)
            wave = synth_events.mix(wave, w2, float(rng.uniform(g_lo, g_hi)),
                                    int(rng.integers(0, n_samples - n2 + 1)))
            labels.append(second)
            phrases.append(words2)
        wave = audio_mod.peak_normalize(wave, peak)
        uid = f"ev_{i:04d}"
        rel = f"{rel_dir}/{uid}.wav"
        reason = check_waveform(wave, sr, cfg["audio"])
        if reason:
            rejects.append((rel, reason))
            continue
        audio_mod.write_wav(audio_dir / f"{uid}.wav", wave, sr)
        rows.append({"id": uid, "path": rel, "duration": round(wave.size / sr, 6), "sample_rate": sr,
                     "domain": "audio", "split": splits[i], "speaker": "", "text": "",
                     "labels": mf.join_labels(labels), "caption": _event_caption(phrases)})
    return rows, rejects


def build_synth(cfg: dict, out_dir: str | os.PathLike) -> Path:
    """Build the embedded corpus into ``out_dir``; returns the manifest path."""
    out_dir = Path(out_dir)
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    if int(cfg["data"]["synth"]["audio"]["n_clips"]) > 0:
        check_event_config(cfg)
    speech_rows, speech_rejects, speakers = synth_speech_corpus(cfg, audio_dir, "audio")
    summarize(speech_rejects, len(speech_rows), "synthetic speech")
    event_rows, event_rejects = synth_event_corpus(cfg, audio_dir, "audio")
    summarize(event_rejects, len(event_rows), "synthetic sound events")
    rows = speech_rows + event_rows
    live = {Path(r["path"]).name for r in rows}
    for stale in audio_dir.glob("*.wav"):  # clips of an earlier, larger build
        if stale.name not in live:
            stale.unlink()
    io.write_json(out_dir / "speakers.json", speakers)
    io.write_json(out_dir / "summary.json", {
        "speech": {"kept": len(speech_rows), "rejected": len(speech_rejects)},
        "audio": {"kept": len(event_rows), "rejected": len(event_rejects)}})
    config_mod.save_resolved(cfg, out_dir)
    mf.write_rejects(speech_rejects + event_rejects, out_dir / "rejects.csv")
    path = mf.write_manifest(mf.make_manifest(rows), out_dir / "manifest.csv")
    log.info("wrote %s: %d speech + %d audio clips", path, len(speech_rows), len(event_rows))
    return path
