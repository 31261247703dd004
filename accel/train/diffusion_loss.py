"""MAR's per-token diffusion training loss (``DiffLoss.forward`` of LTH14/mar, research cspd_mar_disa.md §1.3).

Official: ``create_diffusion("", "cosine")`` with learned-range variance, so ``training_losses`` is the hybrid
loss of Nichol & Dhariwal 2021 (§3.1): ``L_simple`` (MSE between the true and predicted noise, Ho et al. 2020
eq. 14) plus ``L_vlb`` computed with a stop-gradient on the mean, so the VLB term trains only the variance:
KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) in bits for t > 0 (DDPM eq. 5) and the discretised Gaussian
decoder NLL at t = 0. The head is the accel ``DiffLoss``; its sampling code defines the same parameterisation
(eps prediction, ``log var = frac * log beta_t + (1 - frac) * log beta~_t`` with ``frac = (v + 1) / 2``).
"""
from __future__ import annotations

import math

import torch

from accel.models.mar_head import DDPMSchedule, NUM_TRAIN_TIMESTEPS


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_log_likelihood(x, means, log_scales):
    """Log-likelihood of x under a Gaussian discretised to 256 bins on [-1, 1] (DDPM §3.3), as official."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class DiffusionLoss:
    """Per-row hybrid loss of the MAR head: ``__call__(net, x0 (N, C), z (N, Dz), generator) -> (N,)``.

    ``tail_frac`` > 0 is accel's one deviation from the official uniform t: that fraction of rows draws t
    uniformly from the last ``tail`` steps instead. Why: the cosine schedule clips beta at 0.999, so
    abar(999) = 2.4e-9 and the first respaced sampling step multiplies the eps error at t = 999 by
    sqrt(abar(979) / abar(999)) ~ 670 in the sampled mean (``MARConfig.max_timestep``); a small head trained
    for a few thousand steps on uniform t (1 row in 1000 near t = 999) leaves an eps error there that makes
    samples diverge (token std ~1e3 measured at 3,100 steps of the zoo target). The objective per t is
    unchanged; only how often each t is visited.
    """

    def __init__(self, device=None, tail_frac: float = 0.0, tail: int = 20):
        if not 0.0 <= tail_frac < 1.0 or not 1 <= tail <= NUM_TRAIN_TIMESTEPS:
            raise ValueError(f"need 0 <= tail_frac < 1 and 1 <= tail <= {NUM_TRAIN_TIMESTEPS}, got {tail_frac}, {tail}")
        self.tail_frac, self.tail = tail_frac, tail
        s = DDPMSchedule.respaced("")  # all 1000 cosine steps
        self.T = NUM_TRAIN_TIMESTEPS
        f = lambda a: torch.as_tensor(a, dtype=torch.float64).float().to(device)  # noqa: E731
        self.abar = f(s.alphas_cumprod)
        self.log_beta = f(torch.log(torch.as_tensor(s.betas, dtype=torch.float64)))
        self.post_logvar = f(s.posterior_log_variance_clipped)
        self.coef1, self.coef2 = f(s.posterior_mean_coef1), f(s.posterior_mean_coef2)

    def to(self, device) -> "DiffusionLoss":
        for k in ("abar", "log_beta", "post_logvar", "coef1", "coef2"):
            setattr(self, k, getattr(self, k).to(device))
        return self

    def __call__(self, net, x0: torch.Tensor, z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        N, C = x0.shape
        t = torch.randint(0, self.T, (N,), generator=generator, device=x0.device)
        if self.tail_frac > 0:
            hi = torch.randint(self.T - self.tail, self.T, (N,), generator=generator, device=x0.device)
            t = torch.where(torch.rand(N, generator=generator, device=x0.device) < self.tail_frac, hi, t)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        abar = self.abar[t][:, None]
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise  # q(x_t | x_0), DDPM eq. 4
        out = net(x_t, t, z)  # (N, 2C) = [eps | v]
        eps, v = out[:, :C], out[:, C:]
        mse = (noise - eps).pow(2).mean(1)  # L_simple
        # L_vlb on the variance only (mean detached, as official ``frozen_out``)
        frac = (v + 1) / 2
        min_log, max_log = self.post_logvar[t][:, None], self.log_beta[t][:, None]
        model_logvar = frac * max_log + (1 - frac) * min_log
        pred_x0 = (1 / abar).sqrt() * x_t - (1 / abar - 1).sqrt() * eps.detach()
        c1, c2 = self.coef1[t][:, None], self.coef2[t][:, None]
        model_mean = c1 * pred_x0 + c2 * x_t
        true_mean = c1 * x0 + c2 * x_t
        kl = _normal_kl(true_mean, min_log, model_mean, model_logvar).mean(1) / math.log(2.0)
        nll = -_discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).mean(1) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        return mse + vb
