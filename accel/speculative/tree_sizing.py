"""Node budget of an EAGLE-2 dynamic tree, chosen on the device it runs on (issue 18, item 4; ``sizing.py`` holds
the model, ``chain_sizing.py`` the chain's twin).

A dynamic-tree round with node budget N verifies N + 1 tokens and costs ``t_draft(N) + t_verify(N + 1) + t_loop(N)``:
drafting is ``depth`` drafter forwards of ``top_k`` nodes whatever N is, then the reranking keeps the N best
(EAGLE-2, arXiv 2406.16858, §4). It emits ``E(N) = 1 + sum_{r<=N} path_rank_counts[r] / rounds`` tokens, read off
ONE calibration run at the largest budget (``dynamic_tree.py``'s module doc: a smaller budget keeps the best-ranked
nodes and, with the same coins, walks the same path until the first node ranked past it). ``size_tree`` measures:

- ``path_rank_counts`` and the in-loop verify forward: calibration decodes at ``budget_max`` (labels cycling
  through the classes, a seeded generator of their own so the caller's stream is untouched), timed by the loop's
  own clocks (``dynamic_tree_generate(timings=...)``, device-synchronised);
- ``t_draft(N)``, ``t_loop(N)``: those clocks in the decodes at ``budget_max`` and in shorter ones at ``SMALL``
  nodes, linear in N between (and beyond) the two: the loop's vectorised verification works on (N + 1)² node
  pairs and the reranking on N nodes (measured on the zoo at batch 8: loop 4 / 6 / 11 / 24 ms at N = 4 / 8 / 16
  / 40, a line through the ends is within ~20 % at 8 and 16; a constant taken at N = 40 made a round at N = 4
  look ~1.7x as dear as it is);
- ``t_verify(T)``: the shape of ``sizing.verify_cost_curve`` over T = 1..budget_max + 1, scaled so that
  T = budget_max + 1 costs what the calibration's verify forwards did (the machine can drift between the two);

then ``sizing.choose_budget`` picks the N with the most tokens per second.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from accel.speculative.dynamic_tree import DynamicTree, dynamic_tree_generate
from accel.speculative.sizing import Budget, choose_budget, expected_tree_tokens, verify_cost_curve
from accel.validate import check_range


SMALL = 4  # the second calibration budget (see the module doc)


@dataclass(frozen=True)
class TreeSizing:
    """What ``size_tree`` measured and chose: ``budget`` (the node budget, >= 1) of the tree ``top_k`` / ``depth``,
    the verify seconds per forward of T tokens (whole batch, scaled as above), the calibration's
    ``path_rank_counts`` over ``rounds`` row-rounds, the draft and loop seconds per round of every budget N
    (``draft_s[N]``, ``loop_s[N]``: measured at the budgets in ``measured``, linear between), and every budget
    ranked by tokens per second (``expected_tokens(N)``: E(N))."""

    budget: int
    batch_size: int
    top_k: int
    depth: int
    verify_s: dict[int, float]
    path_rank_counts: list[int]
    rounds: int
    draft_s: dict[int, float]
    loop_s: dict[int, float]
    measured: dict[int, tuple[float, float, float]]
    ranked: list[Budget]

    @property
    def tree(self) -> DynamicTree:
        return DynamicTree(self.budget, self.top_k, self.depth)

    def expected_tokens(self, budget: int) -> float:
        return expected_tree_tokens(self.path_rank_counts, self.rounds, budget)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["ranked"] = [(b.name, round(b.expected_tokens, 3), round(b.tokens_per_second, 3)) for b in self.ranked]
        return {**out, "tree": self.tree.name}


@torch.inference_mode()
def size_tree(method, batch_size: int = 1, *, budget_max: int = 40, images: int = 32, repeats: int = 7,
              seed: int = 0) -> TreeSizing:
    """Measure the terms above for a dynamic-tree ``SpeculativeLlamaGen`` at ``batch_size`` and return the best
    node budget in ``[1, min(budget_max, the tree's candidate pool, block_size - 2)]`` (``method`` is not changed;
    ``accel.size_tree`` sets it). ``images``: how many the calibration decodes at ``budget_max`` draw (whole
    batches, at least one; half as many at ``SMALL``); ``repeats``: verify-curve medians per T."""
    tree = method.tree
    if not isinstance(tree, DynamicTree):
        raise ValueError(f"size_tree sizes an EAGLE-2 dynamic tree (tree='dynauto-k8-d4', ...), got tree="
                         f"{getattr(tree, 'name', tree)!r}; a chain is sized by size_gamma")
    target, sc = method.target, method.sc
    block = target.config.block_size
    check_range("budget_max", budget_max, 1, integer=True)
    check_range("batch_size", batch_size, 1, integer=True)
    check_range("images", images, 1, integer=True)
    top = min(budget_max, tree.pool, block - 2)  # top + 1 verify tokens fit the context
    dev = target.tok_embeddings.weight.device
    curve = verify_cost_curve(target, max_tokens=top + 1, cfg=sc.uses_cfg, repeats=repeats, batch=batch_size)
    g = torch.Generator(device=dev).manual_seed(seed)
    classes = target.config.num_classes

    def calibrate(budget: int, calls: int):
        """Decodes at ``budget``: summed path_rank_counts and row-rounds, (draft, verify, loop) s per round."""
        spec, clock = replace(tree, budget=budget), {}
        counts, rounds, iters = [0] * (budget + 1), 0, 0
        for i in range(-1, calls):  # i = -1: warm-up (first-call allocations), not counted
            cond = (torch.arange(batch_size, device=dev) + i * batch_size) % classes
            st = dynamic_tree_generate(target, method.drafter, method.rule, cond, sc, spec=spec, generator=g,
                                       timings={} if i < 0 else clock)[1]
            if i >= 0:
                counts = [a + b for a, b in zip(counts, st.path_rank_counts)]
                rounds += st.verify_steps
                iters += st.nfe_target - 1  # the first target call of a decode is its prefill
        return counts, rounds, tuple(clock[k] / iters for k in ("draft_s", "verify_s", "loop_s"))

    calls = max(1, images // batch_size)
    counts, rounds, costs_top = calibrate(top, calls)
    measured = {top: costs_top}
    if top > SMALL:
        measured[SMALL] = calibrate(SMALL, max(1, calls // 2))[2]
    return choose_tree(curve, counts, rounds, measured, replace(tree, budget=top), batch_size)


def choose_tree(curve: dict[int, float], path_rank_counts: list[int], rounds: int,
                measured: dict[int, tuple[float, float, float]], calib: DynamicTree, batch_size: int = 1) -> TreeSizing:
    """The decision of ``size_tree`` from its measurements. ``measured[N] = (draft, verify, loop)`` seconds per round
    of calibration decodes at budget N, ``calib.budget`` among them (where E(N) was read): the curve's shape scaled
    so that T = calib.budget + 1 costs that run's verify forward, draft and loop linear in N through the measured
    budgets (one budget: constant; never below 0), every budget in [1, calib.budget] ranked by
    ``sizing.choose_budget``."""
    top = calib.budget
    scale = measured[top][1] / curve[top + 1]
    curve = {T: v * scale for T, v in curve.items()}
    lo, hi = min(measured), max(measured)

    def line(k: int, n: int) -> float:
        a, b = measured[lo][k], measured[hi][k]
        return max(0.0, a if lo == hi else a + (b - a) * (n - lo) / (hi - lo))

    draft = {n: line(0, n) for n in range(1, top + 1)}
    loop = {n: line(2, n) for n in range(1, top + 1)}
    cands = {f"budget{n}": (n + 1, expected_tree_tokens(path_rank_counts, rounds, n), draft[n] + loop[n])
             for n in range(1, min(top, len(path_rank_counts) - 1, max(curve) - 1) + 1)}
    best, ranked = choose_budget(curve, cands)
    return TreeSizing(int(best.name.removeprefix("budget")), batch_size, calib.top_k, calib.depth, curve,
                      list(path_rank_counts), rounds, draft, loop, dict(measured), ranked)
