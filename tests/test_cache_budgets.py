"""Budget allocations: uniform floor, PyramidKV and ScaleKV keep the uniform total exactly."""
import random

import pytest

from accel.cache.budgets import Budget, allocate, history_lengths, map_sizes, pyramid, scalekv, uniform
from accel.cache.calibrate import znormalise

VAR256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
INFINITY_1M = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)


def test_history_lengths():
    assert history_lengths(map_sizes(VAR256))[-1] == 680
    assert history_lengths(map_sizes(INFINITY_1M))[-1] == 10521
    assert history_lengths(map_sizes([(2, 3), (4, 6)])) == (6, 30)


@pytest.mark.parametrize("f", [0.04, 0.1, 0.2])
def test_uniform_is_floor_of_fraction(f):
    u = uniform(INFINITY_1M, 32, f, min_keep=16)
    hist = u.history
    assert u.tokens[-1] == (None,) * 32, "the last scale is never compressed"
    for k in u.compressed_scales:
        assert set(u.tokens[k]) == {int(f * hist[k] + 1e-9)} and u.tokens[k][0] >= 16
    assert u.kept_fraction() <= f and u.kept_fraction() > f - 0.01
    assert u.compressed_scales == tuple(range(u.compressed_scales[0], len(INFINITY_1M) - 1))


def test_uniform_rejects_bad_fraction():
    for f in (0.0, 1.5):
        with pytest.raises(ValueError):
            uniform(VAR256, 4, f)
    assert uniform(VAR256, 4, 1.0).compressed_scales == ()


@pytest.mark.parametrize("seed", range(20))
def test_allocate_exact_sum_and_bounds(seed):
    rng = random.Random(seed)
    n, lo, hi = rng.randint(1, 12), rng.randint(1, 5), rng.randint(6, 100)
    total = rng.randint(n * lo, n * hi)
    out = allocate([rng.uniform(-50, 150) for _ in range(n)], total, lo, hi)
    assert sum(out) == total and all(lo <= b <= hi for b in out)


def test_allocate_infeasible_raises():
    with pytest.raises(ValueError):
        allocate([1.0, 2.0], 100, 1, 10)


@pytest.mark.parametrize("patch", [VAR256, INFINITY_1M])
def test_pyramid_sums_to_uniform_and_decays(patch):
    u = uniform(patch, 8, 0.1, min_keep=4)
    p = pyramid(u, beta=20, window=4)
    for k in u.compressed_scales:
        assert sum(p.tokens[k]) == sum(u.tokens[k])
        assert list(p.tokens[k]) == sorted(p.tokens[k], reverse=True) and min(p.tokens[k]) >= 4
        assert p.tokens[k][0] > p.tokens[k][-1]


def fake_z(depth, num_scales, seed):
    rng = random.Random(seed)
    return znormalise([None] + [[rng.gauss(0, 1) for _ in range(depth)] for _ in range(num_scales - 1)])


@pytest.mark.parametrize("split", ["paper", "code"])
@pytest.mark.parametrize("f", [0.04, 0.1, 0.2])
def test_scalekv_sums_to_uniform_total(split, f):
    u = uniform(INFINITY_1M, 32, f, min_keep=16)
    s, mask = scalekv(u, fake_z(32, 13, 1), drafter_fraction=0.1, split=split, window=16)
    hist = u.history
    assert s.compressed_scales == u.compressed_scales
    for k in u.compressed_scales:
        assert sum(s.tokens[k]) == sum(u.tokens[k]) == 32 * u.tokens[k][0]
        assert all(16 <= b <= hist[k] for b in s.tokens[k])
        d = [b for b, m in zip(s.tokens[k], mask[k]) if m]
        r = [b for b, m in zip(s.tokens[k], mask[k]) if not m]
        if d and r:
            assert min(d) > max(r), "drafters get more than refiners"
    assert abs(s.kept_fraction() - u.kept_fraction()) < 1e-12


def test_scalekv_drafters_are_lowest_z_and_paper_decay_is_linear():
    """(Drafters saturated at their full history hand the excess back to refiners: not checked there.)"""
    u = uniform(INFINITY_1M, 32, 0.1, min_keep=16)
    z = fake_z(32, 13, 2)
    s, mask = scalekv(u, z, drafter_fraction=0.1, split="paper", window=16)
    S = u.compressed_scales
    pairs = sorted((z[k][l], k, l) for k in S for l in range(32))
    n_d = round(0.1 * len(pairs))
    assert sum(mask[k][l] for k in S for l in range(32)) == n_d
    assert all(mask[k][l] for _, k, l in pairs[:n_d]) and not any(mask[k][l] for _, k, l in pairs[n_d:])
    for j, k in enumerate(S):  # refiner budget follows B_u(k) * (600 - 70 j) / 650 within rounding
        r = [b for b, m in zip(s.tokens[k], mask[k]) if not m]
        d = [b for b, m in zip(s.tokens[k], mask[k]) if m]
        if 0 < len(r) < 32 and max(d) < u.history[k] and (600 - 70 * j) / 650 * u.tokens[k][0] >= 16:
            assert max(r) - min(r) <= 1
            assert abs(min(r) - u.tokens[k][0] * (600 - 70 * j) / 650) <= 1


def test_scalekv_code_split_gives_drafters_their_history():
    u = uniform(INFINITY_1M, 32, 0.2, min_keep=16)
    s, mask = scalekv(u, fake_z(32, 13, 3), drafter_fraction=0.05, split="code", window=16)
    hist = u.history
    for k in u.compressed_scales:
        for b, m in zip(s.tokens[k], mask[k]):
            if m and sum(mask[k]) * hist[k] + (32 - sum(mask[k])) * 16 <= sum(u.tokens[k]):
                assert b == hist[k]


def test_budget_json_round_trip_and_validation():
    u = pyramid(uniform(VAR256, 4, 0.2, min_keep=2), window=2)
    assert Budget.from_dict(u.to_dict()) == u
    with pytest.raises(ValueError):
        Budget(u.maps, u.tokens[:-1])
    with pytest.raises(ValueError):
        Budget(u.maps, ((2,) * 4,) + u.tokens[1:])  # 2 > H_0 = 1
