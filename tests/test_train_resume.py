"""The training loop resumes exactly after a SIGKILL, and checkpoints are never torn."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from accel.train.loop import CKPT, batch_indices, fit
from accel.train.recipes import get_recipe

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _train_cmd(run_dir: Path, sleep: float) -> list[str]:
    return [sys.executable, "-m", "accel", "train", "toy", "--run-dir", str(run_dir), "--no-export",
            "--threads", "1", "--cpu", "--set", f"step_sleep={sleep}"]


def _state(run_dir: Path) -> dict:
    return torch.load(run_dir / CKPT, map_location="cpu", weights_only=True)


def _assert_same(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a} != {b}"


def test_sigkill_mid_run_resumes_to_identical_state(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_train_cmd(ref, 0.0), check=True, env=ENV, capture_output=True, timeout=120)
    proc = subprocess.Popen(_train_cmd(killed, 0.05), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not (killed / CKPT).exists():
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere between checkpoints (every 10 steps of >= 50 ms)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    mid = _state(killed)  # loads: the file is complete
    assert 0 < mid["step"] < 60
    subprocess.run(_train_cmd(killed, 0.0), check=True, env=ENV, capture_output=True, timeout=120)
    a, b = _state(ref), _state(killed)
    assert a["step"] == b["step"] == 60
    for key in ("model", "optimizer", "scheduler", "ema"):
        _assert_same(a[key], b[key], key)
    assert not list(killed.glob(f".{CKPT}.tmp*"))


def test_stop_and_resume_in_process_matches_uninterrupted(tmp_path):
    torch.set_num_threads(1)
    recipe = get_recipe("toy")
    full = fit(recipe, tmp_path / "a", progress=False)
    part = fit(recipe, tmp_path / "b", stop_at=23, progress=False)
    assert part["step"] == 23 and not part["finished"]
    assert _state(tmp_path / "b")["step"] == 23
    rest = fit(recipe, tmp_path / "b", progress=False)
    assert rest["resumed_from"] == 23 and rest["finished"]
    _assert_same(_state(tmp_path / "a")["model"], _state(tmp_path / "b")["model"])
    _assert_same(_state(tmp_path / "a")["optimizer"], _state(tmp_path / "b")["optimizer"])
    assert full["last"] == rest["last"]


def test_resume_refuses_a_different_recipe(tmp_path):
    fit(get_recipe("toy"), tmp_path, stop_at=5, progress=False)
    try:
        fit(get_recipe("toy", lr=0.5), tmp_path, progress=False)
    except ValueError as e:
        assert "different recipe" in str(e)
    else:
        raise AssertionError("resumed under a different recipe")


def test_batches_cover_each_epoch_once():
    n, bs = 50, 8
    per_epoch = n // bs
    seen = torch.cat([batch_indices(n, bs, s, seed=3) for s in range(per_epoch)])
    assert len(set(seen.tolist())) == per_epoch * bs
    assert not torch.equal(batch_indices(n, bs, 0, 3), batch_indices(n, bs, per_epoch, 3))
    assert torch.equal(batch_indices(n, bs, 9, 3), batch_indices(n, bs, 9, 3))
