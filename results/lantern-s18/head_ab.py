"""One-off (issue 18): exact speculative decoding with EAGLE heads of different git revisions, timed interleaved in
one process against the AR baseline at batch 1, tokens only (no VQ decode: the harness rows have it), so machine
state moves every arm alike. An arm is ``REV:GAMMA``: the ``fmnist-llamagen-eagle-cfg`` of git revision REV
("zoo": this checkout's; a zoo-format file path: that file). Prints one JSON line: AR ms, and per arm median ms, speed-up over AR, mean accepted length.

    PYTHONPATH=$PWD python results/lantern-s18/head_ab.py 7c0dec3:3 zoo:3 zoo:4 [--rounds 21]
"""
import argparse
import importlib
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import accel
from accel.models.llamagen_generate import generate

D = importlib.import_module("accel.speculative.decoder")  # accel.speculative is also the API function
NAME = "fmnist-llamagen-eagle-cfg"


def head_file(rev: str) -> str:
    if rev == "zoo":
        return NAME
    if Path(rev).is_file():
        return rev
    path = Path(tempfile.mkdtemp()) / f"{NAME}.safetensors.xz"
    path.write_bytes(subprocess.run(["git", "show", f"{rev}:accel/zoo/weights/{NAME}.safetensors.xz"],
                                    capture_output=True, check=True).stdout)
    return str(path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("arms", nargs="+", help="REV:GAMMA")
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = accel.load("fmnist-llamagen")
    target, sc = g.model, g.config
    arms = {}
    for arm in args.arms:
        rev, gamma = arm.rsplit(":", 1)
        arms[arm] = accel.speculative(g, head_file(rev), rule=accel.exact(), gamma=int(gamma))
    times, taus = {k: [] for k in ["ar", *arms]}, {k: [] for k in arms}
    with torch.inference_mode():
        for r in range(args.rounds + 1):  # round 0: warm-up, not kept
            lab = torch.tensor([r % 10])
            t0 = time.perf_counter()
            generate(target, lab, target.config.block_size, sc, generator=torch.Generator().manual_seed(r))
            if r:
                times["ar"].append(time.perf_counter() - t0)
            for k, m in arms.items():
                t0 = time.perf_counter()
                _, st = D.speculative_generate(target, m.drafter, m.rule, lab, sc, gamma=m.gamma,
                                               generator=torch.Generator().manual_seed(r))
                if r:
                    times[k].append(time.perf_counter() - t0)
                    taus[k].append(st.as_dict()["mean_accept_len"])
    ar = statistics.median(times["ar"])
    out = {"ar_ms": round(1e3 * ar, 2), "rounds": args.rounds}
    for k in arms:
        t = statistics.median(times[k])
        out[k] = {"ms": round(1e3 * t, 2), "speedup": round(ar / t, 3), "tau": round(statistics.mean(taus[k]), 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
