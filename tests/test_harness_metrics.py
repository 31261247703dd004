"""Metrics on cases with known answers."""
import numpy as np
import pytest
import torch

from accel.harness import metrics as M


def rng(seed=0):
    return np.random.default_rng(seed)


def test_fid_of_set_with_itself_is_zero():
    x = rng().normal(size=(500, 8))
    assert M.fid(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_closed_form_diagonal_and_1d():
    # 1-D: (m1 - m2)² + (s1 - s2)²
    assert M.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # diagonal covariances: ||δ||² + Σ (√a_i - √b_i)²
    a, b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 0.1, 0.5])
    mu1, mu2 = np.zeros(3), np.array([1.0, -2.0, 0.0])
    want = 5.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want)


def test_frechet_distance_rotated_covariances_match_closed_form():
    # Σ₂ = R Σ₁ Rᵀ with commuting structure replaced by a general pair: check against the symmetric form
    # Tr((Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}), which equals Tr((Σ₁Σ₂)^{1/2}).
    g = rng(1)
    A, B = g.normal(size=(4, 4)), g.normal(size=(4, 4))
    s1, s2 = A @ A.T + 0.1 * np.eye(4), B @ B.T + 0.1 * np.eye(4)
    w, v = np.linalg.eigh(s1)
    r1 = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(r1 @ s2 @ r1)
    want = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(inner).sum()
    assert M.frechet_distance(np.zeros(4), s1, np.zeros(4), s2) == pytest.approx(want, rel=1e-8)
    mu2 = np.array([0.3, 0.0, -1.0, 2.0])
    assert M.frechet_distance_eig(np.zeros(4), s1, mu2, s2) == pytest.approx(M.frechet_distance(np.zeros(4), s1, mu2, s2), rel=1e-8)


def test_fid_shifted_scaled_gaussians_sample_estimate():
    d, n, shift, scale = 4, 20000, 0.5, 2.0
    g = rng(2)
    x = g.normal(size=(n, d))
    y = shift + scale * g.normal(size=(n, d))
    want = d * shift**2 + d * (1 - scale) ** 2  # ||δ||² + d (1 - s)²
    assert M.fid(x, y) == pytest.approx(want, rel=0.05)


def test_fid_singular_covariance_is_finite():
    x = np.zeros((50, 3))
    x[:, 0] = rng(3).normal(size=50)  # rank-1 covariance
    assert np.isfinite(M.fid(x, x + 0.1))


def test_fid_against_reference_stats():
    x = rng(4).normal(size=(300, 5))
    assert M.fid(x, ref_stats=M.feature_stats(x)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        M.fid(x)


def test_kid_same_distribution_near_zero_and_far_positive():
    g = rng(5)
    x, y = g.normal(size=(400, 6)), g.normal(size=(400, 6))
    same, _ = M.kid(x, y, rng=rng(6), n_subsets=20, subset_size=200)
    far, _ = M.kid(x, y + 3.0, rng=rng(6), n_subsets=20, subset_size=200)
    assert abs(same) < 0.05
    assert far > 1.0


def test_kid_unbiased_mean_over_subsets():
    # unbiased estimator: averaged over many subsets of equal distributions it centres on 0 (both signs occur)
    g = rng(7)
    vals = [M.kid(g.normal(size=(60, 3)), g.normal(size=(60, 3)), rng=g, n_subsets=1, subset_size=60)[0] for _ in range(200)]
    assert min(vals) < 0 < max(vals)
    assert abs(np.mean(vals)) < 3 * np.std(vals) / np.sqrt(len(vals))


def test_precision_recall_limits():
    g = rng(8)
    x = g.normal(size=(200, 4))
    assert M.precision_recall(x, x) == (1.0, 1.0)
    p, r = M.precision_recall(x, x + 100.0)
    assert (p, r) == (0.0, 0.0)


def test_precision_recall_mode_collapse_lowers_recall_only():
    g = rng(9)
    real = g.normal(size=(400, 2))
    fake = 0.1 * g.normal(size=(400, 2))  # collapsed onto the real mode centre
    p, r = M.precision_recall(real, fake)
    assert p > 0.9 and r < 0.5


def test_class_consistency():
    assert M.class_consistency(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == 0.75
    logits = torch.eye(3)[[0, 1, 1]]
    assert M.class_consistency(logits, torch.tensor([0, 1, 2])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        M.class_consistency(torch.tensor([1, 2]), torch.tensor([1]))


def test_bootstrap_interval_covers_mean():
    x = rng(10).normal(loc=3.0, size=(500, 1))
    lo, hi = M.bootstrap_interval(lambda a: float(a.mean()), x, rng=rng(11), n_boot=300)
    assert lo < x.mean() < hi
    assert 0.12 < hi - lo < 0.24  # ≈ 2 · 1.96 · σ/√n = 0.175


def test_bootstrap_normal_interval_contains_biased_fid():
    # FID of N=150 samples of the reference distribution itself: all bias. The percentile interval of
    # resamples (duplicates -> higher FID) lies above the estimate; the normal interval is centred on it.
    g = rng(14)
    ref = g.normal(size=(20000, 8))
    stats = M.feature_stats(ref)
    x = g.normal(size=(150, 8))
    est = M.fid(x, ref_stats=stats)
    pct = M.bootstrap_interval(lambda a: M.fid(a, ref_stats=stats), x, rng=rng(15), n_boot=100)
    nrm = M.bootstrap_interval(lambda a: M.fid(a, ref_stats=stats), x, rng=rng(15), n_boot=100, method="normal")
    assert pct[0] > est
    assert nrm[0] < est < nrm[1] and nrm[1] - est == pytest.approx(est - nrm[0])
    with pytest.raises(ValueError):
        M.bootstrap_interval(np.mean, x, rng=rng(0), method="bca")


def test_paired_difference_interval_cancels_shared_noise():
    # b = a + 0.1 + small noise: rows paired, so the difference of means has se ~ 0.01/sqrt(n), far below either
    # set's own se (~1/sqrt(n)); the unpaired intervals overlap, the paired one excludes 0 and covers -0.1
    g = rng(16)
    a = g.normal(size=(400, 1))
    b = a + 0.1 + 0.01 * g.normal(size=(400, 1))
    mean = lambda x: float(x.mean())  # noqa: E731
    d, lo, hi = M.paired_difference_interval(mean, a, b, rng=rng(17), n_boot=200)
    assert d == pytest.approx(mean(a) - mean(b))
    assert lo < -0.1 < hi and hi < 0 and hi - lo < 0.01
    ia = M.bootstrap_interval(mean, a, rng=rng(18), n_boot=200)
    ib = M.bootstrap_interval(mean, b, rng=rng(18), n_boot=200)
    assert ib[0] < ia[1]  # unpaired: overlapping
    # unpaired rows (b shuffled): the same estimate, an interval as wide as the sets' own
    _, lo2, hi2 = M.paired_difference_interval(mean, a, b[g.permutation(400)], rng=rng(17), n_boot=200)
    assert hi2 - lo2 > 10 * (hi - lo)
    with pytest.raises(ValueError):
        M.paired_difference_interval(mean, a, b[:10], rng=rng(0))


def test_real_floor_decreases_with_n():
    x = rng(12).normal(size=(4000, 4))
    small = M.real_floor(x, 50, rng=rng(13))
    large = M.real_floor(x, 1500, rng=rng(13))
    assert large < small
    assert M.real_floor(x, 100, rng=rng(0), ref_stats=M.feature_stats(x)) > 0
    with pytest.raises(ValueError):
        M.real_floor(x[:10], 50, rng=rng(0))
    assert M.metric_name("FID", "fmnist-cnn", 2000) == "FID[fmnist-cnn, N=2000]"


def test_psnr_ssim_identities():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 32, 32, generator=g)
    assert torch.isinf(M.psnr(a, a)).all()
    assert torch.allclose(M.ssim(a, a), torch.ones(2, dtype=torch.float64))
    # constant offset 0.1: MSE = 0.01 -> PSNR = 20 dB
    base = torch.full((1, 3, 16, 16), 0.4)
    assert M.psnr(base, base + 0.1).item() == pytest.approx(20.0, abs=1e-4)
    noisy = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    s = M.ssim(a, noisy)
    assert (s < 0.9).all() and (s > -1).all()
    assert (M.ssim(a, (a + 0.02).clamp(0, 1)) > s).all()
    with pytest.raises(ValueError):
        M.ssim(a, a[:, :, :8, :8])


def test_token_agreement_and_log_likelihood():
    a = torch.tensor([[1, 2, 3, 4]])
    assert M.token_agreement(a, torch.tensor([[1, 2, 0, 4]])) == 0.75
    log_probs = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75]]]))
    ll = M.token_log_likelihood(log_probs, torch.tensor([[0, 1]]))
    assert ll.item() == pytest.approx((np.log(0.5) + np.log(0.75)) / 2, rel=1e-6)


def test_samples_npz_export(tmp_path):
    imgs = torch.zeros(2, 3, 4, 5)
    imgs[0, 0, 1, 2] = 1.0
    imgs[1, 2] = 0.5
    path = M.save_samples_npz(tmp_path / "s" / "samples.npz", imgs)
    arr = np.load(path)["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (2, 4, 5, 3)
    assert arr[0, 1, 2, 0] == 255 and arr[1, 0, 0, 2] == 128 and arr[0, 0, 0, 0] == 0


def test_unreliable_sqrtm_falls_back_to_eigen_form(monkeypatch):
    g = rng(16)
    x, y = g.normal(size=(30, 5)), g.normal(size=(30, 5)) + 1
    want = M.fid(x, y)
    monkeypatch.setattr(M.scipy.linalg, "sqrtm", lambda a: a + 5j)  # a badly complex "square root"
    with pytest.warns(RuntimeWarning, match="eigenvalue form"):
        assert M.fid(x, y) == pytest.approx(want, rel=1e-8)
