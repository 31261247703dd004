"""experiments/cca.py's trade-off figure from sweep.jsonl: which rows make each side (one sample count, the CFG
sweep by scale, CCA runs by run, older rows without ``kind``), and a figure written from the JSONL only."""
from __future__ import annotations

import json

import pytest
from experiment_script import load_experiment


@pytest.fixture(scope="module")
def cca_script():
    return load_experiment("cca")


ROWS = [
    # an older row (no kind, N=200): CCA by its lam field
    {"run": "runs/cca-l50", "step": 52, "beta": 0.1, "lam": 50, "cfg_scale": 1.0, "n_images": 200, "fid": 8.6,
     "class_acc": 0.69},
    {"kind": "cfg", "model": "fmnist-llamagen", "cfg_scale": 3.0, "n_images": 500, "fid": 6.0, "class_acc": 0.95},
    {"kind": "cfg", "model": "fmnist-llamagen", "cfg_scale": 1.0, "n_images": 500, "fid": 5.5, "class_acc": 0.70},
    {"kind": "cfg", "model": "fmnist-llamagen", "cfg_scale": 2.0, "n_images": 500, "fid": 4.7, "class_acc": 0.85},
    {"kind": "cca", "run": "runs/l3", "step": 30, "beta": 0.1, "lam": 3.0, "cfg_scale": 1.0, "n_images": 500,
     "fid": 5.0, "class_acc": 0.78},
    {"kind": "cca", "run": "runs/l3", "step": 40, "beta": 0.1, "lam": 3.0, "cfg_scale": 1.0, "n_images": 500,
     "fid": 4.9, "class_acc": 0.80},  # the same run scored again later: the latest row wins
    {"kind": "cca", "model": "fmnist-llamagen-cca", "step": 136, "beta": 0.1, "lam": 10.0, "cfg_scale": 1.0,
     "n_images": 500, "fid": None, "class_acc": 0.86},  # no FID: left out
]


def test_series_take_one_sample_count_sorted_cfg_and_latest_cca(cca_script):
    cfg, cca = cca_script.tradeoff_series(ROWS)  # default N: the last row's (500)
    assert [r["cfg_scale"] for r in cfg] == [1.0, 2.0, 3.0]
    assert [(r["run"], r["step"]) for r in cca] == [("runs/l3", 40)]
    cfg200, cca200 = cca_script.tradeoff_series(ROWS, n_images=200)
    assert cfg200 == [] and [r["lam"] for r in cca200] == [50]
    assert [r["lam"] for r in cca_script.tradeoff_series(ROWS, min_steps=30)[1]] == [3.0]
    assert cca_script.tradeoff_series(ROWS, min_steps=41)[1] == []  # the 40-step run is an unconverged probe


def test_plot_is_written_from_the_jsonl(cca_script, tmp_path):
    jsonl = tmp_path / "sweep.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = cca_script.plot_tradeoff(jsonl, tmp_path / "tradeoff.png", n_images=500)
    assert out.is_file() and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_llamagen_cca_train_subset_encodes_the_first_images_and_their_flips(tmp_path):
    import torch

    from accel import data
    from accel.train.recipes.cca import LlamaGenCCARecipe
    from accel.train.recipes.llamagen import encode_dataset, zoo_vq

    torch.set_num_threads(1)
    codes, labels = LlamaGenCCARecipe(train_subset=6).train_data(tmp_path, "cpu")
    x, y = (t[:6] for t in data.load_arrays("train"))
    assert codes.shape == (12, 64) and torch.equal(labels, torch.cat([y, y]))
    assert torch.equal(codes[:6], encode_dataset(zoo_vq(), x)) and torch.equal(codes[6:], encode_dataset(zoo_vq(), x.flip(-1)))
    again = LlamaGenCCARecipe(train_subset=6).train_data(tmp_path, "cpu")  # from the run folder's cache
    assert (tmp_path / "codes-subset6.pt").is_file() and torch.equal(again[0], codes)


def test_series_keep_one_sampling_setting_and_the_var_plot_names_its_guidance(cca_script, tmp_path):
    top = {"top_k": 112, "top_p": 0.96}
    rows = [{"kind": "cfg", "family": "var", "model": "fmnist-var", "cfg_scale": s, "n_images": 300, "fid": f,
             "class_acc": a} for s, f, a in ((0.0, 8.5, 0.72), (1.5, 6.0, 0.86))]
    rows += [{**rows[1], "sampling": top, "fid": 5.5},
             {"kind": "cca", "family": "var", "run": "runs/v", "step": 20, "beta": 0.02, "lam": 50, "cfg_scale": 0.0,
              "n_images": 300, "fid": 7.0, "class_acc": 0.8, "sampling": top}]
    cfg, cca = cca_script.tradeoff_series(rows, n_images=300)
    assert [r["fid"] for r in cfg] == [8.5, 6.0] and cca == []  # rows without sampling overrides only
    cfg, cca = cca_script.tradeoff_series(rows, n_images=300, sampling=top)
    assert [r["fid"] for r in cfg] == [5.5] and [r["run"] for r in cca] == ["runs/v"]
    jsonl = tmp_path / "sweep_var.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = cca_script.plot_tradeoff(jsonl, tmp_path / "tradeoff_var.png", n_images=300, sampling=top)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dd_pair_rate_times_both_teachers_on_the_same_noise(cca_script, tmp_path):
    import torch

    torch.set_num_threads(1)
    rows = cca_script.dd_pair_rate(batch=2, flow_steps=1, repeats=1, n_fid=0, out=tmp_path)
    assert [(r["teacher"], r["cfg_scale"]) for r in rows] == [("fmnist-llamagen", 2.0), ("fmnist-llamagen-cca", 1.0)]
    assert rows[1]["rate_ratio"] == pytest.approx(rows[0]["seconds"] / rows[1]["seconds"])
    assert all(r["pairs_per_s"] > 0 for r in rows)
    assert len((tmp_path / "dd_pairs.jsonl").read_text().splitlines()) == 2
