"""``accel train distill-data``: (noise, token-sequence) pairs from a teacher for Distilled Decoding.

Resumable (finished shards are skipped) and split across processes by shard index:

    accel train distill-data --teacher fmnist-llamagen --n-pairs 20000 --out runs/dd-llamagen-pairs
    accelerate launch --num_processes 2 -m accel train distill-data ...   # same files, two processes
"""
from __future__ import annotations

import argparse
import json


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", default="llamagen", choices=["llamagen"], help="teacher family")
    p.add_argument("--teacher", default="fmnist-llamagen", help="zoo name or checkpoint of the teacher")
    p.add_argument("--tokenizer", default="fmnist-llamagen-vq", help="zoo name or checkpoint of its tokenizer")
    p.add_argument("--n-pairs", type=int, default=20000)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default="runs/dd-llamagen-pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flow-steps", type=int, default=32, help="ODE steps of the per-token flow map")
    p.add_argument("--solver", default="heun", choices=["heun", "euler"])
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None)


def main(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState

    from accel import zoo
    from accel.distill.data import PairSpec, generate_pairs
    from accel.distill.flow import FlowSolver
    from accel.distill.sequence import llamagen_pair_map
    from accel.models.llamagen_generate import SamplingConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    state = PartialState()
    teacher, vq = zoo.load(args.teacher).eval(), zoo.load(args.tokenizer).eval()
    sc = SamplingConfig(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    solver = FlowSolver(args.flow_steps, args.solver)
    noise_map, seq_len, dim, n_cls = llamagen_pair_map(teacher, vq, sc, solver)
    spec = PairSpec(args.n_pairs, args.shard_size, seq_len, dim, n_cls, args.seed)
    meta = {"teacher": args.teacher, "tokenizer": args.tokenizer, "sampling": sc.__dict__,
            "solver": solver.__dict__}
    written = generate_pairs(noise_map, spec, args.out, rank=state.process_index, world=state.num_processes,
                             batch_size=args.batch_size, meta=meta, progress=state.is_local_main_process)
    print(json.dumps({"rank": state.process_index, "shards_written": len(written), "out": args.out}))
    return 0
