"""No file read by accel can run code: a pickle whose ``__reduce__`` would create a marker file is refused on
every entry point (Python API, zoo, ``accel sample``, ``accel train`` resume, model cards), and every
unreadable file (missing, empty, truncated, wrong format, wrong keys) gives an error naming it."""
from __future__ import annotations

import argparse
import lzma

import pytest
import torch

from accel import zoo
from accel.checkpoint import (CheckpointError, UnsafeCheckpointError, read_checkpoint, read_file,
                              read_state_dict)
from accel.cli import main as cli
from accel.train.loop import CKPT, fit
from accel.train.recipes import get_recipe


class Payload:
    """Unpickling this with the full unpickler calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path):
    """(path of a malicious ``last.pt`` inside a run folder, marker path that must never appear)."""
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    run.mkdir()
    path = run / CKPT
    torch.save({"model": {"w": torch.zeros(2)}, "step": 1, "recipe": {"name": "toy"}, "x": Payload(marker)}, path)
    return path, marker


def test_malicious_pickle_refused_by_the_python_api(evil):
    path, marker = evil
    for read in (read_file, read_state_dict, read_checkpoint):
        with pytest.raises(UnsafeCheckpointError, match=str(path)):
            read(path)
    for target in (path, path.parent):
        with pytest.raises(UnsafeCheckpointError, match=str(path)):
            zoo.load(target)
    assert not marker.exists()


def test_malicious_pickle_refused_by_accel_sample(evil, tmp_path, capsys):
    path, marker = evil
    for model in (path, path.parent):
        rc = cli(["sample", "--model", str(model), "--tokenizer", "fmnist-llamagen-vq", "--per-class", "1",
                  "--out", str(tmp_path / "g.png")])
        err = capsys.readouterr().err
        assert rc == 2 and str(path) in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "g.png").exists()


def test_malicious_pickle_refused_on_train_resume(evil, capsys):
    path, marker = evil
    rc = cli(["train", "toy", "--run-dir", str(path.parent), "--no-export", "--cpu", "--steps", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "UnsafeCheckpointError" in err and str(path) in err
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError, match=str(path)):
        fit(get_recipe("toy"), path.parent, steps=2, progress=False)
    assert not marker.exists()


def test_malicious_pickle_refused_by_model_cards(evil, tmp_path):
    from accel.zoo.cards import write_card

    path, marker = evil
    with pytest.raises(UnsafeCheckpointError, match=str(path)):
        write_card("fmnist-cnn", path.parent, command="-", quality=None, latency=None, out_dir=tmp_path)
    assert not marker.exists()


def test_namespace_is_allowed_but_cannot_smuggle_code(tmp_path):
    ok = tmp_path / "official.pth"
    torch.save({"model": {"w": torch.ones(3)}, "args": argparse.Namespace(lr=1e-4, name="mar")}, ok)
    assert torch.equal(read_state_dict(ok)["w"], torch.ones(3))
    assert read_file(ok)["args"].lr == 1e-4
    bad, marker = tmp_path / "evil.pth", tmp_path / "PWNED"
    torch.save({"model": {"w": torch.ones(3)}, "args": argparse.Namespace(x=Payload(marker))}, bad)
    with pytest.raises(UnsafeCheckpointError, match=str(bad)):
        read_state_dict(bad)
    assert not marker.exists()


def test_training_checkpoints_need_no_allow_list(tmp_path):
    """What ``fit`` saves loads with plain ``weights_only=True`` (no extra classes), and resumes."""
    fit(get_recipe("toy"), tmp_path, steps=2, progress=False)
    state = torch.load(tmp_path / CKPT, map_location="cpu", weights_only=True)
    assert state["step"] == 2
    assert fit(get_recipe("toy"), tmp_path, steps=3, progress=False)["resumed_from"] == 2


def _zoo_bytes(tmp_path):
    from accel.zoo.store import save_zoo_file

    p = save_zoo_file(tmp_path / "m.safetensors", {"w": torch.ones(2)}, kind="fmnist-cnn", config={})
    return p.read_bytes()


@pytest.mark.parametrize("case", ["missing", "empty", "truncated_pt", "garbage_pt", "list_pt", "empty_st",
                                  "truncated_st", "garbage_xz", "truncated_xz", "no_meta_st", "folder"])
def test_unreadable_files_name_the_file(tmp_path, case):
    good_st = _zoo_bytes(tmp_path)
    torch.save({"model": {"w": torch.ones(4)}}, tmp_path / "good.pt")
    good_pt = (tmp_path / "good.pt").read_bytes()
    write = {
        "missing": ("gone.pt", None), "empty": ("e.pt", b""), "truncated_pt": ("t.pt", good_pt[: len(good_pt) // 2]),
        "garbage_pt": ("g.pt", b"\x00not a checkpoint" * 10), "list_pt": ("l.pt", None),
        "empty_st": ("e.safetensors", b""), "truncated_st": ("t.safetensors", good_st[:-5]),
        "garbage_xz": ("g.safetensors.xz", b"garbage" * 5),
        "truncated_xz": ("t.safetensors.xz", lzma.compress(good_st)[:40]),
        "no_meta_st": ("n.safetensors", None), "folder": ("dir.pt", None),
    }
    name, data = write[case]
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    elif case == "list_pt":
        torch.save([torch.ones(1)], path)
    elif case == "no_meta_st":
        from safetensors.torch import save_file

        save_file({"w": torch.ones(1)}, str(path))
    elif case == "folder":
        path.mkdir()
    expected = FileNotFoundError if case == "missing" else (CheckpointError, IsADirectoryError)
    readers = [read_state_dict] if name.endswith((".pt", ".safetensors")) and case != "no_meta_st" else []
    if case != "folder":
        readers.append(zoo.load)
    for read in readers:
        with pytest.raises(expected) as e:
            read(path)
        assert str(path) in str(e.value) or repr(str(path)) in str(e.value), (read, str(e.value))


def test_wrong_keys_name_the_file_and_the_keys(tmp_path):
    p = tmp_path / "m.pt"
    torch.save({"something": {"w": torch.ones(1)}}, p)
    with pytest.raises(KeyError, match="model_ema"):
        read_state_dict(p, key="model_ema")
    with pytest.raises(CheckpointError, match=r"m\.pt.*missing entries"):
        read_checkpoint(p, required=("model", "step"))
