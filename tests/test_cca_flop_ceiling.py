"""experiments/cca_flop_ceiling.py: the counted FLOPs of the zoo's CFG and guidance-free loops and decodes."""
from __future__ import annotations

import pytest
from experiment_script import load_experiment


@pytest.fixture(scope="module")
def ceiling():
    return load_experiment("cca_flop_ceiling")


def test_row_is_the_end_to_end_ratio(ceiling):
    r = ceiling.row("m", 4e9, 2e9, 2e9)
    assert r["ceiling_loop"] == 2.0 and r["ceiling_end_to_end"] == pytest.approx(6 / 4) and r["decode_share_free"] == 0.5


def test_zoo_guidance_free_loops_do_half_the_work(ceiling):
    rows = {r["model"]: r for r in ceiling.zoo_rows()}
    for name in ("fmnist-llamagen (zoo)", "fmnist-var (zoo)"):
        r = rows[name]
        assert r["ceiling_loop"] == pytest.approx(2.0, rel=0.01)  # the doubled batch is gone, nothing else changes
        assert r["decode_gflop"] > 0 and 1.0 < r["ceiling_end_to_end"] < r["ceiling_loop"]
        assert r["counted_over_analytic_loop"] == pytest.approx(1.0, abs=0.1)  # the analytic model used at full size
