"""The step cache in the DiT block and the sampler (issue 16): exactness of the reuse path,
batch invariance, CFG halves, and FLOPs (analytic = torch's FLOP counter, cached = analytic
minus the plan's savings)."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from agrepa.generation import sampling
from agrepa.caching.plan import CachePlan
from agrepa.caching.flops import Dims, attention_flops, forward_flops, mlp_flops, sampling_flops
from agrepa.model.cache import StepCache
from agrepa.model.dit import DiT

L, S, M = 4, 6, 8


def model(seed=0):
    torch.manual_seed(seed)
    m = DiT(n_layers=L, dim=32, n_heads=2, n_mels=M, vocab_size=30, ff_mult=2)
    with torch.no_grad():  # adaLN-Zero starts as the identity: randomise so every block acts
        for p in m.parameters():
            p.normal_(0, 0.1)
    return m.eval()


def inputs(B=3, T=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(B, T, M, generator=g)
    tokens = torch.randint(1, 30, (B, 7), generator=g)
    tokens[0, 5:] = 0
    prompt = torch.randn(B, T, M, generator=g)
    prompt[:, 6:] = 0
    mask = torch.ones(B, T, dtype=torch.bool)
    if B > 1:
        mask[1, 14:] = False
    return noise, tokens, prompt, mask


@torch.no_grad()
def todays_sampler(m, noise, tokens, prompt, mask, steps, cfg_scale, sway, uncond_prompt="drop"):
    """The Euler + sway + stacked-CFG loop as it was before the cache existed."""
    times = sampling.sway_schedule(steps, sway)
    x, B = noise, noise.shape[0]
    for i in range(steps):
        t = times[i].expand(B)
        drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)])
        drop_prompt = drop if uncond_prompt == "drop" else torch.zeros_like(drop)
        v = m(torch.cat([x, x]), torch.cat([t, t]), torch.cat([tokens, tokens]), torch.cat([prompt, prompt]),
              torch.cat([mask, mask]), drop_tokens=drop, drop_prompt=drop_prompt)
        v = v[B:] + cfg_scale * (v[:B] - v[B:])
        x = x + (times[i + 1] - times[i]) * v
    return x


def every_key():
    return [(k, l) for k in ("attn", "mlp") for l in range(1, L + 1)]


@pytest.mark.parametrize("uncond_prompt", ["drop", "keep"])
def test_no_plan_is_todays_sampler_bitwise(uncond_prompt):
    m, args = model(), inputs()
    ref = todays_sampler(m, *args, S, 2.0, -1.0, uncond_prompt)
    assert torch.equal(sampling.euler_sample(m, *args, S, 2.0, -1.0, uncond_prompt), ref)
    assert torch.equal(sampling.euler_sample(m, *args, S, 2.0, -1.0, uncond_prompt, cache=StepCache()), ref)
    other = "keep" if uncond_prompt == "drop" else "drop"       # the reference can tell the two apart
    assert not torch.equal(todays_sampler(m, *args, S, 2.0, -1.0, other), ref)


def test_a_plan_that_stores_but_never_reuses_is_bitwise_equal():
    m, args = model(), inputs()
    cache = StepCache(keep=every_key())
    out = sampling.euler_sample(m, *args, S, 2.0, -1.0, cache=cache)
    assert torch.equal(out, todays_sampler(m, *args, S, 2.0, -1.0))
    assert set(cache.stored) == set(every_key())


def test_reuse_on_a_duplicated_time_step_is_exact():
    # t_2 = t_1 and dt = 0, so step 2 sees the same x and t as step 1: reusing every
    # attention and MLP output of step 1 must give the bits that computing them gives.
    m, args = model(), inputs()
    times = torch.tensor([0.0, 0.3, 0.3, 0.7, 1.0])
    computed = []
    cache = StepCache({key: [2] for key in every_key()}, observe=lambda k, l, i, y: computed.append(i))
    out = sampling.euler_solve(m, args[0], times, *args[1:], 2.0, cache)
    assert torch.equal(out, sampling.euler_solve(m, args[0], times, *args[1:], 2.0))
    assert 2 not in computed and computed.count(1) == 2 * L        # step 2 really reused everything
    # the same reuse at a step whose input changed is not exact: the test can fail
    moved = torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0])
    cache = StepCache({key: [2] for key in every_key()})
    assert not torch.equal(sampling.euler_solve(m, args[0], moved, *args[1:], 2.0, cache),
                           sampling.euler_solve(m, args[0], moved, *args[1:], 2.0))


def test_reuse_multiplies_the_stored_output_by_the_current_gate():
    # zero attention gates (adaLN-Zero init) make y_l irrelevant: reusing a wrong y changes nothing
    m, args = model(), inputs()
    with torch.no_grad():
        for b in m.blocks:
            b.ada[1].weight[2 * 32:3 * 32] = 0      # gate_msa rows
            b.ada[1].bias[2 * 32:3 * 32] = 0
    cache = StepCache({("attn", l): range(1, S) for l in range(1, L + 1)})
    assert torch.equal(sampling.euler_sample(m, *args, S, 2.0, -1.0, cache=cache),
                       sampling.euler_sample(m, *args, S, 2.0, -1.0))


def test_reuse_before_any_compute_is_an_error():
    cache = StepCache({("attn", 1): [0]})
    with pytest.raises(RuntimeError, match="no stored attn output of layer 1"):
        sampling.euler_sample(model(), *inputs(), S, 2.0, -1.0, cache=cache)
    with pytest.raises(ValueError, match="kind"):
        StepCache({("ffn", 1): [1]})


def plan(**reuse):
    return CachePlan("p", "lsac", S, L, reuse)


PLAN = dict(attn={1: [3, 4, 5], 3: [2, 4]}, mlp={2: [5]})


def test_batch_invariance_with_the_cache():
    m = model()
    g = torch.Generator().manual_seed(1)
    reqs = [sampling.make_request(f"c{i}", torch.randn(12 + 3 * i, M, generator=g),
                                  torch.randint(1, 30, (6,), generator=g), torch.randint(1, 30, (5 + i,), generator=g),
                                  14 + 4 * i, 6) for i in range(3)]
    p = plan(**PLAN)
    alone = sampling.generate(m, reqs, S, 2.0, -1.0, seed=0, batch_size=1, progress=False, new_cache=p.new_cache)
    padded = sampling.generate(m, reqs, S, 2.0, -1.0, seed=0, batch_size=3, progress=False, new_cache=p.new_cache)
    plain = sampling.generate(m, reqs, S, 2.0, -1.0, seed=0, batch_size=3, progress=False)
    for a, b, c in zip(alone, padded, plain):
        assert torch.allclose(a, b, atol=1e-4)
        assert not torch.allclose(a, c, atol=1e-4)                 # the plan does change the output


@torch.no_grad()
def test_cfg_halves_are_cached_separately():
    # the stacked CFG batch with one cache == conditional and unconditional runs, each with
    # its own cache, combined per step
    m, (noise, tokens, prompt, mask) = model(), inputs()
    p, s, B = plan(**PLAN), 2.0, noise.shape[0]
    stacked = sampling.euler_sample(m, noise, tokens, prompt, mask, S, s, -1.0, cache=p.new_cache())
    times = sampling.sway_schedule(S, -1.0)
    cond, uncond, x = p.new_cache(), p.new_cache(), noise
    drop = torch.ones(B, dtype=torch.bool)
    for i in range(S):
        cond.step = uncond.step = i
        t = times[i].expand(B)
        v_c = m(x, t, tokens, prompt, mask, cache=cond)
        v_u = m(x, t, tokens, prompt, mask, drop_tokens=drop, drop_prompt=drop, cache=uncond)
        x = x + (times[i + 1] - times[i]) * (v_u + s * (v_c - v_u))
    assert torch.allclose(stacked, x, atol=1e-5)
    assert not torch.allclose(cond.stored[("attn", 1)], uncond.stored[("attn", 1)])


def counted(fn):
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        fn()
    per_module = fc.get_flop_counts()
    attn = sum(sum(v.values()) for k, v in per_module.items() if k.endswith(".attn"))
    return fc.get_total_flops(), attn


def test_analytic_flops_equal_the_flop_counter_uncached():
    m, args = model(), inputs()
    d = Dims.of(m)
    total, attn = counted(lambda: sampling.euler_sample(m, *args, S, 2.0, -1.0))
    want = forward_flops(d, 2 * 3, 20)                       # CFG: 2 x 3 rows of T = 20
    assert total == S * want["total"] and attn == S * want["attention"]
    assert want["attention"] == 2 * 3 * L * (8 * 20 * 32 ** 2 + 4 * 20 ** 2 * 32)
    one_clip = inputs(B=1, T=17)
    total, attn = counted(lambda: sampling.euler_sample(m, *one_clip, S, 2.0, -1.0))
    assert (total, attn) == (sampling_flops(d, 17, S, True)["total"], sampling_flops(d, 17, S, True)["attention"])


def test_analytic_flops_count_config_bs_token_fusion():
    # Config B: [B, N, 2] ids, both domains' fusion projections run on every position
    torch.manual_seed(0)
    m = DiT(n_layers=L, dim=32, n_heads=2, n_mels=M, vocab_size=30, ff_mult=2, paired_tokens=True,
            audio_offset=15).eval()
    noise, tokens, prompt, mask = inputs(B=1, T=17)
    paired = torch.stack([tokens, (tokens + 3).clamp(max=29) * (tokens > 0)], -1)    # [1, 7, 2], padding kept
    total, attn = counted(lambda: sampling.euler_sample(m, noise, paired, prompt, mask, S, 2.0, -1.0))
    d = Dims.of(m)
    assert d.paired_tokens
    assert (total, attn) == tuple(sampling_flops(d, 17, S, True, n_tokens=7)[k] for k in ("total", "attention"))
    assert total - sampling_flops(Dims.of(model()), 17, S, True)["total"] == S * 2 * 8 * 7 * 32 ** 2


def test_cached_flops_equal_analytic_minus_the_plans_savings():
    m, d, p = model(), Dims.of(model()), plan(**PLAN)
    clip = inputs(B=1, T=17)
    total, attn = counted(lambda: sampling.euler_sample(m, *clip, S, 2.0, -1.0, cache=p.new_cache()))
    full = sampling_flops(d, 17, S, True)
    saved_attn = 2 * p.cells()["attn"] * attention_flops(d, 17)
    saved_mlp = 2 * p.cells()["mlp"] * mlp_flops(d, 17)
    assert p.cells() == {"attn": 5, "mlp": 1}
    assert total == full["total"] - saved_attn - saved_mlp
    assert attn == full["attention"] - saved_attn
    assert sampling_flops(d, 17, S, True, p.cells()) == {"total": total, "attention": attn,
                                                          "mlp": full["mlp"] - saved_mlp}
    assert p.attention_savings() == pytest.approx(5 / (S * L))
