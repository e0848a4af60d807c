"""LSAC probe and experiment on a real tiny corpus (agrepa.caching.probe,
agrepa.caching.experiment) and Table L1 / the figures from CSVs (agrepa.reports.lsac*)."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from agrepa import config
from agrepa.caching import experiment as lsac_experiment
from agrepa.caching import probe as lsac_probe
from agrepa.caching import quality
from agrepa.caching.quality import mel_distortion, mel_snr_db
from agrepa.generation import sampling
from agrepa.caching.plan import CachePlan
from agrepa.caching.flops import Dims, sampling_flops
from agrepa.model.cache import StepCache
from agrepa.model.dit import DiT
from agrepa.training.dataset import DataPaths
from agrepa.reports import lsac as lsac_report
from agrepa.reports import lsac_figures
from test_eval_corpus import VOCAB, make_corpus
from test_workflow_support import DEFAULT_CONFIG

S = 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def data(corpus):
    return DataPaths(corpus["manifest"], corpus["mels"], corpus["tokens"])


def tiny(seed=0):
    torch.manual_seed(seed)
    m = DiT(n_layers=3, dim=32, n_heads=2, n_mels=100, vocab_size=VOCAB, ff_mult=2)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)
    return m.eval()


def cfg_for(**lsac):
    cfg = config.load(DEFAULT_CONFIG)
    cfg["sample"].update(steps=S, max_clips={"speech": 2, "audio": 1})
    cfg["lsac"]["probe"].update(split="test", max_clips={"speech": 2, "audio": 1}, freeze_eval=False,
                                freeze_at=[0.34, 0.67])
    cfg["lsac"].update(metrics=[], **lsac)
    return cfg


def test_mel_snr():
    x = torch.randn(10, 4)
    assert mel_snr_db(x, x) == math.inf
    assert mel_snr_db(x + 0.1 * x, x) == pytest.approx(20.0)
    assert mel_distortion(2 * x, x) == pytest.approx(1.0)


def test_probe_rows_match_a_direct_computation(corpus):
    m, cfg = tiny(), cfg_for()
    df = lsac_probe.lsac_probe(m, cfg, data(corpus), 0, "baseline", "A")
    assert list(df.columns) == lsac_probe.CSV_COLUMNS
    change = df[df["metric"] == "rel_change_cond"]
    assert sorted(set(zip(change["layer"], change["step"]))) == [(l, i) for l in (1, 2, 3) for i in range(1, S)]
    assert (df.loc[df["metric"].str.startswith("rel_change"), "score"] > 0).all()
    # r of layer 2 at step 3 for the one audio clip, sampled alone, over its real frames
    split = sampling.split_requests(cfg, data(corpus), "test", 0,
                                    {"speech": 0, "audio": 1})
    ys = {}
    cache = StepCache(observe=lambda k, l, i, y: ys.__setitem__((k, l, i), y))
    g = sampling.guidance(cfg)                   # the probe samples as `agrepa sample` does
    noise, tokens, prompt, mask = sampling.batch_inputs(split.requests, 0, 100, g["noise_scale"])
    sampling.euler_sample(m, noise, tokens, prompt, mask, S, cfg["sample"]["cfg_scale"], cfg["sample"]["sway"],
                          g["uncond_prompt"], cache=cache)
    y, prev = ys[("attn", 2, 3)][0], ys[("attn", 2, 2)][0]      # conditional row
    want = float((y - prev).norm() / (prev.norm() + 1e-6))
    got = change[(change["domain"] == "audio") & (change["layer"] == 2) & (change["step"] == 3)]["score"]
    assert float(got.iloc[0]) == pytest.approx(want, rel=1e-4)
    freeze = df[df["metric"] == "freeze_mel_snr"]
    assert sorted(set(freeze["step"])) == [2, 4] and np.isfinite(freeze["score"]).all()


def test_freezing_restarts_exactly_from_the_full_run():
    # the probe restarts a frozen run from the full run's state x_k: bitwise the run that
    # reuses y_l^k at every step after k from the start
    m = tiny()
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(2, 15, 100, generator=g), torch.randint(1, VOCAB, (2, 5), generator=g),
              torch.zeros(2, 15, 100), torch.ones(2, 15, dtype=torch.bool))
    times = sampling.sway_schedule(S, -1.0)
    _, states, _ = lsac_probe.trace_changes(m, inputs, times, 2.0, 1e-6)
    for layer, k in ((1, 2), (3, 4)):
        short = lsac_probe.frozen_run(m, inputs, times, states, layer, k, 2.0)
        whole = sampling.euler_solve(m, inputs[0], times, *inputs[1:], 2.0,
                                     StepCache({("attn", layer): range(k + 1, S)}))
        assert torch.equal(short, whole)


def test_a_layer_whose_attention_gate_is_zero_freezes_for_free(corpus):
    m, cfg = tiny(), cfg_for()
    with torch.no_grad():
        m.blocks[1].ada[1].weight[64:96] = 0     # gate_msa of block 2
        m.blocks[1].ada[1].bias[64:96] = 0
    df = lsac_probe.lsac_probe(m, cfg, data(corpus), 0, "baseline", "A")
    f = df[df["metric"] == "freeze_mel_snr"].set_index("layer")["score"]
    assert np.isinf(f.loc[2]).all() and np.isfinite(f.loc[[1, 3]]).all()


class FakeScorer:
    """Stands in for the ASR/embedding models: 'wer' = 100 x mean |mel|, per domain."""

    def __init__(self, cfg, data, split, names):
        self.split, self.names = split, names
        FakeScorer.built = names

    def score(self, mels):
        dom = {c: self.split.rows.loc[c, "domain"] for c in self.split.targets}
        rows = []
        for d in ("speech", "audio"):
            vals = [float(x.abs().mean()) for c, x in zip(self.split.targets, mels) if dom[c] == d]
            rows.append({"domain": d, "metric": "wer", "value": 100 * float(np.mean(vals))})
        return rows, {}


def test_freeze_eval_reports_the_change_against_the_full_run(corpus, monkeypatch):
    monkeypatch.setattr(lsac_probe, "QualityScorer", FakeScorer)
    m, cfg = tiny(), cfg_for()
    cfg["lsac"]["probe"]["freeze_eval"] = True
    cfg["lsac"]["metrics"] = ["wer", "ter"]
    split = sampling.split_requests(cfg, data(corpus), "test", 0,
                                    cfg["lsac"]["probe"]["max_clips"])
    full, frozen, _ = lsac_probe.probe_runs(m, cfg, split, 0, "cpu")
    rows = lsac_probe.freeze_eval_rows(cfg, data(corpus), split, full, frozen,
                                       {"config": "A", "seed": 0, "branch": "b"}, list(range(S + 1)))
    assert FakeScorer.built == ["wer"]       # TER (it needs the tokenizers) is Table L1's only
    scorer = FakeScorer(cfg, None, split, [])
    base = {r["domain"]: r["value"] for r in scorer.score([full[c] for c in split.targets])[0]}
    one = {r["domain"]: r["value"] for r in scorer.score([frozen[(3, 4)][c] for c in split.targets])[0]}
    got = {r["domain"]: r["score"] for r in rows if r["layer"] == 3 and r["step"] == 4}
    assert got == pytest.approx({d: one[d] - base[d] for d in base})
    assert {r["metric"] for r in rows} == {"freeze_delta_wer"}


def test_experiment_rows(corpus):
    m, cfg = tiny(), cfg_for()
    plan = CachePlan("lsac_f0.25", "lsac", S, 3, {"attn": {1: [3, 4, 5], 3: [4, 5]}}, 0.25)
    var, clips = lsac_experiment.lsac_experiment(m, cfg, data(corpus),
                                                 [plan], 0, "baseline", "A")
    assert list(dict.fromkeys(clips["variant"])) == ["full", "steps_5", "steps_4", "steps_3", "lsac_f0.25"]
    full = clips[clips["variant"] == "full"]
    assert (full["mel_distortion"] == 0).all() and (full["rel_flops"] == 1).all()
    s4 = clips[clips["variant"] == "steps_4"]
    assert np.allclose(s4["rel_flops"], 4 / 6) and (s4["mel_distortion"] > 0).all()
    cached = clips[clips["variant"] == "lsac_f0.25"].iloc[0]
    n_tokens = {r.id: r.tokens.shape[0] for r in sampling.split_requests(cfg, data(corpus), "test", 0).requests}
    want = sampling_flops(Dims.of(m), int(cached["frames"]), S, True, plan.cells(), n_tokens[cached["id"]])
    assert cached["gflops"] == pytest.approx(want["total"] / 1e9)
    assert cached["attention_savings"] == pytest.approx(5 / 18)
    assert set(var["metric"]) == {"wall_s_per_clip", "cpu_s_per_clip"} and (var["value"] > 0).all()


def test_ter_of_a_variant_pools_token_edits_over_clips(corpus, monkeypatch):
    # QualityScorer's TER: the clip's conditioning tokens against its vocoded output re-tokenised
    # (here every clip re-tokenises as [0, 1, 2]; odd clips were conditioned on [0, 1, 2, 3]: 1 edit)
    cfg = cfg_for()
    split = sampling.split_requests(cfg, data(corpus), "test", 0)
    with pytest.raises(ValueError, match="ter: give the fitted tokenizers"):
        quality.QualityScorer(cfg, data(corpus), split, ["ter"])

    class Retokenise:
        def streams(self, wave, sample_rate, domain):
            assert wave.ndim == 1 and sample_rate == cfg["audio"]["sample_rate"]
            return {"primary": np.array([0, 1, 2])}

        def describe(self):
            return "toy"

    ref = {c: {"primary": np.arange(3 + i % 2)} for i, c in enumerate(split.targets)}
    monkeypatch.setattr(quality, "_conditioning_tokens", lambda *args: (Retokenise(), ref))
    scorer = quality.QualityScorer(cfg, data(corpus), split, ["ter"], {"speech": "s", "audio": "a"})
    n_mels = cfg["audio"]["n_mels"]
    rows, per_clip = scorer.score([torch.zeros(r.n_frames, n_mels) for r in split.requests])
    for row in rows:
        ids = [c for c in split.targets if split.rows.loc[c, "domain"] == row["domain"]]
        edits = sum(len(ref[c]["primary"]) - 3 for c in ids)
        assert row["metric"] == "ter" and row["value"] == pytest.approx(edits / sum(len(ref[c]["primary"]) for c in ids))
        assert [per_clip[c]["ter_edits"] for c in ids] == [len(ref[c]["primary"]) - 3 for c in ids]
    assert {r["domain"] for r in rows} == {"speech", "audio"}


def synthetic_run(branch="baseline"):
    """Two identical clips: steps at rel FLOPs 1, 0.875, 0.75 lose 0, 0.08, 0.2; LSAC at 0.9 loses 0.001."""
    rows, var = [], []
    spec = [("full", "full", 8, 1.0, 0.0), ("steps_7", "steps", 7, 0.875, 0.08), ("steps_6", "steps", 6, 0.75, 0.2),
            ("lsac_f0.25", "lsac", 8, 0.9, 0.001)]
    for name, strategy, steps, rel, d in spec:
        base = dict(config="A", seed=0, branch=branch, variant=name, strategy=strategy,
                    budget=0.25 if strategy == "lsac" else np.nan, steps=steps,
                    attention_savings=0.25 if strategy == "lsac" else 0.0)
        for cid in ("c0", "c1"):
            rows.append(dict(base, id=cid, domain="speech", frames=50, gflops=rel, attn_gflops=rel / 2,
                             rel_flops=rel, mel_distortion=d, mel_snr_db=-10 * math.log10(d) if d else math.inf,
                             wer_errors=np.nan, wer_words=np.nan))
        var.append(dict(base, domain="all", metric="wall_s_per_clip", value=rel, ci_low=None, ci_high=None, n=2,
                        model="time.perf_counter"))
        var.append(dict(base, domain="all", metric="cpu_s_per_clip", value=rel, ci_low=None, ci_high=None, n=2,
                        model="time.process_time"))
        var.append(dict(base, domain="speech", metric="wer", value=50.0 + (1 - rel) * 10, ci_low=40.0, ci_high=60.0,
                        n=2, model="asr"))
    return pd.DataFrame(var), pd.DataFrame(rows)


def test_table_l1_retention_advantage_at_equal_flops(tmp_path):
    var, clips = synthetic_run()
    t = lsac_report.table_l1(var, clips, config.load(DEFAULT_CONFIG)).set_index("variant")
    # step reduction at rel FLOPs 0.9: 0.08 * (1 - 0.9) / (1 - 0.875) = 0.064; LSAC loses 0.001
    assert t.loc["lsac_f0.25", "retention_adv"] == pytest.approx(64.0)
    assert t.loc["lsac_f0.25", "mel_snr_db"] == pytest.approx(30.0)
    assert t.loc["lsac_f0.25", "flops_saved_pct"] == pytest.approx(10.0)
    assert t.loc["lsac_f0.25", "wall_saved_pct"] == pytest.approx(10.0)
    assert t.loc["lsac_f0.25", "delta_wer_speech"] == pytest.approx(1.0)
    assert np.isnan(t.loc["steps_7", "retention_adv"]) and np.isinf(t.loc["full", "mel_snr_db"])
    cfg = config.load(DEFAULT_CONFIG)
    lsac_figures.figure_l2(t.reset_index(), cfg, "A", tmp_path / "l2.png")
    assert (tmp_path / "l2.png").stat().st_size > 0


def test_probe_figure(tmp_path, corpus):
    df = lsac_probe.lsac_probe(tiny(), cfg_for(), data(corpus), 0,
                               "baseline", "A")
    foga = pd.DataFrame([{"config": "A", "seed": 0, "domain": d, "probe": "foga", "layer": l, "t": t,
                          "score": l * t, "spread": np.nan, "n": 4}
                         for d in ("speech", "audio") for l in (1, 2, 3) for t in (0.25, 0.75)])
    lsac_figures.probe_figure(df, foga, config.load(DEFAULT_CONFIG), "A", tmp_path / "probe.png")
    assert (tmp_path / "probe.png").stat().st_size > 0
