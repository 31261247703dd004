"""experiments/cspd_ship_draft.py: a --save-draft file's lineage and its held-out row."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from experiment_script import load_experiment

from accel.zoo.store import save_zoo_file


def _file(path, init, command):
    save_zoo_file(path, {"w": torch.ones(1)}, kind="mar", config={},
                  info={"recipe": "experiments/cspd_step_weighting.py", "command": command, "init": str(init),
                        "weights": ["sigma0"], "steps": 5})
    return path


def _folders(tmp_path):
    """``(runs, kept)``: a run folder and the versioned folder that keeps copies of its files."""
    runs, kept = tmp_path / "runs", tmp_path / "kept"
    runs.mkdir()
    kept.mkdir()
    return runs, kept


def test_lineage_follows_init_back_to_the_zoo_name(tmp_path):
    ship = load_experiment("cspd_ship_draft")
    a = _file(tmp_path / "a.safetensors.xz", "fmnist-mar-draft-aligned", "cspd_step_weighting.py --z-steps 2")
    b = _file(tmp_path / "b.safetensors.xz", a, "cspd_step_weighting.py --init a")
    chain, base = ship.lineage(b)
    assert base == "fmnist-mar-draft-aligned"
    assert [ship.stage_steps(i) for _, i in chain] == [5, 5]
    assert ship.stage_steps({"z_steps": 8000, "head_steps": 800, "weights": [], "steps": 400}) == 8800
    assert [(f, i["command"]) for f, i in chain] == [(a, "cspd_step_weighting.py --z-steps 2"),
                                                     (b, "cspd_step_weighting.py --init a")]
    loop = _file(tmp_path / "c.safetensors.xz", tmp_path / "c.safetensors.xz", "x")
    with pytest.raises(SystemExit, match="loops"):
        ship.lineage(loop)
    save_zoo_file(tmp_path / "d.safetensors.xz", {"w": torch.ones(1)}, kind="mar", config={}, info={"step": 1})
    with pytest.raises(SystemExit, match="not a file made by"):
        ship.lineage(tmp_path / "d.safetensors.xz")


def test_lineage_reads_a_missing_init_from_its_kept_copy(tmp_path):
    ship = load_experiment("cspd_ship_draft")
    runs, kept = _folders(tmp_path)
    a = _file(kept / "a.safetensors.xz", "fmnist-mar-draft-aligned", "cspd_step_weighting.py --z-steps 2")
    b = _file(runs / "b.safetensors.xz", runs / "a.safetensors.xz", "cspd_step_weighting.py --init runs/a")
    chain, base = ship.lineage(b, kept)
    assert base == "fmnist-mar-draft-aligned" and [f for f, _ in chain] == [a, b]
    with pytest.raises(FileNotFoundError):  # without the kept folder the missing file is an error, as before
        ship.lineage(b)


def test_held_out_row_is_the_last_that_scored_the_saved_file(tmp_path):
    ship = load_experiment("cspd_ship_draft")
    row = {"gap_sigma0": 1.0, "gap_sigma0_median": 0.5, "accept_T42": 0.2, "handoff_gap_sigma0": {},
           "forced_sigma_k": {}}
    rows = [{**row, "weight": "sigma0, saved fp16 (runs/x/b.safetensors.xz)", "accept_T42": 0.1},
            {**row, "weight": "sigma0"},
            {**row, "weight": "sigma0, saved fp16 (runs/y/b.safetensors.xz)", "accept_T42": 0.3},
            {**row, "weight": "sigma0, saved fp16 (runs/y/other.safetensors.xz)", "accept_T42": 0.9}]
    jl = tmp_path / "step_weighting.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert ship.held_out_row(jl, Path("runs/y/b.safetensors.xz"))["accept_T42"] == 0.3
    assert ship.held_out_row(jl, Path("runs/x/b.safetensors.xz"))["accept_T42"] == 0.1  # the path, not the name
    with pytest.raises(SystemExit, match="no 'saved fp16' row"):
        ship.held_out_row(jl, Path("runs/z/b.safetensors.xz"))


def test_kept_names_the_versioned_copy_only_when_its_bytes_match(tmp_path):
    ship = load_experiment("cspd_ship_draft")
    runs, kept = _folders(tmp_path)
    a = _file(runs / "a.safetensors.xz", "fmnist-mar-draft-aligned", "x")
    assert ship.kept(a, kept) == a  # no copy
    (kept / a.name).write_bytes(a.read_bytes())
    assert ship.kept(a, kept) == kept / a.name
    (kept / a.name).write_bytes(b"other")
    assert ship.kept(a, kept) == a


def test_base_made_by_carries_a_shipped_drafts_lineage_forward():
    ship = load_experiment("cspd_ship_draft")
    recipe = ship.base_made_by("abc123", {"step": 40})  # a draft `accel train` made
    assert len(recipe) == 1 and recipe[0].startswith("accel train fmnist-mar-draft-aligned")
    assert f"git show abc123:{ship.BASE_FILE}" in recipe[0]
    shipped = ship.base_made_by("def456", {"made_by": ["accel train x", "python experiments/a.py"]})
    assert shipped[:2] == ["accel train x", "python experiments/a.py"]
    assert shipped[2].startswith("# the zoo draft of def456") and f"git show def456:{ship.BASE_FILE}" in shipped[2]


def test_shipped_info_reads_the_zoo_file_at_a_revision(tmp_path, monkeypatch):
    ship = load_experiment("cspd_ship_draft")
    monkeypatch.chdir(tmp_path)
    def git(*a):
        return subprocess.run(["git", *a], check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    path = tmp_path / ship.BASE_FILE
    path.parent.mkdir(parents=True)
    save_zoo_file(path, {"w": torch.ones(1)}, kind="mar", config={}, info={"made_by": ["a"], "step": 3})
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    assert ship.shipped_info(git("rev-parse", "HEAD")) == {"made_by": ["a"], "step": 3}
    with pytest.raises(SystemExit, match="git has no"):
        ship.shipped_info("0000000")
