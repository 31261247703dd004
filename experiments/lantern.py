"""LANTERN vs exact speculative decoding vs AR on the zoo LlamaGen (arXiv 2410.03355, 2502.06352).

    python experiments/lantern.py --quick            # a few minutes on 2 CPU cores
    python experiments/lantern.py --out results/     # the full grid (README table)

Grid: AR baseline (``llamagen-ar``); exact speculative sampling with each drafter (small LlamaGen ``draft``,
EAGLE head ``eagle``); LANTERN δ ∈ {0.05, 0.1, 0.2, 0.4} at k = 1000 (capped at the codebook size - 1) and a
few smaller k; chain (γ) vs static tree; LANTERN++ (k, λ) as in the official run.sh. Every method is timed
interleaved with the AR baseline in one run (batch 1 latency, batch 16 throughput) and scored at fixed N on
the zoo classifier (FID[fmnist-cnn]). Writes JSONL, the quality-vs-speed-up plot and a markdown table.
"""
import argparse
from pathlib import Path

import torch

from accel.harness.baselines import load_reference
from accel.harness.plots import plot_all
from accel.harness.registry import discover
from accel.harness.results import append_rows, current_command
from accel.harness.runner import RunConfig, run_group
from accel.harness.summary import summary_markdown
from accel.speculative.methods import TARGET, entry


def grid(quick: bool, drafters: list[str]):
    out = []
    for d in drafters:
        out.append(entry(f"sd-{d}", drafter=d))
        for delta in (0.1, 0.2) if quick else (0.05, 0.1, 0.2, 0.4):
            out.append(entry(f"lantern-{d}-d{delta}", drafter=d, delta=delta))
        if not quick:
            for k in (10, 100):
                out.append(entry(f"lantern-{d}-d0.2-k{k}", drafter=d, delta=0.2, k=k))
            out.append(entry(f"sd-{d}-g2", drafter=d, gamma=2))
            out.append(entry(f"lantern-{d}-d0.2-g5", drafter=d, delta=0.2, gamma=5))
        out.append(entry(f"sd-{d}-tree", drafter=d, tree="b2-2-1-1"))
        out.append(entry(f"lantern-{d}-d0.2-tree", drafter=d, delta=0.2, tree="b2-2-1-1"))
        if not quick:
            out.append(entry(f"lantern++-{d}-k10-l5-tree", drafter=d, k=10, lam=5.0, tree="b2-2-1-1"))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("results/lantern"))
    ap.add_argument("--drafter", action="append", default=None, choices=["draft", "eagle"])
    ap.add_argument("--n-images", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)  # the shared 2-core box is oversubscribed
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reg = discover()
    entries = [e for e in grid(args.quick, args.drafter or ["draft", "eagle"]) if not e.why_unavailable(TARGET)]
    for e in entries:
        if e.name not in reg.entries:  # sd-draft etc. are also the package's BENCH_METHODS (same parameters)
            reg.add(e, "experiments/lantern.py")
    cfg = RunConfig(batch_sizes=(1, 16), repeats=3 if args.quick else 5, warmup=1,
                    n_images=args.n_images if args.n_images is not None else (200 if args.quick else 1000),
                    quality_batch=50, memory=False)
    command = current_command()
    rows = run_group(reg, reg.get("llamagen-ar"), entries, TARGET, cfg, reference=load_reference(),
                     command=command, progress=lambda m: print(m, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    append_rows(args.out / "lantern.jsonl", rows)
    plots = [str(p) for p in plot_all(rows, args.out)]
    (args.out / "summary.md").write_text(summary_markdown(rows, command=command, plots=plots))
    for r in rows:
        print(f"{r['method']:<28} bs={r['batch_size']:<3} speedup={r['speedup'] or 0:5.2f} "
              f"tau={r.get('mean_accept_len') or 0:4.2f} fid={r.get('fid')}")


if __name__ == "__main__":
    main()
