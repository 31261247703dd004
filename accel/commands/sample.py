"""``accel sample --model NAME [--method M] [--class C] --out grid.png``: an image grid from a zoo generator.

Without ``--class`` the grid has one row per class (10 rows, ``--per-class`` columns). Without
``--method`` the model is sampled plainly with its documented default settings (accel/zoo/sample.py);
with ``--method`` the registered method (``accel bench --list``) generates the images.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="zoo generator name or a training run folder/last.pt")
    parser.add_argument("--method", default=None, help="a registered method (default: plain sampling)")
    parser.add_argument("--class", dest="cls", type=int, default=None, help="one class only (0-9)")
    parser.add_argument("--per-class", type=int, default=10, help="images per class (grid columns)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a default sampling setting, e.g. --set cfg_scale=3.0")
    parser.add_argument("--out", required=True, type=Path, help="output PNG")


def main(args: argparse.Namespace) -> int:
    import json
    import sys

    import torch

    from accel.zoo.sample import ZooSampler, class_grid_labels, save_png, to_grid

    if args.cls is not None and not 0 <= args.cls < 10:
        print(f"accel sample: --class must be in 0..9, got {args.cls}", file=sys.stderr)
        return 2
    labels = (torch.full((args.per_class,), args.cls) if args.cls is not None
              else class_grid_labels(args.per_class))
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    if overrides and args.method is not None:
        print("accel sample: --set changes plain sampling only; a method's settings come from its registry "
              "entry (accel bench --list)", file=sys.stderr)
        return 2
    with torch.no_grad():
        if args.method is None:
            images = ZooSampler(args.model, args.device, **overrides)(labels, generator=gen)
        else:
            from accel.harness.registry import BuildContext
            from accel.presets import registry

            reg = registry()
            method = reg.get(args.method).build(BuildContext(model=args.model, device=torch.device(args.device)))
            images = method.generate(labels.to(args.device), generator=gen).images
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_png(to_grid(images.cpu(), ncol=args.per_class), args.out)
    print(f"wrote {args.out} ({len(labels)} images of {args.model}"
          f"{', method ' + args.method if args.method else ''}, seed {args.seed})")
    return 0
