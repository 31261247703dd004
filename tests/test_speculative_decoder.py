"""The LlamaGen speculative decode loop: per-row forward parity, greedy identity with AR, model-level exactness."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import scipy.stats
import torch

from accel.models.llamagen import GPTConfig, Transformer
from accel.models.llamagen_generate import SamplingConfig, generate
from accel.speculative.decoder import speculative_generate
from accel.speculative.drafters import EagleDrafter, EagleHead, ModelDrafter
from accel.speculative.lantern import LanternRule, neighbour_table
from accel.speculative.rules import ExactRule


def tiny(seed, dim=32, n_layer=2, vocab=16, block=16, n_kv_head=None, scale=0.3):
    torch.manual_seed(seed)
    cfg = GPTConfig(dim=dim, n_layer=n_layer, n_head=4, n_kv_head=n_kv_head, multiple_of=16, vocab_size=vocab,
                    num_classes=4, block_size=block)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, scale)  # output head is zero-initialised by default: make logits non-trivial
    return m


@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_per_row_forward_matches_shared_forward(n_kv_head):
    m = tiny(0, n_kv_head=n_kv_head)
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([1, 3])
    toks = torch.randint(0, 16, (2, 7), generator=g)
    ref = m(toks, labels, input_pos=torch.arange(8))  # teacher forcing, causal
    cache = m.new_cache(2, 9)
    pos = torch.arange(8).expand(2, 8)
    out, h = m(toks, labels, input_pos=pos, cache=cache, return_hidden=True)
    assert torch.allclose(out, ref, atol=1e-5) and h.shape == (2, 8, 32)
    # per-row positions: row 1 one step behind row 0, decoded from the cache
    cache = m.new_cache(2, 9)
    m(None, labels, input_pos=torch.zeros(2, 1, dtype=torch.long), cache=cache)
    m(toks[:, :1], input_pos=torch.tensor([[1], [1]]), cache=cache)
    out = m(toks[:, 1:3], input_pos=torch.tensor([[2, 3], [2, 3]]), cache=cache)
    assert torch.allclose(out, ref[:, 2:4], atol=1e-5)
    out = m(torch.stack([toks[0, 3:5], toks[1, 3:5]]), input_pos=torch.tensor([[4, 5], [4, 5]]), cache=cache)
    assert torch.allclose(out, ref[:, 4:6], atol=1e-5)
    # rows at different positions in one call: row 0 at 6, row 1 re-reads 4 (its slot 5 is stale and masked)
    out = m(torch.stack([toks[0, 5:6], toks[1, 3:4]]), input_pos=torch.tensor([[6], [4]]), cache=cache, kv_len=7)
    assert torch.allclose(out[0, 0], ref[0, 6], atol=1e-5) and torch.allclose(out[1, 0], ref[1, 4], atol=1e-5)


def test_shared_and_per_row_slots_write_the_same_cache():
    m = tiny(0)
    labels, toks = torch.tensor([1, 3]), torch.tensor([[4, 5, 6], [7, 8, 9]])
    a, b = m.new_cache(2, 5), m.new_cache(2, 5)
    m(toks, labels, input_pos=torch.arange(4), cache=a)
    m(toks, labels, input_pos=torch.arange(4).expand(2, 4), cache=b)
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a.k + a.v, b.k + b.v))


def test_tree_mask_and_move():
    """A tree forward (siblings share a RoPE position, not a slot) equals the chain forward of the kept path,
    and ``KVCache.move`` compacts that path's slots to the chain's."""
    m = tiny(0)
    labels = torch.tensor([2])
    chain = m.new_cache(1, 8)
    m(None, labels, input_pos=torch.tensor([0]), cache=chain)
    ref = m(torch.tensor([[3, 7, 1]]), input_pos=torch.tensor([1, 2, 3]), cache=chain)
    tree = m.new_cache(1, 8)
    m(None, labels, input_pos=torch.tensor([0]), cache=tree)
    # slot 1: token 3 (pos 1); slots 2, 3: siblings 5 and 7 (pos 2); slot 4: token 1 under 7 (pos 3)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 1, 1]], dtype=torch.bool)
    out = m(torch.tensor([[3, 5, 7, 1]]), input_pos=torch.tensor([[1, 2, 2, 3]]),
            slots=torch.tensor([[1, 2, 3, 4]]), cache=tree, mask=mask[None])
    assert torch.allclose(out[:, [0, 2, 3]], ref, atol=1e-5)
    tree.move(torch.tensor([[3, 4]]), torch.tensor([[2, 3]]))
    assert all(torch.allclose(x[:, :, :4], y[:, :, :4], atol=1e-6) for x, y in zip(tree.k + tree.v, chain.k + chain.v))


def _drafters(target):
    head = EagleHead(target.config)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.2)
    return [ModelDrafter(tiny(1, dim=16, n_layer=1)), EagleDrafter(head, target)]


@pytest.mark.parametrize("cfg_scale,cfg_interval,gamma", [(1.0, -1, 3), (3.0, -1, 1), (3.0, 4, 3)])
def test_greedy_speculative_equals_greedy_ar(cfg_scale, cfg_interval, gamma):
    target = tiny(0)
    sc = SamplingConfig(cfg_scale=cfg_scale, cfg_interval=cfg_interval, sample_logits=False)
    cond = torch.tensor([0, 1, 2, 3, 1])
    ar = generate(target, cond, 16, sc)
    table = neighbour_table(target.tok_embeddings.weight, 5)
    for drafter in _drafters(target):
        for rule in (ExactRule(), LanternRule(table, k=4, delta=0.0)):
            toks, st = speculative_generate(target, drafter, rule, cond, sc, gamma=gamma, max_new_tokens=16)
            assert torch.equal(toks, ar), (drafter.name, rule.name)
            assert st.nfe_target < 17 or gamma == 1
            assert 1.0 <= st.as_dict()["mean_accept_len"] <= gamma + 1


def test_rows_at_one_position_verify_through_shared_slots(monkeypatch):
    """Batch 1 (every row at the same position) verifies with one (T,) row of positions and slots: the same
    tokens as the per-row path, bit for bit, for sampled drafts near the end of the image (RoPE clamped)."""
    dec = importlib.import_module("accel.speculative.decoder")  # accel.speculative is the API function

    target = tiny(0)
    sc = SamplingConfig(cfg_scale=2.0)
    calls, real = [], dec.row_positions

    def per_row(pos, R, shared):
        calls.append(shared)
        return real(pos, R, False)

    drafters = _drafters(target)
    drafters[1].head.eval()  # no dropout: a reused drafter gives the same tokens call after call
    for drafter in drafters:
        for B in (1, 3):
            cond = torch.arange(B)
            runs = []
            for patch in (None, per_row):
                if patch is not None:
                    monkeypatch.setattr(dec, "row_positions", patch)
                runs.append(speculative_generate(target, drafter, ExactRule(), cond, sc, gamma=3, max_new_tokens=16,
                                                 generator=torch.Generator().manual_seed(B))[0])
                monkeypatch.setattr(dec, "row_positions", real)
            assert torch.equal(runs[0], runs[1]), (drafter.name, B)
    assert any(calls) and not all(calls)  # batch 1 shared, batch 3 (rows apart) per row


def test_drafters_one_row_steps_match_the_per_row_path(monkeypatch):
    """At batch 1 the drafters run shared positions (one RoPE row, slice writes, a one-token step attending to
    exactly its past with no mask): the same drafts and draft distributions q as the per-row path with its
    causal mask over slots, over rounds with rejected drafts (their stale slots must not be attended)."""
    dr = importlib.import_module("accel.speculative.drafters")
    target = tiny(0)
    sc = SamplingConfig(cfg_scale=2.0)
    drafters = _drafters(target)
    drafters[1].head.eval()
    for drafter in drafters:
        runs = []
        for one_row in (dr.one_row_steps, lambda c: False):
            monkeypatch.setattr(dr, "one_row_steps", one_row)
            qs, propose = [], drafter.propose

            def spy(*a, **k):
                out = propose(*a, **k)
                qs.append(out[1])
                return out

            monkeypatch.setattr(drafter, "propose", spy)
            toks, st = speculative_generate(target, drafter, ExactRule(), torch.tensor([2]), sc, gamma=3,
                                            max_new_tokens=16, generator=torch.Generator().manual_seed(3))
            monkeypatch.undo()
            runs.append((toks, torch.cat(qs, 1), st.accepted < st.drafted))
        assert torch.equal(runs[0][0], runs[1][0]) and runs[0][2], drafter.name  # some drafts were rejected
        assert torch.allclose(runs[0][1], runs[1][1], atol=1e-6), drafter.name


def test_the_loop_builds_no_autograd_graph():
    """Called with grad enabled, the target's forwards still run without autograd (the loop keeps every round's
    verdicts until its counters are made; a graph behind them would be kept too)."""
    target = tiny(0)
    seen = []

    class Recording:
        def __getattr__(self, name):
            return getattr(target, name)

        def __call__(self, *a, **k):
            seen.append(torch.is_grad_enabled())
            return target(*a, **k)

    with torch.enable_grad():
        speculative_generate(Recording(), _drafters(target)[0], ExactRule(), torch.tensor([1]), SamplingConfig(),
                             gamma=3, max_new_tokens=16, generator=torch.Generator().manual_seed(0))
    assert seen and not any(seen)


def test_round_counts_equal_the_per_round_sums():
    """The chain loop's counters, made once from the kept rounds, equal the per-round sums (rows finished or near
    the image end, rounds with fewer drafts than gamma, none at all); drafts past the image end stay out of the
    per-position profile."""
    from accel.speculative.decoder import round_counts

    g0 = torch.Generator().manual_seed(0)
    n, gamma, B = 16, 4, 5
    rounds, want = [], torch.zeros(3 + 2 * gamma, dtype=torch.long)
    for g in (4, 4, 2, 0, 4, 3):
        c = torch.randint(1, n + 2, (B,), generator=g0)
        live = c < n
        acc = torch.rand(B, g, generator=g0) < 0.6
        m = torch.where(live, torch.randint(0, g + 1, (B,), generator=g0), torch.zeros(B, dtype=torch.long))
        rounds.append((c, m, acc, g))
        ok = acc & live[:, None]
        reach = torch.cat([torch.ones_like(ok[:, :1]), torch.cumprod(ok.long(), 1)[:, :-1].bool()], 1) & live[:, None]
        reach &= c[:, None] + torch.arange(g) < n  # the profile counts drafts inside the image only
        want[:3] += torch.stack([live.sum(), (torch.minimum(m, n - c) * live).sum(),
                                 (torch.minimum(torch.full_like(c, g), (n - c).clamp_min(0)) * live).sum()])
        want[3:3 + g] += reach.sum(0)
        want[3 + gamma:3 + gamma + g] += (reach & ok).sum(0)
    assert torch.equal(round_counts(rounds, n, gamma), want)
    assert round_counts([], n, gamma).tolist() == [0] * (3 + 2 * gamma)


def test_draft_equal_to_target_accepts_all():
    target = tiny(0)
    sc = SamplingConfig(cfg_scale=2.0)
    toks, st = speculative_generate(target, ModelDrafter(target), ExactRule(), torch.tensor([0, 1]), sc, gamma=3,
                                    generator=torch.Generator().manual_seed(0))
    assert st.as_dict()["acceptance_rate"] == pytest.approx(1.0)
    assert st.nfe_target == 1 + 4  # 16 tokens: 1 from prefill, then 4 rounds of γ+1 = 4 (last one truncated)


@torch.no_grad()
def _joint(target, cond, sc, n):
    """Exact joint of the first n tokens under the processed (CFG, top-k) target, by enumeration."""
    V = target.config.vocab_size
    seqs = torch.cartesian_prod(*[torch.arange(V)] * n)
    labels = torch.full((seqs.size(0),), cond)
    prob = torch.ones(seqs.size(0), dtype=torch.float64)
    from accel.speculative.drafters import process

    lab = torch.cat([labels, torch.full_like(labels, target.config.num_classes)]) if sc.uses_cfg else labels
    inp = torch.cat([seqs, seqs]) if sc.uses_cfg else seqs
    logits = target(inp[:, : n - 1], lab, input_pos=torch.arange(n))
    t = torch.arange(n).expand(seqs.size(0), n)
    p = process(logits, t, sc).double()
    for i in range(n):
        prob *= p[:, i].gather(1, seqs[:, i : i + 1])[:, 0]
    return (seqs * V ** torch.arange(n)).sum(1), prob


@pytest.mark.parametrize("which", [0, 1])
def test_sampled_sequences_follow_the_target_joint(which):
    """Whole-sequence chi-square on a real (tiny) LlamaGen with CFG and top-k, batched rows, γ = 2."""
    target = tiny(0, vocab=6, block=4, scale=0.5)
    drafter = [ModelDrafter(tiny(1, dim=16, n_layer=1, vocab=6, block=4, scale=0.5)), _drafters(target)[1]][which]
    sc = SamplingConfig(cfg_scale=2.0, top_k=4)
    n, N = 3, 4000
    toks, st = speculative_generate(target, drafter, ExactRule(), torch.full((N,), 2), sc, gamma=2,
                                    max_new_tokens=n, generator=torch.Generator().manual_seed(which))
    code, prob = _joint(target, 2, sc, n)
    counts = np.bincount((toks * 6 ** torch.arange(n)).sum(1).numpy(), minlength=6**n)[code.numpy()]
    keep = prob.numpy() * N >= 5
    assert counts[~keep].sum() <= max(25, 3 * prob.numpy()[~keep].sum() * N)  # top-k: zero-prob cells stay empty
    exp = prob.numpy()[keep] * N
    obs = counts[keep]
    pv = scipy.stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue
    assert pv > 1e-3, pv
    assert st.as_dict()["mean_accept_len"] > 1.05


# ------------------------------------------------------------------------------------------- static tree
from accel.speculative.tree import TREES, Tree, tree_generate  # noqa: E402


def test_tree_structure_and_mask():
    t = Tree.from_branching((2, 1))
    assert t.parents == (0, 0, 1, 2) and t.levels == [[1, 2], [3, 4]]
    m = t.mask(torch.tensor([3]), torch.tensor([3, 4]), 9)[0]
    # slots <= 3 (prefix + root), then node 3 sees node 1 (slot 4) and itself (slot 6)
    assert m[0].tolist() == [True] * 4 + [True, False, True, False, False]
    assert m[1].tolist() == [True] * 4 + [False, True, False, True, False]
    with pytest.raises(ValueError):
        Tree((0, 2))


@pytest.mark.parametrize("tree", ["b2-2-1-1", "chain4"])
def test_greedy_tree_equals_greedy_ar(tree):
    target = tiny(0)
    sc = SamplingConfig(cfg_scale=3.0, sample_logits=False)
    cond = torch.tensor([0, 1, 2, 3, 1])
    ar = generate(target, cond, 16, sc)
    for drafter in _drafters(target):
        toks, st = tree_generate(target, drafter, ExactRule(), cond, sc, tree=TREES[tree], max_new_tokens=16)
        assert torch.equal(toks, ar), drafter.name


@pytest.mark.parametrize("which", [0, 1])
def test_tree_sampled_sequences_follow_the_target_joint(which):
    target = tiny(0, vocab=6, block=4, scale=0.5)
    drafter = [ModelDrafter(tiny(1, dim=16, n_layer=1, vocab=6, block=4, scale=0.5)), _drafters(target)[1]][which]
    sc = SamplingConfig(cfg_scale=2.0, top_k=4)
    n, N = 3, 4000
    toks, st = tree_generate(target, drafter, ExactRule(), torch.full((N,), 2), sc, tree=Tree.from_branching((3, 2)),
                             max_new_tokens=n, generator=torch.Generator().manual_seed(10 + which))
    code, prob = _joint(target, 2, sc, n)
    counts = np.bincount((toks * 6 ** torch.arange(n)).sum(1).numpy(), minlength=6**n)[code.numpy()]
    keep = prob.numpy() * N >= 5
    exp, obs = prob.numpy()[keep] * N, counts[keep]
    assert scipy.stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3
    assert st.as_dict()["mean_accept_len"] > 1.05


@pytest.mark.parametrize("use_tree", [False, True])
def test_lantern_delta_zero_is_token_identical_to_exact_on_a_model(use_tree):
    target = tiny(0)
    drafter = ModelDrafter(tiny(1, dim=16, n_layer=1))
    sc = SamplingConfig(cfg_scale=2.0, top_k=8)  # top-k zeros: the official δ=0 quirk would fire here
    cond = torch.arange(6) % 4
    rule0 = LanternRule(neighbour_table(target.tok_embeddings.weight, 8), k=7, delta=0.0)

    def run(rule):
        g = torch.Generator().manual_seed(3)
        if use_tree:
            return tree_generate(target, drafter, rule, cond, sc, tree=TREES["b2-2-1-1"], generator=g)
        return speculative_generate(target, drafter, rule, cond, sc, gamma=3, generator=g)

    a, sa = run(ExactRule())
    b, sb = run(rule0)
    assert torch.equal(a, b) and sa.accepted == sb.accepted
