"""ScaleKV's mechanism on a synthetic scale-wise decode with one drafter layer and three refiners.

Each scale's keys cluster around their own direction u_s. Refiner layers' queries point at u_s (they look at
the current map only); the drafter layer's queries are weak, so its attention is spread over the whole
history. Calibration must flag the drafter (lowest ASI), and at the same total budget ScaleKV (budget moved
to the drafter) must reproduce the full-cache attention outputs better than uniform SnapKV.
"""
import torch

from accel.cache.budgets import map_sizes
from accel.cache.calibrate import ASIRecorder, calibration_dict
from accel.cache.registry import build_policy

PATCH, DEPTH, H, D, DRAFTER = (2, 4, 6, 8, 10), 4, 2, 16, 2


def scale_tensors(seed):
    """k, v, q per (scale, layer): (1, H, n, D)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s, p in enumerate(PATCH):
        n = p * p
        u = torch.nn.functional.normalize(torch.randn(D, generator=g), dim=0)
        row = []
        for layer in range(DEPTH):
            k = u + 0.3 * torch.randn(1, H, n, D, generator=g)
            v = torch.randn(1, H, n, D, generator=g)
            if layer == DRAFTER:
                q = 0.05 * torch.randn(1, H, n, D, generator=g)  # near-uniform attention over all keys
            else:
                q = 6.0 * u + 0.3 * torch.randn(1, H, n, D, generator=g)  # attends to its own scale
            row.append((k, v, q))
        out.append(row)
    return out


def decode(tensors, policy):
    """Attention outputs of every (scale, layer) with the cache compressed by ``policy`` after each scale."""
    cache_k, cache_v, outs = [None] * DEPTH, [None] * DEPTH, []
    for s, row in enumerate(tensors):
        for layer, (k, v, q) in enumerate(row):
            K = k if cache_k[layer] is None else torch.cat((cache_k[layer], k), dim=2)
            V = v if cache_v[layer] is None else torch.cat((cache_v[layer], v), dim=2)
            outs.append((q @ K.transpose(-1, -2)).softmax(-1) @ V)
            cache_k[layer], cache_v[layer] = policy.compress(layer, s, K, V, q) if policy else (K, V)
    return outs


def test_scalekv_moves_budget_to_the_drafter_and_beats_uniform_snapkv():
    rec = ASIRecorder()
    decode(scale_tensors(seed=100), rec)  # calibration on other draws
    calib = calibration_dict(rec, map_sizes(PATCH), DEPTH)
    for row in calib["z"][1:]:
        assert min(range(DEPTH), key=lambda l: row[l]) == DRAFTER
    test = scale_tensors(seed=0)
    full = decode(test, None)
    err = {}
    for name in ("snapkv", "scalekv", "scalekv-code"):
        pol = build_policy(name, PATCH, DEPTH, 0.1, window=4, calib=calib, drafter_fraction=0.25)
        err[name] = sum(float((a - b).pow(2).sum()) for a, b in zip(decode(test, pol), full))
        if name.startswith("scalekv"):
            for s in pol.budget.compressed_scales:
                t = pol.budget.tokens[s]
                assert pol.drafters[s][DRAFTER] and t[DRAFTER] == max(t) > min(t)
    assert err["scalekv"] < err["snapkv"] and err["scalekv-code"] < err["snapkv"], err
