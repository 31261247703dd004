"""One-off: the dynamic tree (dyn8-k8-d4, δ 0.4, eagle-cfg) with the sibling test of commit 03d6b11 (child by child)
vs this session's (``DeterministicLanternRule.siblings``), timed interleaved in one process with the AR baseline at
batch 1 and 8; same tokens asserted. Prints JSON (medians, seconds per image batch, and ratios).

    PYTHONPATH=$PWD python results/lantern-s8/siblings_ab.py [--repeats 7] > results/lantern-s8/siblings_ab.json
"""
import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from accel.harness.registry import BuildContext
from accel.models.llamagen_generate import generate
from accel.presets.speculative import TARGET, build


def old_rule_class(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:accel/speculative/lantern_deterministic.py"], capture_output=True,
                         text=True, check=True).stdout
    file = Path(tempfile.mkdtemp()) / "lantern_det_old.py"
    file.write_text(src)
    spec = importlib.util.spec_from_file_location("lantern_det_old", file)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["lantern_det_old"] = mod
    spec.loader.exec_module(mod)
    return mod.DeterministicLanternRule


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="03d6b11")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    new = build(BuildContext(TARGET), "new", drafter="eagle-cfg", delta=0.4, tree="dyn8-k8-d4", drafts="deterministic")
    old = build(BuildContext(TARGET), "old", drafter="eagle-cfg", delta=0.4, tree="dyn8-k8-d4", drafts="deterministic")
    r = new.rule
    old.rule = old_rule_class(args.rev)(r.neighbours, k=r.k, delta=r.delta)
    out = {}
    for bs in (1, 8):
        cond = torch.arange(bs) % 10
        calls = {"ar": lambda s: generate(new.target, cond, sc=new.sc, generator=torch.Generator().manual_seed(s)),
                 "new": lambda s: new.generate(cond, generator=torch.Generator().manual_seed(s)).stats["tokens"],
                 "old": lambda s: old.generate(cond, generator=torch.Generator().manual_seed(s)).stats["tokens"]}
        assert torch.equal(calls["new"](0), calls["old"](0))
        times = {k: [] for k in calls}
        for rep in range(args.repeats + 1):
            for k, f in calls.items():
                t = time.perf_counter()
                f(rep)
                if rep:
                    times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        out[f"batch{bs}"] = dict(median_s={k: round(v, 4) for k, v in med.items()},
                                 speedup_new=round(med["ar"] / med["new"], 3), speedup_old=round(med["ar"] / med["old"], 3),
                                 new_over_old_time=round(med["new"] / med["old"], 3))
    print(json.dumps(dict(rev=args.rev, repeats=args.repeats, **out), indent=1))


if __name__ == "__main__":
    main()
