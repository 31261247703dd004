"""``accel sample --model NAME [--method M] [--class C] --out grid.png``: an image grid from a zoo generator.

Without ``--class`` the grid has one row per class (10 rows, ``--per-class`` columns). Without
``--method`` the model is sampled plainly with its documented default settings (accel/zoo/sample.py);
with ``--method`` the registered method (``accel bench --list``) generates the images.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from accel import zoo
from accel.harness.registry import BuildContext
from accel.presets import registry
from accel.zoo.sample import class_grid_labels, save_png, to_grid, ZooSampler


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="zoo generator name or a training run folder/last.pt")
    parser.add_argument("--tokenizer", default=None,
                        help="zoo tokenizer of a --model that is a file or run folder (e.g. fmnist-llamagen-vq)")
    parser.add_argument("--method", default=None, help="a registered method (default: plain sampling)")
    parser.add_argument("--class", dest="cls", type=int, default=None, help="one class only (0-9)")
    parser.add_argument("--per-class", type=int, default=10, help="images per class (grid columns)")
    parser.add_argument("--batch-size", type=int, default=20, help="images per generate call (progress bar step)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a default sampling setting, e.g. --set cfg_scale=3.0 (LlamaGen, MAR) "
                             "or --set cfg=2.0 (VAR); unknown keys are refused with the valid list")
    parser.add_argument("--out", required=True, type=Path, help="output PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


class UsageError(ValueError):
    """A bad command-line value (printed as one line, exit code 2)."""


def _overrides(items: list[str]) -> dict:
    import json

    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--set {item!r}: expected KEY=JSON, e.g. --set cfg_scale=3.0")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError as e:
            raise UsageError(f"--set {key}: value {value!r} is not JSON ({e.msg}); e.g. --set {key}=1.5") from e
    return out


def check_args(args: argparse.Namespace) -> None:
    """Everything checkable before any model is loaded."""
    if args.per_class < 1:
        raise UsageError(f"--per-class must be >= 1, got {args.per_class}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.cls is not None and not 0 <= args.cls < 10:
        raise UsageError(f"--class must be in 0..9, got {args.cls}")
    if args.set and args.method is not None:
        raise UsageError("--set changes plain sampling only; a method's settings come from its registry entry "
                         "(accel bench --list)")
    if args.model not in zoo.ZOO and args.tokenizer is None and args.method is None:
        if Path(args.model).exists():
            raise UsageError(f"--model {args.model} is a file or run folder: give --tokenizer NAME too "
                             f"(its zoo tokenizer, one of {', '.join(sorted(set(zoo.TOKENIZER.values())))})")
        raise UsageError(f"--model {args.model!r} is neither a zoo generator ({', '.join(sorted(zoo.TOKENIZER))}) "
                         "nor an existing file or run folder")
    if args.model in zoo.ZOO and args.model not in zoo.TOKENIZER and args.method is None:
        raise UsageError(f"--model {args.model} is a {zoo.ZOO[args.model][1]}, not a generator; "
                         f"valid: {', '.join(sorted(zoo.TOKENIZER))}")
    out = args.out.resolve()
    parent = next((d for d in (out.parent, *out.parent.parents) if d.exists()), None)
    if out.is_dir():
        raise UsageError(f"--out {args.out} is a folder; give a .png file path")
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"--out {args.out}: cannot write there ({parent} is not a writable folder)")


def main(args: argparse.Namespace) -> int:
    import sys

    import torch
    from tqdm import tqdm


    try:
        check_args(args)
        overrides = _overrides(args.set)
    except UsageError as e:
        print(f"accel sample: {e}", file=sys.stderr)
        return 2
    labels = (torch.full((args.per_class,), args.cls) if args.cls is not None
              else class_grid_labels(args.per_class))
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    with torch.no_grad():
        if args.method is None:
            generate = ZooSampler(args.model, args.device, tokenizer=args.tokenizer, **overrides)
        else:
            entry = registry().get(args.method)
            if args.model not in entry.models:
                print(f"accel sample: method {args.method} ({entry.family}) runs on {', '.join(entry.models)}, "
                      f"not on --model {args.model}", file=sys.stderr)
                return 2
            method = entry.build(BuildContext(model=args.model, device=torch.device(args.device)))

            def generate(lab, *, generator):
                return method.generate(lab, generator=generator).images

        chunks = labels.to(args.device).split(args.batch_size)
        with tqdm(chunks, desc=f"sample {args.model}", unit="batch", disable=args.no_progress, leave=False,
                  file=sys.stderr) as bar:  # cleared on exit, so an error stays one line
            images = torch.cat([generate(c, generator=gen).cpu() for c in bar])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_png(to_grid(images, ncol=args.per_class), args.out)
    print(f"wrote {args.out} ({len(labels)} images of {args.model}"
          f"{', method ' + args.method if args.method else ''}, seed {args.seed})")
    return 0
