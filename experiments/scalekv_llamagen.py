"""The VAR cache policies on LlamaGen's raster decode (accel/cache/llamagen.py): fidelity vs the full cache.

Per batch, the full-cache decode and every (policy, budget) decode use the same labels and the same seeded
generator; differences come only from the cache. Reported: token agreement, PSNR (MSE pooled over images)
and SSIM vs the full-cache images, exact cache bytes (kept at the compressed chunks and peak attended, vs the
full cache's). Budget = cap on cached positions per layer, as a fraction of the full cache's positions.

    nice -n 15 python experiments/scalekv_llamagen.py [--n-images 32] [--every 8] [--out results/scalekv]
"""
from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from accel import zoo
from accel.cache.llamagen import CompressedLlamaGen, build_raster_policy
from accel.cache.meter import memory_summary
from accel.harness import metrics as M
from accel.harness.results import append_rows, current_command, environment, make_row
from accel.models.llamagen_generate import SamplingConfig
from accel.zoo.sample import DEFAULTS


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fmnist-llamagen")
    p.add_argument("--policies", default="sliding,streamingllm,snapkv,pyramidkv")
    p.add_argument("--budgets", default="0.25,0.5")
    p.add_argument("--n-images", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--every", type=int, default=None, help="steps per compression chunk (default: one grid row)")
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/scalekv"))
    args = p.parse_args()
    torch.set_num_threads(1)  # explicit: the shared CPUs are oversubscribed
    model, vq = zoo.load(args.model), zoo.load(zoo.TOKENIZER[args.model])
    sc = replace(SamplingConfig(), **DEFAULTS.get(args.model, {}))
    every = args.every or model.config.grid_size
    grid = {(pn, float(f)): build_raster_policy(pn, model, float(f), every=every, window=args.window)
            for f in args.budgets.split(",") for pn in args.policies.split(",")}
    full = CompressedLlamaGen(model, vq, None, sc, every)
    acc = {key: {"mse": [], "ssim": [], "agree": 0, "tokens": 0, "mem": None} for key in grid}
    for j, s in enumerate(range(0, args.n_images, args.batch_size)):
        labels = torch.arange(s, min(s + args.batch_size, args.n_images)) % model.config.num_classes
        ref = full.generate(labels, generator=torch.Generator().manual_seed(args.seed + j))
        for key, pol in grid.items():
            out = CompressedLlamaGen(model, vq, pol, sc, every).generate(labels, generator=torch.Generator().manual_seed(args.seed + j))
            a = acc[key]
            a["mse"] += [0.0 if math.isinf(x) else 10 ** (-x / 10) for x in M.psnr(out.images, ref.images).tolist()]
            a["ssim"] += M.ssim(out.images, ref.images).tolist()
            a["agree"] += int((out.stats["tokens"] == ref.stats["tokens"]).sum())
            a["tokens"] += ref.stats["tokens"].numel()
            a["mem"] = a["mem"] or memory_summary(out.stats["kv_kept_table"], out.stats["kv_attended_table"],
                                                  ref.stats["kv_kept_table"], ref.stats["kv_attended_table"],
                                                  pol.budget.compressed_scales)
        print(f"batch {j + 1}/{math.ceil(args.n_images / args.batch_size)} done", flush=True)
    rows, env, cmd = [], environment("cpu"), current_command()
    lines = ["| policy | budget | token agreement | PSNR (dB) | SSIM | kept / full bytes at compressed chunks | peak attended bytes (% of full) |",
             "|---|---|---|---|---|---|---|"]
    for (pn, f), a in acc.items():
        mse, m = float(np.mean(a["mse"])), a["mem"]
        psnr = math.inf if mse == 0 else 10 * math.log10(1 / mse)
        agree, ssim = a["agree"] / a["tokens"], float(np.mean(a["ssim"]))
        rows.append(make_row(experiment="scalekv-llamagen", family="llamagen", model=args.model, method=pn,
                             baseline="full", params={"budget": f, "window": args.window, "every": every, **DEFAULTS.get(args.model, {})},
                             batch_size=args.batch_size, n_images=args.n_images, seed=args.seed,
                             kv_bytes=m["kv_peak_attended_bytes"], kv_fraction=m["kv_kept_ratio"], psnr=psnr, ssim=ssim,
                             token_agreement=agree, env=env, command=cmd, detail=m))
        lines.append(f"| {pn} | {f:.0%} | {agree:.3f} | {psnr:.2f} | {ssim:.3f} | {m['kv_kept_ratio']:.1%} | "
                     f"{m['kv_peak_attended_bytes'] / 1e6:.2f} MB ({m['kv_peak_attended_ratio']:.1%}) |")
    append_rows(args.out / "llamagen.jsonl", rows)
    head = (f"# Cache policies on LlamaGen's raster decode ({args.model}, N={args.n_images}, fidelity vs the full cache)"
            f"\n\nCommand: `{cmd}`\n\nEnvironment: {env}\n\n")
    (args.out / "llamagen.md").write_text(head + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
