"""Chain/tree sizing from a verify cost curve and a measured acceptance profile."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from accel.speculative.sizing import choose_budget, choose_chain, expected_chain_tokens, verify_cost_curve

sys.path.insert(0, str(Path(__file__).parent))
from test_speculative_decoder import tiny  # noqa: E402


def test_expected_tokens_formula():
    assert expected_chain_tokens([0.5], 0) == 1.0
    assert expected_chain_tokens([0.5], 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert expected_chain_tokens([1.0, 0.5, 0.0], 5) == pytest.approx(1 + 1 + 0.5)
    with pytest.raises(ValueError, match="gamma"):
        expected_chain_tokens([0.5], -1)


def test_flat_curve_prefers_long_chains_steep_curve_short_ones():
    flat = {t: 1.0 + 0.01 * t for t in range(1, 17)}  # memory-bound accelerator
    steep = {t: 1.0 * t for t in range(1, 17)}  # compute-bound: verify cost grows with every token
    best_flat, _ = choose_chain(flat, [0.8], draft_step_s=0.02)
    best_steep, ranked = choose_chain(steep, [0.8], draft_step_s=0.02)
    assert best_flat.tokens >= 8
    assert ranked[0].tokens_per_second >= ranked[-1].tokens_per_second
    # by hand, steep: γ = 0 gives 1 token / 1 s; γ = 1 gives 1.8 / 2.02 s = 0.89 tokens/s
    assert best_steep.name == "chain0" and best_steep.tokens_per_second == pytest.approx(1.0)


def test_choose_budget_ranks_trees_and_chains_together():
    curve = {1: 1.0, 4: 1.2, 8: 1.5}
    best, ranked = choose_budget(curve, {"chain3": (4, 2.5, 0.3), "tree7": (8, 3.6, 0.4), "ar": (1, 1.0, 0.0)})
    assert best.name == "tree7" and [b.name for b in ranked][-1] == "ar"
    with pytest.raises(ValueError, match="not measured"):
        choose_budget(curve, {"x": (5, 2.0, 0.1)})


def test_verify_cost_curve_runs_on_a_tiny_model():
    m = tiny(0, block=16)
    curve = verify_cost_curve(m, max_tokens=6, repeats=2, warmup=1)
    assert sorted(curve) == list(range(1, 7)) and all(t > 0 for t in curve.values())
    with pytest.raises(ValueError, match="max_tokens"):
        verify_cost_curve(m, max_tokens=16)
