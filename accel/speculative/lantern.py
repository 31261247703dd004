"""LANTERN relaxed speculative decoding (Jang et al., arXiv 2410.03355) and the LANTERN++ bound (arXiv 2502.06352).

Notation (p = target, q = draft, x = drafted token, n_1..n_k = the k latents nearest to x, x excluded):

    S_j    = sum_{i<=j} p(n_i)                                   prefix sums over the neighbour list
    j*     = largest j with S_j <= delta          (LANTERN, δ <= 1)
           = largest j with S_j <= (lam-1) p(x)   (LANTERN++ static-tree bound, λ > 1, so p~(x) <= λ p(x))
    p~(x)  = p(x) + S_{j*}   (= p(x) when no prefix fits)         relaxed probability, = p(A_{k,δ}(x))
    accept x with probability min(1, p~(x) / q(x))                sampling mode
    accept x iff p~(x) >= max_{y != x} p(y)                       greedy mode

Neighbourhoods (``neighbour_table``) come from the RAW, un-normalised codebook rows by Euclidean distance,
self excluded, ascending, as the official ``generate_codebook.py`` builds them.

Residual on rejection (``residual=``):

- ``"official"`` -- as the official static-tree path (``evaluate_posterior_v1``) builds it for one draft per
  position: ``norm(max(p - q', 0))`` where ``q'`` is ``q`` with the k+1 nearest neighbours of x zeroed and
  renormalised when a neighbour was used (else ``q' = q``). What it guarantees (tested): it is a distribution
  on the support of p (so top-k/top-p filtered tokens are never emitted); with no neighbour used it is the
  exact Leviathan residual; for a deterministic draft (q one-hot, the EAGLE-2 ``q = 1`` case) the step emits
  x with probability p~(x) and other tokens in proportion to p, so TV(step output, p) = S_{j*} <= δ.
- ``"tv"`` -- ``norm(max(p - min(q, p~), 0))`` with p~ evaluated for every token. This minimises the per-step
  total variation for the given acceptance: TV(output, p) = sum_y max(0, min(q, p~)(y) - p(y))
  <= min(TV(p, q), sum_y min(S(y), max(0, q(y) - p(y)))). Costs a (V, k) gather per row.

Caveat (proved by a test): with a stochastic drafter no residual keeps the per-step TV below δ in general,
because every token y with q(y) <= p~(y) is always accepted; the δ bound is per drafted token (TV(p, p~_x) <= δ).
Measured on real zoo (p, q) pairs the one-step TV of this sampled rule is several times δ (results/
lantern-deterministic). This rule is the LANTERN++ static-tree path (``drafts="sampled"`` in the API); the
released default δ path, deterministic drafts with q = 1 and a step TV <= δ, is ``lantern_deterministic.py``.

δ = 0: the official code counts zero-mass neighbours (e.g. removed by top-k) as "used" since S_j = 0 <= 0 and
then changes the residual. Here a prefix with zero mass counts as no relaxation, so δ = 0 is exactly
speculative sampling (same acceptance, same residual, same random stream).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from accel.speculative.rules import normalize_or, ratio_accept_prob


def neighbour_table(codebook: torch.Tensor, k: int, *, chunk: int = 2048) -> torch.Tensor:
    """Indices of the ``k`` nearest other codes of each code, ascending Euclidean distance -> ``(V, k)``.

    ``codebook`` is the raw ``(V, D)`` embedding (LlamaGen: ``quantize.embedding.weight``, not l2-normalised).
    ``k`` is capped at ``V - 1``. Stored as int16 when ``V <= 32768`` (LlamaGen's 16384 codes), else int32.
    Distances are computed in float64 in row chunks of ``chunk`` (memory ``O(chunk * V)``).
    """
    if codebook.dim() != 2:
        raise ValueError(f"codebook must be (V, D), got {tuple(codebook.shape)}")
    V = codebook.shape[0]
    if V < 2:
        raise ValueError("need at least two codes")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, V - 1)
    dtype = torch.int16 if V <= 32768 else torch.int32
    e = codebook.detach().to(torch.float64)
    out = torch.empty(V, k, dtype=dtype)
    for s in range(0, V, chunk):
        d = torch.cdist(e[s : s + chunk], e)  # (c, V)
        rows = torch.arange(d.shape[0])
        d[rows, rows + s] = float("inf")  # self excluded
        out[s : s + chunk] = d.topk(k, dim=1, largest=False, sorted=True).indices.to(dtype).cpu()
    return out


def relaxed_mass(p: torch.Tensor, nbr: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """``S_{j*}``: the longest prefix sum of neighbour probabilities that stays ``<= bound``.

    p: ``(N, V)``; nbr: ``(N, k)`` neighbour ids of each row's token; bound: ``(N,)``. Returns ``(N,)`` float64.
    Prefix sums are monotone (p >= 0), so counting the sums ``<= bound`` gives j*.
    """
    cs = p.gather(1, nbr.long()).double().cumsum(1)  # (N, k)  S_1..S_k
    j = (cs <= bound.double()[:, None]).sum(1)  # j*
    return torch.where(j > 0, cs.gather(1, (j - 1).clamp_min(0)[:, None])[:, 0], torch.zeros_like(cs[:, 0]))


@dataclass(frozen=True)
class LanternRule:
    """LANTERN relaxed acceptance. ``neighbours`` is a table from ``neighbour_table`` with at least ``k``
    columns (``k + 1`` for the official residual; fewer is allowed only when capped at V - 1).

    Exactly one of ``delta`` (LANTERN, paper default 0.1) or ``lam`` (LANTERN++ bound λ > 1) is used.
    """

    neighbours: torch.Tensor
    k: int = 1000
    delta: float | None = 0.1
    lam: float | None = None
    residual_kind: str = "official"
    name: str = "lantern"

    def __post_init__(self):
        V, depth = self.neighbours.shape
        if (self.delta is None) == (self.lam is None):
            raise ValueError("give exactly one of delta (LANTERN) or lam (LANTERN++)")
        if self.delta is not None and not 0.0 <= self.delta <= 1.0:
            raise ValueError(f"delta must be in [0, 1], got {self.delta}")
        if self.lam is not None and self.lam <= 1.0:
            raise ValueError(f"lam must be > 1, got {self.lam}")
        if self.residual_kind not in ("official", "tv"):
            raise ValueError(f"residual_kind must be 'official' or 'tv', got {self.residual_kind!r}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        need = min(self.k + (self.residual_kind == "official"), V - 1)
        if self.neighbours.numel() and not 0 <= int(self.neighbours.min()) <= int(self.neighbours.max()) < V:
            raise ValueError(f"neighbour table holds ids outside 0..{V - 1} (its own {V} rows): it was built "
                             "from another codebook; rebuild it with neighbour_table(codebook, k)")
        if depth < need:
            raise ValueError(f"neighbour table has {depth} columns, need {need} for k={self.k}")

    @property
    def kk(self) -> int:
        return min(self.k, self.neighbours.shape[0] - 1)

    def _bound(self, p_x: torch.Tensor) -> torch.Tensor:
        if self.lam is not None:
            return (self.lam - 1.0) * p_x.double()  # LANTERN++: S_j <= (λ-1) p(x)
        return torch.full_like(p_x, self.delta, dtype=torch.float64)

    def relaxed(self, p: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(p~(x), S_{j*})`` for each row, float64."""
        x = x.long()
        p_x = p.gather(1, x[:, None])[:, 0]
        nbr = self.neighbours.to(p.device)[x, : self.kk]
        s = relaxed_mass(p, nbr, self._bound(p_x))
        return p_x.double() + s, s

    def relaxed_all(self, p: torch.Tensor) -> torch.Tensor:
        """``p~(y)`` for every token y, ``(N, V)`` float64 (used by the "tv" residual and analytic checks)."""
        nbr = self.neighbours.to(p.device)[:, : self.kk].long()  # (V, k)
        cs = p[:, nbr].double().cumsum(-1)  # (N, V, k)  S_1..S_k for every token
        bound = self._bound(p)  # (N, V)
        j = (cs <= bound[..., None]).sum(-1)
        s = torch.where(j > 0, cs.gather(-1, (j - 1).clamp_min(0)[..., None])[..., 0], torch.zeros_like(bound))
        return p.double() + s

    def accept_prob(self, p: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        pt, _ = self.relaxed(p, x)
        return ratio_accept_prob(pt, q.gather(1, x.long()[:, None])[:, 0].double()).to(p.dtype)

    def greedy_accept(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        pt, _ = self.relaxed(p, x)
        others = p.scatter(1, x.long()[:, None], float("-inf")).amax(-1)
        return pt >= others.double()

    def residual(self, p: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.residual_kind == "tv":
            a = torch.minimum(q.double(), self.relaxed_all(p))
            return normalize_or((p.double() - a).clamp_min(0), p.double()).to(p.dtype)
        _, s = self.relaxed(p, x)
        used = s > 0  # zero-mass prefixes count as no relaxation (δ = 0 is exact; see module doc)
        depth = min(self.kk + 1, self.neighbours.shape[1])
        nb = self.neighbours.to(p.device)[x.long(), :depth].long()
        qu = q.scatter(1, nb, 0.0)  # every row, then a select: no host read on `used`
        qq = torch.where(used[:, None], normalize_or(qu, torch.zeros_like(qu)), q)
        return normalize_or((p - qq).clamp_min(0), p)
