"""Results rows: every field present, atomic appends, loud reader."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from accel.harness.results import FIELDS, append_rows, current_command, environment, make_row, read_rows

REQUIRED = ("experiment family model method params batch_size n_images seed latency_s images_per_s speedup baseline "
            "nfe_target nfe_draft mean_accept_len acceptance_rate head_steps kv_bytes kv_fraction fid fid_feature kid "
            "precision recall class_acc env").split()


def test_row_has_all_design_fields_and_nulls():
    row = make_row(method="m", speedup=torch.tensor(2.5), psnr=float("inf"), extra_field=1)
    assert set(REQUIRED) <= set(FIELDS) <= set(row)
    assert row["fid"] is None and row["speedup"] == 2.5 and row["extra_field"] == 1
    assert row["psnr"] is None and row["nonfinite"] == ["psnr=inf"]
    with pytest.raises(TypeError):
        make_row(params={"x": object()})


def test_current_command(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/x/accel/__main__.py", "bench", "--out", "a b"])
    assert current_command() == "python -m accel bench --out 'a b'"
    monkeypatch.setattr("sys.argv", ["/usr/bin/accel", "plot", "r.jsonl"])
    assert current_command() == "accel plot r.jsonl"


def test_environment_fields():
    env = environment("cpu")
    assert {"host", "torch", "device", "threads", "git_sha", "python"} <= set(env)
    assert env["threads"] == torch.get_num_threads()


def test_append_and_read_roundtrip(tmp_path):
    p = tmp_path / "r" / "bench.jsonl"
    append_rows(p, [make_row(method="a"), make_row(method="b")])
    append_rows(p, [make_row(method="c")])
    append_rows(p, [])
    assert [r["method"] for r in read_rows(p)] == ["a", "b", "c"]


def test_reader_refuses_broken_lines(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=":2: broken JSON"):
        read_rows(p)
    p.write_text('{"a": 1}\n{"a": 2}')
    with pytest.raises(ValueError, match="not terminated"):
        read_rows(p)
    with pytest.raises(ValueError, match="newline"):
        append_rows(p, [{"a": 3}])  # never glue a row onto a torn line
    p.write_text("[1]\n")
    with pytest.raises(ValueError, match="JSON object"):
        read_rows(p)


WRITER = """
import sys
from accel.harness.results import append_rows
rows = [{"i": i, "pad": "x" * 5000} for i in range(20)]
n = 0
while True:
    append_rows(sys.argv[1], rows)
    n += 1
    if n == 3:
        print("ready", flush=True)
"""


def test_killed_writer_never_leaves_a_broken_line(tmp_path):
    p = tmp_path / "k.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(p)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    rows = read_rows(p)
    assert len(rows) >= 60 and len(rows) % 20 == 0  # whole batches only
    assert [r["i"] for r in rows[:20]] == list(range(20))
    json.dumps(rows)


def test_append_is_all_or_nothing_when_the_writer_dies_before_the_rename(tmp_path, monkeypatch):
    """A crash at any point before the rename leaves the old file intact (a single large os.write could be cut
    short by SIGKILL and leave a torn line: the flaky failure of the test above)."""
    p = tmp_path / "r.jsonl"
    append_rows(p, [{"a": 1}])
    before = p.read_bytes()

    def crash(*a, **k):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        append_rows(p, [{"pad": "x" * 200_000}])
    assert p.read_bytes() == before and not list(tmp_path.glob(".r.jsonl.tmp*"))
