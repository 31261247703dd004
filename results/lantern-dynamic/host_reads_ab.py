"""One-off: the chain decoder before (commit REV, several host reads per round) vs now (one read per round),
timed interleaved in one process with the AR baseline; per-round terms in AR-step units (as experiments/lantern.py
cost_terms: draft = drafter calls, verify = target forwards, loop = the rest). Same tokens are asserted.

    PYTHONPATH=$PWD python results/lantern-dynamic/host_reads_ab.py [REV] [--repeats 7] > results/lantern-dynamic/host_reads_ab.json
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))
from lantern import TimedDrafter, TimedModel  # noqa: E402

from accel.harness.registry import BuildContext  # noqa: E402
from accel.models.llamagen_generate import generate  # noqa: E402
from accel.presets.speculative import TARGET, build  # noqa: E402
from accel.speculative.decoder import speculative_generate  # noqa: E402


def old_decoder(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:accel/speculative/decoder.py"], capture_output=True, text=True,
                         check=True).stdout
    path = Path(tempfile.mkdtemp()) / "decoder_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("decoder_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["decoder_old"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.speculative_generate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rev", nargs="?", default="325705a")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    loops = {"before": old_decoder(args.rev), "after": speculative_generate}
    out = []
    for kw in (dict(drafter="eagle-cfg"), dict(drafter="eagle-cfg", delta=0.4, gamma=5, drafts="deterministic")):
        m = build(BuildContext(TARGET), "ab", **kw)
        drafter, target = TimedDrafter(m.drafter), TimedModel(m.target)
        cond = torch.zeros(1, dtype=torch.long)
        n = target.config.block_size
        rec = {k: {t: [] for t in ("round", "draft", "verify", "loop")} for k in loops}
        ar, tau = [], {}
        for r in range(args.repeats + 1):
            t = time.perf_counter()
            generate(target.inner, cond + r % 10, sc=m.sc, generator=torch.Generator().manual_seed(r))
            t_ar = (time.perf_counter() - t) / n
            toks = {}
            for name, loop in loops.items():
                drafter.seconds = target.seconds = 0.0
                t = time.perf_counter()
                toks[name], st = loop(target, drafter, m.rule, cond + r % 10, m.sc, gamma=m.gamma,
                                      generator=torch.Generator().manual_seed(r))
                total = time.perf_counter() - t
                steps = st.nfe_target - 1
                if r:  # r = 0: warm-up
                    x = rec[name]
                    x["round"].append(total / steps / t_ar)
                    x["draft"].append(drafter.seconds / steps / t_ar)
                    x["verify"].append(target.seconds / steps / t_ar)
                    x["loop"].append((total - drafter.seconds - target.seconds) / steps / t_ar)
                    x["speedup"] = x.get("speedup", []) + [t_ar * n / total]
                    tau.setdefault(name, []).append(st.as_dict()["mean_accept_len"])
            assert torch.equal(toks["before"], toks["after"]), "tokens differ"
            if r:
                ar.append(t_ar)
        row = dict(params=kw, repeats=args.repeats, ar_step_s=statistics.median(ar), same_tokens=True)
        for name in loops:
            row[name] = {k: round(statistics.median(v), 4) for k, v in rec[name].items()}
            row[name]["tau"] = round(statistics.median(tau[name]), 3)
        out.append(row)
    print(json.dumps(dict(command=" ".join(sys.argv), rev=args.rev, rows=out), indent=1))


if __name__ == "__main__":
    main()
