"""One-off: the chain decoder before (commit REV, several host reads per round) vs now (one read per round),
timed interleaved in one process with the AR baseline; per-round terms in AR-step units (as experiments/lantern.py
cost_terms: draft = drafter calls, verify = target forwards, loop = the rest). Same tokens are asserted.
``--micro``: instead, the dynamic tree's per-round pieces old vs new, interleaved: ``DeterministicLanternRule.step``
on 9 nodes x 8 children (V 512, k 511; same outputs asserted) and ``drafters.process`` vs ``logits_to_probs``.

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


def old_module(rev: str, path: str, name: str):
    src = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(src)
    spec = importlib.util.spec_from_file_location(name, file)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def old_decoder(rev: str):
    return old_module(rev, "accel/speculative/decoder.py", "decoder_old").speculative_generate


def micro(rev: str, repeats: int) -> dict:
    from accel.models.llamagen_generate import SamplingConfig
    from accel.sampling import logits_to_probs
    from accel.speculative.drafters import process
    from accel.speculative.lantern import neighbour_table
    from accel.speculative.lantern_deterministic import DeterministicLanternRule

    old = old_module(rev, "accel/speculative/lantern_deterministic.py", "lantern_det_old").DeterministicLanternRule
    torch.manual_seed(0)
    table = neighbour_table(torch.randn(512, 8), 1000)
    rules = {"before": old(table, k=1000, delta=0.4), "after": DeterministicLanternRule(table, k=1000, delta=0.4)}
    p = torch.softmax(torch.randn(9, 512) * 3, -1)
    xs = torch.full((9, 8), -1)
    xs[0, :3], xs[1, :2], xs[2, 0], xs[3, 0] = torch.tensor([1, 2, 3]), torch.tensor([4, 5]), 6, 7
    outs = {k: r.step(p, xs, torch.Generator().manual_seed(1)) for k, r in rules.items()}
    assert all(torch.equal(a, b) for a, b in zip(outs["before"], outs["after"]))
    assert torch.equal(rules["before"].law(p, xs), rules["after"].law(p, xs))
    sc = SamplingConfig(cfg_scale=2.0)
    logits, t = torch.randn(2, 8, 512), torch.zeros(1, 8, dtype=torch.long)
    from accel.models.llamagen_generate import guided_logits
    procs = {"before": lambda: logits_to_probs(guided_logits(logits, 1, sc, t), 1.0, 0, 1.0),
             "after": lambda: process(logits, t, sc)}
    assert torch.equal(procs["before"](), procs["after"]())
    calls = {f"step_{k}": (lambda r=r: r.step(p, xs, torch.Generator().manual_seed(1))) for k, r in rules.items()}
    calls.update({f"process_{k}": f for k, f in procs.items()})
    times = {k: [] for k in calls}
    for r in range(repeats + 1):
        for k, f in calls.items():
            t0 = time.perf_counter()
            for _ in range(50):
                f()
            if r:
                times[k].append((time.perf_counter() - t0) / 50 * 1e3)
    return {k + "_ms": round(statistics.median(v), 3) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rev", nargs="?", default="325705a")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--micro", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.micro:
        return print(json.dumps(dict(command=" ".join(sys.argv), rev=args.rev, same_outputs=True,
                                     **micro(args.rev, args.repeats)), indent=1))
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
