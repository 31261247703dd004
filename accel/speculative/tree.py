"""Static-tree speculative decoding for LlamaGen (EAGLE-1 / LANTERN++ style), batched with per-row paths.

Drafting: every node's children are drawn from the drafter's distribution q at that node WITHOUT replacement
(Gumbel-top-k, which gives the sequential without-replacement order; greedy mode: top-k of q).

Verification (recursive rejection sampling without replacement; EAGLE ``evaluate_posterior_v1``): at the
current node with target distribution p_1 = p, try the children x_1, x_2, ... in order; x_j was drawn from
q_j = q with x_1..x_{j-1} removed and renormalised; accept with the rule's ``accept_prob(p_j, q_j, x_j)``
(exact: min(1, p_j/q_j); LANTERN: min(1, p~_j/q_j)); on rejection p_{j+1} = rule.residual(p_j, q_j, x_j)
(exact: norm(max(p_j - q_j, 0))). Each step is a single-draft speculative step of target p_j with proposal
q_j, so by induction the emitted token is distributed as p for the exact rule (tested by chi-square).
Children with q_j(x_j) = 0 are skipped. If no child is accepted the token is drawn from the residual;
after a leaf, the bonus token from p at the leaf.

Cache layout (target and small drafter): committed token x_{c-1} at slot c, node i at slot c + i with RoPE
position c + depth(i); a node attends to slots <= c and to its ancestors. The accepted path is compacted to
slots c+1..c+m by one gather (``llamagen.KVCache.move``). The target runs LlamaGen's one forward with per-row
RoPE positions, slots and the tree mask.

Host reads: one per round (issue 18), ``decoder.read_round``: the committed lengths with the previous
verification's NaN flag; the exit test, the mask width and the drafter's cache bound come from that copy, and
``verify_tree`` reads nothing (its draws use one batch of uniforms per round, see there).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from accel.models.llamagen import Transformer
from accel.models.llamagen_generate import SamplingConfig, cfg_batch
from accel.speculative.decoder import SpecStats, TokenBar, nan_flag, read_round
from accel.speculative.drafters import cfg_rows, draw, process
from accel.speculative.rules import sample
from accel.validate import check_labels, check_max_new_tokens, check_speculative_setup, finite_pq, raise_non_finite_pq


@dataclass(frozen=True)
class Tree:
    """Nodes 1..size in breadth-first order; ``parents[i-1]`` is node i's parent (0 = root)."""

    parents: tuple[int, ...]

    def __post_init__(self):
        for i, par in enumerate(self.parents, start=1):
            if not 0 <= par < i:
                raise ValueError(f"node {i}: parent {par} must precede it (breadth-first order)")

    @classmethod
    def from_branching(cls, branching: tuple[int, ...]) -> "Tree":
        parents, level = [], [0]
        for b in branching:
            nxt = []
            for par in level:
                for _ in range(b):
                    parents.append(par)
                    nxt.append(len(parents))
            level = nxt
        return cls(tuple(parents))

    @property
    def size(self) -> int:
        return len(self.parents)

    def depth(self, i: int) -> int:
        return 0 if i == 0 else 1 + self.depth(self.parents[i - 1])

    @property
    def levels(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(1, self.size + 1):
            out.setdefault(self.depth(i), []).append(i)
        return [out[d] for d in sorted(out)]

    def children(self, i: int) -> list[int]:
        return [j for j in range(1, self.size + 1) if self.parents[j - 1] == i]

    @cached_property
    def _children_table(self) -> tuple[Tensor, int]:
        kids = [self.children(i) for i in range(self.size + 1)]
        width = max(len(k) for k in kids)
        table = torch.full((self.size + 1, max(width, 1)), -1, dtype=torch.long)
        for i, k in enumerate(kids):
            table[i, : len(k)] = torch.tensor(k, dtype=torch.long)
        return table, width

    def children_table(self, device) -> tuple[Tensor, int]:
        """``(size+1, W)`` node ids of each node's children (-1 = none) and W, the widest node's child count."""
        table, width = self._children_table
        return table.to(device), width

    @cached_property
    def _ancestors(self) -> Tensor:
        a = torch.eye(self.size + 1, dtype=torch.bool)
        for i in range(1, self.size + 1):
            a[i] |= a[self.parents[i - 1]]
        return a

    def ancestors(self) -> Tensor:
        """``(size+1, size+1)`` bool: [i, j] = j is i or an ancestor of i."""
        return self._ancestors

    def mask(self, base: Tensor, nodes: Tensor, kv_len: int) -> Tensor:
        """``(B, len(nodes), kv_len)``: slots <= base, plus base + j for every ancestor-or-self j of the node."""
        B, dev = base.size(0), base.device
        slot = torch.arange(kv_len, device=dev)[None, None, :]
        rel = slot - base[:, None, None]  # (B, 1, kv_len)
        anc = self.ancestors().to(dev)[nodes]  # (K, size+1)
        in_tree = (rel >= 0) & (rel <= self.size)
        tree_ok = anc[None].expand(B, -1, -1).gather(2, rel.clamp(0, self.size).expand(B, len(nodes), kv_len))
        return (rel <= 0) | (in_tree & tree_ok)


TREES = {
    "chain4": Tree.from_branching((1, 1, 1, 1)),
    "b2-2-1-1": Tree.from_branching((2, 2, 1, 1)),
    "b3-1-1-1": Tree.from_branching((3, 1, 1, 1)),
    "b4-2-1": Tree.from_branching((4, 2, 1)),
    # wide first levels for deterministic (top-m) drafts, whose first-child acceptance is low (lantern_deterministic)
    "b8-1-1-1": Tree.from_branching((8, 1, 1, 1)),
    "b6-2-1": Tree.from_branching((6, 2, 1)),
    "b4-2-2": Tree.from_branching((4, 2, 2)),
}


def verify_tree(rule, tree: Tree, p: Tensor, q: Tensor, toks: Tensor, *, greedy: bool,
                generator: torch.Generator | None, check_finite: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Accepted path ``(B, D)`` of node ids (0-padded) with its length ``(B,)``, and the next token.

    p: ``(B, size+1, V)`` target at each node (root = 0); q: ``(B, size+1, V)`` the q each node was drawn from;
    toks: ``(B, size+1)`` node tokens. ``check_finite=False`` leaves the NaN check to the caller (the decode loop
    folds it into its round's one read) and makes the call free of host reads.

    Sampling mode draws the round's uniforms in one call, ``D W B + B`` of them (W = the widest node), and reads
    them in the order the walk uses them: at each depth one per row for each of the W child slots, then one per
    row that stopped there (its residual draw, rows in order), and one per row that reached a leaf (its bonus
    draw). Every uniform is used at most once, so the law is that of the sequential walk; on a CPU generator,
    where one call of n uniforms equals consecutive calls, the tokens are also those of drawing them as needed.
    """
    if check_finite and not bool(finite_pq(p, q)):  # one host read
        raise_non_finite_pq(p, q, None, "tree speculative decoding")
    B, dev = toks.size(0), toks.device
    rows = torch.arange(B, device=dev)
    D = len(tree.levels)
    table, width = tree.children_table(dev)
    if not greedy and getattr(rule, "drafts", "sampled") == "deterministic":
        return _verify_deterministic(rule, D, table, p, toks, generator)
    cur = torch.zeros(B, dtype=torch.long, device=dev)
    alive = torch.ones(B, dtype=torch.bool, device=dev)
    path = torch.zeros(B, D, dtype=torch.long, device=dev)
    n = torch.zeros(B, dtype=torch.long, device=dev)
    nxt = torch.zeros(B, dtype=torch.long, device=dev)
    if not greedy:
        u = torch.rand(D * width * B + B, generator=generator, device=dev)  # the round's uniforms (docstring)
        used = torch.zeros((), dtype=torch.long, device=dev)  # residual draws so far
    for d in range(D):
        resid = p[rows, cur].clone()
        chosen = torch.full((B,), -1, dtype=torch.long, device=dev)
        qj = None
        for j in range(width):
            child = table[cur, j]
            has = alive & (child >= 0) & (chosen < 0)
            c = child.clamp_min(0)
            x = toks[rows, c]
            if qj is None:
                qj = q[rows, c].clone()
            if greedy:
                acc = has & rule.greedy_accept(p[rows, cur], x)
            else:
                valid = has & (qj.gather(1, x[:, None])[:, 0] > 0)
                r = u[used + (d * width + j) * B + rows]
                acc = valid & (r < rule.accept_prob(resid, qj, x))
                rej = valid & ~acc  # residual for every row, then a select (no host sync on `rej`)
                resid = torch.where(rej[:, None], rule.residual(resid, qj, x).to(resid.dtype), resid)
                drop = has & ~acc  # x leaves the without-replacement pool for the next sibling
                qj = torch.where(drop[:, None], qj.scatter(1, x[:, None], 0.0), qj)
                qj = qj / qj.sum(-1, keepdim=True).clamp_min(1e-30)
            chosen = torch.where(acc, child, chosen)
        moved = chosen >= 0
        stop = alive & ~moved
        if greedy:
            nxt = torch.where(stop, p[rows, cur].argmax(-1), nxt)
        else:  # every row's residual draw, kept where the row stopped (uniforms of the stopped rows, in row order)
            at = used + (d + 1) * width * B + torch.cumsum(stop.long(), 0) - 1
            nxt = torch.where(stop, sample(resid, None, u=u[at.clamp(0, u.numel() - 1)]), nxt)
            used = used + stop.sum()
        path[:, d] = torch.where(moved, chosen, 0)
        n += moved.long()
        cur = torch.where(moved, chosen, cur)
        alive &= moved
    leaf = p[rows, cur]  # reached a leaf: bonus token from p at the leaf
    if greedy:
        bonus = leaf.argmax(-1)
    else:
        at = used + D * width * B + torch.cumsum(alive.long(), 0) - 1
        bonus = sample(leaf, None, u=u[at.clamp(0, u.numel() - 1)])
    return path, n, torch.where(alive, bonus, nxt)


def _verify_deterministic(rule, D: int, table: Tensor, p: Tensor, toks: Tensor,
                          generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """``verify_tree`` for a rule with deterministic drafts (q = 1, ``DeterministicLanternRule.step``): one
    batched call per depth tries every row's children in order."""
    B, dev = toks.size(0), toks.device
    rows = torch.arange(B, device=dev)
    cur = torch.zeros(B, dtype=torch.long, device=dev)
    alive = torch.ones(B, dtype=torch.bool, device=dev)
    path = torch.zeros(B, D, dtype=torch.long, device=dev)
    nxt = torch.zeros(B, dtype=torch.long, device=dev)
    for d in range(D):
        kids = table[cur]  # (B, W) node ids, -1 = none
        xs = torch.where(kids >= 0, toks.gather(1, kids.clamp_min(0)), -1)
        col, tok = rule.step(p[rows, cur], xs, generator)
        moved = alive & (col >= 0)
        nxt = torch.where(alive & ~moved, tok, nxt)
        node = kids.gather(1, col.clamp_min(0)[:, None])[:, 0]
        path[:, d] = torch.where(moved, node, 0)
        cur = torch.where(moved, node, cur)
        alive = moved
    leaf = draw(p[rows, cur], False, generator)  # reached a leaf: bonus token from p at the leaf
    nxt = torch.where(alive, leaf, nxt)
    return path, (path > 0).sum(1), nxt


@dataclass
class TreeRound:
    """What the static- and the dynamic-tree loops share: the prefill, committing a verified path, the counters.

    ``start`` runs the first target step (token 0 drawn from p, the drafter observing it); ``commit`` writes the
    accepted path ``path[:, :m]`` and the next token into ``seq``, moves the accepted nodes' KV entries to their
    sequence slots, feeds their hidden states to the drafter and advances the cursors ``c``; the counters stay on
    the device until ``finish`` reads them once."""

    target: Transformer
    drafter: object
    state: object
    labels: Tensor  # (R,) class labels, CFG rows included
    cache: object
    seq: Tensor  # (B, n + 2D + 2)
    c: Tensor  # (B,) next index to fill
    st: SpecStats
    n: int
    D: int
    counts: Tensor  # (2 + 2D,): verify steps, accepted, reached per depth, accepted per depth

    @classmethod
    def start(cls, target: Transformer, drafter, cond: Tensor, sc: SamplingConfig, *, n: int, D: int, N: int,
              draft_len: int, generator: torch.Generator | None) -> "TreeRound":
        B, dev = cond.size(0), cond.device
        labels = cfg_batch(target, cond, sc.uses_cfg)
        R = labels.size(0)
        cache = target.new_cache(R, 1 + n + D + N + 2)
        seq = torch.zeros(B, n + 2 * D + 2, dtype=torch.long, device=dev)
        st = SpecStats(D, reached=[0] * D, accepted_at=[0] * D)
        zero = torch.zeros(R, 1, dtype=torch.long, device=dev)
        logits, hidden = target(None, labels, input_pos=zero, cache=cache, kv_len=1, return_hidden=True)
        st.nfe_target += 1
        first = process(logits, torch.zeros(B, 1, dtype=torch.long, device=dev), sc)[:, 0]
        seq[:, 0] = draw(first, not sc.sample_logits, generator)
        c = torch.ones(B, dtype=torch.long, device=dev)
        state = drafter.begin(labels, draft_len)
        drafter.observe(state, seq, torch.zeros_like(c), hidden, torch.ones_like(c))
        counts = torch.zeros(2 + 2 * D, dtype=torch.long, device=dev)
        return cls(target, drafter, state, labels, cache, seq, c, st, n, D, counts)

    def commit(self, toks: Tensor, path: Tensor, m: Tensor, nxt: Tensor, hidden: Tensor, live: Tensor) -> None:
        """Commit one verified round (``path`` (B, D) node ids, ``m`` accepted counts, ``nxt`` the next token,
        ``hidden`` the verify forward's states); the loops read progress from ``c`` (``decoder.TokenBar``)."""
        seq, c, n, D, R = self.seq, self.c, self.n, self.D, self.labels.size(0)
        rows, ar = torch.arange(seq.size(0), device=seq.device), torch.arange(D, device=seq.device)
        m = torch.where(live, m, torch.zeros_like(m))
        at = c[:, None] + ar
        seq[rows[:, None], at] = torch.where(ar[None] < m[:, None], toks.gather(1, path), seq[rows[:, None], at])
        seq[rows, c + m] = nxt
        src = torch.cat([c[:, None], c[:, None] + torch.where(ar[None] < m[:, None], path, ar[None] + 1)], 1)
        self.cache.move(cfg_rows(src, R), cfg_rows(c[:, None] + torch.arange(D + 1, device=seq.device), R))
        keep = torch.cat([torch.zeros_like(path[:, :1]), path], 1)
        hid = hidden.gather(1, cfg_rows(keep, R)[..., None].expand(-1, -1, hidden.size(-1)))
        self.counts += torch.cat([torch.stack([live.sum(), (torch.minimum(m, n - c) * live).sum()]),
                                  (live[:, None] & (m[:, None] >= ar[None])).sum(0),
                                  (live[:, None] & (m[:, None] >= ar[None] + 1)).sum(0)])
        self.drafter.observe(self.state, seq, torch.where(live, c, c - 1), hid,
                             torch.where(live, m + 1, torch.ones_like(m)))
        self.c = torch.where(live, c + m + 1, c)

    def finish(self, drafted_per_round: int) -> tuple[Tensor, SpecStats]:
        """Tokens ``(B, n)`` and the counters, read from the device once."""
        st, D = self.st, self.D
        counts = self.counts.tolist()
        st.verify_steps, st.accepted = counts[0], counts[1]
        st.drafted = st.verify_steps * drafted_per_round
        st.reached, st.accepted_at = counts[2:2 + D], counts[2 + D:]
        st.nfe_draft = self.state.forwards
        return self.seq[:, :self.n], st



@torch.no_grad()
def tree_generate(target: Transformer, drafter, rule, cond: Tensor, sc: SamplingConfig = SamplingConfig(), *,
                  tree: Tree, max_new_tokens: int | None = None, generator: torch.Generator | None = None,
                  progress: bool = False) -> tuple[Tensor, SpecStats]:
    """Tokens ``(B, n)`` and counters; same conventions as ``decoder.speculative_generate``."""
    n = check_max_new_tokens(max_new_tokens, target.config.block_size, "tree_generate")
    check_labels(cond, target.config.num_classes, model="LlamaGen target")
    check_speculative_setup(target, drafter, rule)
    greedy, B, dev = not sc.sample_logits, cond.size(0), cond.device
    draft_greedy = greedy or getattr(rule, "drafts", "sampled") == "deterministic"  # top-m children of q
    D, N = len(tree.levels), tree.size
    run = TreeRound.start(target, drafter, cond, sc, n=n, D=D, N=N, draft_len=1 + n + D + N + 2, generator=generator)
    R, seq, rows = run.labels.size(0), run.seq, torch.arange(B, device=dev)
    depth = torch.tensor([tree.depth(i) for i in range(N + 1)], device=dev)
    nodes = torch.arange(N + 1, device=dev)
    bar = TokenBar(B, n, f"tree speculative ({N} nodes)", progress)
    bad = torch.zeros(1, dtype=torch.long, device=dev)  # NaN flag of the last verification, read with c
    p, q = None, None
    while True:
        hc = read_round(run.c, bad, p, q, run.st.nfe_target - 1, "tree speculative decoding")
        bar.update(hc)
        if min(hc) >= n:
            break
        c, c_max = run.c, max(hc)
        live = c < n
        d_toks, d_q = drafter.propose_tree(run.state, tree, sc, draft_greedy, generator, c_max=c_max)  # (B, N), (B, N, V)
        toks = torch.cat([seq[rows, c - 1][:, None], d_toks], 1)  # node 0 = x_{c-1}
        slots = c[:, None] + nodes
        pos = c[:, None] + depth
        logits, hidden = target(cfg_rows(toks, R), input_pos=cfg_rows(pos, R), slots=cfg_rows(slots, R),
                                cache=run.cache, mask=cfg_rows(tree.mask(c, nodes, c_max + N + 1), R),
                                return_hidden=True)
        run.st.nfe_target += 1
        p = process(logits, pos, sc)  # node i predicts token index c + depth(i)
        q = torch.cat([torch.zeros_like(d_q[:, :1]), d_q], 1)
        bad = nan_flag(bad, p, q)
        path, m, nxt = verify_tree(rule, tree, p, q, toks, greedy=greedy, generator=generator, check_finite=False)
        run.commit(toks, path, m, nxt, hidden, live)
    bar.close()
    return run.finish(D)
