"""One-off (issue 18, session 19): exact SD (γ 3, the zoo EAGLE head, batch 1, tokens only) with and without
session 19's SD-only trims, timed interleaved with the AR baseline in one process. Arm "old" restores the code
before commit 1686bcc by patching two names: ``attention_plan`` gets ``dtype=None`` (the bool mask goes to SDPA,
which converts it in every layer) and ``one_row_steps`` returns False (the drafters' per-row steps with the causal
mask over slots). Prints one JSON line: AR ms, each arm's speed-up over AR (medians), and the median per-image ratio
old time / new time.

    PYTHONPATH=$PWD python results/lantern-s19/code_ab.py [ROUNDS]
"""
import importlib
import json
import statistics
import sys
import time

import torch

import accel
from accel.models.llamagen_generate import generate
D = importlib.import_module("accel.speculative.decoder")
DR = importlib.import_module("accel.speculative.drafters")
L = importlib.import_module("accel.models.llamagen")
torch.set_num_threads(1)
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 21
g = accel.load("fmnist-llamagen"); target, sc = g.model, g.config
m = accel.speculative(g, "fmnist-llamagen-eagle-cfg", rule=accel.exact(), gamma=3)
real_plan, real_one = L.attention_plan, DR.one_row_steps
def old_plan(*a, **k):
    k["dtype"] = None
    return real_plan(*a, **k)
def set_arm(new):
    L.attention_plan = real_plan if new else old_plan
    DR.attention_plan = real_plan if new else old_plan
    DR.one_row_steps = real_one if new else (lambda c: False)
times = {"ar": [], "old": [], "new": []}
with torch.inference_mode():
    for r in range(rounds + 1):
        lab = torch.tensor([r % 10])
        order = ["old", "new"] if r % 2 else ["new", "old"]
        t0 = time.perf_counter()
        generate(target, lab, target.config.block_size, sc, generator=torch.Generator().manual_seed(r))
        if r: times["ar"].append(time.perf_counter() - t0)
        for arm in order:
            set_arm(arm == "new")
            t0 = time.perf_counter()
            D.speculative_generate(target, m.drafter, m.rule, lab, sc, gamma=3, generator=torch.Generator().manual_seed(r))
            if r: times[arm].append(time.perf_counter() - t0)
ar = statistics.median(times["ar"])
out = {"ar_ms": round(ar * 1e3, 1)}
for k in ("old", "new"):
    out[k] = round(ar / statistics.median(times[k]), 3)
out["new_over_old_per_image"] = round(statistics.median([o / n for o, n in zip(times["old"], times["new"])]), 4)
print(json.dumps(out))
