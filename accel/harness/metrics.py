"""Quality and fidelity metrics as pure functions of feature arrays / image tensors (DESIGN.md §4).

Distribution metrics work on ``(N, D)`` feature arrays (numpy or torch, converted to float64 numpy):

- ``fid``: Fréchet distance between Gaussians fitted to the features (Heusel et al. 2017, arXiv 1706.08500):
  ``d² = ||μ₁ - μ₂||² + Tr(Σ₁ + Σ₂ - 2 (Σ₁ Σ₂)^{1/2})``.
- ``kid``: unbiased MMD² with the cubic polynomial kernel ``k(x, y) = (xᵀy / d + 1)³``, averaged over random
  subsets (Bińkowski et al. 2018, arXiv 1801.01401, Eq. 2 / App. D).
- ``precision_recall``: improved precision and recall with k-NN manifolds, k = 3 (Kynkäänniemi et al. 2019,
  arXiv 1904.06991, Eq. 1-3).
- ``class_consistency``: fraction of samples the classifier assigns to the class they were conditioned on.

The names of these numbers say which feature extractor they used (e.g. ``FID[fmnist-cnn, N=2000]``): they are
*not* Inception FIDs and must never be compared with published ImageNet numbers.

Fidelity against a reference output (for lossy methods, e.g. KV-cache compression): ``psnr``, ``ssim``
(Wang et al. 2004, gaussian window σ=1.5, 11x11, K1=0.01, K2=0.03, on [0, 1] images), ``token_agreement``.

Randomness (KID subsets, bootstrap, floors) comes from an explicit ``numpy.random.Generator``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.linalg
import scipy.stats
import torch

_PR_BATCH = 1024  # rows per pairwise-distance block in precision/recall (memory O(batch * N))


def _as_f64(x, name: str = "features") -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, D) array, got shape {a.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 rows, got {a.shape[0]}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return a


# --------------------------------------------------------------------------------------------- FID
def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features."""
    a = _as_f64(feats)
    return a.mean(axis=0), np.cov(a, rowvar=False).reshape(a.shape[1], a.shape[1])


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``(Σ₁Σ₂)^{1/2}`` by ``scipy.linalg.sqrtm``. When the product is singular and sqrtm returns non-finite
    values, ``eps·I`` is added to both covariances. Imaginary parts from round-off are dropped when small
    relative to the trace; with a large one (singular covariances, e.g. N <= D) the result comes from the
    exact eigenvalue form ``frechet_distance_eig`` instead, with a ``RuntimeWarning``.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        scale = max(1.0, float(np.abs(np.trace(s1)) + np.abs(np.trace(s2))))
        imag = float(np.max(np.abs(covmean.imag)))
        if imag > 1e-3 * scale:
            # singular/ill-conditioned covariances (e.g. N <= D): sqrtm is unreliable, the eigenvalue form is exact
            warnings.warn(f"sqrtm(Σ₁Σ₂) has a large imaginary component ({imag:.3g}); using the eigenvalue form",
                          RuntimeWarning, stacklevel=2)
            return frechet_distance_eig(mu1, s1, mu2, s2)
        covmean = covmean.real
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)  # round-off can give -1e-12 for identical sets; d² itself is never negative


def psd_sqrt(sigma) -> np.ndarray:
    """Symmetric square root of a covariance (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh(np.asarray(sigma, np.float64))
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_eig(mu1, sigma1, mu2, sigma2, *, sqrt_sigma2: np.ndarray | None = None) -> float:
    """Same distance via ``Tr((Σ₁Σ₂)^{1/2}) = Σ √λ(Σ₂^{1/2} Σ₁ Σ₂^{1/2})`` (similar matrices, PSD): one ``eigvalsh``
    instead of a Schur ``sqrtm``, ~10-50x faster; used for bootstrap replicates against a fixed reference."""
    r = psd_sqrt(sigma2) if sqrt_sigma2 is None else sqrt_sigma2
    lam = np.linalg.eigvalsh(r @ np.asarray(sigma1, np.float64) @ r)
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.sqrt(np.clip(lam, 0, None)).sum())
    return max(value, 0.0)


def fid(feats_a, feats_b=None, *, ref_stats: tuple | None = None) -> float:
    """FID between two feature sets, or between ``feats_a`` and reference ``(mu, sigma)`` statistics."""
    if (feats_b is None) == (ref_stats is None):
        raise ValueError("give exactly one of feats_b or ref_stats")
    mu1, s1 = feature_stats(feats_a)
    mu2, s2 = ref_stats if ref_stats is not None else feature_stats(feats_b)
    return frechet_distance(mu1, s1, mu2, s2)


# --------------------------------------------------------------------------------------------- KID
def _poly_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    m, n = x.shape[0], y.shape[0]
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kid(feats_a, feats_b, *, rng: np.random.Generator, n_subsets: int = 100, subset_size: int = 1000) -> tuple[float, float]:
    """Kernel Inception Distance (here on any features): mean and std of unbiased MMD² over subsets.

    Each subset draws ``min(subset_size, N_a, N_b)`` rows of each set without replacement.
    """
    a, b = _as_f64(feats_a, "feats_a"), _as_f64(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
    if n_subsets < 1:
        raise ValueError("n_subsets must be >= 1")
    m = min(subset_size, a.shape[0], b.shape[0])
    vals = [
        _poly_mmd2_unbiased(a[rng.choice(a.shape[0], m, replace=False)], b[rng.choice(b.shape[0], m, replace=False)])
        for _ in range(n_subsets)
    ]
    return float(np.mean(vals)), float(np.std(vals))


# ---------------------------------------------------------------------------- precision / recall
def _kth_nn_radii(feats: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row (Kynkäänniemi et al. 2019, Eq. 1)."""
    radii = []
    for start in range(0, feats.shape[0], _PR_BATCH):
        d = torch.cdist(feats[start : start + _PR_BATCH], feats)  # (b, N), includes self at 0
        radii.append(d.kthvalue(k + 1, dim=1).values)  # k+1: skip the point itself
    return torch.cat(radii)


def _coverage(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor) -> float:
    """Fraction of queries inside at least one hypersphere B(φ', r(φ')) of the manifold (Eq. 2)."""
    inside = []
    for start in range(0, queries.shape[0], _PR_BATCH):
        d = torch.cdist(queries[start : start + _PR_BATCH], manifold)  # (b, N)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real, fake, *, k: int = 3) -> tuple[float, float]:
    """Improved precision (fake inside the real manifold) and recall (real inside the fake manifold), Eq. 3."""
    r = torch.from_numpy(_as_f64(real, "real"))
    f = torch.from_numpy(_as_f64(fake, "fake"))
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dims differ: {r.shape[1]} vs {f.shape[1]}")
    if min(r.shape[0], f.shape[0]) <= k:
        raise ValueError(f"need more than k={k} rows in each set, got {r.shape[0]} real and {f.shape[0]} fake")
    precision = _coverage(r, _kth_nn_radii(r, k), f)
    recall = _coverage(f, _kth_nn_radii(f, k), r)
    return precision, recall


def class_consistency(pred, cond) -> float:
    """Fraction of samples whose predicted class (labels ``(N,)`` or logits ``(N, C)``) equals their condition."""
    pred = torch.as_tensor(pred)
    cond = torch.as_tensor(cond)
    if pred.ndim == 2:
        pred = pred.argmax(dim=1)
    if pred.shape != cond.shape or pred.ndim != 1:
        raise ValueError(f"pred {tuple(pred.shape)} and cond {tuple(cond.shape)} must be (N,) (or pred (N, C))")
    return float((pred.long() == cond.long()).double().mean())


# ------------------------------------------------------------------------- intervals and floors
def bootstrap_interval(
    statistic: Callable[[np.ndarray], float], samples, *, rng: np.random.Generator, n_boot: int = 200,
    level: float = 0.95, method: str = "percentile",
) -> tuple[float, float]:
    """Bootstrap interval of ``statistic(rows)`` over rows of ``samples`` resampled with replacement.

    ``percentile``: the (1-level)/2 and (1+level)/2 quantiles of the replicates. ``normal``: ``θ̂ ± z·se*``
    with se* the replicates' standard deviation (Efron & Tibshirani 1993, §13.2). Use ``normal`` for
    statistics with a strong small-sample bias such as FID: a resample with replacement holds only ~63%
    distinct rows, so its FID is systematically higher and the percentile interval can miss θ̂ entirely.
    """
    a = np.asarray(samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else samples)
    if not 0 < level < 1 or n_boot < 2:
        raise ValueError("need 0 < level < 1 and n_boot >= 2")
    n = a.shape[0]
    vals = np.array([statistic(a[rng.integers(0, n, n)]) for _ in range(n_boot)], dtype=np.float64)
    if method == "percentile":
        lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    elif method == "normal":
        z = float(scipy.stats.norm.ppf((1 + level) / 2))
        theta, se = statistic(a), float(vals.std(ddof=1))
        lo, hi = theta - z * se, theta + z * se
    else:
        raise ValueError(f"unknown method {method!r}; valid: percentile, normal")
    return float(lo), float(hi)


def paired_difference_interval(
    statistic: Callable[[np.ndarray], float], a, b, *, rng: np.random.Generator, n_boot: int = 200,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """``statistic(a) - statistic(b)`` and its paired bootstrap interval, for two sample sets whose rows are paired
    (row i of both drawn from the same seed): each replicate resamples the SAME row indices in both sets, so the
    noise the two share cancels and the interval of the difference is much narrower than the two intervals apart.
    Normal interval centred on the estimate (as ``bootstrap_interval(method="normal")``, for FID's resampling bias).
    Returns ``(difference, lo, hi)``."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"paired sets need the same shape, got {a.shape} and {b.shape}")
    pairs = np.stack([a, b], axis=1)  # row i = (a_i, b_i): a replicate resamples whole pairs
    diff = lambda rows: statistic(rows[:, 0]) - statistic(rows[:, 1])  # noqa: E731
    lo, hi = bootstrap_interval(diff, pairs, rng=rng, n_boot=n_boot, level=level, method="normal")
    return diff(pairs), lo, hi


def real_floor(real_feats, n: int, *, rng: np.random.Generator, ref_stats: tuple | None = None) -> float:
    """Real-vs-real FID at the same N: the FID a perfect generator would get with N samples.

    Draws ``n`` real rows without replacement and compares them with ``ref_stats`` (the statistics the
    generated set is compared with) or, when absent, with the remaining disjoint real rows.
    """
    a = _as_f64(real_feats, "real_feats")
    need = n if ref_stats is not None else n + 2
    if a.shape[0] < need:
        raise ValueError(f"real_floor needs at least {need} real rows for N={n}, got {a.shape[0]}")
    perm = rng.permutation(a.shape[0])
    if ref_stats is not None:
        return fid(a[perm[:n]], ref_stats=ref_stats)
    return fid(a[perm[:n]], a[perm[n:]])


def metric_name(metric: str, feature: str, n: int) -> str:
    """Honest metric label, e.g. ``FID[fmnist-cnn, N=2000]``."""
    return f"{metric}[{feature}, N={n}]"


# --------------------------------------------------------------------------------------- fidelity
def _check_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.double(), b.double()


def psnr(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, ``10 log10(range² / MSE)``; identical images give +inf."""
    a, b = _check_pair(a, b)
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # (size, size)


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image mean SSIM (Wang et al. 2004, Eq. 13) with a gaussian window, 'valid' filtering, channels averaged."""
    a, b = _check_pair(a, b)
    C = a.shape[1]
    if min(a.shape[-2:]) < win_size:
        raise ValueError(f"images {tuple(a.shape[-2:])} smaller than the SSIM window {win_size}")
    w = _gaussian_window(win_size, sigma).to(a.device).expand(C, 1, win_size, win_size)

    def filt(x):
        return torch.nn.functional.conv2d(x, w, groups=C)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(dim=1)


def token_agreement(tokens_a: torch.Tensor, tokens_b: torch.Tensor) -> float:
    """Fraction of positions where two token-id tensors of the same shape agree."""
    if tokens_a.shape != tokens_b.shape:
        raise ValueError(f"token shapes differ: {tuple(tokens_a.shape)} vs {tuple(tokens_b.shape)}")
    return float((tokens_a == tokens_b).double().mean())


def token_log_likelihood(log_probs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean per-token log-likelihood ``(1/L) Σ_t log p(x_t | x_<t)``.

    ``log_probs``: ``(B, L, V)`` target log-probabilities at each generated position (already normalised,
    e.g. ``log_softmax`` of the target's logits under the same sampling distribution); ``tokens``: ``(B, L)``.
    """
    if log_probs.ndim != 3 or tokens.shape != log_probs.shape[:2]:
        raise ValueError(f"expected log_probs (B, L, V) and tokens (B, L), got {tuple(log_probs.shape)} and {tuple(tokens.shape)}")
    lp = log_probs.float().gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)  # (B, L)
    return lp.mean(dim=1)


# ------------------------------------------------------------------------------------ ADM export
def to_uint8_nhwc(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] -> (B, H, W, 3) uint8, rounding to nearest."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
    x = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_samples_npz(path: str | Path, images: torch.Tensor) -> Path:
    """Write an ADM-evaluator style ``samples.npz`` (``arr_0``: uint8 NHWC) for the standard ImageNet evaluator."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, arr_0=to_uint8_nhwc(images))
    return path


__all__ = [
    "feature_stats", "frechet_distance", "frechet_distance_eig", "psd_sqrt", "fid", "kid", "precision_recall", "class_consistency",
    "bootstrap_interval", "real_floor", "metric_name", "psnr", "ssim", "token_agreement",
    "token_log_likelihood", "to_uint8_nhwc", "save_samples_npz",
]
