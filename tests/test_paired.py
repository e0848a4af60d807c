"""Paired comparisons (agrepa.evaluation.paired): hierarchical bootstrap CI and sign-flip permutation test."""
import numpy as np
import pytest
from scipy import stats

from agrepa.evaluation import paired


def _units(a, b, den_a=None, den_b=None):
    ones = [np.ones_like(x) for x in a]
    return paired.PairedUnits(list(a), den_a or ones, list(b), den_b or [np.ones_like(x) for x in b])


def _pair(rng, shift, n_seeds=3, n_clips=16, seed_sd=1.0, clip_sd=1.0, noise=0.2):
    """Clip difficulty shared by both methods (the pairing), method b = a + shift + small noise."""
    a, b = [], []
    for _ in range(n_seeds):
        base = rng.normal(0, seed_sd) + rng.normal(0, clip_sd, n_clips)
        a.append(base + rng.normal(0, noise, n_clips))
        b.append(base + shift + rng.normal(0, noise, n_clips))
    return a, b


def test_known_shift_is_resolved_and_identical_pair_is_not():
    rng = np.random.default_rng(0)
    a, b = _pair(rng, shift=0.3)
    c = paired.compare(_units(b, a), n_boot=1000, n_perm=1000, seed=1)
    assert c.delta == pytest.approx(np.mean(np.concatenate(b)) - np.mean(np.concatenate(a)))
    assert c.ci_low > 0 and c.resolved(0.05) and c.p_value < 0.01
    # the pairing matters: unpaired, the clip-difficulty spread (sd 1) would swamp a 0.3 shift
    assert c.ci_high - c.ci_low < 0.5
    same = paired.compare(_units(a, a), n_boot=500, n_perm=500, seed=1)
    assert same.delta == 0.0 and same.ci_low <= 0.0 <= same.ci_high and not same.resolved(0.05)
    assert same.p_value == 1.0


def test_ratio_metrics_pool_numerators_and_denominators():
    # WER-like: errors / words per clip, value = 100 * sum(errors) / sum(words)
    err_a, words = [np.array([1.0, 0.0, 3.0]), np.array([2.0, 2.0])], [np.array([4.0, 5.0, 6.0]), np.array([3.0, 7.0])]
    err_b = [np.array([0.0, 0.0, 1.0]), np.array([1.0, 1.0])]
    u = paired.PairedUnits(err_a, words, err_b, words)
    c = paired.compare(u, scale=100.0, n_boot=200, n_perm=200)
    assert c.value_a == pytest.approx(100 * 8 / 25) and c.value_b == pytest.approx(100 * 3 / 25)
    assert c.rel_pct == pytest.approx(100 * (8 - 3) / 3)
    assert c.n_seeds == 2 and c.n_units == 5


def test_permutation_p_value_is_uniform_under_the_null():
    rng = np.random.default_rng(2)
    ps = []
    for _ in range(200):
        a, b = _pair(rng, shift=0.0, n_seeds=3, n_clips=8)
        ps.append(paired.compare(_units(a, b), n_boot=0, n_perm=200, seed=int(rng.integers(1 << 30))).p_value)
    ps = np.asarray(ps)
    assert stats.kstest(ps, "uniform").pvalue > 0.01
    assert 0.01 <= np.mean(ps < 0.05) <= 0.10
    assert 0.4 <= np.mean(ps < 0.5) <= 0.6


def test_same_seed_same_numbers_and_bad_input():
    rng = np.random.default_rng(3)
    a, b = _pair(rng, 0.1)
    c1 = paired.compare(_units(a, b), n_boot=300, n_perm=300, seed=7)
    c2 = paired.compare(_units(a, b), n_boot=300, n_perm=300, seed=7)
    assert c1 == c2
    with pytest.raises(ValueError, match="unequal"):
        paired.PairedUnits([np.ones(3)], [np.ones(3)], [np.ones(2)], [np.ones(2)])
    with pytest.raises(ValueError, match="non-finite"):
        _units([np.array([1.0, np.nan])], [np.ones(2)])
