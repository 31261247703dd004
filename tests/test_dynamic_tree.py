"""EAGLE-2 dynamic trees on LANTERN's deterministic path: the tree is the N best nodes by cumulative draft
log-probability, the vectorised verification has the law of the sequential walk, every step's law stays within
δ of p (step_law), δ = 0 follows the target's joint exactly (chi-square, with a power check), and the
per-budget accepted length can be read off one run."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from accel.models.llamagen_generate import SamplingConfig
from accel.speculative.drafters import EagleDrafter, ModelDrafter, process
from accel.speculative.dynamic_tree import (DynamicTree, ancestors, children_table, draft_dynamic,
                                            dynamic_tree_generate, verify_dynamic)
from accel.speculative.lantern import neighbour_table
from accel.speculative.lantern_deterministic import DeterministicLanternRule
from accel.speculative.sizing import expected_tree_tokens
from accel.speculative.step_law import step_tv
from accel.speculative.tree_sizing import choose_tree
from accel.speculative.methods import SpeculativeLlamaGen
from accel.speculative.rules import ExactRule

sys.path.insert(0, str(Path(__file__).parent))
from test_lantern_deterministic import LeakyResidual  # noqa: E402
from test_speculative_decoder import _drafters, _joint, tiny  # noqa: E402


def _eagle(target, seed=5, scale=0.2):
    d = _drafters(target)[1]
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in d.head.parameters():
            p.normal_(0, scale)
    d.head.eval()  # no dropout
    return d


def _drafted(spec, B=3, seed=0):
    target = tiny(0, scale=0.6)
    drafter = _eagle(target)
    sc = SamplingConfig(cfg_scale=2.0)
    labels = torch.cat([torch.arange(B) % 4, torch.full((B,), 4)])
    state = drafter.begin(labels, 64)
    seq = torch.randint(0, 16, (B, 20), generator=torch.Generator().manual_seed(seed))
    c = torch.tensor([3, 5, 4][:B])
    _, hidden = target(torch.cat([seq, seq])[:, :7], labels, input_pos=torch.arange(8), return_hidden=True)
    drafter.observe(state, seq, torch.zeros(B, dtype=torch.long), hidden[:, :6], c)  # pairs 0..c-1 committed
    return target, drafter, state, sc, c, draft_dynamic(drafter, state, spec, sc, c, int(c.max()))


def test_top1_tree_is_the_greedy_chain():
    """top_k = 1: the dynamic tree is the drafter's greedy chain (tree attention, positions and slots agree with
    the chain drafter's)."""
    spec = DynamicTree(budget=4, top_k=1, depth=4)
    target, drafter, state, sc, c, (toks, parent, depth, rank) = _drafted(spec)
    assert torch.equal(parent[:, 1:], torch.arange(4).expand(3, 4)) and torch.equal(depth, torch.arange(5).expand(3, 5))
    _, _, state2, _, _, _ = _drafted(spec)
    chain, _ = drafter.propose(state2, 4, sc, True, None)
    assert torch.equal(toks[:, 1:], chain)


@pytest.mark.parametrize("spec", [DynamicTree(6, 3, 3), DynamicTree(12, 4, 3), DynamicTree(36, 4, 3)])
def test_selection_is_a_tree_of_the_best_values(spec):
    target, drafter, state, sc, c, (toks, parent, depth, rank) = _drafted(spec)
    B, T = toks.shape
    assert T == spec.budget + 1
    ids = torch.arange(1, T)
    assert (parent[:, 1:] < ids).all() and torch.equal(depth[:, 1:], depth.gather(1, parent)[:, 1:] + 1)
    assert torch.equal(rank[:, 1:].sort(1).values, ids.expand(B, -1))  # ranks 1..N, each once
    assert (rank.gather(1, parent)[:, 1:] < rank[:, 1:]).all()  # a parent ranks before its child
    table = children_table(parent, spec.top_k)
    for b in range(B):  # siblings: distinct tokens, contiguous ids, in rank order (= descending q)
        for v in range(T):
            kids = table[b, v][table[b, v] >= 0]
            if len(kids):
                assert torch.equal(kids, torch.arange(int(kids[0]), int(kids[0]) + len(kids)))
                assert len(set(toks[b, kids].tolist())) == len(kids)
                assert (rank[b, kids].diff() > 0).all()
    anc = ancestors(parent, spec.depth)
    assert torch.equal(anc.sum(-1), depth + 1)


def _reference_law(rule, p, toks, table):
    """Exact law of (accepted tokens, next token) of the sequential walk, by recursion over the tree."""
    out = {}

    def walk(v, prefix, prob):
        kids = [int(k) for k in table[v] if k >= 0]
        xs = torch.tensor([[int(toks[k]) for k in kids]]) if kids else torch.full((1, 1), -1)
        _, emit, rest = rule.siblings(p[v][None], xs)
        for y, r in enumerate(rest[0].tolist()):
            if r > 0:
                out[prefix + (y,)] = out.get(prefix + (y,), 0.0) + prob * r
        for i, k in enumerate(kids):
            if emit[0, i] > 0:
                walk(k, prefix + (int(toks[k]),), prob * float(emit[0, i]))

    walk(0, (), 1.0)
    return out


@pytest.mark.parametrize("delta", [0.0, 0.3])
def test_vectorised_verification_has_the_law_of_the_walk(delta):
    V, N = 6, 4000
    g = torch.Generator().manual_seed(1)
    parent = torch.tensor([[0, 0, 0, 1, 1, 2, 3]])
    toks = torch.tensor([[0, 2, 4, 1, 3, 0, 5]])
    p = torch.softmax(torch.randn(1, 7, V, generator=g) * 1.5, -1)
    rule = DeterministicLanternRule(neighbour_table(torch.randn(V, 3, generator=g), V - 1), k=V - 1, delta=delta)
    table = children_table(parent, 2)
    depth = torch.tensor([[0, 1, 1, 2, 2, 2, 3]])
    anc = ancestors(parent, 3)
    rep = lambda t: t.expand(N, *t.shape[1:]).contiguous()  # noqa: E731
    path, m, nxt = verify_dynamic(rule, rep(p), rep(toks), rep(parent), rep(depth), rep(anc), rep(table),
                                  torch.Generator().manual_seed(2))
    outs = [tuple(toks[0, path[i, : m[i]]].tolist()) + (int(nxt[i]),) for i in range(N)]
    law = _reference_law(rule, p[0].double(), toks[0], table[0])
    assert sum(law.values()) == pytest.approx(1.0, abs=1e-6)  # p is float32
    keys = sorted(law)
    counts = np.array([outs.count(k) for k in keys])
    assert counts.sum() == N  # nothing outside the law's support
    exp = np.array([law[k] for k in keys])
    exp = exp / exp.sum() * N
    big = exp >= 5
    stat = scipy.stats.chisquare(np.append(counts[big], counts[~big].sum()),
                                 np.append(exp[big], exp[~big].sum()))
    assert stat.pvalue > 1e-3, stat


@pytest.mark.parametrize("delta", [0.05, 0.1, 0.2])
def test_every_step_of_a_drafted_tree_is_within_delta(delta):
    """The law each node of a real dynamic tree emits (its children = the drafter's top-m, tried in order),
    computed exactly by ``step_law``, is within δ of the target's p at that node."""
    spec = DynamicTree(20, 4, 3)
    target, drafter, state, sc, c, (toks, parent, depth, rank) = _drafted(spec)
    B, T = toks.shape
    rule = DeterministicLanternRule(neighbour_table(target.tok_embeddings.weight, 15), k=15, delta=delta)
    tv = []
    for b in range(B):
        g = torch.Generator().manual_seed(b)
        p = torch.softmax(torch.randn(T, 16, generator=g) * 2, -1)
        table = children_table(parent, spec.top_k)[b]
        for v in range(T):
            kids = table[v][table[v] >= 0]
            if len(kids):
                q = torch.zeros(1, 16).scatter(1, toks[b, kids][None], torch.linspace(1, 0.5, len(kids))[None])
                tv.append(float(step_tv(rule, p[v][None], q, m=len(kids))))
    assert len(tv) > B and max(tv) <= delta + 1e-12 and max(tv) > 0


def _sequences(rule, seed, N=3000, n=3, spec=DynamicTree(4, 2, 2)):
    target = tiny(0, vocab=6, block=4, scale=0.5)
    drafter = _eagle(target)
    sc = SamplingConfig(cfg_scale=2.0, top_k=4)
    toks, st = dynamic_tree_generate(target, drafter, rule, torch.full((N,), 2), sc, spec=spec, max_new_tokens=n,
                                     generator=torch.Generator().manual_seed(seed))
    code, prob = _joint(target, 2, sc, n)
    counts = np.bincount((toks * 6 ** torch.arange(n)).sum(1).numpy(), minlength=6**n)[code.numpy()]
    keep = prob.numpy() * N >= 5
    exp, obs = prob.numpy()[keep] * N, counts[keep]
    rare_ok = counts[~keep].sum() <= max(25, 3 * prob.numpy()[~keep].sum() * N)
    return scipy.stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue, rare_ok, st


@pytest.mark.parametrize("spec", [DynamicTree(4, 2, 2), DynamicTree(6, 3, 2)])
def test_exact_mode_follows_the_target_joint(spec):
    rule = DeterministicLanternRule(neighbour_table(torch.randn(6, 4), 5), k=5, delta=0.0)
    pv, rare_ok, st = _sequences(rule, seed=7, spec=spec)
    assert pv > 1e-3 and rare_ok, pv
    d = st.as_dict()
    assert d["mean_accept_len"] > 1.05 and len(d["path_rank_counts"]) == spec.budget + 1


def test_same_test_rejects_a_leaky_residual():
    pv, _, _ = _sequences(LeakyResidual(neighbour_table(torch.randn(6, 4), 5), k=5, delta=0.0), seed=7)
    assert pv < 1e-6, pv


def test_relaxation_raises_acceptance_and_budgets_follow_from_one_run():
    target = tiny(0, scale=0.6)
    drafter = _eagle(target, scale=0.05)
    table = neighbour_table(target.tok_embeddings.weight, 15)
    cond = torch.arange(24) % 4
    sc = SamplingConfig(cfg_scale=2.0)

    def run(delta, spec):
        rule = DeterministicLanternRule(table, k=15, delta=delta)
        timings = {}
        _, st = dynamic_tree_generate(target, drafter, rule, cond, sc, spec=spec,
                                      generator=torch.Generator().manual_seed(0), timings=timings)
        assert set(timings) == {"draft_s", "verify_s", "loop_s"}
        return st.as_dict()

    big = DynamicTree(24, 4, 3)
    s0, s4 = run(0.0, big), run(0.4, big)
    assert s4["mean_accept_len"] > s0["mean_accept_len"] + 0.1
    counts, rounds = s0["path_rank_counts"], s0["verify_steps"]
    # the root is never on a path; path nodes past the image end are ranked but not accepted (at most depth per row)
    assert counts[0] == 0 and s0["accepted"] <= sum(counts) <= s0["accepted"] + big.depth * len(cond)
    assert expected_tree_tokens(counts, rounds, 24) == pytest.approx(s0["mean_accept_len"], rel=0.05)
    assert expected_tree_tokens(counts, rounds, 4) <= expected_tree_tokens(counts, rounds, 24)
    verify_s = {T: 1.0 + 0.01 * T for T in range(1, 26)}
    sized = choose_tree(verify_s, counts, rounds, {24: (0.5, verify_s[25], 0.0)}, big)
    best, ranked = sized.ranked[0], sized.ranked
    assert best.tokens_per_second == max(b.tokens_per_second for b in ranked) and len(ranked) == 24
    rate = {n: expected_tree_tokens(counts, rounds, n) / (0.5 + verify_s[n + 1]) for n in range(1, 25)}
    assert sized.budget == max(rate, key=rate.get)


@pytest.mark.parametrize("budget", [1, 2])
def test_budgets_below_the_depth_decode(budget):
    """A budget smaller than depth - 1 holds no path as deep as the tree (e.g. what the device sizing picks on a
    slow device): the loop pads the path to the depth (it crashed in commit before)."""
    target = tiny(0, scale=0.6)
    drafter = _eagle(target)
    rule = DeterministicLanternRule(neighbour_table(target.tok_embeddings.weight, 15), k=15, delta=0.2)
    cond = torch.tensor([0, 1, 3])
    toks, st = dynamic_tree_generate(target, drafter, rule, cond, SamplingConfig(cfg_scale=2.0),
                                     spec=DynamicTree(budget, 2, 4), generator=torch.Generator().manual_seed(0))
    assert toks.shape == (3, target.config.block_size) and int(toks.min()) >= 0 and int(toks.max()) < 16
    assert len(st.path_rank_counts) == budget + 1 and 1.0 <= st.as_dict()["mean_accept_len"] <= budget + 1


def test_bad_parameters():
    with pytest.raises(ValueError, match="budget"):
        DynamicTree(budget=100, top_k=2, depth=3)
    with pytest.raises(ValueError, match="top_k"):
        DynamicTree(budget=4, top_k=0, depth=3)
    with pytest.raises(ValueError, match="dyn<budget>"):
        DynamicTree.from_name("tree16")
    assert DynamicTree.from_name("dyn16-k8-d4") == DynamicTree(16, 8, 4)
    target = tiny(0)
    drafter = _eagle(target)
    sc = SamplingConfig(cfg_scale=2.0)
    with pytest.raises(ValueError, match="deterministic"):
        dynamic_tree_generate(target, drafter, ExactRule(), torch.tensor([0]), sc, spec=DynamicTree(4, 2, 2))
    rule = DeterministicLanternRule(neighbour_table(target.tok_embeddings.weight, 15), k=15, delta=0.1)
    with pytest.raises(TypeError, match="EAGLE"):
        dynamic_tree_generate(target, ModelDrafter(tiny(1, dim=16, n_layer=1)), rule, torch.tensor([0]), sc,
                              spec=DynamicTree(4, 2, 2))
    with pytest.raises(ValueError, match="greedy"):
        dynamic_tree_generate(target, drafter, rule, torch.tensor([0]), SamplingConfig(sample_logits=False),
                              spec=DynamicTree(4, 2, 2))
    with pytest.raises(ValueError, match="samples its drafts"):
        SpeculativeLlamaGen("x", target, drafter, ExactRule(), None, sc, tree=DynamicTree(4, 2, 2))
    assert isinstance(drafter, EagleDrafter) and process is not None


def test_zoo_preset_builds_the_dynamic_tree_with_the_cfg_drafter():
    from accel import zoo
    from accel.harness.registry import BuildContext
    from accel.presets.speculative import TARGET, build

    if not {TARGET, "fmnist-llamagen-vq", "fmnist-llamagen-eagle-cfg"} <= set(zoo.available()):
        pytest.skip("zoo weights not shipped")
    m = build(BuildContext(TARGET), "x", drafter="eagle-cfg", delta=0.2, tree="dyn6-k4-d3", drafts="deterministic")
    assert m.tree == DynamicTree(6, 4, 3) and m.params["tree"] == "dyn6-k4-d3"
    m.timings = {}
    s = m.generate(torch.tensor([1, 7]), generator=torch.Generator().manual_seed(0))
    assert s.images.shape == (2, 3, 32, 32) and s.stats["mean_accept_len"] > 1.0
    assert m.timings["verify_s"] > 0 and len(s.stats["path_rank_counts"]) == 7
