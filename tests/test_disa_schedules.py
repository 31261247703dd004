"""DiSA step schedules: official formulas (fixture parity), the 950 clip, edge cases, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from accel.annealing.schedules import (DISA_RESPACING, MAR_RESPACING, ConstantSchedule, CosineSchedule,
                                       LinearSchedule, Respacing, StepSchedule, TwoStageSchedule, disa_schedule,
                                       space_timesteps, steps_per_iteration)
from accel.parity.report import Report
from paths import fixtures

FIXTURES = fixtures("mar")
needs_fixture = pytest.mark.skipif(not (FIXTURES / "disa_schedules.json").exists(), reason="no DiSA fixture")


@needs_fixture
def test_every_recorded_schedule_matches():
    meta = json.loads((FIXTURES / "disa_schedules.json").read_text())
    assert len(meta["schedules"]) == 36
    for key, want in meta["schedules"].items():
        up, lo, strategy, it = key.split("_")
        got = steps_per_iteration(disa_schedule(strategy, int(up[2:]), int(lo[2:])), int(it[4:]))
        assert got == want, key


@needs_fixture
def test_timestep_maps_match_both_clips():
    meta = json.loads((FIXTURES / "disa_schedules.json").read_text())
    for steps, want in meta["timestep_map_clip950"].items():
        assert list(DISA_RESPACING.timesteps(int(steps))) == want
    for steps, want in meta["timestep_map_default_sampler_clip1001"].items():
        assert list(MAR_RESPACING.timesteps(int(steps))) == want
        assert list(Respacing(clip=1001).timesteps(int(steps))) == want


@needs_fixture
def test_parity_module_schedule_checks_pass():
    from accel.parity import mar_disa

    report = Report()
    mar_disa.check(FIXTURES, report)
    schedule_checks = [c for c in report.checks if not c.name.startswith("disa.tiny.") or "timestep" in c.name]
    assert len(schedule_checks) >= 36 + 8 + 1
    assert all(c.ok for c in report.checks), [c.line() for c in report.checks if not c.ok]


def test_headline_numbers_of_the_research_note():
    # 50 -> 5 linear at 64 iterations: 48, 47, ... 5 with sum 1681 (the clip turns 50 into 48)
    lin = steps_per_iteration(LinearSchedule(50, 5), 64)
    assert lin[0] == 48 and lin[-1] == 5 and sum(lin) == 1681
    assert DISA_RESPACING.timesteps(50)[-3:] == (917, 938, 950)
    assert DISA_RESPACING.timesteps(5) == (0, 250, 500, 749, 950)
    assert MAR_RESPACING.timesteps(5) == (0, 250, 500, 749, 999)
    assert sum(steps_per_iteration(ConstantSchedule(100), 256)) == 25_600  # MAR default


def test_unclipped_variant_runs_the_requested_count():
    for cls in (LinearSchedule, CosineSchedule, TwoStageSchedule):
        s = cls(50, 5, MAR_RESPACING)
        for k in range(16):
            assert s(k, 16) == s.requested_steps(k, 16)
        assert s(0, 16) == 50 and s(15, 16) == 5


def test_monotone_and_bounded():
    for strategy in ("linear", "cosine", "two-stage", "constant"):
        for upper in (25, 50, 100):
            for n in (1, 2, 7, 64):
                steps = steps_per_iteration(disa_schedule(strategy, upper, 5), n)
                assert all(a >= b for a, b in zip(steps, steps[1:])), (strategy, upper, n)
                assert all(5 <= s <= upper for s in steps)


def test_space_timesteps_official_rounding():
    assert space_timesteps(1000, 1) == (0,)
    assert space_timesteps(1000, 1000) == tuple(range(1000))
    assert space_timesteps(1000, 100)[:6] == (0, 10, 20, 30, 40, 50) and space_timesteps(1000, 100)[6] == 61


def test_protocol_and_frozen():
    s = LinearSchedule()
    assert isinstance(s, StepSchedule) and isinstance(ConstantSchedule(), StepSchedule)
    with pytest.raises(Exception):
        s.upper = 3  # frozen dataclass
    assert hash(s) == hash(LinearSchedule())


def test_bad_input_is_a_clear_error():
    with pytest.raises(KeyError, match="valid"):
        disa_schedule("exponential")
    with pytest.raises(ValueError):
        LinearSchedule(5, 50)
    with pytest.raises(ValueError):
        ConstantSchedule(0)
    with pytest.raises(ValueError):
        LinearSchedule()(64, 64)
    with pytest.raises(ValueError):
        space_timesteps(1000, 1001)
    with pytest.raises(ValueError):
        Respacing(clip=-1)


@needs_fixture
def test_parity_fails_on_a_wrong_schedule_or_unknown_key(tmp_path):
    import shutil

    from accel.parity import mar_disa

    meta = json.loads((FIXTURES / "disa_schedules.json").read_text())
    meta["schedules"]["up50_lo5_linear_iter64"][3] += 1  # one wrong step count
    meta["schedules"]["up50_lo5_spline_iter64"] = [5] * 64  # a strategy accel does not know
    meta["mystery"] = 1
    (tmp_path / "disa_schedules.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "tiny_traj"}))
    report = Report()
    mar_disa.check(tmp_path, report)
    bad = [c.name for c in report.checks if not c.ok]
    assert bad == ["disa.schedule.up50_lo5_linear_iter64"]
    assert any("spline" in u for u in report.unknown) and any("mystery" in u for u in report.unknown)
    assert not report.ok
    # an empty folder is skipped, listed by name, not passed silently
    empty = Report()
    mar_disa.check(tmp_path / "nothing", empty)
    assert empty.skipped and not empty.ok


@needs_fixture
def test_unclipped_schedule_does_not_match_the_official_runs():
    # the 950 clip is what the official DiSA sampler does: the unclipped variant must differ at step 0
    meta = json.loads((FIXTURES / "disa_schedules.json").read_text())
    unclipped = steps_per_iteration(disa_schedule("linear", 50, 5, clip=None), 64)
    assert unclipped != meta["schedules"]["up50_lo5_linear_iter64"] and unclipped[0] == 50
