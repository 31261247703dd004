"""Pure math of continuous speculative decoding (CSpD, Wang et al., arXiv 2411.11925).

Notation (p = target, q = draft, everywhere):

    mean_p, std_p   target's last DDPM step  x0 ~ N(mean_p, std_p^2)   (respaced index 0), (..., C)
    mean_q, std_q   draft's last DDPM step   x0 ~ N(mean_q, std_q^2),                       (..., C)
    lsum_p, lsum_q  sum_{i>=1} log sigma_i of each model's aligned denoising path           (..., C)

Paper, aligned-trajectory density ratio (Sec. "denoising trajectory alignment"; transcribed in
shared/research/cspd_mar_disa.md 2.1):

    r(x0) = Sigma * p(x0 | x1^p) / q(x0 | x1^q),   Sigma = prod_{t=2}^{T} sqrt|Sigma_t^q| / sqrt|Sigma_t^p|

Orientation check (derivation, in log space): with shared noise, x_{t-1} = mu_t + sigma_t * eps_t for both
models, so log N(x_{t-1}; mu_t, sigma_t^2) = -eps_t^2/2 - log sigma_t - log(2 pi)/2 per dimension; the eps
terms cancel in log p(Y_p) - log q(Y_q), leaving sum(log sigma^q - log sigma^p) = log Sigma above: the
paper's orientation (q over p). The official code's ``fixed_term = exp(sum(L_p - L_q))`` is its reciprocal
(``std_product="official"``).

Exactness (our derivation, tested in tests/test_cspd_math.py): conditioned on the shared noise E' that
produces x1, each model's token is exactly N(mean, std^2); E' has the same law under p and q, so speculative
sampling on these conditionals with ratio p(x0|x1^p)/q(x0|x1^q) outputs x0 ~ p. Any Sigma != 1 breaks that
(the std-product term is a path-density, not a token-density, ratio); it is 1 when the upper-step variances
agree (fixed-variance DDPM). ``std_product="none"`` is that exact rule and is the default of CSpD here.

Everything is in log space: prod std over 16 dims x 100 steps under/overflows float32 (std ~ 1e-3).
"""
from __future__ import annotations

import math

import torch

STD_PRODUCTS = ("none", "paper", "official")
_LOG_2PI = math.log(2 * math.pi)


def gaussian_logpdf(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log N(x; mean, std^2 I), summed over the last dim, float64 (..., C) -> (...).

    ``temperature`` T != 1 divides the exponent by T^2 but keeps the T=1 normaliser: that is the official
    code's relaxed ``N_T`` (with its ``prod(std)`` normaliser), NOT a density.
    """
    x, mean, std = x.double(), mean.double(), std.double()
    z = (x - mean) / std
    return (-0.5 * z.square() / temperature**2 - std.log() - 0.5 * _LOG_2PI).sum(-1)


def log_std_product(lsum_p: torch.Tensor, lsum_q: torch.Tensor, std_product: str = "none") -> torch.Tensor:
    """log Sigma of the aligned paths, (..., C) -> (...).

    "paper": sum(L_q - L_p) = log prod sigma^q / prod sigma^p (paper's Sigma, see module docstring);
    "official": sum(L_p - L_q) (official ``fixed_term``, the reciprocal); "none": 0 (exact rule).
    """
    if std_product not in STD_PRODUCTS:
        raise KeyError(f"std_product {std_product!r}; valid: {STD_PRODUCTS}")
    diff = (lsum_q.double() - lsum_p.double()).sum(-1)
    return {"paper": diff, "official": -diff, "none": torch.zeros_like(diff)}[std_product]


def log_acceptance_ratio(x, mean_p, std_p, mean_q, std_q, log_sigma, inner_temperature: float = 1.0):
    """log r(x) = log Sigma + log p(x | x1^p) - log q(x | x1^q)   (paper's ratio, accept w.p. min(1, r)).

    ``inner_temperature`` != 1 is the official code's relaxation (exponents divided by T^2; official default
    42). It is NOT distribution-preserving; T = 1 is the paper's rule.
    """
    if inner_temperature <= 0:
        raise ValueError(f"inner_temperature must be > 0, got {inner_temperature}")
    return (log_sigma + gaussian_logpdf(x, mean_p, std_p, inner_temperature)
            - gaussian_logpdf(x, mean_q, std_q, inner_temperature))


def accept(log_r: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept each entry w.p. min(1, r): returns (accepted bool, the uniforms drawn), u < r <=> log u < log r."""
    u = torch.rand(log_r.shape, generator=generator, device=log_r.device)
    return u.double().log() < log_r, u


def first_rejection(accepted: torch.Tensor) -> torch.Tensor:
    """Left-to-right verification (paper's algorithm): number of leading accepted drafts, (B, g) -> (B,)."""
    return accepted.long().cumprod(-1).sum(-1)


def residual_accept_prob(x, mean_p, std_p, mean_q, std_q, log_sigma) -> torch.Tensor:
    """alpha_s(x) = max(0, Sigma p(x) - q(x)) / (Sigma p(x)) = max(0, 1 - q/(Sigma p)), exact densities.

    Acceptance-rejection for the residual norm(max(0, Sigma p - q)) with proposal p and bound M = 1/Z
    (paper, "acceptance-rejection sampling with an upper bound"): Z cancels.
    """
    log_q_over_sp = gaussian_logpdf(x, mean_q, std_q) - gaussian_logpdf(x, mean_p, std_p) - log_sigma
    return (-torch.expm1(log_q_over_sp.clamp(max=0.0))).clamp(min=0.0)


def sample_residual(mean_p, std_p, mean_q, std_q, log_sigma, generator: torch.Generator, max_tries: int = 100):
    """Sample norm(max(0, Sigma p - q)) for rows (N, C) by acceptance-rejection from p = N(mean_p, std_p^2).

    Each try proposes every still-open row from p and keeps the FIRST accepted proposal. Rows not accepted
    within ``max_tries`` fall back to an exact target sample (a fresh draw from p) and are reported in the
    returned ``fallback`` mask, never a silent zero (the official sampler leaves them at 0).
    Returns (x (N, C), tries (N,) number of proposals used, fallback (N,) bool).
    """
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    n = mean_p.shape[0]
    out = torch.empty_like(mean_p)
    tries = torch.zeros(n, dtype=torch.long, device=mean_p.device)
    open_ = torch.ones(n, dtype=torch.bool, device=mean_p.device)
    for _ in range(max_tries):
        if not open_.any():
            break
        idx = open_.nonzero().squeeze(1)
        prop = mean_p[idx] + std_p[idx] * torch.randn(mean_p[idx].shape, generator=generator,
                                                      device=mean_p.device, dtype=mean_p.dtype)
        alpha = residual_accept_prob(prop, mean_p[idx], std_p[idx], mean_q[idx], std_q[idx], log_sigma[idx])
        u = torch.rand(alpha.shape, generator=generator, device=mean_p.device)
        ok = u.double() < alpha
        tries[idx] += 1
        out[idx[ok]] = prop[ok]
        open_[idx[ok]] = False
    fallback = open_.clone()
    if fallback.any():
        idx = fallback.nonzero().squeeze(1)
        out[idx] = mean_p[idx] + std_p[idx] * torch.randn(mean_p[idx].shape, generator=generator,
                                                          device=mean_p.device, dtype=mean_p.dtype)
    return out, tries, fallback
