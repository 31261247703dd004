"""``accel train RECIPE``: train a zoo model (resumable; rerun the same command to continue).

    accel train fmnist-cnn                       # = accel train classifier
    accel train fmnist-llamagen-vq --run-dir runs/fmnist-llamagen-vq
    accel launch ... -m accel train ...          # several GPUs, via accelerate

When the run reaches its last step the shipped fp16 file(s) are written to ``--export-dir`` (default: the
package's ``accel/zoo/weights/``). ``--export-only`` re-exports from an existing run.
"""
from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

from accel import zoo
from accel.train.loop import fit, trained_model
from accel.train.recipes import ALIASES, RECIPES, get_recipe
from accel.zoo.cards import forward_latency, write_card


def configure(parser: argparse.ArgumentParser) -> None:

    parser.add_argument("recipe", help="zoo name to train: " + ", ".join(sorted(RECIPES) + sorted(ALIASES)))
    parser.add_argument("--run-dir", default=None, help="checkpoints and logs (default: runs/RECIPE)")
    parser.add_argument("--steps", type=int, default=None, help="total steps (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cpu", action="store_true", help="train on CPU even when a GPU is present")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--stop-at", type=int, default=None, help="stop (with checkpoint) at this step")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a recipe field, e.g. --set batch_size=32 (changes the run identity)")
    parser.add_argument("--export-dir", default=None, help="where finished weights go (default: package zoo)")
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--export-only", action="store_true")
    parser.add_argument("--weights", choices=["ema", "raw"], default="ema",
                        help="which weights to export when the recipe keeps an EMA (default: ema)")
    parser.add_argument("--card", action="store_true",
                        help="after export, measure quality and batch-1 latency and write cards/RECIPE.md")
    parser.add_argument("--card-only", action="store_true", help="only (re)write the model card")


def main(args: argparse.Namespace) -> int:
    import torch


    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        overrides[k] = json.loads(v)
    recipe = get_recipe(args.recipe, **overrides)
    name = ALIASES.get(args.recipe, args.recipe)
    run_dir = Path(args.run_dir or Path("runs") / name)
    if args.card_only:
        return _card(recipe, name, run_dir, args.set)
    if not args.export_only:
        t0 = time.time()
        summary = fit(recipe, run_dir, steps=args.steps, seed=args.seed, cpu=args.cpu,
                      mixed_precision=args.mixed_precision, stop_at=args.stop_at)
        summary["wall_s_this_session"] = round(time.time() - t0, 1)
        print(json.dumps(summary))
        if not summary["finished"]:
            print(f"stopped at step {summary['step']}; rerun the same command to resume from {run_dir}/last.pt")
            return 0 if not summary["interrupted"] else 130
    if args.no_export:
        return 0
    model, info = trained_model(recipe, run_dir, weights=args.weights)
    info["wall_s"] = _wall_time(run_dir)
    paths = recipe.export(model, Path(args.export_dir) if args.export_dir else zoo.WEIGHTS_DIR, info)
    for p in paths:
        print(f"wrote {p} ({p.stat().st_size / 1e6:.2f} MB)")
    return _card(recipe, name, run_dir, args.set) if args.card else 0


def _card(recipe, name: str, run_dir: Path, sets: list[str] = ()) -> int:
    """Measure and write the card; its command line repeats the ``--set`` overrides that shaped what it measured
    (e.g. which held-out data)."""
    import torch


    quality = recipe.card_quality(name)
    with_threads = torch.get_num_threads()
    latency = forward_latency(name)
    cmd = " ".join([f"accel train {name} --card-only", *(f"--set {shlex.quote(kv)}" for kv in sets),
                    f"# quality and latency, torch threads: {with_threads}"])
    out = write_card(name, run_dir, command=cmd, quality=quality, latency=latency, notes=recipe.card_notes(),
                     data=recipe.card_data())
    print(f"wrote {out}")
    return 0


def _wall_time(run_dir: Path) -> float:
    """Total training wall time over all sessions, from the log (time resets at each resume)."""
    total, prev = 0.0, 0.0
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return 0.0
    for line in log.read_text().splitlines():
        t = json.loads(line)["time"]
        if t < prev:
            total += prev
        prev = t
    return round(total + prev, 1)
