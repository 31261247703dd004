"""How close plain LlamaGen decoding gets to the hardware floor on this CPU, eager and (optionally) compiled.

For the zoo ``fmnist-llamagen`` at batch 1 and 64 (its card's sampling settings, CFG rows), token loop only
(``accel.models.llamagen_generate.generate``, no VQ decode): tokens/s, the roofline floor of
``accel.harness.floor`` with this process's measured matmul peak and copy bandwidth, and the fraction of floor.
``--compile``: the same loop through ``torch.compile(model, dynamic=True)``, timed interleaved with eager; the
first compiled call per batch size (compilation) is reported separately, and the tokens are compared with
eager's (same generator seed; greedy and sampled).

    python experiments/floor_cpu.py [--compile] [--threads 1] [--repeats 3] [--out results/floor]
"""
import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from accel import zoo
from accel.harness.device_peak import device_peak
from accel.harness.floor import llamagen_work
from accel.harness.results import current_command, environment
from accel.harness.timing import time_interleaved
from accel.models.llamagen_generate import SamplingConfig, generate
from accel.zoo.sample import DEFAULTS

MODEL = "fmnist-llamagen"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, action="append", default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = zoo.load(MODEL).eval()
    sc = replace(SamplingConfig(), **DEFAULTS[MODEL])
    peak = device_peak("cpu", torch.float32)
    variants = {"eager": model}
    if args.compile:
        variants["compiled"] = torch.compile(model, dynamic=True)
    rows = []
    for bs in args.batch or [1, 64]:
        cond = torch.arange(bs) % 10
        run = lambda m, s=sc: generate(m, cond, sc=s, generator=torch.Generator().manual_seed(0))  # noqa: E731
        first = {}
        for name, m in variants.items():  # first call: compilation for the compiled variant
            t0 = time.perf_counter()
            run(m)
            first[name] = time.perf_counter() - t0
        timings = time_interleaved({k: (lambda r, m=m: run(m)) for k, m in variants.items()}, repeats=args.repeats, warmup=0)
        work = llamagen_work(model.config, bs, cfg_guidance=sc.uses_cfg)
        floor = work.floor_s(peak)
        n = model.config.block_size
        for name, t in timings.items():
            row = dict(model=MODEL, batch_size=bs, variant=name, latency_s=t.median, spread_s=t.spread,
                       tokens_per_s=bs * n / t.median, floor_s=floor, frac_floor=floor / t.median,
                       first_call_s=first[name], flops=work.flops, bytes=work.bytes,
                       memory_bound_share=work.memory_bound_fraction(peak))
            if name == "compiled":
                greedy = replace(sc, sample_logits=False)
                row["tokens_identical_sampled"] = bool(torch.equal(run(model), run(variants["compiled"])))
                row["tokens_identical_greedy"] = bool(torch.equal(run(model, greedy), run(variants["compiled"], greedy)))
                row["speedup_vs_eager"] = timings["eager"].median / t.median
            rows.append(row)
            print(json.dumps(row))
    env = {**environment("cpu"), "peak": peak.as_dict(), "command": current_command()}
    print(json.dumps(env))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "llamagen_cpu.jsonl").write_text("".join(json.dumps({**r, "env": env}) + "\n" for r in rows))


if __name__ == "__main__":
    main()
