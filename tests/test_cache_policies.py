"""Shared test matrix: every cache policy through the same checks on random k/v/q."""
import random

import pytest
import torch

from accel.models.kv_cache import KeepAll
from accel.cache.budgets import history_lengths, map_sizes
from accel.cache.registry import POLICIES, build_policy
from accel.cache.calibrate import znormalise

PATCH = (1, 2, 3, 4, 6, 8)
DEPTH, B, H, D, WIN = 3, 2, 2, 8, 4


def fake_calib(seed=0):
    rng = random.Random(seed)
    maps = map_sizes(PATCH)
    asi = [None] + [[rng.random() for _ in range(DEPTH)] for _ in maps[1:]]
    return {"maps": [list(m) for m in maps], "depth": DEPTH, "z": znormalise(asi)}


def make(name, fraction):
    return build_policy(name, PATCH, DEPTH, fraction, window=WIN, calib=fake_calib())


def inputs(L, n, seed):
    g = torch.Generator().manual_seed(seed)
    k, v, q = (torch.randn(B, H, m, D, generator=g) for m in (L, L, n))
    k[..., 0] = torch.arange(L, dtype=torch.float32)  # trace positions through the gather
    v[..., 0] = torch.arange(L, dtype=torch.float32) + 0.5
    return k, v, q


def window_positions(policy, scale, L):
    n = PATCH[scale] ** 2
    if hasattr(policy, "window_positions"):
        return set(policy.window_positions(scale, L).tolist())
    if hasattr(policy, "sinks"):
        return set(range(min(policy.sinks, 1)))  # sinks checked separately
    if hasattr(policy, "window"):
        return set(range(L - min(policy.window, n), L))
    return set()


@pytest.mark.parametrize("name", [p for p in POLICIES if p != "full"])
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_keeps_exactly_budget_and_window(name, fraction):
    policy = make(name, fraction)
    hist = history_lengths(map_sizes(PATCH))
    assert policy.budget.compressed_scales, "test schedule must exercise compression"
    for scale in range(len(PATCH)):
        n = PATCH[scale] ** 2
        for L in {hist[scale], min(hist[scale], n + 5)}:  # full history and an already-compressed one
            for layer in range(DEPTH):
                k, v, q = inputs(L, n, seed=scale * 10 + layer)
                k2, v2 = policy.compress(layer, scale, k, v, q)
                b = policy.budget.keep(layer, scale)
                if b is None or b >= L:
                    assert k2 is k and v2 is v  # identity short-circuit
                    continue
                assert k2.shape == (B, H, b, D) and v2.shape == (B, H, b, D)
                pos = k2[..., 0]
                assert torch.equal(v2[..., 0], pos + 0.5), "k and v must keep the same positions"
                assert (pos[..., 1:] > pos[..., :-1]).all(), "kept cache stays in time order, no duplicates"
                for row in pos.reshape(-1, b).long().tolist():
                    assert torch.equal(k2.new_tensor(row), k2.new_tensor(sorted(set(row))))
                    assert window_positions(policy, scale, L) <= set(row)
                    if name == "sliding":
                        assert row == list(range(L - b, L))
                    if name == "streamingllm":
                        s = min(policy.sinks, b)
                        assert row == list(range(s)) + list(range(L - (b - s), L))


@pytest.mark.parametrize("name", POLICIES)
def test_full_budget_is_identity(name):
    policy = make(name, 1.0)
    hist = history_lengths(map_sizes(PATCH))
    for scale in range(len(PATCH)):
        k, v, q = inputs(hist[scale], PATCH[scale] ** 2, seed=scale)
        k2, v2 = policy.compress(0, scale, k, v, q)
        assert k2 is k and v2 is v


@pytest.mark.parametrize("name", POLICIES)
def test_pure_and_deterministic(name):
    policy = make(name, 0.2)
    scale = len(PATCH) - 2
    L = history_lengths(map_sizes(PATCH))[scale]
    k, v, q = inputs(L, PATCH[scale] ** 2, seed=3)
    before = [t.clone() for t in (k, v, q)]
    a = policy.compress(1, scale, k, v, q)
    b = policy.compress(1, scale, k, v, q)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(before, (k, v, q))), "inputs must not be modified"


@pytest.mark.parametrize("name", [p for p in POLICIES if p != "full"])  # KeepAll: KVCache validates
def test_bad_shapes_raise(name):
    policy = make(name, 0.2)
    k, v, q = inputs(30, 16, seed=0)
    with pytest.raises(ValueError):
        policy.compress(0, 3, k, v[:, :, :-1], q)
    with pytest.raises(ValueError):  # scale 3 has 16 tokens, not 9
        policy.compress(0, 3, k, v, q[:, :, :9])


@pytest.mark.parametrize("name", ["snapkv", "pyramidkv", "scalekv", "scalekv-code"])
def test_scored_policies_keep_the_attended_key(name):
    """A history key that every query attends to strongly must survive; an unrelated one is dropped."""
    policy = make(name, 0.1)
    scale = len(PATCH) - 2
    L, n = history_lengths(map_sizes(PATCH))[scale], PATCH[scale] ** 2
    k, v, q = inputs(L, n, seed=5)
    k[..., 1:] *= 0.01
    q[..., 1:] *= 0.01
    q[..., 0] = 0.0  # k[..., 0] holds positions (tracing), keep it out of the logits
    q[..., 1] = 5.0
    hot = 7
    k[:, :, hot - 2:hot + 3, 1] = torch.tensor([3.0, 4.0, 5.0, 4.0, 3.0])  # a cluster: pooling keeps its peak
    row = policy.budget.tokens[scale]
    layer = max(range(DEPTH), key=lambda l: row[l])
    assert row[layer] > WIN
    k2, _ = policy.compress(layer, scale, k, v, q)
    kept = k2[..., 0]
    if policy.scoring == "paper":  # average pooling: the cluster's peak scores highest
        assert (kept == hot).any(-1).all()
    else:  # max pooling spreads the peak over the kernel: some key of the cluster survives
        assert ((kept >= hot - 2) & (kept <= hot + 2)).any(-1).all()


def test_keepall_contract():
    k, v, q = inputs(10, 4, seed=0)
    assert KeepAll().compress(0, 0, k, v, q) == (k, v)


def test_unknown_policy_lists_names():
    with pytest.raises(KeyError, match="scalekv"):
        build_policy("h2o", PATCH, DEPTH, 0.1)
