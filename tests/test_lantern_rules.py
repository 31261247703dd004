"""LANTERN: neighbour table, relaxed mass, δ=0 == exact, analytic per-step TV guarantees, LANTERN++ bound."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from accel.speculative.lantern import LanternRule, neighbour_table, relaxed_mass
from accel.speculative.rules import ExactRule

sys.path.insert(0, str(Path(__file__).parent))
from test_speculative_rules import P_LM, Q_LM, toy_speculative  # noqa: E402


def _codebook(V=12, D=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, D, generator=g) * torch.rand(V, 1, generator=g) * 3  # varied norms


def test_neighbour_table_raw_euclidean_self_excluded():
    cb = _codebook()
    t = neighbour_table(cb, k=100)
    assert t.shape == (12, 11) and t.dtype == torch.int16  # k capped at V-1
    d = torch.cdist(cb.double(), cb.double())
    for i in range(12):
        assert i not in t[i].tolist()
        dist = d[i, t[i].long()]
        assert torch.all(dist[1:] >= dist[:-1])  # ascending
        assert set(t[i].tolist()) == set(range(12)) - {i}
    # raw, not l2-normalised: the order differs from the normalised codebook's for this codebook
    tn = neighbour_table(torch.nn.functional.normalize(cb, dim=-1), k=100)
    assert not torch.equal(t, tn)
    assert neighbour_table(cb, k=3).shape == (12, 3)
    with pytest.raises(ValueError):
        neighbour_table(cb, k=0)


def test_relaxed_mass_is_longest_prefix_within_bound():
    g = torch.Generator().manual_seed(1)
    p = torch.rand(50, 12, generator=g).softmax(-1) ** 2
    p = p / p.sum(-1, keepdim=True)
    table = neighbour_table(_codebook(), 11)
    x = torch.randint(0, 12, (50,), generator=g)
    bound = torch.rand(50, generator=g) * 0.5
    s = relaxed_mass(p, table[x], bound)
    for r in range(50):
        prefix = torch.cumsum(p[r, table[x[r]].long()].double(), 0)
        fits = [float(v) for v in prefix if v <= bound[r]]
        assert float(s[r]) == pytest.approx(fits[-1] if fits else 0.0)
        assert float(s[r]) <= float(bound[r]) + 1e-12


def test_lantern_pp_bound():
    g = torch.Generator().manual_seed(2)
    p = torch.rand(40, 12, generator=g).softmax(-1)
    x = torch.randint(0, 12, (40,), generator=g)
    rule = LanternRule(neighbour_table(_codebook(), 11), k=11, delta=None, lam=3.0)
    pt, s = rule.relaxed(p, x)
    px = p.gather(1, x[:, None])[:, 0].double()
    assert torch.all(pt <= 3.0 * px + 1e-12) and torch.all(s >= 0)
    assert bool((s > 0).any())


@pytest.mark.parametrize("kind", ["official", "tv"])
def test_delta_zero_is_exact_sampling_even_with_zero_mass_neighbours(kind):
    """Same random stream -> identical tokens. p has exact zeros (top-k style) to hit the δ=0 quirk."""
    table = neighbour_table(_codebook(V=3, D=2), 2)
    rule = LanternRule(table, k=2, delta=0.0, residual_kind=kind)
    g = torch.Generator().manual_seed(3)
    p = torch.rand(64, 3, generator=g)
    p[:, 0] = 0.0  # a filtered token: zero mass neighbour of others
    p = p / p.sum(-1, keepdim=True)
    q = torch.rand(64, 3, generator=g).softmax(-1)
    x = torch.randint(0, 3, (64,), generator=g)
    ex = ExactRule()
    assert torch.equal(rule.accept_prob(p, q, x), ex.accept_prob(p, q, x))
    assert torch.allclose(rule.residual(p, q, x), ex.residual(p, q, x), atol=1e-7)
    assert torch.equal(rule.greedy_accept(p, x), ex.greedy_accept(p, x))
    a, _ = toy_speculative(P_LM, Q_LM, ex, 300, 3, greedy=False, seed=7)
    b, _ = toy_speculative(P_LM, Q_LM, LanternRule(neighbour_table(_codebook(V=3, D=2), 2), k=2, delta=0.0,
                                                   residual_kind=kind), 300, 3, greedy=False, seed=7)
    assert torch.equal(a, b)


def step_output(rule, p, q):
    """Analytic one-step output distribution: sum_x q(x) [α(x) δ_x + (1-α(x)) r_x]  -> (N, V)."""
    N, V = p.shape
    out = torch.zeros(N, V, dtype=torch.float64)
    for x in range(V):
        xs = torch.full((N,), x)
        a = rule.accept_prob(p, q, xs).double()
        r = rule.residual(p, q, xs).double()
        out += q[:, x : x + 1].double() * ((1 - a)[:, None] * r)
        out[:, x] += q[:, x].double() * a
    return out


def tv(a, b):
    return 0.5 * (a.double() - b.double()).abs().sum(-1)


def _pq(seed, N=30, V=12):
    g = torch.Generator().manual_seed(seed)
    p = (torch.randn(N, V, generator=g) * 1.5).softmax(-1)
    q = (torch.randn(N, V, generator=g) * 1.5).softmax(-1)
    return p, q


@pytest.mark.parametrize("delta", [0.05, 0.1, 0.2, 0.4])
@pytest.mark.parametrize("kind", ["official", "tv"])
def test_deterministic_draft_step_within_tv_delta(delta, kind):
    """q one-hot (EAGLE-2's q = 1): the step output is p~_x, TV(output, p) = S_j* <= δ, exactly."""
    p, _ = _pq(4)
    rule = LanternRule(neighbour_table(_codebook(), 11), k=5, delta=delta, residual_kind=kind)
    for x in range(12):
        q = torch.zeros_like(p)
        q[:, x] = 1.0
        out = step_output(rule, p, q)
        _, s = rule.relaxed(p, torch.full((p.shape[0],), x))
        assert torch.allclose(out.sum(-1), torch.ones(p.shape[0], dtype=torch.float64))
        assert torch.allclose(tv(out, p), s, atol=1e-6)
        assert torch.all(tv(out, p) <= delta + 1e-6)
    assert bool((s > 0).any())


@pytest.mark.parametrize("delta", [0.1, 0.4])
def test_tv_residual_stochastic_draft_bound(delta):
    """'tv' residual: TV(output, p) = sum max(0, min(q,p~)-p) <= min(TV(p,q), sum min(S, (q-p)+))."""
    p, q = _pq(5)
    rule = LanternRule(neighbour_table(_codebook(), 11), k=11, delta=delta, residual_kind="tv")
    out = step_output(rule, p, q)
    pt = rule.relaxed_all(p)
    over = (torch.minimum(q.double(), pt) - p.double()).clamp_min(0).sum(-1)
    assert torch.allclose(tv(out, p), over, atol=1e-6)
    bound = torch.minimum(tv(p, q), torch.minimum(pt - p.double(), (q - p).double().clamp_min(0)).sum(-1))
    assert torch.all(tv(out, p) <= bound + 1e-6)


@pytest.mark.parametrize("kind", ["official", "tv"])
def test_stochastic_draft_can_exceed_delta_caveat(kind):
    """The δ bound is per drafted token: p uniform, q on half the vocab, every neighbour prefix fits δ ->
    every draft is accepted and the output is q, TV = 0.5 > δ = 0.1 (documented in lantern.py)."""
    V = 100
    p = torch.full((1, V), 1.0 / V)
    q = torch.zeros(1, V)
    q[0, : V // 2] = 2.0 / V
    rule = LanternRule(neighbour_table(_codebook(V=V, D=2), 20), k=10, delta=0.1, residual_kind=kind)
    out = step_output(rule, p, q)
    assert float(tv(out, p)) == pytest.approx(0.5, abs=1e-6)


def test_official_residual_support_and_distribution():
    p, q = _pq(6)
    p[:, :4] = 0.0  # filtered tokens
    p = p / p.sum(-1, keepdim=True)
    rule = LanternRule(neighbour_table(_codebook(), 11), k=3, delta=0.2)
    for x in range(12):
        r = rule.residual(p, q, torch.full((p.shape[0],), x))
        assert torch.allclose(r.sum(-1), torch.ones(p.shape[0]), atol=1e-6)
        assert torch.all(r >= 0) and torch.all(r[:, :4] == 0)


def test_relaxation_raises_acceptance_and_tau():
    table = neighbour_table(_codebook(V=3, D=2), 2)
    _, tau0 = toy_speculative(P_LM, Q_LM, ExactRule(), 2000, 3, greedy=False, seed=1)
    _, tau1 = toy_speculative(P_LM, Q_LM, LanternRule(table, k=2, delta=0.4), 2000, 3, greedy=False, seed=1)
    assert tau1 > tau0 + 0.1


def test_bad_parameters():
    t = neighbour_table(_codebook(), 4)
    with pytest.raises(ValueError):
        LanternRule(t, k=4, delta=0.1, lam=2.0)
    with pytest.raises(ValueError):
        LanternRule(t, k=4, delta=1.5)
    with pytest.raises(ValueError):
        LanternRule(t, k=4, delta=None, lam=0.5)
    with pytest.raises(ValueError):
        LanternRule(t, k=4, delta=0.1)  # official residual needs k+1 = 5 columns
    LanternRule(t, k=4, delta=0.1, residual_kind="tv")
