"""LANTERN's deterministic-draft path: the exact one-step law of every rule, TV <= δ with a power check, δ = 0
is exact, the sampler matches its law, and model-level chi-square of deterministic exact-mode decoding."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

import accel
from accel.models.llamagen_generate import SamplingConfig
from accel.speculative.decoder import speculative_generate
from accel.speculative.drafters import ModelDrafter
from accel.speculative.lantern import LanternRule, neighbour_table
from accel.speculative.lantern_deterministic import DeterministicLanternRule
from accel.speculative.rules import ExactRule
from accel.speculative.step_law import sampled_law, step_law, step_tv
from accel.speculative.tree import Tree, tree_generate

sys.path.insert(0, str(Path(__file__).parent))
from test_speculative_decoder import _joint, tiny  # noqa: E402

V = 48


def _table(seed=0):
    g = torch.Generator().manual_seed(seed)
    cb = torch.randn(V, 8, generator=g) * torch.rand(V, 1, generator=g) * 3  # raw codebook, varied norms
    return neighbour_table(cb, V - 1)


def _pairs(kind: str, N=120, seed=0):
    """(p, q) rows: independent Dirichlet ("random"), or peaked zoo-like pairs: a drafter whose logits are the
    target's plus noise, both sharp, with top-k zeros in p ("peaked")."""
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        d = torch.distributions.Dirichlet(torch.full((V,), 0.3))
        torch.manual_seed(seed)
        return d.sample((N,)), d.sample((N,))
    logits = torch.randn(N, V, generator=g) * 3.0
    q = torch.softmax(logits + torch.randn(N, V, generator=g) * 1.2, -1)
    p_logits = logits.clone()
    p_logits[p_logits < p_logits.topk(24, -1).values[:, -1:]] = float("-inf")  # top-k filtered target
    return torch.softmax(p_logits, -1), q


@pytest.mark.parametrize("kind", ["random", "peaked"])
@pytest.mark.parametrize("delta", [0.05, 0.1, 0.2])
@pytest.mark.parametrize("m", [1, 3, 10])
def test_deterministic_step_tv_within_delta(kind, delta, m):
    p, q = _pairs(kind)
    rule = DeterministicLanternRule(_table(), k=V - 1, delta=delta)
    law = step_law(rule, p, q, m)
    assert torch.allclose(law.sum(-1), torch.ones(len(p), dtype=torch.float64), atol=1e-9)
    drafted = torch.zeros_like(p, dtype=torch.bool).scatter(1, q.topk(m, -1).indices, True)
    # a token the target filtered out is emitted only as a drafted child that took neighbour mass (Eq. 7)
    assert (law >= 0).all() and (law[(p == 0) & ~drafted] == 0).all()
    tv = step_tv(rule, p, q, m)
    assert tv.max() <= delta + 1e-9
    assert tv.mean() > 0.3 * delta  # the relaxation is really used (not a trivially exact rule)


@pytest.mark.parametrize("kind", ["random", "peaked"])
@pytest.mark.parametrize("delta", [0.05, 0.1])
def test_sampled_lantern_at_the_same_delta_violates_the_bound(kind, delta):
    """Power check: the same TV test fails for sampled drafts with min(1, p~/q) (the LANTERN++ rule)."""
    p, q = _pairs(kind)
    tv = step_tv(LanternRule(_table(), k=V - 2, delta=delta), p, q)
    assert tv.max() > 2 * delta


@pytest.mark.parametrize("kind", ["random", "peaked"])
def test_exact_rules_have_zero_tv(kind):
    p, q = _pairs(kind)
    assert step_tv(ExactRule(), p, q).max() < 1e-6
    for m in (1, 4):
        assert step_tv(DeterministicLanternRule(_table(), k=V - 1, delta=0.0), p, q, m).max() < 1e-12
    assert step_tv(LanternRule(_table(), k=V - 2, delta=0.0), p, q).max() < 1e-6


def test_chain_interface_agrees_with_the_sibling_law():
    """accept_prob/residual (used by verify_chain) give the same law as ``law`` with one child (q = one-hot)."""
    p, q = _pairs("peaked", N=40)
    rule = DeterministicLanternRule(_table(), k=V - 1, delta=0.1)
    x = q.argmax(-1)
    onehot = torch.nn.functional.one_hot(x, V).float()
    assert torch.allclose(sampled_law(rule, p, onehot), rule.law(p, x[:, None]), atol=1e-6)


def test_sampler_matches_its_law():
    p, q = _pairs("peaked", N=1, seed=3)
    rule = DeterministicLanternRule(_table(), k=V - 1, delta=0.2)
    xs = q.topk(4, -1).indices
    n = 40000
    g = torch.Generator().manual_seed(0)
    _, tok = rule.step(p.expand(n, V), xs.expand(n, 4), g)
    law = rule.law(p, xs)[0].numpy()
    counts = np.bincount(tok.numpy(), minlength=V)
    keep = law * n >= 5
    assert counts[~keep].sum() <= 30
    exp = law[keep] * n
    assert scipy.stats.chisquare(counts[keep], exp * counts[keep].sum() / exp.sum()).pvalue > 1e-3


def test_released_code_residual_would_break_the_bound():
    """Why the residual removes only A(x): zeroing all k + 1 neighbours and re-using δ per sibling (the released
    code) moves more than δ with several siblings on these pairs."""
    p, q = _pairs("random")
    table, delta = _table(), 0.1
    xs = q.topk(3, -1).indices
    out = torch.zeros_like(p, dtype=torch.float64)
    m, reach = p.double().clone(), torch.ones(len(p), dtype=torch.float64)
    k = 8
    rule = DeterministicLanternRule(table, k=k, delta=delta)
    for i in range(3):
        pn = m / m.sum(-1, keepdim=True).clamp_min(1e-300)
        x = xs[:, i]
        s, _ = rule._relax(pn, x, torch.full((len(p),), delta, dtype=torch.float64))
        a = pn.gather(1, x[:, None])[:, 0] + s
        out.scatter_add_(1, x[:, None], (reach * a)[:, None])
        reach = reach * (1 - a)
        m = m.scatter(1, x[:, None], 0.0)
        m = torch.where((s > 0)[:, None], m.scatter(1, table[x, : k + 1].long(), 0.0), m)  # k+1 zeroed
    out += reach[:, None] * m / m.sum(-1, keepdim=True).clamp_min(1e-300)
    assert (0.5 * (out - p.double()).abs().sum(-1)).max() > delta


def test_bad_parameters_and_api():
    t = _table()
    with pytest.raises(ValueError, match="delta"):
        DeterministicLanternRule(t, k=4, delta=1.5)
    with pytest.raises(ValueError, match="columns"):
        DeterministicLanternRule(t[:, :3], k=10, delta=0.1)
    assert accel.lantern(0.1).drafts == "deterministic"
    assert isinstance(accel.lantern(0.1).rule(torch.randn(V, 4)), DeterministicLanternRule)
    assert isinstance(accel.lantern(0.1, drafts="sampled").rule(torch.randn(V, 4)), LanternRule)
    with pytest.raises(ValueError, match="drafts"):
        accel.lantern(0.1, drafts="greedy")
    with pytest.raises(ValueError, match="lam"):
        accel.lantern(lam=5.0)
    assert isinstance(accel.lantern(lam=5.0, drafts="sampled").rule(torch.randn(V, 4)), LanternRule)
    assert isinstance(accel.exact(), ExactRule)


# ------------------------------------------------------------------------------------- on a tiny model
class LeakyResidual(DeterministicLanternRule):
    """Broken on purpose: a rejected child stays in the residual (the target law is not preserved)."""

    def residual(self, p, q, x):
        return p

    def siblings(self, p, xs, u=None):
        chosen, emit, _ = super().siblings(p, xs, u)
        return chosen, emit, p.double()


def _sequences(rule, use_tree: bool, seed: int, N=4000, n=3):
    target = tiny(0, vocab=6, block=4, scale=0.5)
    drafter = ModelDrafter(tiny(1, dim=16, n_layer=1, vocab=6, block=4, scale=0.5))
    sc = SamplingConfig(cfg_scale=2.0, top_k=4)
    g = torch.Generator().manual_seed(seed)
    if use_tree:
        toks, st = tree_generate(target, drafter, rule, torch.full((N,), 2), sc, tree=Tree.from_branching((2, 2)),
                                 max_new_tokens=n, generator=g)
    else:
        toks, st = speculative_generate(target, drafter, rule, torch.full((N,), 2), sc, gamma=2, max_new_tokens=n,
                                        generator=g)
    code, prob = _joint(target, 2, sc, n)
    counts = np.bincount((toks * 6 ** torch.arange(n)).sum(1).numpy(), minlength=6**n)[code.numpy()]
    keep = prob.numpy() * N >= 5
    exp, obs = prob.numpy()[keep] * N, counts[keep]
    rare_ok = counts[~keep].sum() <= max(25, 3 * prob.numpy()[~keep].sum() * N)  # top-k zero cells stay empty
    return scipy.stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue, rare_ok, st


@pytest.mark.parametrize("use_tree", [False, True])
def test_deterministic_exact_mode_follows_the_target_joint(use_tree):
    rule = DeterministicLanternRule(neighbour_table(torch.randn(6, 4), 5), k=5, delta=0.0)
    pv, rare_ok, st = _sequences(rule, use_tree, seed=7)
    assert pv > 1e-3 and rare_ok, pv
    assert st.as_dict()["mean_accept_len"] > 1.05


@pytest.mark.parametrize("use_tree", [False, True])
def test_same_test_rejects_a_leaky_residual(use_tree):
    rule = LeakyResidual(neighbour_table(torch.randn(6, 4), 5), k=5, delta=0.0)
    pv, _, _ = _sequences(rule, use_tree, seed=7)
    assert pv < 1e-6, pv


@pytest.mark.parametrize("use_tree", [False, True])
def test_relaxation_raises_acceptance_on_a_model_and_greedy_is_ar(use_tree):
    from accel.models.llamagen_generate import generate
    from accel.speculative.tree import TREES

    target = tiny(0, scale=0.6)
    drafter = ModelDrafter(tiny(1, dim=16, n_layer=1, scale=0.6))
    table = neighbour_table(target.tok_embeddings.weight, 15)
    cond = torch.arange(32) % 4

    def run(delta, sc):
        rule = DeterministicLanternRule(table, k=15, delta=delta)
        g = torch.Generator().manual_seed(0)
        if use_tree:
            return tree_generate(target, drafter, rule, cond, sc, tree=TREES["b3-1-1-1"], generator=g)
        return speculative_generate(target, drafter, rule, cond, sc, gamma=3, generator=g)

    sc = SamplingConfig(cfg_scale=2.0)
    _, st0 = run(0.0, sc)
    _, st4 = run(0.4, sc)
    assert st4.as_dict()["mean_accept_len"] > st0.as_dict()["mean_accept_len"] + 0.1
    greedy = SamplingConfig(cfg_scale=2.0, sample_logits=False)
    toks, _ = run(0.0, greedy)
    assert torch.equal(toks, generate(target, cond, 16, greedy))


# ------------------------------------------------------------------ the sibling test, pinned against the old loop
SIBLINGS_PINNED = {  # (k, δ, seed): (chosen, token) of DeterministicLanternRule.step at commit 03d6b11 (child by child)
    (63, 0.3, 0): ([0, -1, -1, 3, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, -1, -1, -1, -1, 0, 1, -1, 1, -1, 0, -1, 1, -1, -1, 3, -1, 4, -1, -1, 0, -1, 0, 0], [14, 17, 9, 4, 26, 25, 13, 30, 9, 32, 13, 14, 22, 11, 55, 59, 20, 44, 5, 0, 12, 20, 43, 52, 58, 6, 62, 17, 21, 46, 52, 39, 33, 4, 45, 9, 19, 21, 49, 36]),
    (7, 0.1, 1): ([-1, -1, -1, -1, -1, -1, -1, -1, -1, 0, -1, -1, -1, -1, -1, -1, 2, 5, -1, -1, 0, -1, -1, -1, -1, -1, -1, 5, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1], [4, 38, 9, 20, 1, 23, 25, 29, 14, 26, 1, 51, 0, 21, 12, 34, 26, 26, 18, 8, 47, 54, 63, 19, 28, 28, 10, 10, 14, 61, 58, 9, 61, 12, 0, 0, 58, 63, 57, 37]),
    (63, 0.0, 2): ([-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1], [2, 28, 19, 38, 27, 19, 29, 17, 4, 15, 15, 9, 44, 13, 49, 6, 31, 37, 33, 26, 35, 38, 23, 40, 59, 55, 58, 5, 21, 33, 26, 42, 5, 1, 9, 2, 26, 19, 54, 25]),
    (20, 0.6, 3): ([2, 2, -1, 0, -1, -1, -1, -1, -1, -1, -1, 5, 1, -1, -1, -1, -1, -1, -1, -1, -1, 5, -1, -1, -1, -1, 0, 3, 0, -1, -1, 4, -1, -1, 2, 0, -1, -1, 1, -1], [1, 55, 14, 28, 19, 31, 10, 13, 1, 35, 7, 8, 21, 34, 31, 27, 55, 5, 28, 47, 19, 62, 14, 52, 50, 32, 32, 1, 53, 18, 32, 26, 27, 47, 57, 27, 59, 39, 32, 45]),
}


@pytest.mark.parametrize("case", sorted(SIBLINGS_PINNED))
def test_sibling_test_gives_the_tokens_of_the_child_by_child_loop(case):
    """``siblings`` walks the children as if all were rejected and picks the first acceptance at once; with the same
    uniforms it chooses the same child and draws the same residual token as the old loop, which stopped at the
    accepted child (zero-mass entries, missing children and δ = 0 included)."""
    k, delta, seed = case
    g = torch.Generator().manual_seed(seed)
    table = neighbour_table(torch.randn(64, 4, generator=g), 63)
    p = torch.softmax(torch.randn(40, 64, generator=g) * 2.5, -1)
    p[:10, 40:] = 0  # top-k style zero mass
    p = p / p.sum(-1, keepdim=True)
    xs = torch.stack([torch.randperm(64, generator=g)[:6] for _ in range(40)])
    xs[torch.rand(40, 6, generator=g) < 0.3] = -1
    xs[5:10, 1:] = -1
    col, tok = DeterministicLanternRule(table, k=k, delta=delta).step(p, xs, torch.Generator().manual_seed(seed + 1))
    assert (col.tolist(), tok.tolist()) == SIBLINGS_PINNED[case]
