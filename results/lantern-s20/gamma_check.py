"""Does the measured-cost model behind gamma="auto" rank the chain lengths as a real decode does? (issue 18, item 4)

One process, batch B: the sizing (`accel.size_gamma`, the model's tokens/s for every γ), then tokens-only decodes of
the zoo target with the CFG-trained EAGLE head at each γ in GAMMAS and plain AR, interleaved round by round (same
labels and seeds per round for every arm), warm-up round excluded, medians. Prints and appends one JSON row.

    PYTHONPATH=$PWD python results/lantern-s20/gamma_check.py [ROUNDS] [BATCH]
"""
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import accel
from accel.speculative.decoder import speculative_generate

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 15
B = int(sys.argv[2]) if len(sys.argv) > 2 else 1
GAMMAS = (2, 3, 4, 5, 6, 8)
torch.set_num_threads(1)
target = accel.load("fmnist-llamagen")
m = accel.speculative(target, "fmnist-llamagen-eagle-cfg", gamma=3)
sizing = accel.size_gamma(m, B)
model = dict(sizing.as_dict()["ranked"])
arms = {f"g{g}": g for g in GAMMAS}
times = {a: [] for a in [*arms, "ar"]}
rounds = {a: [] for a in arms}  # target calls after the prefill, per timed decode
taus = {a: [] for a in arms}
n = target.model.config.block_size
with torch.inference_mode():
    for r in range(ROUNDS + 1):
        cond = (torch.arange(B) + r) % 10
        for a in times:
            g = torch.Generator().manual_seed(r)
            t = time.perf_counter()
            if a == "ar":
                target.tokens(cond, generator=g)
            else:
                st = speculative_generate(m.target, m.drafter, m.rule, cond, m.sc, gamma=arms[a], generator=g)[1]
            if r:
                times[a].append(time.perf_counter() - t)
                if a != "ar":
                    rounds[a].append(st.nfe_target - 1)
                    taus[a].append(st.as_dict()["mean_accept_len"])
med = {a: statistics.median(v) for a, v in times.items()}
row = dict(batch=B, rounds=ROUNDS, chosen=sizing.gamma, ar_s=med["ar"],
           measured_speedup={a: round(med["ar"] / med[a], 3) for a in arms},
           model_tokens_per_s={a: model[f"chain{g}"] for a, g in arms.items()},
           model_ar_tokens_per_s=model["chain0"], measured_ar_tokens_per_s=round(n * B / med["ar"], 1),
           measured_tau={a: round(statistics.mean(v), 3) for a, v in taus.items()},
           measured_round_ms={a: round(1e3 * sum(times[a]) / sum(rounds[a]), 3) for a in arms},
           model_round_ms={a: round(1e3 * (g * sizing.draft_step_s + sizing.verify_s[g + 1] + sizing.loop_s), 3)
                           for a, g in arms.items()},
           model_tau={a: round(b.expected_tokens, 3) for a, g in arms.items() for b in sizing.ranked
                      if b.name == f"chain{g}"},
           draft_step_s=sizing.draft_step_s, loop_s=sizing.loop_s, accept_at=[round(a, 3) for a in sizing.accept_at])
print(json.dumps(row))
with open(Path(__file__).parent / "gamma_check.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
