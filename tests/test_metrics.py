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


# --- per-clip distances of the sensitive metrics -------------------------------------------------------
def _speech_mel(noise_db=None, seed=0):
    """Log-mel of a real (espeak-ng) utterance, optionally with white noise at an SNR in dB."""
    import torch

    from agrepa import audio, config
    from test_eval_corpus import _speech
    from test_workflow_support import DEFAULT_CONFIG

    wave = _speech("the quick brown fox jumps over the lazy dog", "spk0")
    if noise_db is not None:
        noise = np.random.default_rng(seed).normal(size=wave.shape).astype(np.float32)
        scale = np.sqrt((wave ** 2).mean() / (noise ** 2).mean() / 10 ** (noise_db / 10))
        wave = wave + scale * noise
    return audio.log_mel(torch.from_numpy(wave), config.load(DEFAULT_CONFIG)["audio"]).T.numpy()


def test_mel_distance_zero_on_itself_and_monotonic_in_added_noise():
    clean = _speech_mel()
    assert metrics.mel_l1(clean, clean) == 0.0
    assert metrics.mel_cepstral_distortion(clean, clean) == 0.0
    l1 = [metrics.mel_l1(clean, _speech_mel(snr)) for snr in (40, 30, 20, 10, 0)]
    mcd = [metrics.mel_cepstral_distortion(clean, _speech_mel(snr)) for snr in (40, 30, 20, 10, 0)]
    assert all(x < y for x, y in zip(l1, l1[1:])), l1
    assert all(x < y for x, y in zip(mcd, mcd[1:])), mcd
    assert l1[0] > 0 and mcd[0] > 0
    with pytest.raises(ValueError, match="frame-aligned"):
        metrics.mel_l1(clean, clean[:-1])


def test_mcd_formula_on_a_known_cepstral_shift():
    import scipy.fft

    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 20))
    c = scipy.fft.dct(a, type=2, norm="ortho", axis=1)
    c[:, 3] += 0.5                      # a shift of cepstral coefficient 3 in every frame
    b = scipy.fft.idct(c, type=2, norm="ortho", axis=1)
    want = 10 / np.log(10) * np.sqrt(2 * 0.5 ** 2)
    assert metrics.mel_cepstral_distortion(a, b, 13) == pytest.approx(want)
    c[:, 0] += 3.0                      # c_0 (energy) is left out
    assert metrics.mel_cepstral_distortion(a, scipy.fft.idct(c, type=2, norm="ortho", axis=1), 13) == pytest.approx(want)


def test_token_edits_and_kl():
    assert metrics.token_edits([1, 2, 3, 4], [1, 2, 3, 4]) == 0
    assert metrics.token_edits([1, 2, 3, 4], [1, 3, 4]) == 1
    assert metrics.token_edits([1, 2], [3, 4, 5]) == 3
    p = np.array([0.7, 0.2, 0.1])
    assert metrics.kl_divergence(p, p) == 0.0
    q = np.array([0.1, 0.2, 0.7])
    assert metrics.kl_divergence(p, q) == pytest.approx(float((p * np.log(p / (q + 1e-6))).sum()))
    assert metrics.kl_divergence(p, q) > 0
