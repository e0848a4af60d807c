"""``agrepa evaluate`` (every metric of a sample directory) and ``agrepa convergence`` (FAD per snapshot).

Metrics per domain (``eval.*`` chooses the models; every row names its model):

=========== ======== ==================================================================
metric      domain   definition
=========== ======== ==================================================================
wer         speech   corpus WER in percent (:mod:`agrepa.evaluation.asr`), normalised text
wer_utt     speech   mean per-utterance WER in percent
fad         both     Fréchet distance between embeddings (:mod:`agrepa.evaluation.embeddings`) of the
                     generated clips and of the ground-truth audio of the same test clips
fad_inf     both     FAD∞ of the same sets (:func:`agrepa.evaluation.metrics.fad_inf`)
mos_ovrl    both     mean DNSMOS OVRL (speech; audio: null with the reason unless configured)
mos_p808    both     mean DNSMOS P.808
spk_sim     speech   mean cosine between speaker embeddings of each clip and its prompt clip
=========== ======== ==================================================================

Uncertainty: every value has a percentile-bootstrap CI (``eval.bootstrap`` resamples of the
test clips, ``eval.fad.fad_inf.bootstrap`` for FAD∞, whose every resample is itself a fit over
``steps`` subset sizes; seed ``eval.bootstrap_seed``, level ``eval.ci_level``). FAD and FAD∞ resample clip
indices jointly for the generated and the reference set (the sets are paired by clip id); the
point and bootstrap FADs use ``method="auto"`` (the exact QR/SVD form of the trace term when there
are fewer embedding rows than dimensions, where sqrtm would need eps-regularisation; scipy sqrtm
otherwise; :mod:`agrepa.evaluation.metrics`). A resample
repeats clips, which shrinks the effective set and biases FAD upward, so a FAD CI can lie partly
above the point estimate; it describes resampling variability, not a symmetric error bar.

``--reference`` (no ``--samples`` needed): the ground-truth floor. The clip subset and the
prompts are chosen exactly as ``agrepa sample`` chooses them (``sample.max_clips``,
``sample.subset_seed``, ``sample.seed``; ``run.subset`` says what the subset spans, as
``sample_meta.json`` does); each clip's ground-truth mel (``--mels`` store, or computed from the
audio with :func:`agrepa.audio.log_mel`) is resynthesised with the configured vocoder and scored
through the same pipeline: those rows carry the ordinary metric names and ``"input":
"resynthesis"``. The raw ground-truth audio is scored too, as ``wer_gt``, ``wer_utt_gt``,
``mos_ovrl_gt``, ``mos_p808_gt``, ``spk_sim_gt`` (``"input": "ground_truth"``; its FAD against
itself is 0 by definition and is not reported).

Output JSON::

    {"run": {...provenance...},
     "metrics": [{"domain", "metric", "value", "ci_low", "ci_high", "n", "model", "note", "input"}, ...],
     "clips": [{"id", "domain", "input", "hyp", "ref_norm", "hyp_norm", "wer", "mos_ovrl", "mos_p808",
                "spk_sim"}, ...]}          (per-clip diagnostics; keys present where scored)

``value`` is null only with a ``note`` saying why. ``n`` = clips scored.

``agrepa convergence --run RUN_DIR ...``: for every kept snapshot ``RUN_DIR/snapshots/step_*.pt``,
sample the fixed subset (``eval.convergence.max_clips`` clips per domain, drawn as ``agrepa sample``
draws its subset; noise and prompts from ``--seed``) with
the EMA weights, vocode, embed and compute FAD against the ground truth -> CSV with columns
``step, domain, fad, n, embedding, method, run``.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..config import DOMAINS
from .. import io
from . import metrics

CONFIG_KEYS = ("audio", "eval", "name", "sample", "teachers")  # config sections this module reads

log = logging.getLogger(__name__)

LOW_RANK = "rank-deficient:"
METRIC_FIELDS = ["domain", "metric", "value", "ci_low", "ci_high", "n", "model", "note", "input"]
CONVERGENCE_COLUMNS = ["step", "domain", "fad", "n", "embedding", "method", "run"]


@dataclass
class Clip:
    """One scored clip: its audio, the ground-truth audio of the same test clip, and its prompt's audio.

    ``path``: the audio file the clip was read from (TER re-tokenises it exactly as the teacher cache
    read the training audio); ``mel`` / ``ref_mel``: the generated log-mel [L, n_mels] and the
    ground-truth log-mel of the same clip (frame-aligned; mel distances); ``tokens``: the clip's
    conditioning tokens (token store, global ids); ``labels``: the manifest's labels (audio)."""

    id: str
    domain: str
    wave: np.ndarray
    reference: np.ndarray
    text: str = ""
    prompt: np.ndarray | None = None
    sample_rate: int = 24000
    path: Path | None = None
    ref_path: Path | None = None
    mel: np.ndarray | None = None
    ref_mel: np.ndarray | None = None
    tokens: object | None = None
    labels: list = field(default_factory=list)


@dataclass
class Models:
    """The scoring models (None where a metric is switched off)."""

    embedding: object
    asr: object | None = None
    mos: dict = field(default_factory=dict)      # domain -> predictor or None
    speaker: object | None = None
    tokens: object | None = None                 # TokenScorer (TER) or None
    classifier: object | None = None             # EventClassifier or None
    store_vocab: object | None = None            # Vocab of the token store (generated TER)


def build_models(cfg: dict, domains: Sequence[str], tokenizers: dict | None = None, teacher_dir=None,
                 classifier_dir=None) -> Models:
    """Every scoring model, each built once (the Whisper encoder serves FAD and TER).

    ``tokenizers``: ``{stream: fitted tokenizer dir}`` (TER; None: no TER); ``teacher_dir``: the
    trained events teacher (acoustic teacher of TER); ``classifier_dir``: the event classifier."""
    from ..teachers.registry import build_teacher
    from .asr import build_asr
    from .classifier import build_classifier
    from .embeddings import TeacherEmbedding, build_embedding
    from .mos import build_mos
    from .speaker import build_speaker_encoder
    from .ter import FEATURE_ROLE, build_token_scorer

    teachers: dict = {}

    def teacher(role):
        if role not in teachers:
            teachers[role] = build_teacher(cfg, role, teacher_dir=teacher_dir if role == "acoustic" else None)
        return teachers[role]

    if cfg["eval"]["fad"]["embedding"] == "whisper-encoder" and cfg["teachers"]["semantic"]["name"] == "whisper":
        embedding = TeacherEmbedding(teacher("semantic"), "whisper-encoder")
    else:
        embedding = build_embedding(cfg)
    scorer = None
    if tokenizers:
        scorer = build_token_scorer(cfg, tokenizers, {FEATURE_ROLE[s]: teacher(FEATURE_ROLE[s]) for s in tokenizers})
    speech = "speech" in domains
    return Models(embedding=embedding, asr=build_asr(cfg) if speech else None,
                  mos={d: build_mos(cfg, d) for d in domains},
                  speaker=build_speaker_encoder(cfg) if speech else None, tokens=scorer,
                  classifier=build_classifier(cfg, classifier_dir) if "audio" in domains else None)


def _row(domain, metric, est: metrics.Estimate | None, model: str, note: str = "", input_: str = "generated",
         n: int | None = None) -> dict:
    if est is None:
        return {"domain": domain, "metric": metric, "value": None, "ci_low": None, "ci_high": None,
                "n": n or 0, "model": model, "note": note, "input": input_}
    return {"domain": domain, "metric": metric, "value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high,
            "n": est.n, "model": model, "note": note, "input": input_}


def _describe(obj) -> str:
    if obj is None:
        return ""
    d = getattr(obj, "describe", None)
    return d() if callable(d) else getattr(obj, "name", type(obj).__name__)


def _boot(cfg: dict) -> tuple[int, int, float]:
    ec = cfg["eval"]
    return int(ec["bootstrap"]), int(ec["bootstrap_seed"]), float(ec["ci_level"])


@dataclass
class _Scoring:
    """What one domain's scorers share: the clips, their per-clip records, the output rows."""

    clips: list
    domain: str
    cfg: dict
    models: Models
    input_: str
    suffix: str
    per_clip: list
    rows: list = field(default_factory=list)

    def row(self, metric, est, model, note=""):
        self.rows.append(_row(self.domain, metric + self.suffix, est, model, note, self.input_, len(self.clips)))

    def ratio_ci(self, num, den, scale=1.0):
        return metrics.ratio_ci(num, den, *_boot(self.cfg), scale=scale)


def _asr_rows(sc: _Scoring) -> None:
    from .asr import wer_counts

    clips, models = sc.clips, sc.models
    hyps = [models.asr.transcribe(c.wave, c.sample_rate) for c in tqdm(clips, desc=f"asr {sc.input_}")]
    counts = wer_counts([c.text for c in clips], hyps, [c.id for c in clips])
    for c, h, rec, rn, hn, e, w in zip(clips, hyps, sc.per_clip, counts.refs, counts.hyps, counts.errors,
                                      counts.ref_words):
        log.debug("%s: ref %r hyp %r", c.id, c.text, h)
        rec.update(hyp=h, ref_norm=rn, hyp_norm=hn, wer=100.0 * float(e) / float(w), wer_errors=float(e),
                   wer_words=float(w))
    asr_name = _describe(models.asr)
    n_boot, seed, level = _boot(sc.cfg)
    sc.row("wer", metrics.bootstrap_ci(counts.corpus_wer, len(clips), n_boot, seed, level), asr_name)
    sc.row("wer_utt", metrics.bootstrap_ci(counts.utterance_wer, len(clips), n_boot, seed, level), asr_name)


def _mos_rows(sc: _Scoring) -> None:
    mos = sc.models.mos.get(sc.domain)
    if mos is None:
        from .mos import NO_AUDIO_MOS

        note = NO_AUDIO_MOS if sc.domain == "audio" else f"eval.mos.{sc.domain} is none"
        sc.row("mos_ovrl", None, "", note)
        sc.row("mos_p808", None, "", note)
        return
    scores = [mos.score(c.wave, c.sample_rate) for c in tqdm(sc.clips, desc=f"mos {sc.input_}")]
    for rec, s in zip(sc.per_clip, scores):
        rec.update(s)
    for key in ("mos_ovrl", "mos_p808"):
        vals = [s[key] for s in scores]
        if all(v is None for v in vals):
            sc.row(key, None, _describe(mos), f"{_describe(mos)} has no {key} score")
        else:
            sc.row(key, metrics.mean_ci(vals, *_boot(sc.cfg)), _describe(mos))


def _speaker_rows(sc: _Scoring) -> None:
    models = sc.models
    if models.speaker is None:
        sc.row("spk_sim", None, "", "eval.speaker is none")
    elif any(c.prompt is None for c in sc.clips):
        sc.row("spk_sim", None, _describe(models.speaker), "no prompt audio for some clips")
    else:
        sims = [models.speaker.similarity(c.wave, c.sample_rate, c.prompt, c.sample_rate)
                for c in tqdm(sc.clips, desc=f"speaker {sc.input_}")]
        for rec, v in zip(sc.per_clip, sims):
            rec["spk_sim"] = v
        sc.row("spk_sim", metrics.mean_ci(sims, *_boot(sc.cfg)), _describe(models.speaker))


MEL_MODEL = "log-mel of the model output vs the ground-truth log-mel (frame-aligned)"


def _mel_rows(sc: _Scoring) -> None:
    if any(c.mel is None or c.ref_mel is None for c in sc.clips):
        note = ("the ground-truth mel is the target: 0 by definition (generated rows compare the model's mel "
                "before the vocoder)") if sc.input_ != "generated" else "no generated or ground-truth mel"
        sc.row("mel_l1", None, "", note)
        sc.row("mcd", None, "", note)
        return
    k = int(sc.cfg["eval"]["mel"]["mcd_coeffs"])
    l1 = [metrics.mel_l1(c.mel, c.ref_mel) for c in sc.clips]
    mcd = [metrics.mel_cepstral_distortion(c.mel, c.ref_mel, k) for c in sc.clips]
    for rec, a, b in zip(sc.per_clip, l1, mcd):
        rec.update(mel_l1=a, mcd=b)
    sc.row("mel_l1", metrics.mean_ci(l1, *_boot(sc.cfg)), MEL_MODEL)
    sc.row("mcd", metrics.mean_ci(mcd, *_boot(sc.cfg)), MEL_MODEL + f"; cepstra 1..{k}, dB")


def _ter_rows(sc: _Scoring) -> None:
    from .ter import ter_counts

    scorer = sc.models.tokens
    names = ["ter"] + (["ter_beats"] if scorer is not None and scorer.interleaved else [])
    if scorer is None:
        sc.row("ter", None, "", "no tokenizers given (TER off)")
        return
    counts = []
    for c in tqdm(sc.clips, desc=f"ter {sc.input_}"):
        if sc.input_ == "generated":
            ref = scorer.conditioning(c.tokens, c.domain, sc.models.store_vocab)
        else:  # the floor: the vocoded ground truth against the ground truth's own tokens
            ref = scorer.streams_of_file(c.ref_path, c.domain)
        hyp = scorer.streams_of_file(c.path, c.domain) if c.path is not None else \
            scorer.streams(c.wave, c.sample_rate, c.domain)
        counts.append(ter_counts(ref, hyp))
    for rec, cnt in zip(sc.per_clip, counts):
        for name, (e, n) in cnt.items():
            rec.update({name: e / n, f"{name}_edits": float(e), f"{name}_len": float(n)})
    for name in names:
        sc.row(name, sc.ratio_ci([c[name][0] for c in counts], [c[name][1] for c in counts]), scorer.describe())


def _event_rows(sc: _Scoring) -> None:
    from .classifier import clip_scores, mean_average_precision

    clf = sc.models.classifier
    if clf is None:
        for m in ("event_top1", "event_kl", "event_map"):
            sc.row(m, None, "", "eval.events.classifier is none")
        return
    peak = sc.cfg["audio"]["peak_normalize"]
    from ..audio import peak_normalize

    out = [clip_scores(clf, peak_normalize(np.asarray(c.wave, np.float32), peak),
                       peak_normalize(np.asarray(c.reference, np.float32), peak), c.sample_rate, c.labels)
           for c in tqdm(sc.clips, desc=f"events {sc.input_}")]
    for rec, o in zip(sc.per_clip, out):
        rec["event_kl"] = o["event_kl"]
        if o["event_top1"] is not None:
            rec["event_top1"] = o["event_top1"]
    known = [o["event_top1"] for o in out if o["event_top1"] is not None]
    skipped = len(out) - len(known)
    note = f"{skipped} clip(s) with labels the classifier does not know skipped" if skipped else ""
    sc.row("event_top1", metrics.mean_ci(known, *_boot(sc.cfg)) if known else None, _describe(clf),
           note or ("" if known else "no clip has a label the classifier knows"))
    sc.row("event_kl", metrics.mean_ci([o["event_kl"] for o in out], *_boot(sc.cfg)),
           _describe(clf) + "; KL(p_ref || p_gen), softmax")
    scores = np.stack([o["scores"] for o in out])
    truth = np.array([[float(l in o["labels"]) for l in clf.labels] for o in out])

    def stat(idx):
        return mean_average_precision(scores[idx], truth[idx])
    try:
        est = metrics.bootstrap_ci(stat, len(out), *_boot(sc.cfg))
    except ValueError as err:
        sc.row("event_map", None, _describe(clf), str(err))
        return
    sc.row("event_map", est, _describe(clf), "set-level: mAP over the classes present among the scored clips")


def score_domain(clips: list[Clip], domain: str, cfg: dict, models: Models, input_: str = "generated",
                 suffix: str = "", with_fad: bool = True, details: list | None = None) -> list[dict]:
    """Every metric row of one domain's clips (see module table); per-clip scores are appended to
    ``details`` (one dict per clip: id, domain, input and whatever was scored)."""
    per_clip = [{"id": c.id, "domain": domain, "input": input_} for c in clips]
    if details is not None:
        details += per_clip
    sc = _Scoring(clips, domain, cfg, models, input_, suffix, per_clip)
    if not clips:
        note = f"no {domain} clips to score"
        names = ["mos_ovrl", "mos_p808"] + (["fad", "fad_inf"] if with_fad else [])
        names += ["wer", "wer_utt", "spk_sim"] if domain == "speech" else ["event_top1", "event_kl", "event_map"]
        for m in names:
            sc.row(m, None, "", note)
        return sc.rows
    if domain == "speech":
        _asr_rows(sc)
    if with_fad:
        emb = models.embedding
        gen = [emb.embed(c.wave, c.sample_rate) for c in tqdm(clips, desc=f"embed {input_}")]
        ref = [emb.embed(c.reference, c.sample_rate) for c in tqdm(clips, desc="embed reference")]
        sc.rows += fad_rows(gen, ref, domain, _describe(emb), cfg, input_, suffix)
    _mos_rows(sc)
    if domain == "speech":
        _speaker_rows(sc)
    if input_ != "ground_truth":
        _mel_rows(sc)
        _ter_rows(sc)
    if domain == "audio":
        _event_rows(sc)
    return sc.rows


def fad_rows(gen: list[np.ndarray], ref: list[np.ndarray], domain: str, model: str, cfg: dict,
             input_: str = "generated", suffix: str = "") -> list[dict]:
    """``fad`` and ``fad_inf`` rows from per-clip embedding rows (paired lists) with bootstrap CIs.

    Provenance: a set with fewer embedding rows than dimensions has a rank-deficient covariance
    (rank <= rows - 1), so its FAD is biased upward and not comparable with published values: the
    note says so (starting with :data:`LOW_RANK`; the tables mark the value). FAD∞ is reported only
    when its fit FAD_N = a + b/N explains the points (R^2 >= ``eval.fad.fad_inf.min_r2``); otherwise
    its value is null and the note gives the R^2."""
    n_boot, seed, level = _boot(cfg)
    fi = cfg["eval"]["fad"]["fad_inf"]
    min_n, steps, inf_boot, min_r2 = int(fi["min_n"]), int(fi["steps"]), int(fi["bootstrap"]), float(fi["min_r2"])
    n = len(gen)

    def stack(parts, idx):
        return np.concatenate([parts[i] for i in idx], 0)

    all_gen, all_ref = stack(gen, range(n)), stack(ref, range(n))
    if all_gen.shape[0] < 2 or all_ref.shape[0] < 2:
        note = f"FAD needs at least 2 embedding rows per set (have {all_gen.shape[0]} and {all_ref.shape[0]})"
        return [_row(domain, "fad" + suffix, None, model, note, input_, n),
                _row(domain, "fad_inf" + suffix, None, model, note, input_, n)]

    def fad_stat(idx):
        g, r = stack(gen, idx), stack(ref, idx)
        if len(np.unique(idx)) < 2:
            raise ValueError("degenerate resample")
        return metrics.frechet_distance(r, g, method="auto")

    # the point estimate over every clip (also one clip of several rows: no CI then)
    value = metrics.frechet_distance(all_ref, all_gen, method="auto")
    est = metrics.bootstrap_ci(fad_stat, n, n_boot, seed, level, value=value)
    notes = []
    dim, n_rows = all_gen.shape[1], min(all_gen.shape[0], all_ref.shape[0])
    if n_rows < dim:
        notes.append(f"{LOW_RANK} {n_rows} embedding rows < {dim} dimensions (covariance rank <= {n_rows - 1}): "
                     f"FAD is biased upward and not comparable with published values")
    if all_gen.shape[0] != n or all_ref.shape[0] != n:
        notes.append(f"{all_gen.shape[0]} generated / {all_ref.shape[0]} reference embedding rows from {n} clips")
    rows = [_row(domain, "fad" + suffix, est, model, "; ".join(notes), input_, n)]
    if all_gen.shape[0] < 4:
        rows.append(_row(domain, "fad_inf" + suffix, None, model,
                         f"FAD-inf needs at least 4 embedding rows, have {all_gen.shape[0]}", input_, n))
        return rows
    fit = metrics.fad_inf(all_ref, all_gen, min_n, steps, seed)
    sizes = [p[0] for p in fit.points]
    fit_note = f"intercept of FAD_N = a + b/N over N in {sizes} embedding rows (slope {fit.slope:.4g}, R^2 {fit.r2:.3f})"
    if not fit.r2 >= min_r2:
        rows.append(_row(domain, "fad_inf" + suffix, None, model,
                         f"left out: the fit is not meaningful (R^2 {fit.r2:.3f} < eval.fad.fad_inf.min_r2 "
                         f"{min_r2}); {fit_note}", input_, n))
        return rows

    def inf_stat(idx):
        if len(np.unique(idx)) < 2:
            raise ValueError("degenerate resample")
        return metrics.fad_inf(stack(ref, idx), stack(gen, idx), min_n, steps, seed).value

    est = metrics.bootstrap_ci(inf_stat, n, inf_boot, seed, level, value=fit.value)
    rows.append(_row(domain, "fad_inf" + suffix, est, model, "; ".join([fit_note] + notes), input_, n))
    return rows


# -- loading clips ----------------------------------------------------------------------

def _manifest_rows(manifest: str | os.PathLike) -> pd.DataFrame:
    from ..corpora.manifest import read_manifest

    df = read_manifest(manifest)
    df["id"] = df["id"].astype(str)
    return df.set_index("id", drop=False)


def _gt_path(manifest, rows: pd.DataFrame, cid: str) -> Path:
    from ..corpora.manifest import resolve_path

    if cid not in rows.index:
        raise KeyError(f"{manifest}: no clip {cid!r}")
    return Path(resolve_path(manifest, rows.loc[cid, "path"]))


def _gt_wave(manifest, rows: pd.DataFrame, cid: str, cfg: dict) -> np.ndarray:
    from ..audio import load_audio

    return load_audio(_gt_path(manifest, rows, cid), int(cfg["audio"]["sample_rate"]),
                      peak=cfg["audio"]["peak_normalize"], resampler=cfg["audio"]["resample"])


def _read_wave(path: Path, sample_rate: int) -> np.ndarray:
    from ..audio import read_audio, resample

    data, sr = read_audio(path)
    return resample(data.mean(1), sr, sample_rate)


def _labels(row) -> list[str]:
    from ..corpora.manifest import split_labels

    value = row.get("labels", "")
    return split_labels(value) if isinstance(value, str) and value else []


def _generated_mels(samples_dir: Path) -> dict:
    from safetensors.numpy import load_file

    path = samples_dir / "mels.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path}: generated mels missing (written by `agrepa sample`)")
    return load_file(str(path))


def clips_from_samples(samples_dir, manifest, cfg: dict, mels_dir=None, tokens_dir=None) -> list[Clip]:
    """Generated clips of a sample directory with their ground truth and prompt audio; with
    ``mels_dir`` the generated and ground-truth mels (mel distance), with ``tokens_dir`` the
    conditioning tokens (TER)."""
    from ..generation.sampling import read_samples
    from ..store import Store

    samples_dir = Path(samples_dir)
    table = read_samples(samples_dir)
    rows = _manifest_rows(manifest)
    sr = int(cfg["audio"]["sample_rate"])
    gen_mels = _generated_mels(samples_dir) if mels_dir is not None else {}
    mels = Store(mels_dir) if mels_dir is not None else None
    toks = Store(tokens_dir) if tokens_dir is not None else None
    clips = []
    for _, s in table.iterrows():
        wav = samples_dir / s["path"]
        if not wav.exists():
            raise FileNotFoundError(f"{wav}: generated audio listed in {samples_dir / 'samples.csv'} is missing")
        prompt = _gt_wave(manifest, rows, s["prompt_id"], cfg) if s["prompt_id"] else None
        c = Clip(s["id"], s["domain"], _read_wave(wav, sr), _gt_wave(manifest, rows, s["id"], cfg),
                 str(s["text"]), prompt, sr, path=wav, ref_path=_gt_path(manifest, rows, s["id"]),
                 labels=_labels(rows.loc[s["id"]]))
        if mels is not None:
            if s["id"] not in gen_mels:
                raise KeyError(f"{samples_dir / 'mels.safetensors'}: no generated mel for clip {s['id']!r}")
            c.mel, c.ref_mel = gen_mels[s["id"]], mels.get(s["id"])["mel"].float().numpy()
        if toks is not None:
            c.tokens = toks.get(s["id"])["tokens"]
        clips.append(c)
    return clips


def reference_clips(manifest, cfg: dict, mels_dir=None, vocoder=None, split: str = "test") -> tuple[list[Clip], list[Clip]]:
    """(resynthesised, ground-truth) clips of the subset ``agrepa sample`` would generate."""
    import torch

    from ..audio import log_mel
    from ..generation.sampling import choose_prompts, config_targets
    from ..store import Store

    rows = _manifest_rows(manifest)
    df = rows[rows["split"] == split]
    if df.empty:
        raise ValueError(f"{manifest}: no clips in split {split!r}")
    targets = config_targets(cfg, df, cfg["sample"]["max_clips"])
    prompts = choose_prompts(df.reset_index(drop=True), targets, int(cfg["sample"]["seed"]))
    store = Store(mels_dir) if mels_dir else None
    sr = int(cfg["audio"]["sample_rate"])
    resyn, gt = [], []
    for cid in tqdm(targets, desc="resynthesis"):
        wave = _gt_wave(manifest, rows, cid, cfg)
        path = _gt_path(manifest, rows, cid)
        prompt = _gt_wave(manifest, rows, prompts[cid], cfg)
        mel = store.get(cid)["mel"] if store is not None else log_mel(torch.from_numpy(wave), cfg["audio"]).T
        r = rows.loc[cid]
        resyn.append(Clip(cid, r["domain"], vocoder(mel), wave, str(r["text"]), prompt, sr, ref_path=path,
                          labels=_labels(r)))
        gt.append(Clip(cid, r["domain"], wave, wave, str(r["text"]), prompt, sr, path=path, ref_path=path,
                       labels=_labels(r)))
    return resyn, gt


def heldout_rows(heldout_csv, cfg: dict, details: list) -> list[dict]:
    """``fm_loss`` rows (speech, audio, all) of the final checkpoint's held-out losses; per-clip
    records (input ``heldout``) are appended to ``details``."""
    from .heldout import final_losses

    df = final_losses(heldout_csv)
    step = int(df["step"].iloc[0]) if len(df) else None
    model = f"flow-matching loss on the valid split, EMA weights, step {step} (t grid {cfg['eval']['heldout']['t_grid']})"
    rows = []
    for d in ("speech", "audio", "all"):
        sel = df if d == "all" else df[df["domain"] == d]
        if sel.empty:
            rows.append(_row(d, "fm_loss", None, model, f"no held-out {d} clips", "heldout", 0))
            continue
        rows.append(_row(d, "fm_loss", metrics.mean_ci(sel["loss"].tolist(), *_boot(cfg)), model, "", "heldout"))
    details += [{"id": str(r.id), "domain": r.domain, "input": "heldout", "fm_loss": float(r.loss)}
                for r in df.itertuples()]
    return rows


POOLED = ("mel_l1", "mcd")   # also reported over both domains together (domain "all")


def pooled_rows(details: list, cfg: dict, input_: str) -> list[dict]:
    """Domain ``all`` rows of the per-clip metrics in :data:`POOLED`."""
    rows = []
    for m in POOLED:
        vals = [c[m] for c in details if c["input"] == input_ and m in c]
        if vals:
            rows.append(_row("all", m, metrics.mean_ci(vals, *_boot(cfg)), MEL_MODEL, "", input_))
    return rows


def evaluate(cfg: dict, manifest, samples_dir=None, reference: bool = False, mels_dir=None,
             models: Models | None = None, vocoder=None, tokens_dir=None, heldout=None) -> dict:
    """The evaluation JSON object (module docstring)."""
    n_boot, boot_seed, level = _boot(cfg)
    run: dict = {"config": cfg["name"], "manifest": str(manifest), "reference": bool(reference),
                 "bootstrap": n_boot, "bootstrap_seed": boot_seed, "ci_level": level}
    if reference:
        if vocoder is None:
            from ..generation.vocoder import build_vocoder
            vocoder = build_vocoder(cfg)
        clips, gt = reference_clips(manifest, cfg, mels_dir, vocoder)
        from ..generation.sampling import subset_max_seconds, subset_summary

        test_rows = _manifest_rows(manifest)
        test_rows = test_rows[test_rows["split"] == "test"]
        subset = subset_summary(test_rows, [c.id for c in clips], subset_max_seconds(cfg))
        run.update(samples=None, vocoder=vocoder.describe(), sample_seed=int(cfg["sample"]["seed"]),
                   subset_seed=int(cfg["sample"]["subset_seed"]), subset=subset)
    else:
        if samples_dir is None:
            raise ValueError("evaluate: --samples is required unless --reference is given")
        clips, gt = clips_from_samples(samples_dir, manifest, cfg, mels_dir, tokens_dir), []
        meta_path = Path(samples_dir) / "sample_meta.json"
        run.update(samples=str(samples_dir), sample_meta=io.read_json(meta_path) if meta_path.exists() else None)
    domains = DOMAINS
    models = models or build_models(cfg, [d for d in domains if any(c.domain == d for c in clips)] or list(domains))
    if tokens_dir is not None and models.tokens is not None:
        from ..store import Store
        from ..tokenizers.vocab import Vocab

        models.store_vocab = Vocab.from_meta(Store(tokens_dir).meta)
    elif models.tokens is not None and not reference:
        raise ValueError("evaluate: TER of generated samples needs --tokens (the conditioning token store)")
    out: list[dict] = []
    details: list[dict] = []
    input_ = "resynthesis" if reference else "generated"
    for d in domains:
        dc = [c for c in clips if c.domain == d]
        out += score_domain(dc, d, cfg, models, input_, details=details)
        if reference:
            out += score_domain([c for c in gt if c.domain == d], d, cfg, models, "ground_truth", "_gt",
                                with_fad=False, details=details)
    out += pooled_rows(details, cfg, input_)
    if heldout is not None:
        out += heldout_rows(heldout, cfg, details)
    run["n_clips"] = {d: sum(c.domain == d for c in clips) for d in domains}
    run["models"] = {"embedding": _describe(models.embedding), "asr": _describe(models.asr),
                     "mos": {d: _describe(m) for d, m in models.mos.items()}, "speaker": _describe(models.speaker),
                     "ter": _describe(models.tokens), "events": _describe(models.classifier)}
    return {"run": run, "metrics": out, "clips": details}


# -- convergence --------------------------------------------------------------------------

SNAPSHOT = re.compile(r"step_(\d+)\.pt$")


def snapshots(run_dir) -> list[tuple[int, Path]]:
    """``(step, path)`` of every kept snapshot of a branch run, by step."""
    d = Path(run_dir) / "snapshots"
    found = sorted((int(m.group(1)), p) for p in d.glob("step_*.pt") if (m := SNAPSHOT.search(p.name)))
    if not found:
        raise FileNotFoundError(f"{d}: no snapshots (step_*.pt) in this run directory")
    return found


def convergence_curve(cfg: dict, run_dir, data, seed: int, embedding=None,
                      vocoder=None, load=None, split: str = "test", device="cpu") -> pd.DataFrame:
    """FAD against the ground truth at every snapshot of ``run_dir`` (module docstring); ``data``:
    the ``agrepa.training.dataset.DataPaths`` of the manifest, mel and token stores."""
    from ..corpora.mels import load_stats
    from ..generation.sampling import build_requests, choose_prompts, config_targets, generate, inference_dtype, run_settings
    from ..store import Store

    if load is None:
        from ..training.checkpoint import load_run as load
    if embedding is None:
        from .embeddings import build_embedding
        embedding = build_embedding(cfg)
    if vocoder is None:
        from ..generation.vocoder import build_vocoder
        vocoder = build_vocoder(cfg)
    sc = cfg["sample"]
    rows = _manifest_rows(data.manifest)
    mels, toks = Store(data.mels), Store(data.tokens)
    df = rows[(rows["split"] == split) & rows["id"].map(lambda c: c in mels and c in toks)]
    targets = config_targets(cfg, df, int(cfg["eval"]["convergence"]["max_clips"]))
    prompts = choose_prompts(df.reset_index(drop=True), targets, seed)
    mean, std = load_stats(mels)
    requests = build_requests(cfg, targets, prompts, mels, toks, mean, std)
    sr = int(cfg["audio"]["sample_rate"])
    ref_emb = {cid: embedding.embed(_gt_wave(data.manifest, rows, cid, cfg), sr) for cid in tqdm(targets, desc="embed gt")}
    domain_of = {cid: rows.loc[cid, "domain"] for cid in targets}
    out = []
    for step, path in tqdm(snapshots(run_dir), desc="snapshots"):
        run = load(path)
        gen = generate(run.model.to(device).eval(), requests, seed=seed, batch_size=int(sc["batch_size"]),
                       device=device, progress=False, amp=inference_dtype(cfg, device), **run_settings(cfg, run.cfg))
        emb = {r.id: embedding.embed(vocoder(x * std + mean), sr) for r, x in zip(requests, gen)}
        for d in DOMAINS:
            ids = [c for c in targets if domain_of[c] == d]
            if not ids:
                continue
            g = np.concatenate([emb[c] for c in ids])
            r = np.concatenate([ref_emb[c] for c in ids])
            fad = metrics.frechet_distance(r, g, method="auto") if len(g) >= 2 else float("nan")
            out.append({"step": step, "domain": d, "fad": fad, "n": len(ids), "embedding": _describe(embedding),
                        "method": getattr(run, "method", ""), "run": str(run_dir)})
        log.info("snapshot %s: %s", path.name, {o["domain"]: round(o["fad"], 4) for o in out[-2:]})
    return pd.DataFrame(out, columns=CONVERGENCE_COLUMNS)
