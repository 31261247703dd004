"""`accel parity mar` on the public fixture (via the CLI), and its failure modes on corrupted copies."""
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from accel.cli import main
from accel.parity import mar as parity_mar
from paths import fixtures

FIX = fixtures("mar")
pytestmark = [pytest.mark.usefixtures("one_thread"),  # tests/conftest.py
              pytest.mark.skipif(not (FIX / "mar_tiny_io.safetensors").exists(), reason="MAR fixture absent")]
MAR_VAE_FILES = ("README.md", "_manifest_mar.json", "mar_tiny_config.json", "mar_tiny_state_dict.safetensors",
                 "mar_tiny_io.safetensors", "vae_tiny_config.json", "vae_tiny_state_dict.safetensors",
                 "vae_tiny_io.safetensors")




def _copy(tmp_path: Path, files=MAR_VAE_FILES) -> Path:
    for f in files:
        shutil.copy(FIX / f, tmp_path / f)
    return tmp_path


def _edit(path: Path, fn) -> None:
    t = load_file(str(path))
    fn(t)
    save_file(t, str(path))


def test_cli_passes_on_mar_and_vae_files(tmp_path, capsys):
    d = _copy(tmp_path)
    assert main(["parity", "mar", str(d)]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    for name in ("trajB.mean", "sample_tokens.iter3.sampled", "vae.decoded", "sched_5.timestep_map", "net_cfg.out"):
        assert f"ok   {name} " in out


def test_cli_passes_on_full_public_folder(capsys):
    """`accel parity mar shared/fixtures/mar`: MAR/VAE checks here, CSpD/DiSA files through their modules."""
    code = main(["parity", "mar", str(FIX)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "FAIL" not in out and "ok   sample_tokens.out " in out and "ok   vae.posterior_sample " in out


def test_perturbed_tensor_fails(tmp_path, capsys):
    d = _copy(tmp_path)
    _edit(d / "mar_tiny_io.safetensors", lambda t: t.__setitem__("trajC.final", t["trajC.final"] * 1.01))
    assert main(["parity", "mar", str(d)]) == 1
    assert "FAIL trajC.final " in capsys.readouterr().out


def test_perturbed_weight_fails(tmp_path):
    d = _copy(tmp_path)

    def edit(t):
        t["decoder.conv_out.bias"] = t["decoder.conv_out.bias"] + 1e-3
    _edit(d / "vae_tiny_state_dict.safetensors", edit)
    r = parity_mar.run(d)
    bad = {c.name for c in r.checks if not c.ok}
    assert {"vae.decoded", "vae.decoded_from_mean"} <= bad and "vae.encoder_out" not in bad


def test_extra_unknown_tensor_and_file_fail(tmp_path):
    d = _copy(tmp_path)
    _edit(d / "mar_tiny_io.safetensors", lambda t: t.__setitem__("trajA.something_new", torch.zeros(3)))
    _edit(d / "vae_tiny_io.safetensors", lambda t: t.__setitem__("vae.extra", torch.zeros(2)))
    (d / "mystery.json").write_text("{}")
    r = parity_mar.run(d)
    assert not r.ok
    assert "mar_tiny_io:trajA.something_new" in r.unknown and "vae_tiny_io:vae.extra" in r.unknown
    assert "mystery.json (unknown file)" in r.unknown
    assert all(c.ok for c in r.checks)  # the known tensors still pass


def test_trajectory_without_manifest_entry_is_unknown(tmp_path):
    d = _copy(tmp_path)
    _edit(d / "mar_tiny_io.safetensors", lambda t: t.update({k.replace("trajD", "trajE"): v.clone() for k, v in t.items()
                                                             if k.startswith("trajD.")}))
    r = parity_mar.run(d)
    assert not r.ok and "mar_tiny_io:trajE.final" in r.unknown


def test_extension_files_are_skipped_when_module_missing(tmp_path, monkeypatch):
    d = _copy(tmp_path, MAR_VAE_FILES + ("disa_schedules.json",))
    monkeypatch.setattr(parity_mar, "EXTENSIONS", {"accel.parity.no_such_checker_xyz": ("disa_",)})
    r = parity_mar.run(d)
    assert r.ok and r.skipped == ["disa_schedules.json (no accel.parity.no_such_checker_xyz)"]


def test_wrong_state_dict_is_a_failure_not_a_crash(tmp_path):
    d = _copy(tmp_path)

    def edit(t):
        del t["diffloss.net.res_blocks.1.in_ln.weight"]
    _edit(d / "mar_tiny_state_dict.safetensors", edit)
    r = parity_mar.run(d)
    bad = [c for c in r.checks if not c.ok]
    assert not r.ok and bad[0].name == "mar.load" and "res_blocks.1.in_ln.weight" in bad[0].note
