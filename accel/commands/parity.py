"""``accel parity FAMILY DIR``: one line per check, non-zero exit on any failure."""
from __future__ import annotations

import importlib
from pathlib import Path

FAMILIES = ("llamagen", "mar", "var")


def configure(p):
    p.add_argument("family", choices=FAMILIES)
    p.add_argument("dir", type=Path, help="fixture folder in the format of shared/fixtures/FAMILY/")


def main(args) -> int:
    if not args.dir.is_dir():
        print(f"not a folder: {args.dir}")
        return 2
    mod = importlib.import_module(f"accel.parity.{args.family}")
    report = mod.run(args.dir)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1
