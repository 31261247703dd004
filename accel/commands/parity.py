"""``accel parity FAMILY DIR``: one line per check, non-zero exit on any failure.

A folder that is not a fixture folder of FAMILY (missing the files its README format requires) is refused
before any work: one line on stderr, exit code 2."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

FAMILIES = ("llamagen", "mar", "var")


def configure(p):
    p.add_argument("family", choices=FAMILIES)
    p.add_argument("dir", type=Path, help="fixture folder in the format of shared/fixtures/FAMILY/")


def missing_files(folder: Path, required) -> list[str]:
    """Required names (glob patterns allowed) that match no file, or more than one, in ``folder``."""
    return [pat for pat in required if len([p for p in folder.glob(pat) if p.is_file()]) != 1]


def main(args) -> int:
    if not args.dir.is_dir():
        print(f"accel parity {args.family}: not a folder: {args.dir}", file=sys.stderr)
        return 2
    mod = importlib.import_module(f"accel.parity.{args.family}")
    gone = missing_files(args.dir, getattr(mod, "REQUIRED", ()))
    if gone:
        print(f"accel parity {args.family}: {args.dir} is not a {args.family} fixture folder: missing (or not "
              f"exactly one) {', '.join(gone)}; see shared/fixtures/{args.family}/README.md", file=sys.stderr)
        return 2
    report = mod.run(args.dir)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1
