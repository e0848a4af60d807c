"""Fréchet distance, FAD∞, bootstrap CIs and steps-to-threshold (agrepa.evaluation.metrics)."""
import numpy as np
import pytest

from agrepa.evaluation import metrics


def _closed_form_diag(mu1, v1, mu2, v2):
    """FD of two Gaussians with diagonal covariances: |mu1-mu2|^2 + sum (sqrt v1 - sqrt v2)^2."""
    return float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum())


def test_frechet_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    got = metrics.frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(_closed_form_diag(mu1, v1, mu2, v2), rel=1e-9, abs=1e-9)


def test_frechet_zero_for_identical_sets_and_symmetric():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 8))
    b = rng.normal(loc=0.5, scale=2.0, size=(40, 8))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert metrics.frechet_distance(a, b) == pytest.approx(metrics.frechet_distance(b, a), rel=1e-8)
    assert metrics.frechet_distance(a, b) > 1.0


def test_svd_form_equals_sqrtm_form():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(60, 10))
    b = rng.normal(size=(45, 10)) @ rng.normal(size=(10, 10)) * 0.5 + 1.0
    assert metrics.frechet_distance(a, b, method="svd") == pytest.approx(
        metrics.frechet_distance(a, b, method="sqrtm"), rel=1e-6)
    assert metrics.frechet_distance(a, b, method="auto") == metrics.frechet_distance(a, b, method="sqrtm")
    small = a[:5]
    assert metrics.frechet_distance(small, b, method="auto") == metrics.frechet_distance(small, b, method="svd")
    with pytest.raises(ValueError, match="unknown method"):
        metrics.frechet_distance(a, b, method="eig")


def test_singular_covariances_give_finite_real_distance():
    # fewer samples than dimensions: both covariances are rank-deficient
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 64)), rng.normal(loc=0.3, size=(7, 64))
    for method in ("sqrtm", "svd"):
        fd = metrics.frechet_distance(a, b, method=method)
        assert isinstance(fd, float) and np.isfinite(fd) and fd > 0
    assert metrics.frechet_distance(a, b, "sqrtm") == pytest.approx(metrics.frechet_distance(a, b, "svd"), rel=1e-3)
    # exactly zero covariance (all rows identical) is singular too
    z = np.zeros((4, 16))
    assert metrics.frechet_distance(z, z + 1.0) == pytest.approx(16.0, rel=1e-6)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="dimensions differ"):
        metrics.frechet_distance(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.frechet_distance_from_stats(np.array([np.nan]), np.eye(1), np.zeros(1), np.eye(1))


def test_fad_inf_approaches_true_distance():
    rng = np.random.default_rng(4)
    d = 4
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    v1, v2 = np.ones(d), np.full(d, 2.0)
    truth = _closed_form_diag(mu1, v1, mu2, v2)
    ref = rng.normal(mu1, np.sqrt(v1), size=(50000, d))
    ev = rng.normal(mu2, np.sqrt(v2), size=(4000, d))
    res = metrics.fad_inf(ref, ev, min_n=50, steps=12, seed=0)
    small_n_fad = res.points[0][1]
    assert abs(res.value - truth) < 0.1 * truth
    assert abs(res.value - truth) < abs(small_n_fad - truth)  # the 1/N bias is removed
    assert res.slope > 0 and len(res.points) == 12


def test_fad_inf_sizes_documented():
    assert metrics.fad_inf_sizes(100, 25, 4) == [25, 50, 75, 100]
    assert metrics.fad_inf_sizes(10, 500, 5)[0] >= 2
    with pytest.raises(ValueError):
        metrics.fad_inf_sizes(1, 2, 3)


def test_bootstrap_ci_deterministic_and_brackets_mean():
    v = np.random.default_rng(5).normal(3.0, 1.0, size=40)
    e1 = metrics.mean_ci(v, n_boot=300, seed=7)
    e2 = metrics.mean_ci(v, n_boot=300, seed=7)
    assert e1 == e2
    assert e1.ci_low < e1.value < e1.ci_high and e1.n == 40
    assert e1.value == pytest.approx(v.mean())
    assert metrics.mean_ci([1.0], n_boot=100, seed=0).ci_low is None


def test_steps_to_threshold_interpolates_and_never_extrapolates():
    steps, fad = [100, 200, 300], [5.0, 3.0, 1.0]
    assert metrics.steps_to_threshold(steps, fad, 2.0) == pytest.approx(250.0)
    assert metrics.steps_to_threshold(steps, fad, 5.0) == 100.0
    assert metrics.steps_to_threshold(steps, fad, 3.0) == pytest.approx(200.0)
    assert metrics.steps_to_threshold(steps, fad, 0.5) is None
    assert metrics.steps_to_threshold([300, 100, 200], [1.0, 5.0, 3.0], 4.0) == pytest.approx(150.0)
