"""`accel parity var` on the public fixture, and on a corrupted copy (which must fail)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from accel.cli import main
from accel.parity import var as parity_var
from paths import fixtures

FIXTURE = fixtures("var")
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason="shared VAR fixture not present")


@pytest.fixture(autouse=True)
def _one_thread():
    """The CI box has 2 busy cores; intra-op threads only add contention for these tiny tensors."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_cli_parity_passes_on_public_fixture(capsys):
    assert main(["parity", "var", str(FIXTURE)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "PASS" in out
    assert "ar[cfg1.5_topk8_topp0.9_seed7]: idx_Bl.3" in out  # the generator-dependent run was checked


def test_corrupted_copy_fails(tmp_path):
    folder = tmp_path / "var"
    shutil.copytree(FIXTURE, folder)
    for p in folder.iterdir():
        p.chmod(0o644)
    tf = load_file(str(folder / "var_teacher_forcing.safetensors"))
    tf["logits_BLV"][1, 7, 3] += 1e-2  # one perturbed entry, 100x the tolerance
    save_file(tf, str(folder / "var_teacher_forcing.safetensors"))
    io = load_file(str(folder / "vqvae_io.safetensors"))
    io["extra_tensor_nobody_checks"] = torch.zeros(3)
    save_file(io, str(folder / "vqvae_io.safetensors"))
    manifest = json.loads((folder / "manifest.json").read_text())  # keep sha256 consistent: the tensor checks must catch it
    for name in ("var_teacher_forcing.safetensors", "vqvae_io.safetensors"):
        manifest[name]["sha256"] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    report = parity_var.run(folder)
    assert not report.ok
    failed = [c.name for c in report.checks if not c.ok]
    assert failed == ["tf: VAR.forward logits_BLV"]
    assert report.unknown == ["vqvae_io.safetensors:extra_tensor_nobody_checks"]
