"""Plots and the summary table render from the fixture JSONL."""
from pathlib import Path

import matplotlib.image
import pytest

from accel.cli import main as cli
from accel.harness.plots import experiment_groups, kv_series, pareto_front, plot_all
from accel.harness.results import read_rows
from accel.harness.summary import markdown_table, summary_markdown

FIXTURE = Path(__file__).parent / "fixtures" / "results_sample.jsonl"


def test_pareto_front():
    pts = [(1.0, 10.0), (1.8, 10.2), (2.5, 12.0), (1.5, 13.0), (2.5, 12.5)]
    assert pareto_front(pts, lower_is_better=True) == [0, 1, 2]
    assert pareto_front(pts, lower_is_better=False) == [3, 4]  # higher quality better: (1.5,13) and (2.5,12.5)


def test_groups_include_baseline():
    groups = experiment_groups(read_rows(FIXTURE))
    assert set(groups) == {("fixspec", "fix-model"), ("fixcache", "fix-model")}
    assert {r["method"] for r in groups[("fixspec", "fix-model")]} == {"fix-base", "fix-spec-a", "fix-spec-b", "fix-spec-c"}


def test_plots_render(tmp_path):
    paths = plot_all(read_rows(FIXTURE), tmp_path, ("fid", "psnr"))
    names = sorted(p.name for p in paths)
    assert names == sorted([
        "fixspec_fix-model_fid_vs_speedup.png", "fixcache_fix-model_fid_vs_speedup.png",
        "fixcache_fix-model_fid_vs_kv.png", "fixcache_fix-model_psnr_vs_speedup.png", "fixcache_fix-model_psnr_vs_kv.png",
    ])
    img = matplotlib.image.imread(paths[0])
    assert img.shape[0] > 100 and img.std() > 0  # a real, non-blank image
    with pytest.raises(KeyError):
        plot_all([], tmp_path, ("nope",))


def test_plot_command(tmp_path, capsys):
    assert cli(["plot", str(FIXTURE), "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("*.png"))) == 3
    assert cli(["plot", str(tmp_path / "missing.jsonl")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{broken\n")
    assert cli(["plot", str(bad)]) == 1
    assert "bad.jsonl:1" in capsys.readouterr().out


def test_summary_table():
    rows = read_rows(FIXTURE)
    table = markdown_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    assert "speed-up" in lines[0] and "peak mem" not in lines[0]  # empty columns dropped
    assert "2.50x" in table
    md = summary_markdown(rows, command="accel bench", plots=["a.png"])
    assert "classifier fixture-cnn," in md and "![a.png](a.png)" in md and "not comparable" in md


def test_kv_series_keeps_every_budget_of_a_method():
    rows = [dict(method="base", baseline="base", batch_size=4, fid=1.0, kv_fraction=None),
            dict(method="p", baseline="base", batch_size=4, fid=3.0, kv_fraction=0.1),
            dict(method="p", baseline="base", batch_size=4, fid=2.0, kv_fraction=0.2),
            dict(method="p", baseline="base", batch_size=1, fid=9.0, kv_fraction=0.3)]  # other batch: ignored
    assert kv_series(rows, "fid") == {"base": [(1.0, 1.0)], "p": [(0.1, 3.0), (0.2, 2.0)]}
