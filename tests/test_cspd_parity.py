"""CSpD fixture parity (official acceptance quantities at inner temperature 42 and 1) and its failure modes."""
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from accel.parity.mar_cspd import check
from accel.parity.report import Report

FIX = Path("/work/shared/fixtures/mar")
if not FIX.is_dir():
    FIX = Path(__file__).resolve().parents[1] / "../shared/fixtures/mar"
pytestmark = pytest.mark.skipif(not (FIX / "cspd_tiny_io.safetensors").exists(), reason="CSpD fixture absent")


def _copy(tmp_path, edit):
    for f in ("cspd_tiny_io.safetensors", "mar_tiny_config.json", "mar_tiny_state_dict.safetensors",
              "_manifest_cspd.json"):
        shutil.copy(FIX / f, tmp_path / f)
    t = load_file(str(tmp_path / "cspd_tiny_io.safetensors"))
    edit(t)
    save_file(t, str(tmp_path / "cspd_tiny_io.safetensors"))
    return tmp_path


def test_public_fixture_passes_with_nothing_unchecked():
    r = Report()
    check(FIX, r)
    assert r.ok, "\n".join(r.lines())
    names = {c.name for c in r.checks}
    for T in ("T42", "T1"):
        for q in ("fixed_term", "judge_accept", "subtracted_ratio", "speculative_sample_out"):
            assert f"cspd {T}.{q}" in names


def test_wrong_orientation_or_values_fail(tmp_path):
    def edit(t):
        t["T42.fixed_term"] = 1.0 / t["T42.fixed_term"]  # the paper's orientation is not what the code computed
        t["T1.judge_accept"][0] = 0.5
        t["unexpected.tensor"] = torch.zeros(2)

    r = Report()
    check(_copy(tmp_path, edit), r)
    bad = {c.name for c in r.checks if not c.ok}
    assert {"cspd T42.fixed_term", "cspd T1.judge_accept"} <= bad
    assert any("unexpected.tensor" in u for u in r.unknown) and not r.ok
