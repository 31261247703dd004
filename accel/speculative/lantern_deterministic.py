"""LANTERN with deterministic drafts: the released code's default δ path (arXiv 2410.03355, research §3.3 item 3).

The drafter proposes its top-m children deterministically (EAGLE-2 drafts, so q = 1 for every drafted token);
the children x_1..x_m of one node are tried in order against the relaxed target. Notation (p = target at the
node, n_1..n_k the k latents nearest to x, x excluded, m_i the residual mass before child i, unnormalised, in
the units of p; m_1 = p):

    S_i    = largest prefix sum  sum_{l<=j} m_i(n_l)  with  S_i <= δ_i          (Eq. 6, the set A_{k,δ}(x_i))
    A_i    = {x_i, n_1..n_j}                                                     (the mass aggregated onto x_i)
    accept x_i with probability  p~_i(x_i) / 1 = m_i(A_i) / m_i(V)              (Eq. 7 with q(x) = 1)
    on rejection  m_{i+1} = m_i with A_i zeroed,  δ_{i+1} = δ_i - S_i,  δ_1 = δ
    no child accepted: sample from norm(m_{m+1})

The residual removes only what was rejected (A_i: x_i and the neighbours whose mass was moved onto it). Then
token x_i is emitted with unconditional probability m_i(A_i) <= p(x_i) + S_i and every other token y with
probability <= p(y), so the one-step output q_out satisfies

    TV(q_out, p) = sum_y max(0, q_out(y) - p(y)) <= sum_i S_i <= δ                 (kept for the whole step)

With δ = 0 nothing is relaxed (zero-mass prefixes move no mass) and this is recursive rejection sampling with
one-hot proposals: the output law is exactly p (exact speculative decoding of a deterministic draft).

Differences from the released code, on purpose: it zeroes all k + 1 neighbours of a rejected child (not only
the j whose mass was used, which removes mass that was never offered) and renormalises before testing the next
sibling with a fresh δ (so m siblings can move up to m·δ); here both would break the bound above.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from accel.speculative.rules import normalize_or, sample


@dataclass(frozen=True)
class DeterministicLanternRule:
    """LANTERN acceptance for deterministic (top-m) drafts, q = 1. ``neighbours``: ``neighbour_table`` output
    with at least ``min(k, V - 1)`` columns. ``delta = 0`` is exact speculative decoding of deterministic drafts."""

    neighbours: Tensor
    k: int = 1000
    delta: float = 0.1
    name: str = "lantern-det"
    drafts: str = "deterministic"  # the loops draft argmax / top-m children for this rule

    def __post_init__(self):
        if not 0.0 <= self.delta <= 1.0:
            raise ValueError(f"delta must be in [0, 1], got {self.delta}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        V, depth = self.neighbours.shape
        if depth < min(self.k, V - 1):
            raise ValueError(f"neighbour table has {depth} columns, need {min(self.k, V - 1)} for k={self.k}")

    @property
    def kk(self) -> int:
        return min(self.k, self.neighbours.shape[0] - 1)

    @cached_property
    def _self_and_neighbours(self) -> Tensor:
        """``(V, 1 + k)``: each token, then its k nearest neighbours (one gather fetches a child's A-candidates)."""
        nbr = self.neighbours[:, : self.kk]
        return torch.cat([torch.arange(nbr.size(0), dtype=nbr.dtype, device=nbr.device)[:, None], nbr], 1)

    def _relax(self, m: Tensor, x: Tensor, budget: Tensor) -> tuple[Tensor, Tensor]:
        """``(S, A)``: relaxed mass ``(N,)`` and the bool mask ``(N, V)`` of A_{k,δ}(x) under residual ``m``."""
        nbr = self.neighbours.to(m.device)[x, : self.kk].long()  # (N, k)
        cs = m.gather(1, nbr).cumsum(1)  # S_1..S_k
        j = (cs <= budget[:, None]).sum(1)
        s = torch.where(j > 0, cs.gather(1, (j - 1).clamp_min(0)[:, None])[:, 0], torch.zeros_like(budget))
        used = torch.arange(nbr.size(1), device=m.device)[None] < j[:, None]
        A = torch.zeros_like(m, dtype=torch.bool).scatter(1, nbr, used)  # n_1..n_j (x is never its own neighbour)
        return s, A.scatter(1, x[:, None], True)

    def siblings(self, p: Tensor, xs: Tensor, u: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Try children ``xs (N, W)`` (``-1`` = no child) of each row in order against target ``p (N, V)``.

        ``u (N, W)``: uniforms in [0, 1) deciding acceptance (``None``: every child is rejected, which gives the
        law). Returns ``(chosen (N,)`` column index or -1, ``emit (N, W)`` the unconditional probability that
        child i is emitted, ``rest (N, V)`` the unnormalised residual after every child was rejected``)``, float64.

        The walk is computed once, as if every child were rejected (the module's recursion: each child sees the
        residual and the δ left by the ones before it); a child's acceptance only stops the walk, so ``chosen``
        is then the first child i with ``u_i m_i(V) < m_i(A_i)``, tested for all children at once. The loop
        over siblings is sequential by definition (each step sees the previous residual); it gathers each
        child's token and neighbours, ``[x_i, n_1..n_k]``, in one index and zeroes the rejected A_i with one
        scatter, so each step is a few small operations on ``(N, k)``.
        """
        m = p.double().clone()
        N, W = xs.shape
        budget = torch.full((N,), float(self.delta), dtype=torch.float64, device=p.device)
        idx_all = self._self_and_neighbours.to(p.device)[xs.clamp_min(0)].long()  # (N, W, 1 + k): x_i, n_1..n_k
        live = xs >= 0
        not_x = torch.ones(1, idx_all.size(-1), dtype=torch.float64, device=p.device)
        not_x[0, 0] = 0.0
        emit, total = [], []
        for i in range(W):
            idx, has = idx_all[:, i], live[:, i]
            g = m.gather(1, idx)  # m_i(x_i), m_i(n_1..n_k)
            cs = (g * not_x).cumsum(1)  # 0, S_1..S_k (Eq. 6), non-decreasing
            used = cs <= budget[:, None]  # x_i and exactly n_1..n_j* (a prefix, as cs is monotone; 0 <= budget)
            s = (cs * used).amax(1)  # S_j* (0 when no prefix fits)
            emit.append(g[:, 0] + s)  # m_i(A_i)
            total.append(m.sum(1))  # m_i(V)
            # rejected: A_i = {x_i, n_1..n_j*} leaves the residual (x is never its own neighbour: no duplicate)
            m = m.scatter(1, idx, g.masked_fill(used & has[:, None], 0.0))
            budget = budget - s * has
        none = torch.full((N,), -1, dtype=torch.long, device=p.device)
        if W == 0:
            return none, m.new_zeros(N, 0), m
        emit = torch.stack(emit, 1) * live
        if u is None:
            return none, emit, m
        acc = live & (u.double() * torch.stack(total, 1) < emit)  # accept w.p. m_i(A_i) / m_i(V)
        chosen = torch.where(acc.any(1), acc.long().argmax(1), none)  # the first accepted child
        return chosen, emit, m

    def step(self, p: Tensor, xs: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """One node: ``(chosen column or -1 (N,), token (N,))``; the token is the accepted child, else a draw
        from the residual."""
        u = torch.rand(xs.shape, generator=generator, device=p.device, dtype=torch.float64)
        chosen, _, rest = self.siblings(p, xs, u)
        drawn = sample(normalize_or(rest, p.double()), generator)
        tok = torch.where(chosen >= 0, xs.gather(1, chosen.clamp_min(0)[:, None])[:, 0], drawn)
        return chosen, tok

    def law(self, p: Tensor, xs: Tensor) -> Tensor:
        """Exact one-step output distribution ``(N, V)`` float64 for children ``xs``."""
        _, emit, rest = self.siblings(p, xs)
        return rest.scatter_add(1, xs.clamp_min(0), emit)

    # chain interface (one child per position, ``rules.verify_chain``): q is ignored, drafts are deterministic
    def accept_prob(self, p: Tensor, q: Tensor, x: Tensor) -> Tensor:
        budget = torch.full((p.size(0),), float(self.delta), dtype=torch.float64, device=p.device)
        m = p.double()
        s, _ = self._relax(m, x.long(), budget)
        a = (m.gather(1, x.long()[:, None])[:, 0] + s) / m.sum(1).clamp_min(torch.finfo(m.dtype).tiny)
        return a.clamp(max=1.0).to(p.dtype)

    def residual(self, p: Tensor, q: Tensor, x: Tensor) -> Tensor:
        budget = torch.full((p.size(0),), float(self.delta), dtype=torch.float64, device=p.device)
        _, A = self._relax(p.double(), x.long(), budget)
        return normalize_or(p.masked_fill(A, 0.0), p)

    def greedy_accept(self, p: Tensor, x: Tensor) -> Tensor:
        """Greedy mode (research §3.3 item 5): accept iff p~(x) >= max_{y != x} p(y)."""
        budget = torch.full((p.size(0),), float(self.delta), dtype=torch.float64, device=p.device)
        s, _ = self._relax(p.double(), x.long(), budget)
        others = p.scatter(1, x.long()[:, None], float("-inf")).amax(-1)
        return p.gather(1, x.long()[:, None])[:, 0].double() + s >= others.double()
