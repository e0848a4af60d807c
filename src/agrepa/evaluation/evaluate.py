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
``sample.seed``); each clip's ground-truth mel (``--mels`` store, or computed from the audio
with :func:`agrepa.audio.log_mel`) is resynthesised with the configured vocoder and scored
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
sample the fixed subset (``eval.convergence.max_clips`` clips per domain, fixed seed) with
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

CONFIG_KEYS = ("audio", "eval", "name", "sample")  # config sections this module reads

log = logging.getLogger(__name__)

METRIC_FIELDS = ["domain", "metric", "value", "ci_low", "ci_high", "n", "model", "note", "input"]
CONVERGENCE_COLUMNS = ["step", "domain", "fad", "n", "embedding", "method", "run"]


@dataclass
class Clip:
    """One scored clip: its audio, the ground-truth audio of the same test clip, and its prompt's audio."""

    id: str
    domain: str
    wave: np.ndarray
    reference: np.ndarray
    text: str = ""
    prompt: np.ndarray | None = None
    sample_rate: int = 24000


@dataclass
class Models:
    """The scoring models (None where a metric is switched off)."""

    embedding: object
    asr: object | None = None
    mos: dict = field(default_factory=dict)      # domain -> predictor or None
    speaker: object | None = None


def build_models(cfg: dict, domains: Sequence[str]) -> Models:
    from .asr import build_asr
    from .embeddings import build_embedding
    from .mos import build_mos
    from .speaker import build_speaker_encoder

    speech = "speech" in domains
    return Models(embedding=build_embedding(cfg), asr=build_asr(cfg) if speech else None,
                  mos={d: build_mos(cfg, d) for d in domains},
                  speaker=build_speaker_encoder(cfg) if speech else None)


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


def score_domain(clips: list[Clip], domain: str, cfg: dict, models: Models, input_: str = "generated",
                 suffix: str = "", with_fad: bool = True, details: list | None = None) -> list[dict]:
    """Every metric row of one domain's clips (see module table); per-clip scores are appended to
    ``details`` (one dict per clip: id, domain, input and whatever was scored)."""
    ec = cfg["eval"]
    n_boot, seed, level = int(ec["bootstrap"]), int(ec["bootstrap_seed"]), float(ec["ci_level"])
    rows: list[dict] = []
    n = len(clips)
    per_clip = [{"id": c.id, "domain": domain, "input": input_} for c in clips]
    if details is not None:
        details += per_clip
    emb_name = _describe(models.embedding)

    def row(metric, est, model, note=""):
        rows.append(_row(domain, metric + suffix, est, model, note, input_, n))

    if n == 0:
        note = f"no {domain} clips to score"
        names = ["fad", "fad_inf", "mos_ovrl", "mos_p808"] + (["wer", "wer_utt", "spk_sim"] if domain == "speech" else [])
        for m in names:
            if m.startswith("fad") and not with_fad:
                continue
            row(m, None, "", note)
        return rows

    if domain == "speech":
        from .asr import wer_counts

        hyps = [models.asr.transcribe(c.wave, c.sample_rate) for c in tqdm(clips, desc=f"asr {input_}")]
        counts = wer_counts([c.text for c in clips], hyps, [c.id for c in clips])
        for c, h, rec, rn, hn, e, w in zip(clips, hyps, per_clip, counts.refs, counts.hyps, counts.errors,
                                          counts.ref_words):
            log.debug("%s: ref %r hyp %r", c.id, c.text, h)
            rec.update(hyp=h, ref_norm=rn, hyp_norm=hn, wer=100.0 * float(e) / float(w))
        asr_name = _describe(models.asr)
        row("wer", metrics.bootstrap_ci(counts.corpus_wer, n, n_boot, seed, level), asr_name)
        row("wer_utt", metrics.bootstrap_ci(counts.utterance_wer, n, n_boot, seed, level), asr_name)

    if with_fad:
        gen = [models.embedding.embed(c.wave, c.sample_rate) for c in tqdm(clips, desc=f"embed {input_}")]
        ref = [models.embedding.embed(c.reference, c.sample_rate) for c in tqdm(clips, desc="embed reference")]
        rows += fad_rows(gen, ref, domain, emb_name, cfg, input_, suffix)

    mos = models.mos.get(domain)
    if mos is None:
        from .mos import NO_AUDIO_MOS

        note = NO_AUDIO_MOS if domain == "audio" else f"eval.mos.{domain} is none"
        row("mos_ovrl", None, "", note)
        row("mos_p808", None, "", note)
    else:
        scores = [mos.score(c.wave, c.sample_rate) for c in tqdm(clips, desc=f"mos {input_}")]
        for rec, sc in zip(per_clip, scores):
            rec.update(sc)
        for key in ("mos_ovrl", "mos_p808"):
            row(key, metrics.mean_ci([s[key] for s in scores], n_boot, seed, level), _describe(mos))

    if domain == "speech":
        if models.speaker is None:
            row("spk_sim", None, "", "eval.speaker is none")
        elif any(c.prompt is None for c in clips):
            row("spk_sim", None, _describe(models.speaker), "no prompt audio for some clips")
        else:
            sims = [models.speaker.similarity(c.wave, c.sample_rate, c.prompt, c.sample_rate)
                    for c in tqdm(clips, desc=f"speaker {input_}")]
            for rec, v in zip(per_clip, sims):
                rec["spk_sim"] = v
            row("spk_sim", metrics.mean_ci(sims, n_boot, seed, level), _describe(models.speaker))
    return rows


def fad_rows(gen: list[np.ndarray], ref: list[np.ndarray], domain: str, model: str, cfg: dict,
             input_: str = "generated", suffix: str = "") -> list[dict]:
    """``fad`` and ``fad_inf`` rows from per-clip embedding rows (paired lists) with bootstrap CIs."""
    ec = cfg["eval"]
    n_boot, seed, level = int(ec["bootstrap"]), int(ec["bootstrap_seed"]), float(ec["ci_level"])
    fi = ec["fad"]["fad_inf"]
    min_n, steps = int(fi["min_n"]), int(fi["steps"])
    inf_boot = int(fi["bootstrap"])
    n = len(gen)

    def stack(parts, idx):
        return np.concatenate([parts[i] for i in idx], 0)

    all_gen, all_ref = stack(gen, range(n)), stack(ref, range(n))
    rows = []
    if all_gen.shape[0] < 2 or all_ref.shape[0] < 2:
        note = f"FAD needs at least 2 embedding rows per set (have {all_gen.shape[0]} and {all_ref.shape[0]})"
        return [_row(domain, "fad" + suffix, None, model, note, input_, n),
                _row(domain, "fad_inf" + suffix, None, model, note, input_, n)]

    def fad_stat(idx):
        g, r = stack(gen, idx), stack(ref, idx)
        if len(np.unique(idx)) < 2:
            raise ValueError("degenerate resample")
        return metrics.frechet_distance(r, g, method="auto")

    est = metrics.bootstrap_ci(fad_stat, n, n_boot, seed, level)
    est.value = metrics.frechet_distance(all_ref, all_gen, method="auto")
    multi = all_gen.shape[0] != n or all_ref.shape[0] != n
    rows_note = (f"{all_gen.shape[0]} generated / {all_ref.shape[0]} reference embedding rows from {n} clips"
                 if multi else "")
    rows.append(_row(domain, "fad" + suffix, est, model, rows_note, input_, n))
    if all_gen.shape[0] < 4:
        rows.append(_row(domain, "fad_inf" + suffix, None, model,
                         f"FAD-inf needs at least 4 embedding rows, have {all_gen.shape[0]}", input_, n))
        return rows

    def inf_stat(idx):
        if len(np.unique(idx)) < 2:
            raise ValueError("degenerate resample")
        return metrics.fad_inf(stack(ref, idx), stack(gen, idx), min_n, steps, seed).value

    fit = metrics.fad_inf(all_ref, all_gen, min_n, steps, seed)
    est = metrics.bootstrap_ci(inf_stat, n, inf_boot, seed, level)
    est.value = fit.value
    sizes = [p[0] for p in fit.points]
    rows.append(_row(domain, "fad_inf" + suffix, est, model,
                     f"intercept of FAD_N = a + b/N over N in {sizes} embedding rows (slope {fit.slope:.4g}, "
                     f"R^2 {fit.r2:.3f})" + (f"; {rows_note}" if rows_note else ""),
                     input_, n))
    return rows


# -- loading clips ----------------------------------------------------------------------

def _manifest_rows(manifest: str | os.PathLike) -> pd.DataFrame:
    from ..corpora.manifest import read_manifest

    df = read_manifest(manifest)
    df["id"] = df["id"].astype(str)
    return df.set_index("id", drop=False)


def _gt_wave(manifest, rows: pd.DataFrame, cid: str, cfg: dict) -> np.ndarray:
    from ..audio import load_audio
    from ..corpora.manifest import resolve_path

    if cid not in rows.index:
        raise KeyError(f"{manifest}: no clip {cid!r}")
    peak = cfg["audio"]["peak_normalize"]
    return load_audio(resolve_path(manifest, rows.loc[cid, "path"]), int(cfg["audio"]["sample_rate"]), peak=peak)


def _read_wave(path: Path, sample_rate: int) -> np.ndarray:
    from ..audio import read_audio, resample

    data, sr = read_audio(path)
    return resample(data.mean(1), sr, sample_rate)


def clips_from_samples(samples_dir, manifest, cfg: dict) -> list[Clip]:
    """Generated clips of a sample directory with their ground truth and prompt audio."""
    from ..generation.sampling import read_samples

    samples_dir = Path(samples_dir)
    table = read_samples(samples_dir)
    rows = _manifest_rows(manifest)
    sr = int(cfg["audio"]["sample_rate"])
    clips = []
    for _, s in table.iterrows():
        wav = samples_dir / s["path"]
        if not wav.exists():
            raise FileNotFoundError(f"{wav}: generated audio listed in {samples_dir / 'samples.csv'} is missing")
        prompt = _gt_wave(manifest, rows, s["prompt_id"], cfg) if s["prompt_id"] else None
        clips.append(Clip(s["id"], s["domain"], _read_wave(wav, sr), _gt_wave(manifest, rows, s["id"], cfg),
                          str(s["text"]), prompt, sr))
    return clips


def reference_clips(manifest, cfg: dict, mels_dir=None, vocoder=None, split: str = "test") -> tuple[list[Clip], list[Clip]]:
    """(resynthesised, ground-truth) clips of the subset ``agrepa sample`` would generate."""
    import torch

    from ..audio import log_mel
    from ..generation.sampling import choose_prompts, select_targets
    from ..store import Store

    rows = _manifest_rows(manifest)
    df = rows[rows["split"] == split]
    if df.empty:
        raise ValueError(f"{manifest}: no clips in split {split!r}")
    targets = select_targets(df, cfg["sample"]["max_clips"])
    prompts = choose_prompts(df.reset_index(drop=True), targets, int(cfg["sample"]["seed"]))
    store = Store(mels_dir) if mels_dir else None
    sr = int(cfg["audio"]["sample_rate"])
    resyn, gt = [], []
    for cid in tqdm(targets, desc="resynthesis"):
        wave = _gt_wave(manifest, rows, cid, cfg)
        prompt = _gt_wave(manifest, rows, prompts[cid], cfg)
        mel = store.get(cid)["mel"] if store is not None else log_mel(torch.from_numpy(wave), cfg["audio"]).T
        r = rows.loc[cid]
        resyn.append(Clip(cid, r["domain"], vocoder(mel), wave, str(r["text"]), prompt, sr))
        gt.append(Clip(cid, r["domain"], wave, wave, str(r["text"]), prompt, sr))
    return resyn, gt


def evaluate(cfg: dict, manifest, samples_dir=None, reference: bool = False, mels_dir=None,
             models: Models | None = None, vocoder=None) -> dict:
    """The evaluation JSON object (module docstring)."""
    ec = cfg["eval"]
    run: dict = {"config": cfg["name"], "manifest": str(manifest), "reference": bool(reference),
                 "bootstrap": int(ec["bootstrap"]), "bootstrap_seed": int(ec["bootstrap_seed"]),
                 "ci_level": float(ec["ci_level"])}
    if reference:
        if vocoder is None:
            from ..generation.vocoder import build_vocoder
            vocoder = build_vocoder(cfg)
        clips, gt = reference_clips(manifest, cfg, mels_dir, vocoder)
        run.update(samples=None, vocoder=vocoder.describe(), sample_seed=int(cfg["sample"]["seed"]))
    else:
        if samples_dir is None:
            raise ValueError("evaluate: --samples is required unless --reference is given")
        clips, gt = clips_from_samples(samples_dir, manifest, cfg), []
        meta_path = Path(samples_dir) / "sample_meta.json"
        run.update(samples=str(samples_dir), sample_meta=io.read_json(meta_path) if meta_path.exists() else None)
    domains = DOMAINS
    models = models or build_models(cfg, [d for d in domains if any(c.domain == d for c in clips)] or list(domains))
    out: list[dict] = []
    details: list[dict] = []
    for d in domains:
        dc = [c for c in clips if c.domain == d]
        out += score_domain(dc, d, cfg, models, "resynthesis" if reference else "generated", details=details)
        if reference:
            out += score_domain([c for c in gt if c.domain == d], d, cfg, models, "ground_truth", "_gt",
                                with_fad=False, details=details)
    run["n_clips"] = {d: sum(c.domain == d for c in clips) for d in domains}
    run["models"] = {"embedding": _describe(models.embedding), "asr": _describe(models.asr),
                     "mos": {d: _describe(m) for d, m in models.mos.items()}, "speaker": _describe(models.speaker)}
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


def convergence_curve(cfg: dict, run_dir, manifest, mels_dir, tokens_dir, seed: int, embedding=None,
                      vocoder=None, load=None, split: str = "test", device="cpu") -> pd.DataFrame:
    """FAD against the ground truth at every snapshot of ``run_dir`` (module docstring)."""
    from ..corpora.mels import load_stats
    from ..generation.sampling import build_requests, choose_prompts, generate, select_targets
    from ..store import Store

    if load is None:
        from ..training.train import load_checkpoint as load
    if embedding is None:
        from .embeddings import build_embedding
        embedding = build_embedding(cfg)
    if vocoder is None:
        from ..generation.vocoder import build_vocoder
        vocoder = build_vocoder(cfg)
    sc = cfg["sample"]
    rows = _manifest_rows(manifest)
    mels, toks = Store(mels_dir), Store(tokens_dir)
    df = rows[(rows["split"] == split) & rows["id"].map(lambda c: c in mels and c in toks)]
    targets = select_targets(df, int(cfg["eval"]["convergence"]["max_clips"]))
    prompts = choose_prompts(df.reset_index(drop=True), targets, seed)
    mean, std = load_stats(mels)
    requests = build_requests(cfg, targets, prompts, mels, toks, mean, std)
    sr = int(cfg["audio"]["sample_rate"])
    ref_emb = {cid: embedding.embed(_gt_wave(manifest, rows, cid, cfg), sr) for cid in tqdm(targets, desc="embed gt")}
    domain_of = {cid: rows.loc[cid, "domain"] for cid in targets}
    out = []
    for step, path in tqdm(snapshots(run_dir), desc="snapshots"):
        run = load(path)
        gen = generate(run.model.to(device).eval(), requests, int(sc["steps"]), sc["cfg_scale"], float(sc["sway"]),
                       seed, batch_size=int(sc["batch_size"]), device=device, progress=False)
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
