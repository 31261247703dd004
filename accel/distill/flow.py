"""Distilled Decoding (DD1, arXiv 2412.17153) — the per-token flow map.

For one token whose teacher distribution is ``p`` over codebook vectors ``c_1..c_V`` (a mixture of Dirac
deltas), DD1 builds a flow-matching ODE from Gaussian noise to that mixture. With the rectified-flow
path ``X_t = t X_1 + (1 - t) X_0`` (``X_0 = eps ~ N(0, I)``, ``X_1 ~ p``), ``X_t | X_1 = c_i`` is
``N(t c_i, (1 - t)^2 I)``, so the marginal velocity has a closed form (no network):

    w_i(x, t) = softmax_i( log p_i - ||x - t c_i||^2 / (2 (1 - t)^2) )          (posterior of X_1 = c_i)
    v(x, t)   = (sum_i w_i c_i - x) / (1 - t)  =  (E[X_1 | X_t = x] - x) / (1 - t)

Integrating from t = 0 to 1 maps ``eps`` deterministically onto one code and pushes N(0, I) forward to
``p``. Weights use log-sum-exp (they become one-hot as t -> 1). The last step is an Euler step to t = 1,
which lands exactly on the posterior mean ``E[X_1 | x]`` — a code once the weights are one-hot — so the
singular velocity at t = 1 is never evaluated.

Notation: ``codes`` (V, d) codebook vectors in the space the tokens live in (LlamaGen: the l2-normalised
codebook; VAR: the raw Cvae vectors), ``logp`` (..., V) log-probabilities, ``x`` (..., d).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def posterior_weights(x: Tensor, t: float, codes: Tensor, logp: Tensor) -> Tensor:
    """w_i(x, t) (..., V), computed in float32 log space."""
    x, codes, logp = x.float(), codes.float(), logp.float()
    # ||x - t c_i||^2 = ||x||^2 - 2t x.c_i + t^2 ||c_i||^2; the first term is the same for every i and
    # cancels in the softmax, so only a (..., d) @ (d, V) product is needed (no (..., V, d) tensor).
    d2 = t * t * codes.pow(2).sum(-1) - 2 * t * (x @ codes.t())  # (..., V)
    return torch.softmax(logp - d2 / (2 * (1 - t) ** 2), dim=-1)


def posterior_mean(x: Tensor, t: float, codes: Tensor, logp: Tensor) -> Tensor:
    """E[X_1 | X_t = x] (..., d)."""
    return posterior_weights(x, t, codes, logp) @ codes.float()


def velocity(x: Tensor, t: float, codes: Tensor, logp: Tensor) -> Tensor:
    """v(x, t) = (E[X_1 | x] - x) / (1 - t) for t < 1."""
    return (posterior_mean(x, t, codes, logp) - x.float()) / (1 - t)


@dataclass(frozen=True)
class FlowSolver:
    """Integrates the per-token ODE on a uniform grid of ``steps`` intervals over [0, 1].

    ``method``: "euler" or "heun" (2nd order, Heun's predictor-corrector) for every interval but the
    last, which is always the exact-landing Euler step x_1 = E[X_1 | x_{t_{K-1}}].
    """

    steps: int = 100
    method: str = "heun"

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1 (got {self.steps})")
        if self.method not in ("euler", "heun"):
            raise ValueError(f"unknown solver {self.method!r}; valid: ['euler', 'heun']")

    def endpoint(self, eps: Tensor, codes: Tensor, logp: Tensor) -> Tensor:
        """Map noise ``eps`` (..., d) to the flow's end point (..., d).

        The posterior logits are one fused ``addmm`` per evaluation: ``logp_i - t^2 ||c_i||^2 / (2 (1-t)^2)``
        (computed once per t as a row bias) ``+ t / (1-t)^2 * x.c_i`` — the same arithmetic as
        ``posterior_weights`` (the ``||x||^2`` term cancels), batched over every row (pair x token) at once."""
        ts = torch.linspace(0.0, 1.0, self.steps + 1).tolist()
        shape = eps.shape
        codes = codes.float()
        x = eps.float().reshape(-1, shape[-1])
        logp = logp.float().reshape(-1, codes.size(0))
        csq, cT = codes.pow(2).sum(-1), codes.t().contiguous()

        def mean(x: Tensor, t: float) -> Tensor:  # E[X_1 | X_t = x] (N, d)
            a = t / (1 - t) ** 2
            z = torch.addmm(logp - (0.5 * t * a) * csq, x, cT, alpha=a)  # (N, V) posterior logits
            return torch.softmax(z, dim=-1) @ codes

        for t0, t1 in zip(ts[:-2], ts[1:-1]):
            v0 = (mean(x, t0) - x) / (1 - t0)
            if self.method == "euler":
                x = x + (t1 - t0) * v0
            else:
                x1 = x + (t1 - t0) * v0
                x = x + (t1 - t0) * 0.5 * (v0 + (mean(x1, t1) - x1) / (1 - t1))
        return mean(x, ts[-2]).view(shape)

    def tokens(self, eps: Tensor, codes: Tensor, logp: Tensor) -> Tensor:
        """Map noise to codebook indices (..., ): the code nearest to the flow's end point."""
        end = self.endpoint(eps, codes, logp)
        return torch.cdist(end.reshape(-1, end.size(-1)), codes.float()).argmin(-1).view(end.shape[:-1])
