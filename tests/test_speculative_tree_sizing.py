"""tree="dynauto-k<K>-d<D>": the EAGLE-2 dynamic tree's node budget measured on the device
(accel.speculative.tree_sizing), through the public API."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import accel
from accel.models.llamagen_vq import VQConfig, VQModel
from accel.speculative import methods, tree_sizing
from accel.speculative.dynamic_tree import DynamicTree, dynamic_tree_generate

sys.path.insert(0, str(Path(__file__).parent))
from test_dynamic_tree import _eagle  # noqa: E402
from test_speculative_decoder import tiny  # noqa: E402

VQ = VQConfig(codebook_size=16, codebook_embed_dim=4, codebook_show_usage=False, encoder_ch_mult=(1, 2, 2),
              decoder_ch_mult=(1, 2, 2), z_channels=32, ch=32, num_res_blocks=1)
LABELS = torch.tensor([1, 3])  # the tiny target has 4 classes
RULE = dict(delta=0.2, drafts="deterministic")


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    net = tiny(0, scale=0.6)
    return accel.wrap(net, VQModel(VQ).eval(), cfg_scale=2.0), _eagle(net)


def seed(s=0):
    return torch.Generator().manual_seed(s)


def test_choose_tree_by_hand():
    """E(1) = 2.0, E(2) = 2.5, E(3) = 2.5, E(4) = 2.6 (counts [., 10, 5, 0, 1] over 10 rounds); verify
    1 + 0.2 (T - 1), draft 0.5, loop 0.1: rates 2.0 / 1.8, 2.5 / 2.0, 2.5 / 2.2, 2.6 / 2.4, so budget 2. The
    curve is rescaled to the calibration's verify forward at T = budget + 1 = 5 (here by 1 / 2)."""
    curve = {T: 2.0 * (1 + 0.2 * (T - 1)) for T in range(1, 6)}
    s = tree_sizing.choose_tree(curve, [0, 10, 5, 0, 1], 10, {4: (0.5, 1.8, 0.1)}, DynamicTree(4, 2, 2))
    assert s.budget == 2 and s.tree == DynamicTree(2, 2, 2)
    assert s.verify_s[5] == pytest.approx(1.8) and s.verify_s[1] == pytest.approx(1.0)
    assert [b.name for b in s.ranked] == ["budget2", "budget3", "budget1", "budget4"]
    assert s.ranked[0].tokens_per_second == pytest.approx(2.5 / 2.0)
    assert [s.expected_tokens(n) for n in (1, 2, 3, 4)] == pytest.approx([2.0, 2.5, 2.5, 2.6])


def test_loop_and_draft_costs_are_linear_in_the_budget():
    """Measured at budgets 1 and 4: loop 0.1 -> 0.7, draft 0.5 -> 0.8, so budget 2 costs loop 0.3 and draft 0.6
    per round and budget 3 loop 0.5, draft 0.7. On a flat verify curve (1.0) the rates are 2.0 / 1.6, 2.5 / 1.9,
    2.5 / 2.2, 2.6 / 2.5: budget 2, where a constant taken at budget 4 (loop 0.7, draft 0.8) picks 4."""
    flat = {T: 1.0 for T in range(1, 6)}
    counts = [0, 10, 5, 0, 1]
    s = tree_sizing.choose_tree(flat, counts, 10, {4: (0.8, 1.0, 0.7), 1: (0.5, 1.0, 0.1)}, DynamicTree(4, 2, 2))
    assert s.loop_s == pytest.approx({1: 0.1, 2: 0.3, 3: 0.5, 4: 0.7})
    assert s.draft_s == pytest.approx({1: 0.5, 2: 0.6, 3: 0.7, 4: 0.8})
    assert s.budget == 2 and s.ranked[0].tokens_per_second == pytest.approx(2.5 / 1.9)
    const = tree_sizing.choose_tree(flat, counts, 10, {4: (0.8, 1.0, 0.7)}, DynamicTree(4, 2, 2))
    assert const.budget == 4 and set(const.loop_s.values()) == {0.7}


def test_dynauto_sizes_each_batch_size_once_and_decodes_with_that_budget(pair, monkeypatch):
    target, drafter = pair
    m = accel.speculative(target, drafter, rule=accel.lantern(**RULE), tree="dynauto-k2-d3")
    calls = []
    real = tree_sizing.size_tree
    monkeypatch.setattr(methods, "size_tree", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    s = m.generate(LABELS, generator=seed())
    sized = m.sizings[2]
    assert 1 <= sized.budget <= DynamicTree("auto", 2, 3).pool == 10 and s.stats["tree_budget"] == sized.budget
    assert m.params["tree"] == "dynauto-k2-d3" and sum(sized.path_rank_counts) > 0
    # the sizing draws from its own generator: the caller's tokens are those of the loop at the chosen budget
    ref, _ = dynamic_tree_generate(m.target, m.drafter, m.rule, LABELS, m.sc, spec=sized.tree, generator=seed())
    assert torch.equal(s.stats["tokens"], ref)
    m.generate(LABELS, generator=seed(1))
    m.generate(LABELS[:1], generator=seed(1))
    assert calls == [2, 1] and m.sizings[2] is sized and set(m.sizings) == {1, 2}


@pytest.mark.parametrize("shape", ["linear", "flat"])
def test_the_measured_budget_is_the_argmax_of_the_reported_terms(pair, monkeypatch, shape):
    """size_tree keeps the curve's shape (scaled to the calibration's own verify forwards) and picks the budget
    maximising E(N) / (draft(N) + verify(N + 1) + loop(N)) over what it reports (on a linear and on a flat curve;
    which budget that is depends on the measured draft and loop times, so the test checks the decision, not a
    budget)."""
    target, drafter = pair
    m = accel.speculative(target, drafter, rule=accel.lantern(**RULE), tree="dyn3-k2-d3")
    curve = {T: (1.0 + 0.5 * T if shape == "linear" else 1.0) for T in range(1, 12)}
    monkeypatch.setattr(tree_sizing, "verify_cost_curve", lambda *a, **k: curve)
    sized = accel.size_tree(m, 2, budget_max=10)
    v = sized.verify_s
    assert v[11] / v[1] == pytest.approx(curve[11] / curve[1])

    assert set(sized.measured) == {tree_sizing.SMALL, 10}  # calibrated at the largest budget and at SMALL

    def rate(n):
        return sized.expected_tokens(n) / (sized.draft_s[n] + v[n + 1] + sized.loop_s[n])

    assert sized.budget == max(range(1, 11), key=rate)
    assert m.tree_for(2).budget == sized.budget and m.tree_for(1).budget == 3  # a fixed budget where not sized


def test_sizing_refuses_what_it_cannot_size(pair):
    target, drafter = pair
    chain = accel.speculative(target, drafter, rule=accel.lantern(**RULE))
    tree = accel.speculative(target, drafter, rule=accel.lantern(**RULE), tree="dynauto-k2-d3")
    with pytest.raises(ValueError, match="size_tree sizes a dynamic tree"):
        accel.size_tree(chain, 1)
    with pytest.raises(ValueError, match="size_gamma sizes a chain"):
        accel.size_gamma(tree, 1)
    with pytest.raises(ValueError, match="dynauto"):
        accel.speculative(target, drafter, rule=accel.lantern(**RULE), gamma="auto", tree="dyn4-k2-d3")
    with pytest.raises(ValueError, match="'auto' or an int"):
        DynamicTree("many", 2, 3)
    with pytest.raises(ValueError, match="dyn<budget>"):
        accel.speculative(target, drafter, rule=accel.lantern(**RULE), tree="dynmax-k2-d3")
    with pytest.raises(ValueError, match="budget_max"):
        accel.size_tree(tree, 1, budget_max=0)
    with pytest.raises(ValueError, match="sized by the method"):
        dynamic_tree_generate(tree.target, tree.drafter, tree.rule, LABELS, tree.sc, spec=DynamicTree("auto", 2, 3))
