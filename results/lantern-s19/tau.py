"""One-off (issue 18, session 19): in-loop accepted length of EAGLE heads, exact SD, 400 images (16 batches of 25,
seeds 1000-1015), the same images for every head.

    PYTHONPATH=$PWD python results/lantern-s19/tau.py GAMMA HEAD_FILE [HEAD_FILE ...]
"""
import importlib
import json
import sys

import torch

import accel
D = importlib.import_module("accel.speculative.decoder")
torch.set_num_threads(1)
g = accel.load("fmnist-llamagen"); target, sc = g.model, g.config
gamma = int(sys.argv[1])
for f in sys.argv[2:]:
    m = accel.speculative(g, f, rule=accel.exact(), gamma=gamma)
    acc = ver = 0
    with torch.inference_mode():
        for b in range(16):
            _, st = D.speculative_generate(target, m.drafter, m.rule, torch.arange(25) % 10, sc, gamma=gamma,
                                           generator=torch.Generator().manual_seed(1000 + b))
            acc += st.accepted; ver += st.verify_steps
    print(json.dumps({"head": f, "gamma": gamma, "tau": round(1 + acc / ver, 4), "rounds": ver}))
