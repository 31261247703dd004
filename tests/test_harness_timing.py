"""Timer, work counters and the runner on fake methods (no timing assertions)."""
import numpy as np
import pytest
import torch

from accel.harness.quality import FeatureReference
from accel.harness.registry import discover
from accel.harness.runner import RunConfig, aggregate_stats, run_group
from accel.harness.timing import Timing, time_interleaved
from test_harness_fake import FakeMethod


def test_timer_excludes_warmup_and_interleaves():
    order = []
    counts = {"A": 0, "B": 0}

    def make(name):
        def fn(r):
            counts[name] += 1
            order.append((name, r))
            return r
        return fn

    ticks = iter(range(1000))
    out = time_interleaved({"A": make("A"), "B": make("B")}, repeats=3, warmup=2, clock=lambda: float(next(ticks)))
    assert counts == {"A": 5, "B": 5}  # every call ran ...
    assert len(out["A"].times) == 3 and len(out["B"].times) == 3  # ... but only post-warm-up calls are timed
    assert out["A"].outputs == [0, 1, 2]
    assert order == [(n, r) for r in range(-2, 3) for n in "AB"]  # A B A B ...
    with pytest.raises(ValueError):
        time_interleaved({"A": make("A")}, repeats=0)


def test_timing_median_and_spread():
    t = Timing([1.0, 2.0, 3.0, 4.0, 100.0])
    assert t.median == 3.0
    assert t.spread == pytest.approx((4.0 - 2.0) / 2)
    assert Timing([2.0]).spread == 0.0


def test_aggregate_stats():
    stats = [
        {"nfe_target": 10, "nfe_draft": 40, "accepted": 6, "drafted": 8, "verify_steps": 2, "kv_bytes": 100, "gamma": 4},
        {"nfe_target": 20, "nfe_draft": 40, "accepted": 2, "drafted": 8, "verify_steps": 2, "kv_bytes": 300, "gamma": 4},
    ]
    c = aggregate_stats(stats)
    assert c["nfe_target"] == 15 and c["nfe_draft"] == 40 and c["gamma"] == 4
    assert c["mean_accept_len"] == pytest.approx(1 + 8 / 4)
    assert c["acceptance_rate"] == pytest.approx(8 / 16)
    assert c["kv_bytes"] == 300 and c["head_steps"] is None and c["kv_fraction"] is None
    assert aggregate_stats([{}])["mean_accept_len"] is None and aggregate_stats([{}])["gamma"] is None


def _fake_reference():
    def extract(images):
        feats = torch.nn.functional.avg_pool2d(images, 4).flatten(1)  # (B, 48)
        logits = torch.nn.functional.one_hot((images.mean((1, 2, 3)) * 20).long().clamp(0, 9), 10).float()
        return feats, logits

    g = torch.Generator().manual_seed(1)
    real = extract(torch.rand(300, 3, 16, 16, generator=g))[0].double().numpy()
    return FeatureReference("fake-cnn", extract, (real.mean(0), np.cov(real, rowvar=False)), real)


def test_run_group_rows_and_counts():
    reg = discover(["test_harness_fake"])
    base, fast, lossy = (reg.get(n) for n in ("fake-base", "fake-fast", "fake-lossy"))
    cfg = RunConfig(batch_sizes=(1, 4), repeats=3, warmup=1, n_images=40, quality_batch=16, memory=False, n_boot=5)
    rows = run_group(reg, base, [fast, lossy], "fake-model", cfg, reference=_fake_reference(), command="pytest")
    assert [(r["method"], r["batch_size"]) for r in rows] == [(m, b) for b in (1, 4) for m in ("fake-base", "fake-fast", "fake-lossy")]
    by = {(r["method"], r["batch_size"]): r for r in rows}
    assert by[("fake-base", 1)]["speedup"] == pytest.approx(1.0)
    assert by[("fake-fast", 4)]["mean_accept_len"] == pytest.approx(3.0)
    assert by[("fake-fast", 4)]["acceptance_rate"] == pytest.approx(0.5)
    assert by[("fake-lossy", 1)]["kv_fraction"] == pytest.approx(0.5)
    assert by[("fake-lossy", 1)]["psnr"] is not None and by[("fake-lossy", 1)]["ssim"] < 1
    assert by[("fake-fast", 1)]["psnr"] is None  # fidelity only where the entry asks for it
    assert by[("fake-fast", 1)]["counters_quality_pass"]["mean_accept_len"] == pytest.approx(3.0)
    assert len({r["run_id"] for r in rows}) == 1
    for r in rows:
        assert r["fid_feature"] == "FID[fake-cnn, N=40]" and r["fid"] >= 0 and r["fid_floor"] >= 0
        assert r["fid_ci"][0] <= r["fid_ci"][1] and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
        assert r["env"]["torch"] == torch.__version__ and r["command"] == "pytest"
        assert r["experiment"] == {"fake-base": "fakefam", "fake-fast": "fakespec", "fake-lossy": "fakecache"}[r["method"]]


def test_run_group_same_seeds_for_every_method():
    reg = discover(["test_harness_fake"])
    built = {}
    entries = []
    for name in ("fake-base", "fake-fast"):
        e = reg.get(name)
        entries.append(type(e)(**{**e.__dict__, "build": (lambda n: lambda ctx: built.setdefault(n, FakeMethod(n)))(name)}))
    cfg = RunConfig(batch_sizes=(2,), repeats=2, warmup=1, memory=False)
    run_group(reg, entries[0], entries[1:], "fake-model", cfg)
    assert built["fake-base"].calls == built["fake-fast"].calls == 3  # 1 warm-up + 2 timed
    assert [c for _, c in built["fake-base"].log] == [c for _, c in built["fake-fast"].log]


def test_run_group_times_every_method_under_inference_mode():
    reg = discover(["test_harness_fake"])
    seen = []

    class Probe(FakeMethod):
        def generate(self, cond, *, generator):
            seen.append((self.name, torch.is_inference_mode_enabled()))
            return super().generate(cond, generator=generator)

    entries = [type(e)(**{**e.__dict__, "build": (lambda n: lambda ctx: Probe(n))(e.name)})
               for e in (reg.get("fake-base"), reg.get("fake-fast"))]
    run_group(reg, entries[0], entries[1:], "fake-model", RunConfig(batch_sizes=(2,), repeats=2, warmup=1, memory=False))
    assert len(seen) == 6 and all(on for _, on in seen)


def test_cpu_peak_memory_subprocess():
    reg = discover(["test_harness_fake"])
    cfg = RunConfig(batch_sizes=(1, 2), repeats=1, warmup=0, memory=True, memory_all_batches=False)
    rows = run_group(reg, reg.get("fake-base"), [], "fake-model", cfg)
    assert rows[0]["peak_mem_bytes"] is None  # only the largest batch is measured here
    assert rows[1]["peak_mem_kind"] in ("cpu_subprocess_peak_rss_during_generate", "cpu_subprocess_max_rss")
    assert rows[1]["peak_mem_bytes"] > 10 * 2**20  # a Python process with torch imported is far above 10 MiB
    assert 0 < rows[1]["peak_mem_before_generate_bytes"] <= rows[1]["peak_mem_bytes"]
