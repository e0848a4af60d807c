"""The fast training step (issue 24, item 1) against the step before it (``StepOptions.legacy()``),
on the CPU in fp32: the same loss terms and gradients, padded and unpadded batches, every kind of
method (baseline, fixed-layer REPA, AG-REPA, RR). Tolerance: 1e-6 relative (the only arithmetic
difference is attention without a mask on an unpadded batch; every other option changes where
values live, not what is computed, so those are compared bitwise)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agrepa.probing.selection import select
from agrepa.training import similarity, train
from agrepa.training.objectives import method_config
from test_dataset import data_paths, make_corpus, tiny_cfg
from test_protocol import _setup, synthetic_probes

METHODS = ["baseline", "repa_l2", "ag_repa", "rr_max"]
RTOL, ATOL = 1e-6, 1e-7


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("step")
    cfg, _ = tiny_cfg(tmp, {"methods": {"rr_max": {"layers": [], "train": {"cfg_mode": "batch"},
                                                   "rr": {"pool": "max", "when": "always"}}}})
    paths = make_corpus(tmp / "data")
    final = train.run(cfg, phase="warmup", out=tmp / "warm", seed=0, steps=2, data=data_paths(paths))
    sel = tmp / "ag_repa.json"
    sel.write_text(json.dumps(select(synthetic_probes(2), "foga", 1, 0)))
    return cfg, paths, final, sel


def _state(warm, method, opts):
    base, paths, final, sel = warm
    cfg = method_config(base, method)
    loop, clips, state = _setup(cfg, paths, "branch", final, method, sel if method == "ag_repa" else None)
    loop.opts = opts
    init_ck = train.read_init(Path(final), clips)
    loop.rr = similarity.build(cfg, method, state.model, init_ck, clips.token_store.meta, clips.token_store.dir)
    return loop, clips, state


def _padded(batch: dict, pad: bool) -> dict:
    """The batch cut to its shortest clip (no padding), and with ``pad`` every clip but the first
    six frames shorter (padded as the collate pads)."""
    T = int(batch["mask"].sum(1).min())
    out = {k: batch[k][:, :T].clone() for k in ("mel", "mask", "prompt", "prompt_mask")}
    if pad:
        for k in out:
            out[k][1:, T - 6:] = 0
    return {**batch, **out, "padded": pad}


def _step(warm, method, opts, pad: bool):
    loop, clips, state = _state(warm, method, opts)
    draw = loop.draw(3)
    batch = clips.collate([0, 1, 6, 7], draw.crop[:4], draw.prompt[:4])
    batch = _padded(batch, pad)
    assert bool(batch["mask"].all()) != pad
    assert train.padded(loop, batch) == (pad if opts.dense_attention else None)
    meter = train.Meter()
    loss, terms = train.losses(loop, state.model, state, batch, draw)
    grad_norm, _ = train.optimise(loop, state, loss)
    meter.add({**terms, "grad_norm": grad_norm}, 0 if opts.deferred_metrics else None)
    meter.check_finite(Path("/nonexistent"))
    grads = {n: p.grad.clone() for m in state.modules() for n, p in m.named_parameters()}
    weights = {n: p.detach().clone() for m in state.modules() for n, p in m.named_parameters()}
    return meter.means(), grads, weights


@pytest.mark.parametrize("pad", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("method", METHODS)
def test_new_step_equals_the_legacy_step_on_the_cpu(warm, method, pad):
    new_m, new_g, new_w = _step(warm, method, train.StepOptions(), pad)
    old_m, old_g, old_w = _step(warm, method, train.StepOptions.legacy(), pad)
    assert new_m.keys() == old_m.keys() and ("rr" in new_m) == (method == "rr_max")
    assert ("repa" in new_m) and (new_m["repa"] > 0) == (method in ("repa_l2", "ag_repa"))
    if pad:   # the same computation: bitwise
        assert new_m == old_m
        assert all(torch.equal(new_g[k], old_g[k]) for k in old_g)
        assert all(torch.equal(new_w[k], old_w[k]) for k in old_w)
    else:     # attention without a mask: fp32 rounding only
        for k in old_m:
            assert new_m[k] == pytest.approx(old_m[k], rel=RTOL, abs=ATOL), k
        for k in old_g:
            torch.testing.assert_close(new_g[k], old_g[k], rtol=RTOL, atol=ATOL, msg=k)


def test_no_attention_mask_on_an_unpadded_batch_same_output():
    from agrepa.model.dit import DiT
    torch.manual_seed(0)
    m = DiT(n_layers=2, dim=32, n_heads=2, n_mels=8, vocab_size=16).eval()
    for p in m.parameters():      # adaLN-Zero starts as the identity: give the blocks something to do
        torch.nn.init.normal_(p, std=0.2)
    B, T = 3, 20
    x, t, prompt = torch.randn(B, T, 8), torch.rand(B), torch.randn(B, T, 8)
    tokens, mask = torch.randint(1, 16, (B, 5)), torch.ones(B, T, dtype=torch.bool)
    _, ctx = m.prepare(x, t, tokens, prompt, mask, padded=False)
    assert ctx.attn_mask is None and ctx.mask is mask
    assert m.prepare(x, t, tokens, prompt, mask)[1].attn_mask is not None
    v_mask, h_mask = m(x, t, tokens, prompt, mask=mask, return_hidden=True)
    v, h = m(x, t, tokens, prompt, mask=mask, return_hidden=True, padded=False)
    torch.testing.assert_close(v, v_mask, rtol=1e-6, atol=1e-6)
    for a, b in zip(h, h_mask):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_meter_means_are_bitwise_the_host_means():
    g = torch.Generator().manual_seed(0)
    host, dev = train.Meter(), train.Meter()
    for step in range(7):
        v = {"loss": torch.rand((), generator=g) * 3, "fm": torch.rand((), generator=g)}
        if step % 2:
            v["rr"] = torch.rand((), generator=g)
        host.add({k: float(x) for k, x in v.items()})
        dev.add(v, step)
    assert host.means() == dev.means()
    dev.check_finite(Path("/x"))
    dev.add({"loss": torch.tensor(1.0), "fm": torch.tensor(float("inf"))}, 7)
    with pytest.raises(train.NonFiniteLoss, match=r"step 8: loss term 'fm' is inf"):
        dev.check_finite(Path("/x"))


def test_host_draws_unchanged_and_device_noise_leaves_the_host_stream():
    cfg, _ = tiny_cfg(Path("/tmp"))
    a = train.draw_step(cfg, 0, "train", 5, 4)
    b = train.draw_step(cfg, 0, "train", 5, 4, host_noise=False)
    assert b.x0 is None and b.noise_seed is not None
    for k in ("crop", "prompt", "t", "drop_prompt"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    x0 = train.noise(cfg, b, 4, torch.device("cpu"))
    assert x0.shape == a.x0.shape and torch.equal(x0, train.noise(cfg, b, 4, torch.device("cpu")))


def test_compiled_dit_equals_eager_without_graph_breaks():
    """torch.compile traces the DiT's forward and backward as one graph each (fullgraph: a graph
    break is an error), padded and unpadded, and gives eager's outputs and gradients. The backend
    is aot_eager: Dynamo and AOTAutograd trace exactly what inductor would compile, without its
    C++ code generation (~60 s on the CPU here, which is the library's part, not ours)."""
    from agrepa.model.dit import DiT
    torch.manual_seed(0)
    m = DiT(n_layers=2, dim=32, n_heads=2, n_mels=8, vocab_size=16)
    B, T = 2, 16
    args = (torch.randn(B, T, 8), torch.rand(B), torch.randint(1, 16, (B, 4)), torch.randn(B, T, 8))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 12:] = False
    torch._dynamo.reset()
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    for padded in (False, True):
        grads = []
        for fn in (compiled, m):
            m.zero_grad()
            v, h = fn(*args, mask=mask, return_hidden=True, padded=padded)
            (v.square().mean() + sum(x.square().mean() for x in h)).backward()
            grads.append((v.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None]))
        (v, g), (v_ref, g_ref) = grads
        torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=1e-5)
        assert len(g) == len(g_ref) > 0
        for a, b in zip(g, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
