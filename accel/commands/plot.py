"""``accel plot results/*.jsonl``: quality vs speed-up (Pareto frontier, baseline at 1.0x) and quality vs KV
budget, one PNG per experiment and model, from results rows only."""
from __future__ import annotations

from pathlib import Path

from accel.harness.results import read_rows


def configure(p):
    p.add_argument("files", nargs="+", type=Path, help="results JSONL files")
    p.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: the first file's folder)")
    p.add_argument("--metric", action="append", default=None,
                   help="quality metric on the y axis (repeatable; default fid): fid kid precision recall class_acc psnr ssim ...")


def main(args) -> int:
    from accel.harness.plots import LOWER_IS_BETTER, plot_all  # matplotlib loads only for this command

    metrics = tuple(args.metric or ["fid"])
    bad = [m for m in metrics if m not in LOWER_IS_BETTER]
    if bad:
        print(f"unknown metric {', '.join(bad)}; valid: {', '.join(LOWER_IS_BETTER)}")
        return 2
    rows = []
    for f in args.files:
        if not f.is_file():
            print(f"no such file: {f}")
            return 2
        try:
            rows += read_rows(f)
        except ValueError as e:
            print(e)
            return 1
    out = args.out or args.files[0].parent
    paths = plot_all(rows, out, metrics)
    if not paths:
        print(f"nothing to plot: no rows with {', '.join(metrics)} and a speed-up in {len(rows)} rows")
        return 1
    for p in paths:
        print(p)
    return 0
