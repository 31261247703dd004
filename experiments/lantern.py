"""LANTERN vs exact speculative decoding vs AR on the zoo LlamaGen (arXiv 2410.03355, 2502.06352).

    python experiments/lantern.py --quick            # a few minutes on 2 CPU cores
    python experiments/lantern.py --out results/     # the full grid (README table)
    python experiments/lantern.py --quick --costs-only --out results/lantern-costs   # per-round cost split only
    python experiments/lantern.py --grid deterministic --batch-sizes 1 --n-images 200 \
        --out results/lantern-deterministic     # released default path (deterministic drafts) vs sampled, + step TV
    python experiments/lantern.py --grid dynamic --out results/lantern-dynamic   # issue 18: EAGLE-2 dynamic tree
        # sized per device, old vs CFG-trained drafter, batch 1 and 8, FID N=1000 rows, step TV at tree nodes
    python experiments/lantern.py --grid dynamic --quick --out /tmp/lantern-quick   # the same in a few minutes
    python experiments/lantern.py --grid dynamic --drafter eagle-cfg --fid-only --tree dyn8-k8-d4 \
        --fid-methods lantern-det-eagle-cfg-d0.4-dyn8-k8-d4,lantern-det-eagle-cfg-d0.4-g5 --n-images 1000 --out DIR
        # FID rows only (deterministic given the seeds: a separate run scores the rows a speed run timed)
    python experiments/lantern.py --grid dynamic --drafter eagle-cfg --tree dyn8-k8-d4 --compile default \
        --methods sd-eagle-cfg,lantern-det-eagle-cfg-d0.4-g5 --batch-sizes 1 --out DIR   # compiled speed rows
    python experiments/lantern.py --grid dynamic --drafter eagle-cfg --tree dyn8-k8-d4 --speed-only --costs 5 \
        --methods sd-eagle-cfg,lantern-det-eagle-cfg-d0.4-g5 --batch-sizes 1,8 --out DIR   # speed rows + cost split

Grid: AR baseline (``llamagen-ar``); exact speculative sampling with each drafter (small LlamaGen ``draft``,
EAGLE head ``eagle``); LANTERN δ ∈ {0.05, 0.1, 0.2, 0.4} at k = 1000 (capped at the codebook size - 1) and a
few smaller k; chain (γ) vs static tree; LANTERN++ (k, λ) as in the official run.sh. Every method is timed
interleaved with the AR baseline in one run (batch 1 latency, batch 16 throughput) and scored at fixed N on
the zoo classifier (FID[fmnist-cnn]). Writes JSONL, the quality-vs-speed-up plot and a markdown table.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from accel.api.techniques import size_gamma
from accel.presets.zoo_models import load_reference
from accel.harness.plots import plot_all
from accel.presets import registry
from accel.harness.results import append_rows, current_command
from accel.harness.runner import RunConfig, run_group
from accel.harness.summary import summary_markdown
from accel.harness.registry import BuildContext
from accel.models.llamagen_generate import generate
from accel.presets.speculative import TARGET, build, entry
from accel.speculative.chain_sizing import Clocked
from accel.speculative.lantern import LanternRule
from accel.speculative.lantern_deterministic import DeterministicLanternRule
from accel.speculative.step_law import step_tv
from accel.speculative.tree_sizing import size_tree


@torch.inference_mode()  # as the harness times generate
def cost_terms(kw: dict, bs: int, repeats: int = 3) -> dict:
    """Per-round cost terms of one method at batch ``bs``, in units of one AR step (same run, medians):
    draft (drafter calls), verify (the target's forward over the gamma+1 / tree tokens, prefill included),
    loop (the rest: acceptance rule, sampling, cache and drafter bookkeeping). Predicted speed-up =
    τ / (draft + verify + loop); ``speedup_if_verify_1_step`` replaces verify by one AR step (what a
    memory-bound accelerator approaches, where a few more tokens per forward are nearly free)."""
    m = build(BuildContext(TARGET), "costs", **kw)
    dev = m.target.tok_embeddings.weight.device
    m.drafter = Clocked(m.drafter, dev, "propose", "propose_tree")  # the drafters hold the unwrapped target
    m.target = fwd = Clocked(m.target, dev)
    cond = torch.arange(bs) % 10
    n = m.target.config.block_size
    ar, rounds, draft, verify, tau = [], [], [], [], []
    for r in range(repeats + 1):
        g = torch.Generator().manual_seed(r)
        t = time.perf_counter()
        generate(fwd.inner, cond, sc=m.sc, generator=g)
        t_ar = (time.perf_counter() - t) / n
        m.drafter.times, fwd.times = [], []
        t = time.perf_counter()
        st = m.generate(cond, generator=g).stats
        total = time.perf_counter() - t
        if r:  # r = 0 is warm-up
            steps = st["nfe_target"] - 1
            ar.append(t_ar)
            rounds.append(total / steps)
            draft.append(m.drafter.seconds / steps)
            verify.append(fwd.seconds / steps)
            tau.append(st["mean_accept_len"])
    t_ar, t_round, t_draft, t_verify = (statistics.median(x) for x in (ar, rounds, draft, verify))
    tau = statistics.median(tau)
    loop = max(t_round - t_draft - t_verify, 0.0) / t_ar
    return dict(params=kw, batch_size=bs, mean_accept_len=tau, ar_step_s=t_ar,
                draft_per_round=t_draft / t_ar, verify_and_loop_per_round=(t_round - t_draft) / t_ar,
                verify_per_round=t_verify / t_ar, loop_per_round=loop,
                predicted_speedup=tau * t_ar / t_round,
                speedup_if_verify_1_step=tau / (t_draft / t_ar + 1.0 + loop))


def cost_lines(costs: list[dict]) -> list[str]:
    return [f"- cost terms ({c['params']}, batch {c['batch_size']}): tau {c['mean_accept_len']:.2f}, draft "
            f"{c['draft_per_round']:.2f} + verify {c['verify_per_round']:.2f} + loop {c['loop_per_round']:.2f} AR "
            f"steps per round -> predicted {c['predicted_speedup']:.2f}x ({c['speedup_if_verify_1_step']:.2f}x if "
            "verify cost one AR step)" for c in costs]


def grid(quick: bool, drafters: list[str]):
    out = []
    for d in drafters:
        out.append(entry(f"sd-{d}", drafter=d))
        deltas = ((0.1, 0.2) if d == "eagle" else (0.2,)) if quick else (0.05, 0.1, 0.2, 0.4)
        for delta in deltas:
            out.append(entry(f"lantern-{d}-d{delta}", drafter=d, delta=delta))
        if not quick:
            for k in (10, 100):
                out.append(entry(f"lantern-{d}-d0.2-k{k}", drafter=d, delta=0.2, k=k))
            out.append(entry(f"sd-{d}-g2", drafter=d, gamma=2))
            out.append(entry(f"lantern-{d}-d0.2-g5", drafter=d, delta=0.2, gamma=5))
            out.append(entry(f"lantern++-{d}-k10-l5-tree", drafter=d, k=10, lam=5.0, tree="b2-2-1-1"))
        out.append(entry(f"lantern-{d}-d0.2-tv", quick=True, drafter=d, delta=0.2, residual="tv"))
        out.append(entry(f"lantern-{d}-d0.2-k32", drafter=d, delta=0.2, k=32))  # k/V as the paper's 1000/16384
        if d == "eagle" or not quick:
            out.append(entry(f"sd-{d}-tree", drafter=d, tree="b2-2-1-1"))
            out.append(entry(f"lantern-{d}-d0.2-tree", drafter=d, delta=0.2, tree="b2-2-1-1"))
    return out


def det_grid(drafters: list[str]):
    """AR vs exact SD vs deterministic LANTERN (the released default) vs sampled LANTERN, chain and tree."""
    out = []
    for d in drafters:
        out.append(entry(f"sd-{d}", drafter=d))
        out.append(entry(f"lantern-{d}-d0.1", drafter=d, delta=0.1))  # sampled drafts, min(1, p~/q)
        for delta in (0.05, 0.1, 0.2):
            out.append(entry(f"lantern-det-{d}-d{delta}", drafter=d, delta=delta, drafts="deterministic"))
        out.append(entry(f"lantern-det-{d}-d0.1-tree", drafter=d, delta=0.1, tree="b3-1-1-1", drafts="deterministic"))
        out.append(entry(f"lantern-det-{d}-d0.1-tree442", drafter=d, delta=0.1, tree="b4-2-2", drafts="deterministic"))
    return out


class Recorder:
    """Wraps a chain rule (composition) and keeps the (p, q) rows it was asked about: real zoo pairs."""

    def __init__(self, inner, limit: int):
        self.inner, self.limit, self.p, self.q = inner, limit, [], []
        self.name, self.drafts = inner.name, getattr(inner, "drafts", "sampled")

    def accept_prob(self, p, q, x):
        if sum(len(t) for t in self.p) < self.limit:
            self.p.append(p.clone())
            self.q.append(q.clone())
        return self.inner.accept_prob(p, q, x)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def real_pairs(drafter: str, label: str, n_pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_pairs`` (p, q) rows exact SD of the zoo target with ``drafter`` asks its rule about (seeds 0..99,
    one image per class each)."""
    m = build(BuildContext(TARGET), label, drafter=drafter)
    m.rule = rec = Recorder(m.rule, n_pairs)
    for seed in range(100):
        if sum(len(t) for t in rec.p) >= n_pairs:
            break
        m.generate(torch.arange(10), generator=torch.Generator().manual_seed(seed))
    return torch.cat(rec.p)[:n_pairs], torch.cat(rec.q)[:n_pairs]


def measured_step_tv(drafter: str, deltas=(0.05, 0.1, 0.2), n_pairs: int = 480) -> list[dict]:
    """TV(one-step output, p) on real (p, q) pairs of the zoo target and drafter (prefixes decoded by exact SD),
    for the deterministic rule (argmax draft) and the sampled rule, computed exactly by ``step_law``."""
    p, q = real_pairs(drafter, "tv-probe", n_pairs)
    table = build(BuildContext(TARGET), "tv-probe", drafter=drafter, delta=0.1).rule.neighbours
    out = []
    for delta in deltas:
        det = DeterministicLanternRule(table, k=1000, delta=delta)
        smp = LanternRule(table, k=1000, delta=delta)
        tv_s = torch.cat([step_tv(smp, pc, qc) for pc, qc in zip(p.split(16), q.split(16))])
        tv_d = step_tv(det, p, q)
        out.append(dict(drafter=drafter, delta=delta, n_pairs=len(p), tv_det_mean=tv_d.mean().item(),
                        tv_det_max=tv_d.max().item(), tv_sampled_mean=tv_s.mean().item(),
                        tv_sampled_max=tv_s.max().item()))
    return out


def sizing(drafter: str, delta: float = 0.1, gamma: int = 8) -> dict:
    """The chain length ``accel.size_gamma`` picks on this device for deterministic LANTERN with ``drafter`` (its
    verify cost curve, acceptance profile, draft and loop costs measured at γ_max = ``gamma``, batch 1)."""
    m = build(BuildContext(TARGET), "s", drafter=drafter, delta=delta, gamma=gamma, drafts="deterministic")
    z = size_gamma(m, 1, gamma_max=gamma)
    return dict(drafter=drafter, delta=delta, verify_s={t: round(v, 6) for t, v in z.verify_s.items()},
                verify_rel={t: round(v / z.verify_s[1], 3) for t, v in z.verify_s.items()},
                accept_at_position=z.accept_at, best=f"chain{z.gamma}", speculation_pays=z.speculation_pays,
                ranked=[(b.name, round(b.tokens_per_second / z.ranked[-1].tokens_per_second, 3)) for b in z.ranked])


# ----------------------------------------------------------------------------- EAGLE-2 dynamic tree (issue 18)
CALIB_TREE = "dyn40-k8-d4"  # the calibration run's tree: every budget N <= 40 is read off it


def dyn_sizing(drafter: str, delta: float, batch: int, n_images: int, repeats: int = 7) -> dict:
    """Node budget for this device and batch (``accel.size_tree``: the verify cost curve T = 1..41, one
    calibration run at budget 40 giving E(N) for every N, draft and loop seconds per iteration there and at
    budget 4; ``draft_s`` / ``loop_s`` below are budget 40's)."""
    m = build(BuildContext(TARGET), "calib", drafter=drafter, delta=delta, tree=CALIB_TREE, drafts="deterministic")
    z = size_tree(m, batch, budget_max=40, images=n_images, repeats=repeats)
    return dict(drafter=drafter, delta=delta, batch=batch, tree=CALIB_TREE, path_rank_counts=z.path_rank_counts,
                rounds=z.rounds, draft_s=z.draft_s[40], loop_s=z.loop_s[40], verify_s=z.verify_s[41],
                measured=z.measured,
                verify_curve_s={t: round(v, 6) for t, v in z.verify_s.items()},
                verify_rel={t: round(v / z.verify_s[1], 3) for t, v in z.verify_s.items()}, budget=z.budget,
                expected_tokens={n: round(z.expected_tokens(n), 3) for n in (1, 2, 4, 8, 12, 16, 24, 32, 40)},
                ranked=[(b.name, round(b.tokens_per_second / z.ranked[0].tokens_per_second, 3)) for b in z.ranked[:8]])


class StepRecorder:
    """Wraps a deterministic rule (composition) and keeps the (p, children) of the dynamic tree's nodes that had
    children: the laws it actually emitted, for ``step_law``'s exact TV."""

    def __init__(self, inner, limit: int):
        self.inner, self.limit, self.p, self.xs = inner, limit, [], []
        self.name, self.drafts = inner.name, inner.drafts

    def step(self, p, xs, generator):
        if sum(len(t) for t in self.p) < self.limit:
            has = (xs >= 0).any(1)
            self.p.append(p[has].clone())
            self.xs.append(xs[has].clone())
        return self.inner.step(p, xs, generator)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def measured_dyn_step_tv(drafter: str, tree: str, deltas, n_nodes: int = 600) -> list[dict]:
    """TV(law emitted at a node, p) at the nodes of real dynamic-tree decodes (zoo target and drafter), computed
    exactly from the node's p and its children by the rule's ``law``."""
    out = []
    for delta in deltas:
        m = build(BuildContext(TARGET), "tv", drafter=drafter, delta=delta, tree=tree, drafts="deterministic")
        m.rule = rec = StepRecorder(m.rule, n_nodes)
        for seed in range(50):
            if sum(len(t) for t in rec.p) >= n_nodes:
                break
            m.generate(torch.arange(4) + seed % 10 // 4 * 4 % 10, generator=torch.Generator().manual_seed(seed))
        p, xs = torch.cat(rec.p)[:n_nodes], torch.cat(rec.xs)[:n_nodes]
        tv = 0.5 * (rec.inner.law(p, xs) - p.double()).abs().sum(-1)
        out.append(dict(drafter=drafter, tree=tree, delta=delta, n_nodes=len(p), tv_mean=tv.mean().item(),
                        tv_max=tv.max().item(), children_mean=(xs >= 0).sum(1).float().mean().item()))
    return out


def pair_stats(drafters, n_pairs: int = 480) -> list[dict]:
    """Median TV(p, q) and E[p(argmax q)] on real (p, q) pairs (guided target vs guided drafter) met by exact SD."""
    out = []
    for d in drafters:
        p, q = (t.double() for t in real_pairs(d, "pairs", n_pairs))
        tv = 0.5 * (p - q).abs().sum(-1)
        top = q.topk(10, -1).indices
        out.append(dict(drafter=d, n_pairs=len(p), tv_median=tv.median().item(), tv_mean=tv.mean().item(),
                        p_argmax_q=p.gather(1, top[:, :1]).mean().item(),
                        p_top10_q=p.gather(1, top).sum(1).mean().item()))
    return out


@torch.inference_mode()  # as the harness times generate
def dyn_cost_terms(kw: dict, bs: int, repeats: int = 3) -> dict:
    """``cost_terms`` for a dynamic-tree method, from the loop's own draft/verify/loop clocks."""
    m = build(BuildContext(TARGET), "costs", **kw)
    cond = torch.arange(bs) % 10
    n = m.target.config.block_size
    ar, rounds, draft, verify, loop, tau = [], [], [], [], [], []
    for r in range(repeats + 1):
        g = torch.Generator().manual_seed(r)
        t = time.perf_counter()
        generate(m.target, cond, sc=m.sc, generator=g)
        t_ar = (time.perf_counter() - t) / n
        m.timings = {}
        t = time.perf_counter()
        st = m.generate(cond, generator=g).stats
        total = time.perf_counter() - t
        if r:
            steps = st["nfe_target"] - 1
            ar.append(t_ar)
            rounds.append(total / steps)
            draft.append(m.timings["draft_s"] / steps)
            verify.append(m.timings["verify_s"] / steps)
            loop.append((total - m.timings["draft_s"] - m.timings["verify_s"]) / steps)
            tau.append(st["mean_accept_len"])
    t_ar, t_round, t_draft, t_verify, t_loop = (statistics.median(x) for x in (ar, rounds, draft, verify, loop))
    tau = statistics.median(tau)
    return dict(params=kw, batch_size=bs, mean_accept_len=tau, ar_step_s=t_ar, draft_per_round=t_draft / t_ar,
                verify_and_loop_per_round=(t_round - t_draft) / t_ar, verify_per_round=t_verify / t_ar,
                loop_per_round=t_loop / t_ar, predicted_speedup=tau * t_ar / t_round,
                speedup_if_verify_1_step=tau / (t_draft / t_ar + 1.0 + t_loop / t_ar))


def dyn_grid(drafters: list[str], tree: str, quick: bool) -> list:
    """AR vs exact SD (chain, sampled drafts) vs deterministic LANTERN (chain and dynamic tree) vs sampled
    LANTERN, per drafter; the new drafter (last) gets the full δ / k / γ sweep."""
    out = []
    for i, d in enumerate(drafters):
        full = i == len(drafters) - 1 and not quick
        out.append(entry(f"sd-{d}", drafter=d))
        out.append(entry(f"sd-{d}-auto", drafter=d, gamma="auto"))  # γ measured on this device per batch size
        if full or quick:
            out.append(entry(f"sd-det-{d}-{tree}", drafter=d, delta=0.0, tree=tree, drafts="deterministic"))
        for delta in ((0.05, 0.1, 0.2, 0.4, 0.6) if full else (0.2,) if not quick else (0.1, 0.2)):
            out.append(entry(f"lantern-det-{d}-d{delta}-{tree}", drafter=d, delta=delta, tree=tree,
                             drafts="deterministic"))
        if full:
            out.append(entry(f"sd-{d}-g5", drafter=d, gamma=5))
            for delta in (0.2, 0.4, 0.6):
                out.append(entry(f"lantern-det-{d}-d{delta}-g5", drafter=d, delta=delta, gamma=5,
                                 drafts="deterministic"))
            out.append(entry(f"lantern-{d}-d0.1", drafter=d, delta=0.1))  # sampled drafts, min(1, p~/q)
            out.append(entry(f"lantern-det-{d}-d0.2-k32-{tree}", drafter=d, delta=0.2, k=32, tree=tree,
                             drafts="deterministic"))
            shallow = tree.rsplit("-d", 1)[0] + "-d3"  # same budget, one drafter forward fewer per round
            out.append(entry(f"lantern-det-{d}-d0.2-{shallow}", drafter=d, delta=0.2, tree=shallow,
                             drafts="deterministic"))
            budget_part, _, depth_part = tree.split("-")
            narrow = f"{budget_part}-k4-{depth_part}"  # 4 children per expanded node: 4-token drafter forwards
            out.append(entry(f"lantern-det-{d}-d0.4-{narrow}", drafter=d, delta=0.4, tree=narrow,
                             drafts="deterministic"))
    return out


def fid_rows(args, reg, base, entries, new: str, tree: str, command: str) -> list[dict]:
    """FID[fmnist-cnn] at N (seeds from the sample index, batch 50) for AR and the rows named by --fid-methods;
    methods renamed ``<name>@fid<N>`` (their one timing call is not a speed measurement)."""
    fid_names = args.fid_methods.split(",") if args.fid_methods else [f"sd-{new}", f"lantern-det-{new}-d0.2-{tree}"]
    fid_entries = [e for e in entries if e.name in fid_names]
    n_fid = args.n_images if args.n_images is not None else (100 if args.quick else 1000)
    if n_fid == 0:  # --n-images 0: no FID rows (e.g. scored in a separate --fid-only run with the same seeds)
        return []
    qual = RunConfig(batch_sizes=(1,), repeats=1, warmup=0, n_images=n_fid, quality_batch=50, memory=False)
    qrows = run_group(reg, base, fid_entries, TARGET, qual, reference=load_reference(), command=command,
                      progress=lambda m: print(m, flush=True))
    for r in qrows:
        r["method"] += f"@fid{n_fid}"
    return qrows


def run_dynamic(args, reg) -> None:
    """``--grid dynamic``: size the tree on this device, time the grid at batch 1 and 8, FID at N for AR, exact SD
    and the deterministic LANTERN rows named by --fid-methods, measured step TV, pair statistics, cost split."""
    drafters = args.drafter or ["eagle", "eagle-cfg"]
    new = drafters[-1]
    quick = args.quick
    if (args.fid_only or args.compile or args.speed_only) and not args.tree:
        raise SystemExit("--fid-only / --speed-only / --compile need --tree (the tree to run), e.g. --tree dyn8-k8-d4")
    batches = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes != "1,16" else ([1] if quick else [1, 8])
    sizes = {} if args.fid_only or args.compile or args.speed_only else {bs: dyn_sizing(new, 0.2, bs, n_images=8 if quick else 24,
                                                     repeats=3 if quick else 7) for bs in batches}
    if sizes:
        budget = sizes[1]["budget"] if 1 in sizes else sizes[batches[0]]["budget"]
        print(f"sized tree for batch 1: dyn{budget}-k8-d4; "
              + "; ".join(f"batch {b}: budget {z['budget']}" for b, z in sizes.items()), flush=True)
    trees = args.tree.split(",") if args.tree else [f"dyn{budget}-k8-d4"]  # --tree pins it (a list: rows of each)
    tree = trees[0]  # FID, step TV and cost rows use the first
    grid_rows = {e.name: e for t in trees for e in dyn_grid(drafters, t, quick)}
    entries = [e for e in grid_rows.values() if not e.why_unavailable(TARGET)]
    if args.methods:
        entries = [e for e in entries if e.name in args.methods.split(",")]
    for e in entries:
        if e.name not in reg.entries:
            reg.add(e, "experiments/lantern.py")
    command = current_command()
    args.out.mkdir(parents=True, exist_ok=True)
    base = reg.get("llamagen-ar")
    if args.fid_only:  # quality rows only (deterministic given the seeds), appended to OUT/lantern.jsonl
        return append_rows(args.out / "lantern.jsonl", fid_rows(args, reg, base, entries, new, tree, command))
    speed = RunConfig(batch_sizes=tuple(batches), repeats=args.repeats or (3 if quick else 5), warmup=1, n_images=0,
                      memory=False,
                      compile=args.compile or None)
    rows = run_group(reg, base, entries, TARGET, speed, command=command, progress=lambda m: print(m, flush=True))
    if args.compile or args.speed_only:  # speed rows only (compiled: compile_s per row = first call minus median)
        append_rows(args.out / "lantern.jsonl", rows)
        if args.costs:  # and the per-round cost split of every timed method at every batch size (same process)
            costs = [(dyn_cost_terms if "dyn" in str(e.params.get("tree")) else cost_terms)(e.params, bs, args.costs)
                     for bs in batches for e in entries]
            (args.out / "costs.json").write_text(json.dumps(costs, indent=1, default=str))
            print("\n".join(cost_lines(costs)))
        return None
    rows += fid_rows(args, reg, base, entries, new, tree, command)
    append_rows(args.out / "lantern.jsonl", rows)
    deltas = (0.05, 0.1, 0.2, 0.4) if quick else (0.05, 0.1, 0.2, 0.4, 0.6)
    tv = measured_dyn_step_tv(new, tree, deltas, n_nodes=200 if quick else 600)
    chain_tv = [] if quick else measured_step_tv(new, (0.2, 0.4, 0.6))  # chain rows: argmax draft on real pairs
    pairs = pair_stats(drafters, n_pairs=160 if quick else 480)
    probe = [e for e in entries if e.name in {f"sd-{new}", f"lantern-det-{new}-d0.2-{tree}", f"sd-det-{new}-{tree}",
                                             f"lantern-det-{new}-d0.4-{tree}", f"lantern-det-{new}-d0.4-g5"}]
    costs = [(dyn_cost_terms if "dyn" in str(e.params.get("tree")) else cost_terms)(e.params, 1) for e in probe]
    for name, obj in (("sizing", sizes), ("step_tv", tv), ("step_tv_chain", chain_tv), ("pairs", pairs),
                      ("costs", costs)):
        (args.out / f"{name}.json").write_text(json.dumps(obj, indent=1, default=str))
    lines = [f"- sizing batch {b}: budget {z['budget']} (verify cost / 1-token {dict(list(z['verify_rel'].items())[::8])}; "
             f"E(N) {z['expected_tokens']}; draft {z['draft_s'] * 1e3:.1f} ms, loop {z['loop_s'] * 1e3:.1f} ms per "
             f"iteration; ranking {z['ranked'][:4]})" for b, z in sizes.items()]
    lines += [f"- step TV at {r['n_nodes']} dynamic-tree nodes ({r['drafter']}, {r['tree']}, δ={r['delta']}, "
              f"{r['children_mean']:.1f} children per node): mean {r['tv_mean']:.4f} max {r['tv_max']:.4f}" for r in tv]
    lines += [f"- step TV of the chain rule (argmax draft) on {r['n_pairs']} real (p, q), δ={r['delta']}: mean "
              f"{r['tv_det_mean']:.4f} max {r['tv_det_max']:.4f}; sampled rule at the same δ: mean "
              f"{r['tv_sampled_mean']:.3f} max {r['tv_sampled_max']:.3f}" for r in chain_tv]
    lines += [f"- pairs ({r['drafter']}, {r['n_pairs']} real (p, q)): median TV(p, q) {r['tv_median']:.3f}, "
              f"E[p(argmax q)] {r['p_argmax_q']:.3f}, E[p(top-10 of q)] {r['p_top10_q']:.3f}" for r in pairs]
    lines += cost_lines(costs)
    text = summary_markdown(rows, command=command, plots=[])
    text += "\n## Sizing, step TV, drafter pairs, cost split (this run)\n\n" + "\n".join(lines) + "\n"
    (args.out / "summary.md").write_text(text)
    for r in rows:
        print(f"{r['method']:<40} bs={r['batch_size']:<3} speedup={r['speedup'] or 0:5.2f} "
              f"tau={r.get('mean_accept_len') or 0:4.2f} fid={r.get('fid')}")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("results/lantern"))
    ap.add_argument("--drafter", action="append", default=None, choices=["draft", "eagle", "eagle-cfg"])
    ap.add_argument("--n-images", type=int, default=None)
    ap.add_argument("--methods", default="", help="comma-separated subset of the grid (baseline always runs)")
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--threads", type=int, default=1)  # the shared 2-core box is oversubscribed
    ap.add_argument("--grid", choices=["default", "deterministic", "dynamic"], default="default")
    ap.add_argument("--fid-methods", default="", help="--grid dynamic: methods scored at N (default: exact SD and "
                    "deterministic LANTERN δ=0.2 on the sized tree, new drafter)")
    ap.add_argument("--tree", default="", help="--grid dynamic: pin the dynamic tree (e.g. dyn8-k8-d4; a comma list "
                    "times the tree rows of each) instead of the one the sizing picks (sizing is still run and recorded)")
    ap.add_argument("--fid-only", action="store_true", help="--grid dynamic: only the FID rows (--fid-methods, "
                    "needs --tree), appended to OUT/lantern.jsonl")
    ap.add_argument("--repeats", type=int, default=None, help="--grid dynamic: interleaved timing rounds (default 5, "
                    "quick 3)")
    ap.add_argument("--speed-only", action="store_true", help="--grid dynamic: only the speed rows (needs --tree)")
    ap.add_argument("--compile", default="", help="--grid dynamic: time the rows (AR included) compiled with "
                    "accel.compile in this mode (e.g. default); speed rows only")
    ap.add_argument("--costs", type=int, default=0, help="--grid dynamic --speed-only: also the per-round cost split "
                    "of every timed method at every batch size, from this many rounds (median) -> OUT/costs.json")
    ap.add_argument("--costs-only", action="store_true", help="only the per-round cost split -> OUT/costs.{json,md}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reg = registry()
    if args.grid == "dynamic":
        return run_dynamic(args, reg)
    drafters = args.drafter or ["draft", "eagle"]
    make = det_grid(drafters) if args.grid == "deterministic" else grid(args.quick, drafters)
    entries = [e for e in make if not e.why_unavailable(TARGET)]
    if args.methods:
        entries = [e for e in entries if e.name in args.methods.split(",")]
    probe = {f"{m}-{d}{s}" for m in ("sd", "lantern") for d in ("draft", "eagle") for s in ("", "-tree")}
    probe = {n.replace("lantern-draft", "lantern-draft-d0.2").replace("lantern-eagle", "lantern-eagle-d0.2") for n in probe}
    if args.costs_only:
        costs = [cost_terms(e.params, 1, repeats=5) for e in entries if e.name in probe]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "costs.json").write_text(json.dumps(costs, indent=1))
        text = f"# Per-round cost split (batch 1, AR-step units)\n\nCommand: `{current_command()}`\n\n"
        (args.out / "costs.md").write_text(text + "\n".join(cost_lines(costs)) + "\n")
        print("\n".join(cost_lines(costs)))
        return
    for e in entries:
        if e.name not in reg.entries:  # sd-draft etc. are also the package's BENCH_METHODS (same parameters)
            reg.add(e, "experiments/lantern.py")
    cfg = RunConfig(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")), repeats=3 if args.quick else 5, warmup=1,
                    n_images=args.n_images if args.n_images is not None else (100 if args.quick else 1000),
                    quality_batch=50, memory=False)
    command = current_command()
    rows = run_group(reg, reg.get("llamagen-ar"), entries, TARGET, cfg, reference=load_reference(),
                     command=command, progress=lambda m: print(m, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    append_rows(args.out / "lantern.jsonl", rows)
    plots = [str(p) for p in plot_all(rows, args.out)]
    if args.grid == "deterministic":
        tv = [r for d in drafters for r in measured_step_tv(d)]
        size = [sizing(d) for d in drafters]
        (args.out / "step_tv.json").write_text(json.dumps(tv, indent=1))
        (args.out / "sizing.json").write_text(json.dumps(size, indent=1))
        lines = [f"- step TV on {r['n_pairs']} zoo (p, q) pairs, {r['drafter']}, δ={r['delta']}: deterministic mean "
                 f"{r['tv_det_mean']:.3f} max {r['tv_det_max']:.3f}; sampled mean {r['tv_sampled_mean']:.3f} max "
                 f"{r['tv_sampled_max']:.3f}" for r in tv]
        lines += [f"- sizing ({z['drafter']}, det δ={z['delta']}): verify cost / 1-token cost {z['verify_rel']}; "
                  f"best {z['best']}; ranking (tokens/s relative to the worst) {z['ranked'][:6]}" for z in size]
        header = "\n## Step TV and chain sizing (this run)\n\n"
    else:
        costs = [cost_terms(e.params, 1) for e in entries if e.name in probe]
        (args.out / "costs.json").write_text(json.dumps(costs, indent=1))
        lines = cost_lines(costs)
        header = "\n## Cost terms per round (batch 1, in AR steps, timed in this run)\n\n"
    text = summary_markdown(rows, command=command, plots=plots)
    text += header + "\n".join(lines) + "\n"
    (args.out / "summary.md").write_text(text)
    for r in rows:
        print(f"{r['method']:<28} bs={r['batch_size']:<3} speedup={r['speedup'] or 0:5.2f} "
              f"tau={r.get('mean_accept_len') or 0:4.2f} fid={r.get('fid')}")


if __name__ == "__main__":
    main()
