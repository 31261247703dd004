"""Wait for the VM's fast state, then run the batch-1 SD harness rows in it (issue 18's exact-SD clause).

Every INTERVAL s: the median of 5 AR decodes of the zoo target (tokens only, 1 thread). When it falls under
THRESHOLD_MS, run `experiments/lantern.py ... --methods sd-eagle-cfg,sd-eagle-cfg-auto --batch-sizes 1 --repeats 21`
into results/lantern-s20/fast (a fresh process, as every harness run); stop after RUNS such runs or MINUTES.
Each probe reading goes to fast/probe.log.

    PYTHONPATH=$PWD python results/lantern-s20/fast_probe.py [THRESHOLD_MS] [MINUTES] [RUNS]
"""
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import accel

THRESHOLD_MS = float(sys.argv[1]) if len(sys.argv) > 1 else 170.0
MINUTES = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
RUNS = int(sys.argv[3]) if len(sys.argv) > 3 else 2
INTERVAL = 45
OUT = Path(__file__).parent / "fast"
CMD = [sys.executable, "experiments/lantern.py", "--grid", "dynamic", "--drafter", "eagle-cfg", "--tree", "dyn8-k8-d4",
       "--speed-only", "--costs", "0", "--repeats", "21", "--batch-sizes", "1", "--methods",
       "sd-eagle-cfg,sd-eagle-cfg-auto", "--out", str(OUT)]
torch.set_num_threads(1)
target = accel.load("fmnist-llamagen")
OUT.mkdir(exist_ok=True)
end, runs = time.time() + 60 * MINUTES, 0
with torch.inference_mode(), open(OUT / "probe.log", "a") as log:
    while time.time() < end and runs < RUNS:
        ts = []
        for i in range(6):
            t = time.perf_counter()
            target.tokens(torch.tensor([i % 10]), generator=torch.Generator().manual_seed(i))
            ts.append(time.perf_counter() - t)
        ms = 1e3 * statistics.median(ts[1:])
        fire = ms < THRESHOLD_MS
        log.write(f"{time.strftime('%H:%M:%S')} AR tokens-only median {ms:.1f} ms{' -> harness run' if fire else ''}\n")
        log.flush()
        if fire:
            subprocess.run(CMD, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            runs += 1
        else:
            time.sleep(INTERVAL)
