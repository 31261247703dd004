"""CSpD math: log-space densities, std-product orientation, exactness of the acceptance rule (seeded KS tests
against the analytic target marginal), counted fallbacks. Analytic Gaussian "heads": linear-mean DDPM chains."""
import math

import pytest
import torch
from scipy import stats

from accel.speculative import cspd_math as M

N, C, S = 4000, 2, 6  # samples, token dims, denoising steps
D = torch.float64


def chain(seed, var_scale):
    """mu_i(x) = a_i x + b_i, sigma_i per step/dim: a DDPM-like chain with an analytic Gaussian marginal."""
    g = torch.Generator().manual_seed(seed)
    a = 0.8 + 0.2 * torch.rand(S, C, generator=g, dtype=D)
    b = 0.5 * torch.randn(S, C, generator=g, dtype=D)
    s = var_scale * (0.3 + 0.4 * torch.rand(S, C, generator=g, dtype=D))
    return a, b, s


def run_aligned(par, x_T, eps):
    """Denoise with shared noise down to x1; return (mean, std) of the last step and sum_{i>=1} log sigma_i."""
    a, b, s = par
    x, lsum = x_T, torch.zeros_like(x_T)
    for i in range(S - 1, 0, -1):
        x = a[i] * x + b[i] + s[i] * eps[i]
        lsum = lsum + s[i].log()
    return a[0] * x + b[0], s[0].expand_as(x), lsum


def marginal(par):
    a, b, s = par
    m, v = torch.zeros(C, dtype=D), torch.ones(C, dtype=D)
    for i in range(S - 1, -1, -1):
        m, v = a[i] * m + b[i], a[i] ** 2 * v + s[i] ** 2
    return m, v.sqrt()


P, Q = chain(1, 1.0), chain(2, 1.3)  # target, draft (different means AND different learned-like variances)
Q_SAME_VAR = (Q[0], Q[1], P[2])     # draft whose variances equal the target's: Sigma = 1 in every orientation


def cspd_tokens(p, q, std_product="none", inner_temperature=1.0, swap=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_T, eps = torch.randn(N, C, generator=g, dtype=D), torch.randn(S, N, C, generator=g, dtype=D)
    mp, sp, lp = run_aligned(p, x_T, eps)
    mq, sq, lq = run_aligned(q, x_T, eps)
    x = mq + sq * torch.randn(N, C, generator=g, dtype=D)  # draft token (own last-step noise)
    log_sigma = M.log_std_product(lp, lq, std_product)
    log_r = M.log_acceptance_ratio(x, mp, sp, mq, sq, log_sigma, inner_temperature)
    if swap:  # broken rule: q/p instead of p/q
        log_r = 2 * log_sigma - log_r
    ok, _ = M.accept(log_r, g)
    res, tries, fallback = M.sample_residual(mp, sp, mq, sq, log_sigma, g, max_tries=200)
    return torch.where(ok[:, None], x, res), ok, fallback


def ks_min_p(x, par):
    m, s = marginal(par)
    return min(stats.kstest(x[:, d].numpy(), "norm", args=(m[d].item(), s[d].item())).pvalue for d in range(C))


@pytest.mark.parametrize("q", [Q, Q_SAME_VAR], ids=["learned_var", "shared_var"])
def test_exact_rule_preserves_target_distribution(q):
    out, ok, fallback = cspd_tokens(P, q)
    assert fallback.sum() == 0  # zero silent (or counted) fallbacks
    assert 0.05 < ok.double().mean() < 0.95  # a real mix of accepted drafts and residual samples
    assert ks_min_p(out, P) > 1e-3
    assert ks_min_p(cspd_tokens(P, q, swap=True)[0], P) < 1e-6  # same test, same N rejects a broken rule


def test_draft_alone_is_rejected_by_the_same_test():
    g = torch.Generator().manual_seed(0)
    x_T, eps = torch.randn(N, C, generator=g, dtype=D), torch.randn(S, N, C, generator=g, dtype=D)
    mq, sq, _ = run_aligned(Q, x_T, eps)
    assert ks_min_p(mq + sq * torch.randn(N, C, generator=g, dtype=D), P) < 1e-6


def test_paper_and_official_std_products_bias_tokens_when_variances_differ():
    """Finding: the std-product term is a path-density ratio; with model-dependent variances it breaks
    exactness in either orientation, while with equal variances all three rules coincide."""
    for sp in ("paper", "official"):
        assert ks_min_p(cspd_tokens(P, Q, std_product=sp)[0], P) < 1e-3
        assert ks_min_p(cspd_tokens(P, Q_SAME_VAR, std_product=sp)[0], P) > 1e-3


def test_inner_temperature_raises_acceptance_but_is_not_distribution_preserving():
    out1, ok1, _ = cspd_tokens(P, Q)
    out42, ok42, _ = cspd_tokens(P, Q, inner_temperature=42.0)
    assert ok42.double().mean() > ok1.double().mean() + 0.3
    assert ks_min_p(out42, P) < 1e-6


def test_orientation_matches_aligned_path_densities():
    """log p(Y_p) - log q(Y_q) from per-step transition log-densities == paper log Sigma + last-step ratio."""
    g = torch.Generator().manual_seed(3)
    x_T, eps = torch.randn(5, C, generator=g, dtype=D), torch.randn(S, 5, C, generator=g, dtype=D)

    def path_logpdf(par):
        a, b, s = par
        x, lp = x_T, torch.zeros(5, dtype=D)
        for i in range(S - 1, 0, -1):
            mu = a[i] * x + b[i]
            x = mu + s[i] * eps[i]
            lp = lp + M.gaussian_logpdf(x, mu, s[i].expand_as(x))
        return lp, a[0] * x + b[0], s[0].expand_as(x)

    lp_p, mp, sp = path_logpdf(P)
    lp_q, mq, sq = path_logpdf(Q)
    x0 = mq + 0.1
    _, _, lsp = run_aligned(P, x_T, eps)
    _, _, lsq = run_aligned(Q, x_T, eps)
    want = lp_p + M.gaussian_logpdf(x0, mp, sp) - lp_q - M.gaussian_logpdf(x0, mq, sq)
    got = M.log_acceptance_ratio(x0, mp, sp, mq, sq, M.log_std_product(lsp, lsq, "paper"))
    torch.testing.assert_close(got, want)
    assert torch.allclose(M.log_std_product(lsp, lsq, "official"), -M.log_std_product(lsp, lsq, "paper"))


def test_log_space_survives_float32_tiny_stds():
    """prod of 100 steps x 16 dims of std ~ 1e-3 is 1e-4800: only log space can hold it."""
    std = torch.full((3, 16), 1e-3)
    lsum_p, lsum_q = 100 * std.double().log(), 100 * (1.01 * std.double()).log()
    assert torch.prod(std.double() ** 100, -1).eq(0).all()  # the direct product underflows even in float64
    ls = M.log_std_product(lsum_p, lsum_q, "paper")
    assert torch.allclose(ls, torch.full((3,), 1600 * math.log(1.01), dtype=D), rtol=1e-5)
    x = torch.zeros(3, 16)
    lr = M.log_acceptance_ratio(x, x + 1e-3, std, x, std * 1.01, ls)
    assert torch.isfinite(lr).all()
    ref = stats.norm.logpdf(0.0, loc=1e-3, scale=1e-3) * 16
    assert abs(M.gaussian_logpdf(x, x + 1e-3, std)[0].item() - ref) < 1e-3


def test_residual_fallback_is_counted_never_zero():
    mean = torch.full((4, 3), 5.0)
    std = torch.ones(4, 3)
    g = torch.Generator().manual_seed(0)
    x, tries, fallback = M.sample_residual(mean, std, mean, std, torch.zeros(4), g, max_tries=7)
    assert fallback.all() and (tries == 7).all()  # p == q: the residual is empty, every row falls back
    assert (x != 0).all() and (x - 5).abs().max() < 6  # an exact target sample, not a zero
    with pytest.raises(ValueError):
        M.sample_residual(mean, std, mean, std, torch.zeros(4), g, max_tries=0)


def test_first_rejection_and_bad_args():
    acc = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    assert M.first_rejection(acc).tolist() == [2, 0, 4]
    with pytest.raises(KeyError, match="valid"):
        M.log_std_product(torch.zeros(1, 2), torch.zeros(1, 2), "reciprocal")
    with pytest.raises(ValueError):
        M.log_acceptance_ratio(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1, 2),
                               torch.ones(1, 2), torch.zeros(1), inner_temperature=0.0)
