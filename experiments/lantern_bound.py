"""How far a better drafter can take deterministic LANTERN on the zoo target (issue #18: accepted length is the term).

On real (p, q) rows of the zoo target and a drafter (the rows exact speculative decoding asks its rule about;
``lantern.real_pairs``), the exact probability that a node accepts one of its deterministic children under
``DeterministicLanternRule`` (Eq. 6-7 with q = 1; ``siblings``' unconditional emit probabilities, summed):

- the drafter's own top-w children (w = 1 is the γ chain), and
- an oracle drafter's: the target's own top-w tokens, the best any drafter can propose,

for each δ, next to exact SD's per-node acceptance with sampled drafts (1 - TV(p, q)), with the chain's expected
accepted length τ(γ) = (1 - a^(γ+1)) / (1 - a) under a constant per-node acceptance a (τ(∞) = 1 / (1 - a)). No
timing: it bounds τ, the figure the speed-up goals need.

    python experiments/lantern_bound.py --out results/lantern-bound     # 7 s on 2 CPU cores (session 12)
"""
import argparse
import json
from pathlib import Path

import torch

from lantern import real_pairs
from accel.harness.registry import BuildContext
from accel.presets.speculative import TARGET, build
from accel.speculative.lantern_deterministic import DeterministicLanternRule


def node_acceptance(rule: DeterministicLanternRule, p: torch.Tensor, children: torch.Tensor) -> torch.Tensor:
    """P(one of ``children`` (N, w), tried in order, is accepted) per row: the sum of their emit probabilities."""
    _, emit, _ = rule.siblings(p, children)
    return emit.sum(1)


def tau(a: float, gamma: float) -> float:
    return 1 / (1 - a) if gamma == float("inf") else (1 - a ** (gamma + 1)) / (1 - a)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--drafter", default="eagle-cfg")
    ap.add_argument("--n-pairs", type=int, default=960)
    ap.add_argument("--deltas", default="0,0.05,0.1,0.2,0.4")
    ap.add_argument("--widths", default="1,2,4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/lantern-bound"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p, q = real_pairs(args.drafter, "bound", args.n_pairs)
    table = build(BuildContext(TARGET), "bound", drafter=args.drafter, delta=0.1).rule.neighbours
    rows = []
    for delta in (float(d) for d in args.deltas.split(",")):
        rule = DeterministicLanternRule(table, k=1000, delta=delta)
        for w in (int(v) for v in args.widths.split(",")):
            for who, src in (("drafter", q), ("oracle", p)):
                a = node_acceptance(rule, p, src.topk(w, -1).indices).mean().item()
                rows.append(dict(drafter=args.drafter, n_pairs=len(p), delta=delta, width=w, children=who,
                                 accept=round(a, 4), tau_g5=round(tau(a, 5), 3), tau_g8=round(tau(a, 8), 3),
                                 tau_inf=round(tau(a, float("inf")), 3)))
    # sampled drafts under the exact rule accept sum_x min(p, q) = 1 - TV(p, q) per node
    stats = dict(drafter=args.drafter, n_pairs=len(p), exact_sd_accept=round(1 - 0.5 * (p - q).abs().sum(-1).mean().item(), 4),
                 mean_max_p=round(p.max(-1).values.mean().item(), 4),
                 mean_p_argmax_q=round(p.gather(1, q.argmax(-1, keepdim=True)).mean().item(), 4))
    rows.append(stats)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bound.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [f"# Deterministic LANTERN: node acceptance, drafter vs oracle children ({args.drafter}, {len(p)} real "
             "(p, q) rows)", "", "| δ | width | children | accept | τ(γ5) | τ(γ8) | τ(∞) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['delta']} | {r['width']} | {r['children']} | {r['accept']:.3f} | {r['tau_g5']:.2f} | "
              f"{r['tau_g8']:.2f} | {r['tau_inf']:.2f} |" for r in rows[:-1]]
    lines += ["", f"Exact SD with sampled drafts accepts 1 - TV(p, q) = {stats['exact_sd_accept']:.3f} per node "
              f"(τ(γ5) {tau(stats['exact_sd_accept'], 5):.2f}); E[max p] = {stats['mean_max_p']:.3f}, "
              f"E[p(argmax q)] = {stats['mean_p_argmax_q']:.3f}."]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
