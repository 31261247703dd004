"""Distilled Decoding's released read-out on the shipped LlamaGen student (issue #19, item 1): a sweep over the
split (slots before it from the logits' arg-max, the continuous head's vectors after it, decoded unsnapped) and
the second-step time t2, against the teacher, in one run. No retraining: the shipped student's heads are read.

    python experiments/dd_readout.py --n-images 200 --out results/distill/readout

``--t2 8,12,...`` instead sweeps the two-step time alone (snapped read-out, plus the one-step student) at the
quality seed ``--seed``: choose t2 on probe seeds (e.g. ``--seed 1``), confirm it on the evaluation seeds
(``--seed 0``, what experiments/distill.py scores). Speed is timed in a single round here (quality sweep).

    python experiments/dd_readout.py --t2 8,12,16,20,24,32,40,48 --n-images 1000 --seed 1 --out results/distill/t2_probe
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from accel.api.techniques import distilled
from accel.harness.registry import MethodEntry
from accel.harness.results import append_rows, current_command
from accel.harness.runner import RunConfig, run_group
from accel.harness.summary import summary_markdown
from accel.presets import registry
from accel.presets.distill import _llamagen
from accel.presets.zoo_models import load_reference

N = 64  # tokens of the zoo LlamaGen
GRID = [  # (name, steps, t2, split); t2 20 = 0.31 n, the released 80 of 256; split None = every slot snapped
    ("dd1-snapped", 1, None, None), ("dd1-split64", 1, None, 64), ("dd1-split48", 1, None, 48),
    ("dd1-split32", 1, None, 32), ("dd1-split20", 1, None, 20), ("dd1-split0", 1, None, 0),
    ("dd2-t32-snapped", 2, 32, None), ("dd2-t20-snapped", 2, 20, None), ("dd2-t20-split20", 2, 20, 20),
]


def entry(name: str, steps: int, t2: int | None, split: int | None) -> MethodEntry:
    def build(ctx):
        return distilled(*_llamagen(ctx), steps=steps, t2=t2, split=split, name=name)

    return MethodEntry(name, "llamagen", build, models=("fmnist-llamagen",), baseline="llamagen-ar",
                       experiment="dd-readout", params={"steps": steps, "t2": t2, "split": split})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-images", type=int, default=200)
    ap.add_argument("--batch-sizes", default="1")
    ap.add_argument("--out", type=Path, default=Path("results/distill/readout"))
    ap.add_argument("--t2", default=None, help="comma-separated two-step times to sweep (instead of GRID)")
    ap.add_argument("--seed", type=int, default=0, help="quality seed (0 = the evaluation seeds of distill.py)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    grid = GRID if args.t2 is None else [("dd1-snapped", 1, None, None)] + [
        (f"dd2-t{t}-snapped", 2, t, None) for t in (int(v) for v in args.t2.split(","))]
    reg = registry()
    for e in (entry(*g) for g in grid):
        reg.add(e, "experiments/dd_readout.py")
    cfg = RunConfig(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
                    repeats=3 if args.t2 is None else 1, warmup=1, n_images=args.n_images, quality_batch=50,
                    memory=False, seed=args.seed)
    command = current_command()
    rows = run_group(reg, reg.get("llamagen-ar"), [reg.get(g[0]) for g in grid], "fmnist-llamagen", cfg,
                     reference=load_reference(), command=command, progress=lambda m: print(m, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    append_rows(args.out / "readout.jsonl", rows)
    (args.out / "summary.md").write_text(summary_markdown(rows, command=command))


if __name__ == "__main__":
    main()
