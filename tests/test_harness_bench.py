"""``accel bench`` end to end on fake registered methods, writing into tmp_path."""
import pytest

from accel.cli import main as cli
from accel.commands import bench
from accel.harness.results import read_rows
from test_harness_timing import _fake_reference

FAKE = ["--plugin", "test_harness_fake"]


@pytest.fixture
def fake_reference(monkeypatch):
    monkeypatch.setattr(bench, "_load_reference", lambda device: _fake_reference())


def test_bench_end_to_end(tmp_path, fake_reference, capsys, monkeypatch):
    argv = ["bench", *FAKE, "--method", "fake-fast", "--method", "fake-lossy", "--n-images", "32", "--quality-batch", "16",
            "--batch-size", "1", "--batch-size", "4", "--repeats", "2", "--no-memory", "--out", str(tmp_path)]
    monkeypatch.setattr("sys.argv", ["accel", *argv])
    assert cli(argv) == 0
    rows = read_rows(tmp_path / "bench.jsonl")
    assert sorted({r["method"] for r in rows}) == ["fake-base", "fake-fast", "fake-lossy"]  # baseline added
    assert len(rows) == 6 and all(r["fid_feature"] == "FID[fake-cnn, N=32]" for r in rows)
    assert all(r["command"].startswith("accel bench --plugin test_harness_fake --method fake-fast") for r in rows)
    out = capsys.readouterr().out
    assert out.startswith("| experiment") and "fake-lossy" in out
    summary = (tmp_path / "summary.md").read_text()
    assert "fake-fast" in summary and "classifier fake-cnn," in summary
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["fakecache_fake-model_fid_vs_kv.png", "fakecache_fake-model_fid_vs_speedup.png",
                    "fakespec_fake-model_fid_vs_speedup.png"]
    assert cli(argv[:-2] + ["--out", str(tmp_path), "--n-images", "0"]) == 0  # appends another run
    assert len(read_rows(tmp_path / "bench.jsonl")) == 12


def test_bench_bad_options(tmp_path, capsys):
    assert cli(["bench", *FAKE, "--method", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown method nope" in err and "fake-fast" in err and "llamagen-ar" in err
    assert cli(["bench", *FAKE, "--method", "fake-fast", "--model", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown model nope; valid:" in capsys.readouterr().err
    assert cli(["bench", *FAKE, "--method", "fake-fast", "--repeats", "0"]) == 2
    assert cli(["bench", *FAKE, "--list"]) == 0
    assert "fake-lossy" in capsys.readouterr().out
    assert not (tmp_path / "bench.jsonl").exists()
