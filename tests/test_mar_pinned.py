"""Pinned seeded outputs of every MAR sampler on the zoo models (issue 16: one MAR sampling loop).

Regression snapshots, on purpose: plain MAR (card defaults at batch 1 and 4, a linear CFG schedule), DiSA
(``AnnealedMAR`` with a linear 50 -> 5 schedule and the adaptive schedule) and CSpD (left-to-right and
independent verification, the official T = 42 variant, the draft-free control, DiSA inside CSpD) were
recorded before the loops were merged into ``accel.models.mar.sample_tokens``; the merged loop must consume
the generator in the same order and give the same tokens, and the integer work counters (acceptances,
residuals, head steps) exactly. Plain MAR and DiSA tokens are bitwise equal. CSpD tokens (all cases run
CFG) are compared to 2e-5 absolute: before the merge CSpD's guided head was a private copy of the DDPM
step that embedded the timestep one row per step; it now runs the head's own loop, which embeds the S
timesteps in one call, and the two matmuls round differently (max change 1.2e-5 on tokens of size ~1,
measured when the loops were merged; a change of RNG order or arithmetic moves tokens by O(0.1)).
``python tests/test_mar_pinned.py`` rewrites the fixture (only do that for an intended change of the
samplers' output, and say so in the commit).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "mar_pinned.pt"
COUNTERS = ("nfe_target", "nfe_draft", "head_steps", "head_rows", "probe_rows", "accepted", "drafted",
            "committed_drafts", "windows", "residuals", "fallbacks", "steps_per_iter", "tokens_per_iter")
CARD = dict(num_iter=16, cfg=5.0, cfg_schedule="constant", temperature=1.0, head_steps=50)  # fmnist-mar card


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _models():
    from accel import zoo

    return zoo.load("fmnist-mar"), zoo.load("fmnist-mar-draft")


def _close_draft(p, scale: float = 3e-4):
    """The target with every weight perturbed by ``scale`` relative noise: a draft that is accepted often
    (the zoo draft is almost never accepted under the exact rule), so the accept/residual paths are pinned."""
    import copy

    q, g = copy.deepcopy(p), _gen(11)
    with torch.no_grad():
        for prm in q.parameters():
            prm.mul_(1 + scale * torch.randn(prm.shape, generator=g))
    return q


def cases() -> dict:
    """name -> (tokens, counters) of every pinned run."""
    from accel.annealing.disa import AdaptiveSchedule, AnnealedMAR
    from accel.annealing.schedules import LinearSchedule
    from accel.models.mar import sample_tokens
    from accel.speculative.cspd import CSpDConfig, cspd_sample_tokens

    p, q = _models()
    one, four = torch.tensor([3]), torch.tensor([0, 3, 7, 9])
    small = dict(num_iter=8, cfg=5.0, cfg_schedule="constant", temperature=1.0)
    runs = {
        "mar_card_b1": lambda: sample_tokens(p, one, generator=_gen(0), **CARD),
        "mar_card_b4": lambda: sample_tokens(p, four, generator=_gen(1), **CARD),
        "mar_linear_cfg_b4": lambda: sample_tokens(p, four, generator=_gen(2), num_iter=8, cfg=3.0,
                                                   cfg_schedule="linear", temperature=0.9, head_steps=12),
        "disa_linear50_5": lambda: AnnealedMAR(p, None, LinearSchedule(50, 5), **small)
        .sample_tokens(four[:2], generator=_gen(3)),
        "disa_adaptive50_5": lambda: AnnealedMAR(p, None, AdaptiveSchedule(50, 5), **small)
        .sample_tokens(four[:2], generator=_gen(4)),
        "disa_adaptive_linear_cfg": lambda: AnnealedMAR(p, None, AdaptiveSchedule(20, 4, probes=3), num_iter=6,
                                                        cfg=3.0, cfg_schedule="linear", temperature=0.9)
        .sample_tokens(four[:2], generator=_gen(5)),
    }
    cspd = dict(head_steps="10", cfg=5.0, cfg_schedule="constant", gamma=4)
    for name, c, labels in (("cspd_left_to_right", CSpDConfig(**cspd), one),
                            ("cspd_independent", CSpDConfig(**cspd, verify="independent"), one),
                            ("cspd_official_t42", CSpDConfig.official(head_steps="10", cfg=5.0,
                                                                      cfg_schedule="constant"), one),
                            ("cspd_linear_cfg_unaligned", CSpDConfig(head_steps="8", cfg=3.0, gamma=3, align=False),
                             four[:2]),
                            ("cspd_disa", CSpDConfig(gamma=4, cfg=5.0, cfg_schedule="constant",
                                                     schedule=LinearSchedule(12, 3)), one)):
        runs[name] = lambda c=c, labels=labels: cspd_sample_tokens(p, q, labels, c, generator=_gen(6))
    close = _close_draft(p)
    for name, c in (("cspd_close_left_to_right", CSpDConfig(**{**cspd, "gamma": 6})),
                    ("cspd_close_independent_linear_cfg", CSpDConfig(head_steps="10", cfg=3.0, gamma=6,
                                                                     verify="independent"))):
        runs[name] = lambda c=c: cspd_sample_tokens(p, close, four[:2], c, generator=_gen(8))
    runs["cspd_control"] = lambda: cspd_sample_tokens(p, None, four[:2], CSpDConfig(**cspd), generator=_gen(7))
    out = {}
    for name, fn in runs.items():
        r = fn()
        out[name] = (r.tokens.detach().clone(), {k: r.stats[k] for k in COUNTERS if k in r.stats})
    return out


@pytest.fixture(scope="module")
def got():
    try:
        _models()
    except Exception as e:  # the zoo ships with the package; a stripped install skips with the reason
        pytest.skip(f"zoo MARs unavailable: {e}")
    return cases()


@pytest.fixture(scope="module")
def want():
    return torch.load(FIXTURE, weights_only=True)


def test_every_pinned_case_is_recorded(got, want):
    assert sorted(got) == sorted(want)


@pytest.mark.parametrize("name", ["mar_card_b1", "mar_card_b4", "mar_linear_cfg_b4", "disa_linear50_5",
                                  "disa_adaptive50_5", "disa_adaptive_linear_cfg", "cspd_left_to_right",
                                  "cspd_independent", "cspd_official_t42", "cspd_linear_cfg_unaligned",
                                  "cspd_disa", "cspd_control", "cspd_close_left_to_right",
                                  "cspd_close_independent_linear_cfg"])
def test_pinned_tokens_and_counters(got, want, name):
    tokens, counters = got[name]
    ref_tokens, ref_counters = want[name]
    assert tokens.shape == ref_tokens.shape and torch.isfinite(tokens).all()
    if name.startswith("cspd"):
        torch.testing.assert_close(tokens, ref_tokens, rtol=0.0, atol=2e-5)
    else:
        assert torch.equal(tokens, ref_tokens)
    assert {k: counters.get(k) for k in ref_counters} == ref_counters  # counters added later are not pinned


if __name__ == "__main__":  # regenerate the fixture
    torch.set_num_threads(1)
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save(cases(), FIXTURE)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)", file=sys.stderr)
