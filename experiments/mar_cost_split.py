"""Baseline MAR cost split: share of generation time in the MAR transformer vs the diffusion head.

Research note §4 (LTH14/mar#60): the head is 10-20% of time at batch 256 on GPU but dominates at small
batch. This script measures the split for the zoo's ~3M-parameter MAR on this machine.

    python experiments/mar_cost_split.py --batch 1 64 --threads 1 --repeats 1

Method: a short warm-up run, then ``--repeats`` timed ``sample_tokens`` runs per batch size; inside each run the
time spent in ``MAR.condition`` (encoder + decoder) and in the head's ``sample`` is accumulated by thin
timing wrappers set on this script's model instance only (device-synchronised); "other" = the rest of the
loop (masking, indexing). Medians over repeats are reported. Random weights: only the cost is measured.

Measured 2026-11-28 on the shared 2-core CI machine (load average 11-16, so absolute seconds are inflated;
the shares come from the same runs), 1 thread, cfg 2.0, median of 2 repeats:

    --batch 1 64 --threads 1 --repeats 2                       (64 iterations = 1 token each, 100 steps)
        batch 1:  head 90.8 %, MAR transformer  8.4 %   (83.1 s per generation)
        batch 64: head 54.9 %, MAR transformer 45.0 %   (372 s)
    --batch 1 64 --threads 1 --repeats 2 --num-iter 16 --steps 50   (the zoo's sampling settings)
        batch 1:  head 85.3 %, MAR transformer 13.8 %   (6.7 s)
        batch 64: head 69.4 %, MAR transformer 30.5 %   (161 s)
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from accel.harness.timing import synchronize
from accel.models.mar import MAR, MARConfig



def _config() -> MARConfig:
    """The zoo's MAR target (~2.9M parameters: 64 tokens = 8x8 grid of 16-channel latents, 4+4 blocks of
    width 128, head 3 x 256), from the training recipe so the measurement follows the shipped model."""
    from accel.train.recipes.mar import MAR_TARGET

    return MARConfig.from_dict(MAR_TARGET)


def _timed(fn, acc: dict, key: str, device):
    def wrapper(*a, **kw):
        synchronize(device)
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        synchronize(device)
        acc[key] += time.perf_counter() - t0
        return out
    return wrapper


def measure(batch: int, args, model: MAR) -> dict:
    acc = {"mar": 0.0, "head": 0.0}
    model.condition = _timed(MAR.condition.__get__(model), acc, "mar", args.device)
    model.diffloss.sample = _timed(type(model.diffloss).sample.__get__(model.diffloss), acc, "head", args.device)
    labels = torch.arange(batch, device=args.device) % model.cfg.class_num
    # warm-up (not recorded): a short run through the same kernels at this batch size
    model.sample_tokens(labels, generator=torch.Generator(args.device).manual_seed(0), num_iter=2, cfg=args.cfg,
                        head_steps=2)
    rows = []
    for r in range(args.repeats):
        acc.update(mar=0.0, head=0.0)
        gen = torch.Generator(args.device).manual_seed(r + 1)
        synchronize(args.device)
        t0 = time.perf_counter()
        out = model.sample_tokens(labels, generator=gen, num_iter=args.num_iter, cfg=args.cfg,
                                  head_steps=args.steps)
        synchronize(args.device)
        total = time.perf_counter() - t0
        rows.append((total, acc["mar"], acc["head"]))
    total, mar, head = (statistics.median(x) for x in zip(*rows))
    return {"batch": batch, "total_s": total, "mar_s": mar, "head_s": head,
            "mar_share": mar / total, "head_share": head / total, "other_share": 1 - (mar + head) / total,
            "head_steps": out.stats["head_steps"], "num_iter": args.num_iter}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    p.add_argument("--num-iter", type=int, default=64)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = _config()
    model = MAR(cfg).to(args.device).eval()
    n_mar = sum(q.numel() for n, q in model.named_parameters() if not n.startswith("diffloss"))
    n_head = sum(q.numel() for q in model.diffloss.parameters())
    print(f"# params: MAR transformer {n_mar / 1e6:.2f}M, head {n_head / 1e6:.2f}M, seq_len {cfg.seq_len}, "
          f"num_iter {args.num_iter}, steps {args.steps}, cfg {args.cfg}, threads {args.threads}, {args.device}, "
          f"torch {torch.__version__}")
    for b in args.batch:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in measure(b, args, model).items()}))


if __name__ == "__main__":
    main()
