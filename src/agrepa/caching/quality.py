"""Quality of a cached or shortened sampler run: mel SNR against the full-compute run,
WER and FAD against the ground truth.

Mel SNR of a generated clip against the full-compute output of the same clip (same
noise, prompt and tokens), over its generated target frames and every mel bin, in the
model's normalised mel space (per-bin ``(mel - mean) / std`` with the train-split
statistics, so every bin weighs the same and the large negative log-mel values of
silence do not dominate)::

    D   = sum (x - x_full)^2 / sum x_full^2         normalised distortion (0: the full run)
    SNR = -10 log10 D  dB                            (inf for an identical output)

It is measured on mels because Griffin-Lim's random phase would add noise of its own to
any waveform comparison. WER (speech), FAD and TER (per domain) are the evaluation stage's:
the mels are de-normalised, vocoded with the configured vocoder and scored against the
ground-truth audio of the same clips (:mod:`agrepa.evaluation.asr`,
:func:`agrepa.evaluation.evaluate.fad_rows`) or, for TER, re-tokenised with the conditioning
tokenizers and compared with the clip's own conditioning tokens (:mod:`agrepa.evaluation.ter`:
pooled edits / reference tokens), with percentile-bootstrap CIs over clips.
"""
from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor

from ..config import DOMAINS
from ..evaluation import metrics
from ..evaluation.evaluate import _gt_wave, fad_rows

CONFIG_KEYS = ("audio.sample_rate", "eval")  # config sections this module reads

METRICS = ("wer", "fad", "ter")


def mel_distortion(x: Tensor, ref: Tensor) -> float:
    """sum (x - ref)^2 / sum ref^2 over all elements (module docstring)."""
    if x.shape != ref.shape:
        raise ValueError(f"mel distortion: shapes differ, {tuple(x.shape)} vs {tuple(ref.shape)}")
    num = float((x.double() - ref.double()).pow(2).sum())
    den = float(ref.double().pow(2).sum())
    if den == 0.0:
        raise ValueError("mel distortion: the reference is all zeros")
    return num / den


def mel_snr_db(x: Tensor, ref: Tensor) -> float:
    """-10 log10 of :func:`mel_distortion` (inf when x equals ref)."""
    d = mel_distortion(x, ref)
    return math.inf if d == 0.0 else -10.0 * math.log10(d)


class QualityScorer:
    """WER, FAD and TER of generated (normalised) mels of a fixed clip set, models loaded once."""

    def __init__(self, cfg: dict, data, split, metric_names: Sequence[str], tokenizers: dict | None = None,
                 teacher_dir=None):
        """``data``: the ``agrepa.training.dataset.DataPaths`` the clips come from; ``split``: the
        :class:`agrepa.generation.sampling.SplitRequests` the mels were generated for; ``tokenizers``
        (``{stream: fitted tokenizer dir}``) and ``teacher_dir`` (the trained events teacher, TER's
        acoustic teacher) are what ``ter`` needs, as for ``agrepa evaluate``."""
        from ..generation.vocoder import build_vocoder

        unknown = [m for m in metric_names if m not in METRICS]
        if unknown:
            raise ValueError(f"config key lsac: unknown quality metric(s) {unknown} (choose from {METRICS})")
        self.cfg, self.split, self.metrics = cfg, split, list(metric_names)
        self.sr = int(cfg["audio"]["sample_rate"])
        self.domain = {cid: str(split.rows.loc[cid, "domain"]) for cid in split.targets}
        self.vocoder = build_vocoder(cfg) if self.metrics else None
        self.asr = self.embedding = self.tokens = None
        if "wer" in self.metrics and "speech" in self.domain.values():
            from ..evaluation.asr import build_asr
            self.asr = build_asr(cfg)
        self.ref_emb = {}
        if "fad" in self.metrics:
            from ..evaluation.embeddings import build_embedding
            self.embedding = build_embedding(cfg)
            self.ref_emb = {cid: self.embedding.embed(_gt_wave(data.manifest, split.rows, cid, cfg), self.sr)
                            for cid in split.targets}
        self.ref_tokens = {}
        if "ter" in self.metrics:
            self.tokens, self.ref_tokens = _conditioning_tokens(cfg, data, split, self.domain, tokenizers,
                                                                teacher_dir)

    def score(self, mels: Sequence[Tensor]) -> tuple[list[dict], dict[str, dict]]:
        """(corpus rows {domain, metric, value, ci_low, ci_high, n, model}, {clip id: {wer, ter counts}})
        for generated normalised mels aligned with ``split.targets``."""
        ec = self.cfg["eval"]
        n_boot, seed, level = int(ec["bootstrap"]), int(ec["bootstrap_seed"]), float(ec["ci_level"])
        if not self.metrics:
            return [], {}
        waves = {cid: self.vocoder(x * self.split.std + self.split.mean) for cid, x in zip(self.split.targets, mels)}
        rows, per_clip = [], {cid: {} for cid in self.split.targets}

        def row(domain, metric, est, model):
            rows.append({"domain": domain, "metric": metric, "value": est.value, "ci_low": est.ci_low,
                         "ci_high": est.ci_high, "n": est.n, "model": model})

        for domain in DOMAINS:
            ids = [c for c in self.split.targets if self.domain[c] == domain]
            if not ids:
                continue
            if self.asr is not None and domain == "speech":
                from ..evaluation.asr import wer_counts

                texts = [str(self.split.rows.loc[c, "text"]) for c in ids]
                counts = wer_counts(texts, [self.asr.transcribe(waves[c], self.sr) for c in ids], ids)
                for c, e, w in zip(ids, counts.errors, counts.ref_words):
                    per_clip[c].update(wer_errors=float(e), wer_words=float(w))
                row(domain, "wer", metrics.bootstrap_ci(counts.corpus_wer, len(ids), n_boot, seed, level),
                    self.asr.name)
            if self.embedding is not None:
                gen = [self.embedding.embed(waves[c], self.sr) for c in ids]
                fad = fad_rows(gen, [self.ref_emb[c] for c in ids], domain, self.embedding.name, self.cfg)
                rows += [{k: r[k] for k in ("domain", "metric", "value", "ci_low", "ci_high", "n", "model")}
                         for r in fad if r["metric"] == "fad"]
            if self.tokens is not None:
                from ..evaluation.ter import ter_counts

                counts = [ter_counts(self.ref_tokens[c], self.tokens.streams(waves[c], self.sr, domain))["ter"]
                          for c in ids]
                for c, (e, n) in zip(ids, counts):
                    per_clip[c].update(ter_edits=float(e), ter_len=float(n))
                row(domain, "ter", metrics.ratio_ci([e for e, _ in counts], [n for _, n in counts], n_boot, seed,
                                                    level), self.tokens.describe())
        return rows, per_clip


def _conditioning_tokens(cfg, data, split, domain: dict, tokenizers: dict | None, teacher_dir) -> tuple:
    """(TokenScorer, {clip id: its conditioning tokens as local codes per stream}) for TER."""
    from ..evaluation.ter import FEATURE_ROLE, build_token_scorer
    from ..store import Store
    from ..teachers.registry import build_teacher
    from ..tokenizers.vocab import Vocab

    if not tokenizers:
        raise ValueError("lsac.metrics has ter: give the fitted tokenizers (--tokenizers speech=DIR audio=DIR)")
    roles = {FEATURE_ROLE[s] for s in tokenizers}
    teachers = {r: build_teacher(cfg, r, teacher_dir=teacher_dir if r == "acoustic" else None) for r in roles}
    scorer = build_token_scorer(cfg, tokenizers, teachers)
    store = Store(data.tokens)
    vocab = Vocab.from_meta(store.meta)
    return scorer, {c: scorer.conditioning(store.get(c)["tokens"], domain[c], vocab) for c in split.targets}
