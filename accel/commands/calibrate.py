"""``accel calibrate scalekv``: ScaleKV's Attention Selectivity Index from full-cache decodes -> budget JSON.

The JSON holds the schedule, ASI[scale][layer], its per-scale z-scores, the calibration settings, and the
ScaleKV budgets (tokens[scale][layer], drafter mask) at each requested fraction for both the paper's split
(linear refiner decay) and the released code's split. ``ScaleKV.from_calibration`` rebuilds any other.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from accel import zoo
from accel.cache.budgets import choose_window
from accel.cache.calibrate import calibrate_var
from accel.cache.scalekv import ScaleKV

TARGETS = ("scalekv",)


def configure(p):
    p.add_argument("target", choices=TARGETS)
    p.add_argument("--model", default="fmnist-var", help="zoo name or checkpoint of the VAR generator")
    p.add_argument("--vae", default=None, help="its VQVAE (default: the zoo tokenizer of --model)")
    p.add_argument("--n-images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument("--topk-fraction", type=float, default=0.1, help="K' = ceil(this * history) in the ASI")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.04, 0.1, 0.2])
    p.add_argument("--window", type=int, default=0,
                   help="observation window, a square number (g x g centroids); 0 = per fraction, "
                        "accel.cache.budgets.choose_window (16 for large models)")
    p.add_argument("--drafter-fraction", type=float, default=0.125)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)


def load_var_pair(model: str, vae: str | None, device: str):
    """(var, vae) from the zoo or checkpoints (kept separate so tests can substitute a tiny model)."""
    if vae is None:
        if model not in zoo.TOKENIZER:
            raise ValueError(f"--vae is required for {model!r} (not a zoo generator)")
        vae = zoo.TOKENIZER[model]
    return zoo.load(model, device=device), zoo.load(vae, device=device)


def budgets_for(calib: dict, fractions, window: int, drafter_fraction: float) -> dict:
    out = {}
    for f in fractions:
        w = window or choose_window(calib["maps"], calib["depth"], f)
        row = {"window": w}
        for split in ("paper", "code"):
            pol = ScaleKV.from_calibration(calib, f, split=split, window=w, drafter_fraction=drafter_fraction)
            row[split] = {**pol.budget.to_dict(), "drafters": [list(r) for r in pol.drafters],
                          "kept_fraction": pol.budget.kept_fraction()}
        out[f"{f:g}"] = row
    return out


def check_args(args) -> str | None:
    """The first bad option, as a one-line message (checked before any model is loaded), or None."""
    if args.window < 0 or math.isqrt(args.window) ** 2 != args.window:
        root = math.isqrt(max(args.window, 0))
        return (f"--window {args.window} must be 0 (automatic) or a square number (g x g centroids), e.g. "
                f"{max(root, 1) ** 2} or {(root + 1) ** 2}")
    for name in ("n_images", "batch_size"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
    bad = [f for f in args.fractions if not 0 < f <= 1]
    if bad:
        return f"--fractions must lie in (0, 1], got {bad}"
    for name, lo in (("topk_fraction", 0.0), ("drafter_fraction", 0.0)):
        v = getattr(args, name)
        if not lo <= v <= 1 or (name == "topk_fraction" and v == 0):
            return f"--{name.replace('_', '-')} must lie in {'(0, 1]' if name == 'topk_fraction' else '[0, 1]'}, got {v}"
    if args.cfg < 0 or args.top_k < 0 or not 0 <= args.top_p <= 1:
        return f"VAR sampling needs --cfg >= 0, --top-k >= 0, --top-p in [0, 1]; got {args.cfg}, {args.top_k}, {args.top_p}"
    return None


def main(args) -> int:
    import sys

    import torch


    why = check_args(args)
    if why:
        print(f"accel calibrate: {why}", file=sys.stderr)
        return 2

    var, vae = load_var_pair(args.model, args.vae, args.device)
    with torch.no_grad():
        calib = calibrate_var(var, vae, n_images=args.n_images, batch_size=args.batch_size, seed=args.seed,
                              cfg=args.cfg, top_k=args.top_k, top_p=args.top_p, topk_fraction=args.topk_fraction,
                              progress=True)
    calib["model"], calib["window"], calib["drafter_fraction"] = args.model, args.window, args.drafter_fraction
    calib["budgets"] = budgets_for(calib, args.fractions, args.window, args.drafter_fraction)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(calib, indent=1))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: ASI for {sum(r is not None for r in calib['asi'])} scales x {calib['depth']} layers, "
          f"budgets at {', '.join(calib['budgets'])}")
    return 0
