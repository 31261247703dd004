"""Acceptance rules for speculative decoding, as pure functions of tensors (p = target, q = draft).

Exact speculative sampling: Leviathan et al. 2023 (arXiv 2211.17192) Algorithm 1, Chen et al. 2023
(arXiv 2302.01318) Algorithm 2. For a drafted token ``x ~ q``:

    accept with probability  min(1, p(x) / q(x))                        (Alg. 1, line "r < p/q")
    on rejection sample from p'(.) = norm(max(0, p(.) - q(.)))           (Alg. 1, residual)

so the emitted token is distributed exactly as ``p`` (Leviathan Thm. 1). The greedy form accepts iff
``x == argmax p`` and emits ``argmax p`` on rejection, so it reproduces greedy AR decoding token for token.

A *rule* is an object with three methods, all batched over rows ``N`` (p, q: ``(N, V)`` probabilities,
x: ``(N,)`` drafted ids):

- ``accept_prob(p, q, x) -> (N,)``: probability of accepting ``x`` (sampling mode);
- ``residual(p, q, x) -> (N, V)``: distribution to sample from when ``x`` is rejected;
- ``greedy_accept(p, x) -> (N,) bool``: acceptance in greedy mode (bonus/correction = ``argmax p``).

``verify_chain`` runs a whole chain of drafts through a rule; the LANTERN rule lives in ``lantern.py``.
All randomness comes from an explicit ``torch.Generator``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from accel.validate import finite_pq, raise_non_finite_pq


def normalize_or(dist: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Rows of ``dist`` (non-negative) renormalised; rows with zero mass are replaced by ``fallback``."""
    mass = dist.sum(-1, keepdim=True)
    return torch.where(mass > 0, dist / mass.clamp_min(torch.finfo(dist.dtype).tiny), fallback)


def exact_residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Leviathan Alg. 1 residual ``norm(max(0, p - q))``.

    Its mass is zero only when ``p == q`` (then rejection has probability 0 and the row is never used);
    such rows fall back to ``p`` so the result is always a distribution.
    """
    return normalize_or((p - q).clamp_min(0), p)


def ratio_accept_prob(p_x: torch.Tensor, q_x: torch.Tensor) -> torch.Tensor:
    """``min(1, p_x / q_x)`` with ``q_x = 0`` read as 'accept iff p_x > 0' (x cannot be drawn from q then)."""
    safe = q_x.clamp_min(torch.finfo(q_x.dtype).tiny)
    return torch.where(q_x > 0, (p_x / safe).clamp(max=1.0), (p_x > 0).to(p_x.dtype))


def sample(probs: torch.Tensor, generator: torch.Generator | None, *, u: torch.Tensor | None = None) -> torch.Tensor:
    """One id per row of ``probs`` ``(N, V)`` -> ``(N,)`` long, by inverse CDF.

    ``u ~ U[0, total)``, index = first i with ``cdf[i] > u``: token i is hit with probability
    ``probs[i] / total`` and zero-probability tokens never. (Several times cheaper than ``torch.multinomial``
    for the small per-step batches of a decode loop on CPU.) ``u (N,)``: uniforms in [0, 1) drawn by the caller
    (then ``generator`` is not used).
    """
    cdf = probs.float().cumsum(-1)
    if u is None:
        u = torch.rand(*probs.shape[:-1], 1, generator=generator, device=probs.device)
    else:
        u = u[..., None]
    u = u * cdf[..., -1:]
    return torch.searchsorted(cdf, u, right=True)[..., 0].clamp_max(probs.size(-1) - 1)


@dataclass(frozen=True)
class ExactRule:
    """Exact speculative sampling (Leviathan Alg. 1) and its greedy form."""

    name: str = "exact"

    def accept_prob(self, p: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = x.long()[:, None]
        return ratio_accept_prob(p.gather(1, x)[:, 0], q.gather(1, x)[:, 0])

    def residual(self, p: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return exact_residual(p, q)

    def greedy_accept(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return p.argmax(-1) == x.long()


@dataclass(frozen=True)
class ChainVerdict:
    """Outcome of verifying one chain of ``γ`` drafts per row."""

    n_accepted: torch.Tensor  # (B,) long, number of leading drafts accepted (0..γ)
    next_token: torch.Tensor  # (B,) long, correction (at position n_accepted) or bonus token (if all accepted)
    accepted: torch.Tensor  # (B, γ) bool, per-position verdicts (only the leading run counts)


def verify_chain(rule, p: torch.Tensor, q: torch.Tensor | None, x: torch.Tensor, *,
                 greedy: bool, generator: torch.Generator | None, step=None, check_finite: bool = True) -> ChainVerdict:
    """Verify drafts ``x (B, γ)`` against target ``p (B, γ+1, V)`` and draft ``q (B, γ, V)``.

    ``p[:, i]`` is the target distribution for draft ``i`` (``p[:, γ]`` the bonus position after all drafts).
    Sequential acceptance (Leviathan Alg. 1) is vectorised: one uniform per position is drawn up front, the
    accepted count is the length of the leading run of ``r < accept_prob``; the next token is sampled from
    the rule's residual at the first rejection, or from ``p[:, γ]`` if every draft was accepted.
    ``q`` may be ``None`` in greedy mode. Non-finite ``p``/``q`` raise ``NonFiniteError`` naming the model
    and ``step`` (one host read per call); ``check_finite=False`` leaves that check to the caller (a decode loop
    that folds it into its own per-round read, ``decoder.py``) and makes the call free of host reads.
    """
    B, gamma = x.shape
    if p.shape[:2] != (B, gamma + 1):
        raise ValueError(f"p must be (B, γ+1, V) = ({B}, {gamma + 1}, V), got {tuple(p.shape)}")
    if not greedy and (q is None or q.shape[:2] != (B, gamma)):
        raise ValueError(f"q must be (B, γ, V) = ({B}, {gamma}, V) in sampling mode")
    V = p.shape[-1]
    flat_p = p[:, :gamma].reshape(B * gamma, V)
    flat_x = x.reshape(-1).long()
    if greedy:
        ok = rule.greedy_accept(flat_p, flat_x).view(B, gamma)
    else:
        prob = rule.accept_prob(flat_p, q.reshape(B * gamma, V), flat_x).view(B, gamma)
        r = torch.rand(B, gamma, generator=generator, device=p.device, dtype=prob.dtype)
        ok = r < prob  # Alg. 1: accept iff r < p(x)/q(x)  (r ~ U[0, 1))
    n_acc = torch.cumprod(ok.long(), dim=1).sum(1)  # length of the leading run of accepts
    rows = torch.arange(B, device=p.device)
    p_at = p[rows, n_acc]  # (B, V): target at the first rejection, or the bonus position
    rejected = n_acc < gamma
    if check_finite and not bool(finite_pq(p, None if greedy else q)):  # one host read (NaN check)
        raise_non_finite_pq(p, None if greedy else q, step, "speculative verification")
    if greedy:
        nxt = p_at.argmax(-1)  # the greedy residual is the one-hot of argmax p
    else:
        dist = p_at
        if gamma:  # every row's residual at its first rejection, then a select (no host sync on `rejected`)
            j = n_acc.clamp_max(gamma - 1)
            res = rule.residual(p[rows, j], q[rows, j], x[rows, j].long()).to(p_at.dtype)
            dist = torch.where(rejected[:, None], res, p_at)
        nxt = sample(dist, generator)
    return ChainVerdict(n_accepted=n_acc, next_token=nxt, accepted=ok)
