"""``accel train distill-data``: (noise, token-sequence) pairs from a teacher for Distilled Decoding.

Resumable (finished shards are skipped; a larger ``--n-pairs`` extends the set) and split across
processes by shard index:

    accel train distill-data --family llamagen --n-pairs 20000            # -> runs/dd-llamagen-pairs
    accel train distill-data --family var --n-pairs 20000                 # -> runs/fmnist-var-dd-pairs
    accelerate launch --num_processes 2 -m accel train distill-data ...   # same files, two processes

On-policy pairs for a LlamaGen student's second step (``llamagen_pair_map``): the first ``--prefix-len`` tokens
are the student's one-step tokens, the rest the teacher map continued from them with the same noise:

    accel train distill-data --family llamagen --prefix-student fmnist-llamagen-dd4 --prefix-len 20 \
        --out runs/dd4-onpolicy-pairs --seed 1 ...                      # the same noise as the seed-1 pairs
"""
from __future__ import annotations

import argparse
import json

from accel import zoo
from accel.distill.data import generate_pairs, PairSpec
from accel.distill.flow import FlowSolver
from accel.distill.sequence import llamagen_pair_map
from accel.models.llamagen_generate import SamplingConfig
from accel.train.recipes.dd_var import VARDistillRecipe
from accelerate import PartialState
from accel.zoo.sample import DEFAULTS as SAMPLING

DEFAULTS = {
    "llamagen": dict(teacher="fmnist-llamagen", tokenizer="fmnist-llamagen-vq", out="runs/dd-llamagen-pairs"),
    "var": dict(teacher="fmnist-var", tokenizer="fmnist-var-vqvae", out="runs/fmnist-var-dd-pairs"),
}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", default="llamagen", choices=sorted(DEFAULTS), help="teacher family")
    p.add_argument("--teacher", default=None, help="zoo name or checkpoint of the teacher (default per family)")
    p.add_argument("--tokenizer", default=None, help="zoo name or checkpoint of its tokenizer (default per family)")
    p.add_argument("--n-pairs", type=int, default=20000)
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None, help="pair folder (default per family)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flow-steps", type=int, default=32, help="ODE steps of the per-token flow map")
    p.add_argument("--solver", default="heun", choices=["heun", "euler"])
    p.add_argument("--cfg-scale", type=float, default=None, help="teacher CFG (default: the zoo model's)")
    p.add_argument("--temperature", type=float, default=1.0, help="LlamaGen only")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--prefix-student", default=None,
                   help="LlamaGen: zoo name or file of a DD student whose one-step tokens fill the first --prefix-len "
                        "slots (on-policy pairs for its second step)")
    p.add_argument("--prefix-len", type=int, default=0, help="with --prefix-student: the second-step time t2")


def main(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    for k, v in DEFAULTS[args.family].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    state = PartialState()
    run = _llamagen if args.family == "llamagen" else _var
    written = run(args, state)
    print(json.dumps({"rank": state.process_index, "shards_written": len(written), "out": args.out}))
    return 0


def _llamagen(args, state):
    from dataclasses import replace


    teacher, vq = zoo.load(args.teacher).eval(), zoo.load(args.tokenizer).eval()
    sc = replace(SamplingConfig(), **SAMPLING.get(args.teacher, {}))
    overrides = {"cfg_scale": args.cfg_scale, "top_k": args.top_k, "top_p": args.top_p,
                 "temperature": args.temperature}
    sc = replace(sc, **{k: v for k, v in overrides.items() if v is not None})
    solver = FlowSolver(args.flow_steps, args.solver)
    if args.prefix_len and not args.prefix_student:
        raise SystemExit("--prefix-len needs --prefix-student (whose one-step tokens fill those slots)")
    student = zoo.load(args.prefix_student).eval() if args.prefix_student else None
    noise_map, seq_len, dim, n_cls = llamagen_pair_map(teacher, vq, sc, solver, prefix_student=student,
                                                       prefix_len=args.prefix_len)
    spec = PairSpec(args.n_pairs, args.shard_size, seq_len, dim, n_cls, args.seed)
    meta = {"teacher": args.teacher, "tokenizer": args.tokenizer, "sampling": sc.__dict__,
            "solver": solver.__dict__}
    if student is not None:
        meta["prefix"] = {"student": args.prefix_student, "len": args.prefix_len}
    return generate_pairs(noise_map, spec, args.out, rank=state.process_index, world=state.num_processes,
                          batch_size=args.batch_size, meta=meta, progress=state.is_local_main_process)


def _var(args, state):
    if args.prefix_student:
        raise SystemExit("--prefix-student: on-policy pairs are built for LlamaGen students only")
    if args.solver != "heun":
        raise SystemExit("--solver: the VAR recipe integrates the flow with Heun steps")
    recipe = VARDistillRecipe(teacher=args.teacher, tokenizer=args.tokenizer, pairs=args.out, cfg=args.cfg_scale,
                              top_k=args.top_k, top_p=args.top_p, solver_steps=args.flow_steps)
    return recipe.make_pairs(args.n_pairs, args.shard_size, seed=args.seed, rank=state.process_index,
                             world=state.num_processes, batch_size=args.batch_size,
                             progress=state.is_local_main_process)
