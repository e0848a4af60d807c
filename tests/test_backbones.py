"""Every backbone behind the shared gated-unit interface (issue 14's must-show points).

For each architecture (DiT, Voicebox-, CosyVoice-, F5-style): all-ones gates equal no
gates bitwise; g_l = 0 removes exactly unit l's update (h_l = transition_l(h_{l-1}));
per-sample gates; efficient FoG-A equals the naive loop of gated forwards with padding;
a training step and a bitwise resume; sampling with CFG; the probes on CPU; the
parameter counts at paper size against the references.
"""
from __future__ import annotations

import importlib.util
import math
import shutil
import sys

import pytest
import torch

from agrepa import config as config_mod
from agrepa.generation import sampling
from agrepa.model import ARCHS, build_model, frame_mask, recipe
from agrepa.model.backbone import Stream
from agrepa.probing.foga import foga, foga_naive, foga_per_sample
from agrepa.probing.probes import bitc_scorer, run_probes
from agrepa.training import train
from agrepa.training.checkpoint import load_run
from agrepa.training.objectives import BiTCHeads
from test_dataset import N_MELS, VOCAB, data_paths, make_corpus, tiny_cfg
from test_workflow_support import DEFAULT_CONFIG, REPO

torch.set_num_threads(1)

TINY_ARCH = {
    "dit": {"n_layers": 4, "dim": 32, "n_heads": 2, "ff_mult": 2, "dropout": 0.1},
    "voicebox": {"n_layers": 4, "dim": 32, "n_heads": 2, "ff_mult": 2, "dropout": 0.1},
    "cosyvoice": {"channels": [16, 24], "n_blocks": 1, "n_mid": 1, "n_heads": 2, "head_dim": 8, "ff_mult": 2,
                  "dropout": 0.1, "enc_layers": 1, "enc_dim": 16, "enc_heads": 2, "enc_ff_mult": 2},
    "f5": {"n_layers": 3, "conv_layers": 2, "dim": 32, "n_heads": 2, "ff_mult": 2, "text_dim": 16},
}
# units worth ablating: the first, one after a structural transition, the last
PROBE_UNITS = {"dit": [1, 3, 4], "voicebox": [1, 3, 4], "cosyvoice": [1, 3, 7, 9, 10], "f5": [1, 2, 3, 5]}


def arch_overlay(arch: str) -> dict:
    sizes = TINY_ARCH[arch]
    return {"model": {"arch": arch, **(sizes if arch == "dit" else {arch: sizes})}}


def arch_cfg(tmp_path, arch: str, extra: dict | None = None) -> tuple[dict, object]:
    return tiny_cfg(tmp_path, config_mod.deep_merge(arch_overlay(arch), extra or {}))


def make_model(arch: str, seed: int = 0):
    """A tiny backbone of ``arch`` from the config, every weight perturbed (adaLN-Zero and the
    zero-initialised output layers would otherwise make units identities)."""
    cfg = config_mod.load([DEFAULT_CONFIG])
    cfg = config_mod.deep_merge(cfg, {**arch_overlay(arch), "audio": {"n_mels": N_MELS}})
    torch.manual_seed(seed)
    m = build_model(cfg, VOCAB)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def make_inputs(B=4, T=19, N=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(B, T, N_MELS, generator=g)
    t = torch.rand(B, generator=g)
    lengths = torch.tensor([T, T - 6, 9, T - 2][:B])
    mask = torch.arange(T)[None] < lengths[:, None]
    tokens = torch.randint(1, VOCAB, (B, N), generator=g)
    tokens[1, 5:] = 0
    tokens[2, 3:] = 0
    prompt = torch.randn(B, T, N_MELS, generator=g) * (torch.arange(T)[None, :, None] < 4)
    return x_t, t, tokens, prompt, mask


def states(m, inputs, gates=None):
    """Every stream state_0..state_L of a (gated) forward, by stepping the interface."""
    state, ctx = m.prepare(*inputs)
    out = [state]
    for l in range(1, m.n_layers + 1):
        state = m.step(l, state, ctx, None if gates is None else gates[:, l - 1])
        out.append(state)
    return out, ctx


def same_stream(a: Stream, b: Stream) -> bool:
    return torch.equal(a.h, b.h) and len(a.skips) == len(b.skips) and all(
        torch.equal(x, y) for x, y in zip(a.skips, b.skips))


@pytest.mark.parametrize("arch", ARCHS)
def test_all_ones_gates_equal_no_gates_bitwise(arch):
    m = make_model(arch)
    x, t, tokens, prompt, mask = make_inputs()
    L = m.n_layers
    with torch.no_grad():
        v0, h0 = m(x, t, tokens, prompt, mask, return_hidden=True)
        v1, h1 = m(x, t, tokens, prompt, mask, gates=torch.ones(L), return_hidden=True)
        v2 = m(x, t, tokens, prompt, mask, gates=torch.ones(4, L))
    assert torch.equal(v0, v1) and torch.equal(v0, v2)
    assert len(h0) == L + 1 and all(torch.equal(a, b) for a, b in zip(h0, h1))
    with pytest.raises(ValueError, match="gates"):
        m(x, t, tokens, prompt, mask, gates=torch.ones(L + 1))


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_gate_removes_exactly_the_units_update(arch):
    m = make_model(arch)
    inputs = make_inputs()
    B, L = inputs[0].shape[0], m.n_layers
    with torch.no_grad():
        clean, ctx = states(m, inputs)
        v_clean = m.output(clean[-1], ctx)
        for l in PROBE_UNITS[arch]:
            gates = torch.ones(B, L)
            gates[:, l - 1] = 0
            gated, _ = states(m, inputs, gates)
            base = m.transition(l, clean[l - 1], ctx)
            assert all(same_stream(a, b) for a, b in zip(gated[:l], clean[:l]))        # before l: untouched
            assert same_stream(gated[l], base)                  # h_l = transition_l(h_{l-1}), nothing of u_l
            u = m.update(l, base, ctx)
            assert torch.equal(clean[l].h, base.h + u) and float(u.abs().max()) > 0   # the update that went
            v = m(*inputs, gates=gates[0])
            assert torch.equal(v, m.output(gated[-1], ctx)) and not torch.allclose(v, v_clean)


@pytest.mark.parametrize("arch", ARCHS)
def test_per_sample_gates(arch):
    m = make_model(arch)
    x, t, tokens, prompt, mask = make_inputs()
    L, l = m.n_layers, PROBE_UNITS[arch][1]
    gates = torch.ones(4, L)
    gates[1, l - 1] = 0
    g1 = torch.ones(L)
    g1[l - 1] = 0
    with torch.no_grad():
        v = m(x, t, tokens, prompt, mask, gates=gates)
        v_all = m(x, t, tokens, prompt, mask)
        v_abl = m(x, t, tokens, prompt, mask, gates=g1)
    for i in (0, 2, 3):
        assert torch.equal(v[i], v_all[i])
    assert torch.allclose(v[1], v_abl[1], atol=1e-6) and not torch.allclose(v[1], v_all[1])


@pytest.mark.parametrize("arch", ARCHS)
def test_efficient_foga_equals_naive_loop_with_padding(arch):
    m = make_model(arch)
    x, t, tokens, prompt, mask = make_inputs()
    fast = foga(m, x, t, tokens, prompt, mask)
    slow = foga_naive(m, x, t, tokens, prompt, mask)
    assert fast.shape == (m.n_layers,) and bool((fast > 1e-4).all())
    assert torch.allclose(fast, slow, atol=1e-5, rtol=0), (fast, slow)
    assert torch.allclose(foga(m, x, t, tokens, prompt, mask, max_streams=3), fast, atol=1e-6, rtol=0)
    x2 = x.clone()
    x2[~mask] = 1e3                                             # garbage in the padded frames
    assert torch.allclose(foga(m, x2, t, tokens, prompt, mask), fast, atol=1e-5, rtol=0)
    scores, hidden = foga_per_sample(m, x, t, tokens, prompt, mask, return_hidden=True)
    with torch.no_grad():
        _, ref = m(x, t, tokens, prompt, mask, return_hidden=True)
    assert all(torch.equal(a, b) for a, b in zip(hidden, ref))


@pytest.mark.parametrize("arch", ARCHS)
def test_hidden_states_widths_rates_and_masks(arch):
    m = make_model(arch)
    x, t, tokens, prompt, mask = make_inputs()
    assert len(m.unit_names) == m.n_layers == len(m.unit_modules())
    with torch.no_grad():
        all_states, ctx = states(m, (x, t, tokens, prompt, mask))
        for l, s in enumerate(all_states):
            h, hm = m.probe_hidden(l, s, ctx)
            assert h.shape[0] == 4 and h.shape[-1] == m.hidden_dims[l]
            assert torch.equal(hm, frame_mask(mask, h.shape[1]))


def _run(cfg, paths, **kw):
    return train.run(cfg, data=data_paths(paths), **kw)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_training_steps_and_bitwise_resume(arch, tmp_path):
    """Warm-up (FM + BiT-C on the token embedding), then an AG-REPA branch with heads on units
    of different widths/rates; a run resumed from its step-4 checkpoint ends bitwise equal."""
    cfg, _ = arch_cfg(tmp_path, arch, {"train": {"snapshot_fractions": [4 / 6], "checkpoint_every": 4}})
    paths = make_corpus(tmp_path / "data", n_speech=4, n_audio=4)
    warm = _run(cfg, paths, phase="warmup", out=tmp_path / "warm", seed=1, steps=3)
    model = build_model(cfg, VOCAB)
    layers = [1, model.n_layers // 2 + 1, model.n_layers]
    selection = tmp_path / "sel.json"
    selection.write_text('{"strategy": "foga", "mode": "merged", "sets": {"merged": '
                         '{"layers": %s, "weights": [0.5, 0.3, 0.2]}}}' % layers)
    kw = dict(phase="branch", method="ag_repa", init=warm, selection=selection, seed=1, steps=6)
    ref = _load(_run(cfg, paths, out=tmp_path / "ref", **kw))
    widths = {l: ref["repa"][f"heads.{l}.semantic.0.weight"].shape[1] for l in layers}
    assert widths == {l: model.hidden_dims[l] for l in layers}
    metrics = train.pd.read_csv(tmp_path / "ref" / "metrics.csv")
    assert metrics[["loss", "fm", "bitc", "repa"]].notna().all().all()
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(tmp_path / "ref" / "last.pt", resumed / "last.pt")        # the full state of step 4
    again = _load(_run(cfg, paths, out=resumed, **kw))
    for key in ("model", "ema", "bitc", "repa", "optimizer", "step"):
        assert train_equal(ref[key], again[key]), key
    run = load_run(tmp_path / "ref" / "final.pt")
    assert run.model.arch == arch and run.cfg["model"]["arch"] == arch


def train_equal(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(train_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(train_equal(x, y) for x, y in zip(a, b))
    return a == b


def _requests(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [sampling.make_request(f"c{i}", torch.randn(30 + 5 * i, N_MELS, generator=g),
                                  torch.randint(1, VOCAB, (8,), generator=g),
                                  torch.randint(1, VOCAB, (6 + i,), generator=g), 20 + 3 * i, 10) for i in range(n)]


@pytest.mark.parametrize("arch", ARCHS)
def test_sampling_with_the_recipes_cfg(arch):
    cfg = config_mod.deep_merge(config_mod.load([DEFAULT_CONFIG]), arch_overlay(arch))
    settings = sampling.sampler_settings({**cfg, "sample": {**cfg["sample"], "steps": 3}})
    r = recipe(cfg)
    assert settings["formula"] == r.cfg_formula and settings["schedule"] == r.t_schedule and r.cfg_scale
    m, reqs = make_model(arch), _requests()
    a = sampling.generate(m, reqs, seed=2, progress=False, **settings)
    b = sampling.generate(m, reqs, seed=2, progress=False, **settings)
    single = sampling.generate(m, reqs, seed=2, progress=False, batch_size=1, **settings)
    unguided = sampling.generate(m, reqs, seed=2, progress=False, **{**settings, "cfg_scale": None})
    assert [x.shape for x in a] == [(20, N_MELS), (23, N_MELS), (26, N_MELS)]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and all(bool(torch.isfinite(x).all()) for x in a)
    assert all(torch.allclose(x, y, atol=1e-4) for x, y in zip(a, single))     # batching does not leak
    assert all((x - y).abs().max() > 1e-3 for x, y in zip(a, unguided))       # guidance acts


def test_cfg_formulas_and_cosine_schedule():
    class Fixed(torch.nn.Module):      # v = 1 with conditioning, 3 without
        def forward(self, x, t, tokens, prompt, mask, drop_tokens=None, drop_prompt=None, cache=None):
            return torch.where(drop_tokens[:, None, None], 3.0, 1.0).expand_as(x).clone()
    x = torch.zeros(2, 3, 4)
    args = (Fixed(), x, torch.zeros(2), torch.ones(2, 2, dtype=torch.long), x, None, 0.5)
    assert torch.allclose(sampling.guided_velocity(*args, formula="uncond"), torch.full_like(x, 3 + 0.5 * -2))
    assert torch.allclose(sampling.guided_velocity(*args, formula="cond"), torch.full_like(x, 1 + 0.5 * -2))
    t = sampling.time_grid(4, "cosine")
    assert torch.allclose(t, 1 - torch.cos(torch.linspace(0, 1, 5) * math.pi / 2), atol=1e-7)


@pytest.mark.parametrize("arch", ARCHS)
def test_probes_run_on_cpu(arch):
    m = make_model(arch)
    torch.manual_seed(3)
    heads = BiTCHeads(m.token_dim, {"semantic": 6, "acoustic": 5}).eval()
    x, _, tokens, prompt, mask = make_inputs()
    g = torch.Generator().manual_seed(9)
    batch = {"mel": x, "mask": mask, "tokens": tokens, "prompt": prompt, "prompt_mask": mask & (prompt != 0).any(-1),
             "domain": torch.zeros(4, dtype=torch.long), "emb_semantic": torch.randn(4, 6, generator=g)}
    scorers = {"speech": lambda b: bitc_scorer(heads, "speech", b["emb_semantic"])}
    df = run_probes(m, {"speech": [batch]}, [0.3, 0.8], noise_seed=0, scorers=scorers,
                    loss_on_prompt=False)
    L = m.n_layers
    foga_rows, gn = df[df.probe == "foga"], df[df.probe == "gradnorm"]
    assert len(foga_rows) == 2 * L and (foga_rows.score > 0).all() and len(gn) == L and (gn.score > 0).all()
    lasp = df[(df.probe == "lasp") & (df.t == 0.3)].set_index("layer")["score"]
    assert math.isfinite(lasp[0])          # layer 0: the token embedding the heads are trained on
    for l in range(1, L + 1):   # the shared head scores every layer of the token embedding's width, no other
        assert math.isfinite(lasp[l]) == (m.hidden_dims[l] == m.token_dim), l


def test_draws_follow_the_recipe_and_the_dit_draws_are_unchanged():
    cfg = config_mod.load([DEFAULT_CONFIG])
    G = 4000
    d = train.draw_step(cfg, 0, "warmup", 7, G)
    g = train.generator(0, "warmup", "batch", 7)
    for name in ("crop", "prompt", "t"):
        assert torch.equal(getattr(d, name), torch.rand(G, generator=g))
    assert torch.equal(d.drop_tokens, torch.rand(G, generator=g) < 0.1)      # the DiT's draw sequence
    assert torch.equal(d.drop_prompt, torch.rand(G, generator=g) < 0.1)
    assert torch.equal(d.x0, torch.randn(G, d.x0.shape[1], d.x0.shape[2], generator=g))
    cosy = train.draw_step(config_mod.deep_merge(cfg, {"model": {"arch": "cosyvoice"}}), 0, "warmup", 7, G)
    assert torch.equal(cosy.drop_tokens, cosy.drop_prompt) and abs(float(cosy.drop_tokens.float().mean()) - 0.2) < 0.03
    f5 = train.draw_step(config_mod.deep_merge(cfg, {"model": {"arch": "f5"}}), 0, "warmup", 7, G)
    assert bool((f5.drop_prompt | ~f5.drop_tokens).all())              # text dropped only with the prompt
    assert abs(float(f5.drop_prompt.float().mean()) - (0.2 + 0.8 * 0.3)) < 0.03
    cos_t = train.draw_step(config_mod.deep_merge(cfg, {"model": {"dit": {"t_train": "cosine"}}}), 0, "warmup", 7, G)
    assert torch.allclose(cos_t.t, 1 - torch.cos(d.t * math.pi / 2))
    with pytest.raises(ValueError, match="model.arch"):
        recipe(config_mod.deep_merge(cfg, {"model": {"arch": "unet"}}))


def _bench():
    spec = importlib.util.spec_from_file_location("bench_backbones", REPO / "benchmarks" / "bench_backbones.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod                           # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("arch", ["voicebox", "cosyvoice", "f5"])
def test_paper_size_parameter_counts_within_ten_percent_of_the_references(arch):
    bench = _bench()
    ours = bench.count_params(arch)                     # built on the meta device from config/paper.yaml
    ref = bench.REFERENCE_PARAMS[arch]
    assert abs(ours - ref.total) / ref.total < 0.10, (arch, ours, ref)


def test_report_unit_names_match_the_models():
    from agrepa.reports.table4 import unit_names

    for arch in ARCHS:
        cfg = config_mod.deep_merge(config_mod.load([DEFAULT_CONFIG]), arch_overlay(arch))
        assert unit_names(cfg, arch) == make_model(arch).unit_names, arch


@pytest.mark.parametrize("arch", ["voicebox", "cosyvoice", "f5"])
def test_config_b_token_pairs_and_no_step_cache(arch):
    """Every backbone's token front end is the shared TokenEmbedding (Config B pairs fused per
    position); the step cache of layer-selective caching is the DiT's only."""
    from agrepa.model.cache import StepCache

    cfg = config_mod.deep_merge(config_mod.load([DEFAULT_CONFIG]), {**arch_overlay(arch), "audio": {"n_mels": N_MELS}})
    torch.manual_seed(0)
    m = build_model(cfg, 30, {"paired": True, "audio_offset": 12}).eval()
    x, t, _, prompt, mask = make_inputs()
    pairs = torch.randint(1, 12, (4, 7, 2))
    pairs[:, :, 1] += 18                                   # BEATs ids
    with torch.no_grad():
        v = m(x, t, pairs, prompt, mask)
        assert v.shape == x.shape and bool(torch.isfinite(v).all())
        e = m.embed_tokens(pairs, mask, x.shape[1])
        assert e.shape == (4, x.shape[1], m.token_dim)
        assert not torch.allclose(m.embed_tokens(pairs.flip(1), mask, x.shape[1]), e)   # the token order matters
    with pytest.raises(ValueError, match=r"\[B, N, 2\]"):
        m(x, t, pairs[..., 0], prompt, mask)
    with pytest.raises(ValueError, match="DiT only"):
        m(x, t, pairs, prompt, mask, cache=StepCache())
