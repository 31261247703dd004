"""Exact one-step output distribution of every acceptance rule, from (p, q) and the neighbour table.

One decoding position with target p and draft q (``(N, V)`` rows):

- sampled drafts (``ExactRule``, ``LanternRule``; one draft x ~ q, Leviathan Alg. 1 with the rule's
  acceptance a(x) and residual r_x):   out(y) = q(y) a(y) + sum_x q(x) (1 - a(x)) r_x(y)
- deterministic drafts (``DeterministicLanternRule``; the top-m tokens of q tried in order, q = 1):
  the rule's own ``law`` (emission probability of every child plus the residual left after all rejections).

``step_tv`` = TV(out, p) = 1/2 sum_y |out(y) - p(y)|: 0 for the exact rules, <= δ for the deterministic
LANTERN rule (proved in ``lantern_deterministic.py``), and not bounded by δ for sampled LANTERN drafts.
Cost: the sampled form builds ``(N, V, V)`` residuals, meant for small vocabularies and tests/analysis.
"""
from __future__ import annotations

import torch
from torch import Tensor


def sampled_law(rule, p: Tensor, q: Tensor) -> Tensor:
    """Output law ``(N, V)`` float64 of one draft x ~ q verified by ``rule.accept_prob`` / ``rule.residual``."""
    N, V = p.shape
    x = torch.arange(V, device=p.device).repeat(N)  # every possible draft of every row
    P, Q = p.repeat_interleave(V, 0), q.repeat_interleave(V, 0)
    a = rule.accept_prob(P, Q, x).double().view(N, V)
    res = rule.residual(P, Q, x).double().view(N, V, V)  # res[n, x] = residual after rejecting x
    qd = q.double()
    return qd * a + torch.einsum("nx,nxy->ny", qd * (1 - a), res)


def deterministic_law(rule, p: Tensor, q: Tensor, m: int = 1) -> Tensor:
    """Output law ``(N, V)`` float64 when the top-``m`` tokens of q are tried in order (q = 1 drafts)."""
    xs = q.topk(m, dim=-1).indices
    return rule.law(p, xs)


def step_law(rule, p: Tensor, q: Tensor, m: int = 1) -> Tensor:
    """The law the rule's decode loop emits at one position: deterministic rules try the top-``m`` of q
    (``m`` siblings; the chain is m = 1), sampled rules one draft from q."""
    if getattr(rule, "drafts", "sampled") == "deterministic":
        return deterministic_law(rule, p, q, m)
    if m != 1:
        raise ValueError(f"m={m}: the sampled-draft law is computed for one draft per position (m = 1)")
    return sampled_law(rule, p, q)


def step_tv(rule, p: Tensor, q: Tensor, m: int = 1) -> Tensor:
    """TV(out, p) per row ``(N,)`` float64."""
    return 0.5 * (step_law(rule, p, q, m) - p.double()).abs().sum(-1)
