"""On-paper memory table and the small-model window rule."""
import pytest

from accel.cache.budgets import choose_window
from accel.cache.memory_table import configs, memory_rows
from accel.models.var_calc import var_cost


def test_memory_rows_consistent_with_calculator():
    rows = memory_rows(fractions=(0.1,), batches=(1, 8))
    cfgs = configs()
    assert {r["config"] for r in rows} == set(cfgs)
    for r in rows:
        full = var_cost(cfgs[r["config"]])
        assert r["full_peak_bytes"] == full.kv_bytes_peak * r["batch"]
        assert r["kept_ratio"] <= 0.1 and r["history_kept_bytes"] <= 0.1 * r["history_full_bytes"]
        assert 0 < r["peak_ratio"] < 1 and r["peak_bytes"] <= r["full_peak_bytes"]
    one = {r["config"]: r for r in rows if r["batch"] == 1}
    eight = {r["config"]: r for r in rows if r["batch"] == 8}
    assert all(eight[c]["peak_bytes"] == 8 * one[c]["peak_bytes"] for c in one)
    # Infinity-like 1024 px: the last scale's 4096 fresh tokens bound the compressed peak from below
    inf = one["Infinity-2B-like (1024 px)"]
    assert inf["tokens"] == 10521 and inf["peak_ratio"] >= 4096 / 10521


@pytest.mark.parametrize("patch,depth,f,w", [((1, 2, 3, 4, 5, 6, 8), 6, 0.04, 1), ((1, 2, 3, 4, 5, 6, 8), 6, 0.1, 4),
                                             ((1, 2, 3, 4, 5, 6, 8), 6, 0.2, 9),
                                             ((1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64), 32, 0.1, 16)])
def test_choose_window(patch, depth, f, w):
    assert choose_window(patch, depth, f) == w
