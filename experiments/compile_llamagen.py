"""Eager vs ``accel.compile``d LlamaGen decoding on this device: tokens/s, fraction of floor, compile time,
token identity, and (``--profile``) where a batch-1 decode spends its time.

The zoo ``fmnist-llamagen`` (card sampling settings, CFG rows), token loop only (``generator.tokens``, no VQ
decode). Two generators from two ``accel.load`` calls, one with ``compile=True`` (in place, ``dynamic=True``);
the first compiled call per batch size minus the median is the compile time; then both are timed interleaved
(same run, same seeds). Floor: ``accel.harness.floor`` with this process's measured peak.
``--profile``: at batch 1, eager and compiled, the share of wall time spent inside the Transformer forward
(timed by a proxy around the model; the rest is sampling, CFG combine and loop overhead) and the top
operators by self CPU time (``torch.profiler``).

    python experiments/compile_llamagen.py [--threads 1] [--repeats 3] [--batch 1 --batch 64] [--profile] [--out results/compile]
"""
import argparse
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import accel
from accel.harness.device_peak import device_peak
from accel.harness.results import current_command, environment
from accel.harness.timing import time_interleaved
from accel.models.llamagen_generate import generate

MODEL = "fmnist-llamagen"


class ForwardTimer:
    """Stands in for the Transformer in ``generate``: the same calls, with their wall time summed."""

    def __init__(self, model):
        self.model, self.config, self.seconds = model, model.config, 0.0

    def new_cache(self, *a, **k):
        return self.model.new_cache(*a, **k)

    def __call__(self, *a, **k):
        t0 = time.perf_counter()
        with record_function("transformer_forward"):
            out = self.model(*a, **k)
        self.seconds += time.perf_counter() - t0
        return out


def profile_b1(g, top: int) -> dict:
    cond = torch.tensor([3])
    timer = ForwardTimer(g.model)
    t0 = time.perf_counter()
    generate(timer, cond, sc=g.config, generator=torch.Generator().manual_seed(0))
    total = time.perf_counter() - t0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(ForwardTimer(g.model), cond, sc=g.config, generator=torch.Generator().manual_seed(0))
    ops = prof.key_averages()
    all_self = sum(e.self_cpu_time_total for e in ops)
    fwd = next((e.cpu_time_total for e in ops if e.key == "transformer_forward"), 0.0)
    rows = sorted(ops, key=lambda e: -e.self_cpu_time_total)[:top]
    return {"wall_s": total, "forward_s": timer.seconds, "outside_forward_share": 1 - timer.seconds / total,
            "profiled_forward_share": fwd / all_self if all_self else None,
            "top_ops": [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3,
                         "share": e.self_cpu_time_total / all_self} for e in rows]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, action="append", default=None)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gens = {"eager": accel.load(MODEL), "compiled": accel.load(MODEL, compile=True)}
    peak = device_peak("cpu", torch.float32)
    n = gens["eager"].model.config.block_size
    rows = []
    for bs in args.batch or [1, 64]:
        cond = torch.arange(bs) % 10
        first = {}
        for k, g in gens.items():  # compiled: compile + one call
            t0 = time.perf_counter()
            g.tokens(cond, generator=torch.Generator().manual_seed(0))
            first[k] = time.perf_counter() - t0
        calls = {k: (lambda r, g=g: g.tokens(cond, generator=torch.Generator().manual_seed(r))) for k, g in gens.items()}
        timings = time_interleaved(calls, repeats=args.repeats, warmup=0)
        work = gens["eager"].work_model(bs, 4)
        floor = work.floor_s(peak)
        for name, t in timings.items():
            row = dict(model=MODEL, batch_size=bs, variant=name, latency_s=t.median, spread_s=t.spread,
                       tokens_per_s=bs * n / t.median, floor_s=floor, frac_floor=floor / t.median,
                       first_call_s=first[name], compile_s=first[name] - t.median if name == "compiled" else None,
                       speedup_vs_eager=timings["eager"].median / t.median)
            if name == "compiled":
                seed = lambda: torch.Generator().manual_seed(1)  # noqa: E731
                row["tokens_identical_sampled"] = bool(torch.equal(gens["eager"].tokens(cond, generator=seed()),
                                                                   gens["compiled"].tokens(cond, generator=seed())))
                greedy = {k: g.with_sampling(greedy=True) for k, g in gens.items()}
                row["tokens_identical_greedy"] = bool(torch.equal(greedy["eager"].tokens(cond, generator=seed()),
                                                                  greedy["compiled"].tokens(cond, generator=seed())))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.profile:
        for name, g in gens.items():
            rows.append({"model": MODEL, "batch_size": 1, "variant": name, "profile": profile_b1(g, args.top)})
            print(json.dumps(rows[-1]), flush=True)
    env = {**environment("cpu"), "peak": peak.as_dict(), "command": current_command()}
    print(json.dumps(env))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "llamagen_cpu.jsonl").write_text("".join(json.dumps({**r, "env": env}) + "\n" for r in rows))


if __name__ == "__main__":
    main()
