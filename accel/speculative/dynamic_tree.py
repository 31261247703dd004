"""EAGLE-2 dynamic draft trees for LANTERN's deterministic path (the released default: q = 1, step TV <= δ).

Drafting (Li et al. 2024, EAGLE-2, arXiv 2406.16858, §4: "expansion" and "reranking"). With the drafter's
guided distribution q at a node and the *value* of a node = its cumulative draft log-probability

    V(x_1..x_d) = sum_{i<=d} log q(x_i | x_<i)                     (EAGLE-2 Eq. 1's confidence, in logs)

- expansion: the root's top-K children form the first layer; at each further layer the K nodes of the previous
  layer with the largest V (the frontier) are fed to the drafter in ONE batched forward (tree attention in
  the drafter's cache) and each gets its top-K children: K + (depth - 1) K^2 candidates in ``depth`` drafter
  forwards (catch-up included);
- reranking: the ``budget`` candidates with the largest V are verified. A child's V never exceeds its
  parent's (log q <= 0; ties are broken towards the shallower node), so the selection is a tree, and the
  selected children of a node are the first ones in its q order: siblings are tried in descending q.

Verification (``DeterministicLanternRule``, ``lantern_deterministic.py``): at each node of the accepted path the
children are tried in order against the relaxed target with q = 1 and a δ budget shared by the siblings, the
residual removing only what was rejected; every step emits a law within δ of p (Eq. 6-7 of the paper with
q = 1, proved in that module). It is vectorised over the whole tree: every node's sibling test is run at
once on its own target distribution (one batched call; the loop left is the sequential sibling order inside
the rule, over at most K columns), with independent uniforms per node. The accepted path is then read off
without a loop over depth: node v is on it iff every node u on its root path (v's ancestors, ``anc``) was
the child its parent chose. Since the walk only ever uses the coins of the nodes it visits, this is the same
law as walking the tree depth by depth.

Host syncs: one per round (the committed lengths, read to decide whether to continue and to size the
forwards' ``kv_len``, with the NaN flag of the previous verification in the same read).

``path_rank_counts[r]`` counts the rounds whose accepted path contained the node ranked r-th by V. A tree with
a smaller budget N' keeps exactly the N' best-ranked nodes, and with the same coins its walk is the same until
the first path node ranked past N' (the missing nodes are the last siblings of their parent), so the
expected tokens per round of every budget N' <= N follow from one run:
E(N') = 1 + sum_{r<=N'} path_rank_counts[r] / rounds (``tree_sizing.size_tree``).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from accel.models.llamagen import Transformer
from accel.models.llamagen_generate import SamplingConfig
from accel.speculative.decoder import SpecStats, TokenBar, nan_flag, read_round
from accel.speculative.drafters import EagleDrafter, cfg_rows, process
from accel.speculative.sizing import device_sync
from accel.speculative.tree import TreeRound
from accel.validate import check_labels, check_max_new_tokens, check_speculative_setup

TIE = 1e-9  # per-depth tie-break of the node value: a parent always ranks before its child


@dataclass(frozen=True)
class DynamicTree:
    """EAGLE-2 tree shape: ``budget`` draft nodes verified per round out of ``top_k + (depth-1) top_k^2``
    candidates (``top_k`` children per expanded node, ``top_k`` nodes expanded per layer, ``depth`` layers).
    LANTERN's released defaults are budget 58 (``total_token=59``), depth 4, top_k 10. ``budget="auto"``: a
    ``SpeculativeLlamaGen`` measures it on its device for each batch size (``tree_sizing.size_tree``)."""

    budget: int | str = 16
    top_k: int = 8
    depth: int = 4

    def __post_init__(self):
        for name, v in (("top_k", self.top_k), ("depth", self.depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DynamicTree: {name}={v!r} must be an int >= 1")
        if self.budget == "auto":
            return
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or not 1 <= self.budget <= self.pool:
            raise ValueError(f"DynamicTree: budget={self.budget!r} must be 'auto' or an int in [1, {self.pool}] "
                             f"(top_k {self.top_k} + (depth {self.depth} - 1) * top_k^2 candidates)")

    @property
    def pool(self) -> int:
        return self.top_k + (self.depth - 1) * self.top_k ** 2

    @property
    def name(self) -> str:
        return f"dyn{self.budget}-k{self.top_k}-d{self.depth}"

    @classmethod
    def from_name(cls, name: str) -> "DynamicTree":
        """Inverse of ``name``: ``"dyn16-k8-d4"`` -> ``DynamicTree(16, 8, 4)``, ``"dynauto-k8-d4"`` ->
        ``DynamicTree("auto", 8, 4)`` (the budget measured on the device: ``tree_sizing.size_tree``)."""
        m = re.fullmatch(r"dyn(\d+|auto)-k(\d+)-d(\d+)", name)
        if m is None:
            raise ValueError(f"dynamic tree name {name!r}: expected 'dyn<budget>-k<top_k>-d<depth>' with an int "
                             "budget or 'auto', e.g. 'dyn16-k8-d4', 'dynauto-k8-d4'")
        b, k, d = m.groups()
        return cls(b if b == "auto" else int(b), int(k), int(d))


def rows_tree_mask(base: Tensor, anc: Tensor, kv_len: int) -> Tensor:
    """``(B, T, kv_len)`` bool: slots < base (committed) plus tree slots ``base + j`` with ``anc[b, t, j]``
    (``anc (B, T, S)``: the tree slots each query may see, itself and its ancestors)."""
    B, T, S = anc.shape
    rel = torch.arange(kv_len, device=base.device)[None, None, :] - base[:, None, None]  # (B, 1, kv_len)
    ok = anc.gather(2, rel.clamp(0, S - 1).expand(B, T, kv_len))
    return (rel < 0) | ((rel < S) & ok)


def ancestors(parent: Tensor, depth: int) -> Tensor:
    """``(B, T, T)`` bool: [b, i, j] = node j is i or an ancestor of i, from ``parent (B, T)`` (root 0, its
    own parent) in at most ``depth`` compositions."""
    B, T = parent.shape
    eye = torch.eye(T, dtype=torch.bool, device=parent.device).expand(B, T, T)
    anc = eye
    for _ in range(depth):  # anc[i] = {i} | anc[parent(i)]: exact after `depth` rounds (tree depth)
        anc = eye | anc.gather(1, parent[..., None].expand(B, T, T))
    return anc


def children_table(parent: Tensor, width: int) -> Tensor:
    """``(B, T, width)`` node ids of each node's children in node order, -1 = none. Children of one node
    must be contiguous in node order (the selection keeps them so)."""
    B, T = parent.shape
    ids = torch.arange(1, T, device=parent.device).expand(B, T - 1)
    par = parent[:, 1:]
    first = torch.full((B, T), T, dtype=torch.long, device=parent.device).scatter_reduce(1, par, ids, "amin")
    slot = par * width + (ids - first.gather(1, par))
    return torch.full((B, T * width), -1, dtype=torch.long, device=parent.device).scatter(1, slot, ids).view(B, T, width)


@torch.no_grad()
def draft_dynamic(drafter: EagleDrafter, state, spec: DynamicTree, sc: SamplingConfig, c: Tensor, c_max: int):
    """Expand and rerank (module doc) for committed lengths ``c (B,)`` (``c_max`` = their max, host-side).

    Returns ``(toks, parent, depth, rank)``, each ``(B, budget + 1)``, node 0 = the root (its token is the
    caller's x_{c-1}; parent 0, depth 0, rank 0); nodes are ordered so parents precede children and the
    children of one node are contiguous in descending q. ``rank`` = 1-based rank of the node's value."""
    K, D, N = spec.top_k, spec.depth, spec.budget
    B, dev = c.size(0), c.device
    head, target = drafter.head, drafter.target
    R = state.labels.size(0)
    S = (D - 1) * K  # drafter slots of the expanded nodes: c .. c - 1 + S
    kv_len = c_max + S
    h = drafter.catch_up(state, kv_len, pos_bound=c_max)  # (R, 1, dim) at the last committed pair
    dim = h.size(-1)
    logq = process(target.output(h).float(), c[:, None], sc)[:, 0].clamp_min(1e-30).log()
    s1, t1 = logq.topk(K, dim=-1)
    toks, vals, pars, deps = [t1], [s1.double()], [torch.full_like(t1, -1)], [torch.ones_like(t1)]
    f_tok, f_val, f_id = t1, s1.double(), torch.arange(K, device=dev).expand(B, K)
    hpar = h.expand(R, K, dim)
    anc = torch.zeros(B, K, max(S, 1), dtype=torch.bool, device=dev)
    own = torch.arange(K, device=dev)
    offset = K
    for d in range(1, D):  # expand the frontier of layer d (tokens at index c + d - 1)
        anc = anc.clone()
        anc[:, own, (d - 1) * K + own] = True
        pos = (c - 1 + d)[:, None].expand(B, K)
        slots = c[:, None] + (d - 1) * K + own
        mask = rows_tree_mask(c, anc, kv_len)
        x = head.fc(torch.cat([target.tok_embeddings(cfg_rows(f_tok, R)), hpar], -1))
        out = head.block(x, cfg_rows(pos, R), state.cache, drafter.table, slots=cfg_rows(slots, R),
                         mask=cfg_rows(mask, R))
        state.forwards += 1
        lq = process(target.output(out).float(), (c[:, None] + d).expand(B, K), sc).clamp_min(1e-30).log()
        ls, lt = lq.topk(K, dim=-1)  # (B, K, K) children of every frontier node
        cv = (f_val[:, :, None] + ls.double()).flatten(1)
        toks.append(lt.flatten(1))
        vals.append(cv)
        pars.append(f_id[:, :, None].expand(B, K, K).flatten(1))
        deps.append(torch.full_like(cv, d + 1, dtype=torch.long))
        if d + 1 < D:
            sel = cv.topk(K, dim=-1).indices  # the next frontier: best K children by value
            pj = sel // K
            f_tok, f_val, f_id = toks[-1].gather(1, sel), cv.gather(1, sel), offset + sel
            hpar = out.gather(1, cfg_rows(pj, R)[..., None].expand(R, K, dim))
            anc = anc.gather(1, pj[..., None].expand(B, K, anc.size(-1)))
        offset += K * K
    tok, val, par, dep = (torch.cat(t, 1) for t in (toks, vals, pars, deps))
    order = (val - TIE * dep).topk(N, dim=-1).indices  # reranking: the N best values
    sel = order.sort(1).values  # candidate order: layer by layer, siblings contiguous in q order
    ar = torch.arange(1, N + 1, device=dev).expand(B, N)
    vmap = torch.zeros_like(tok).scatter(1, sel, ar)  # candidate -> node id
    rank = torch.zeros_like(tok).scatter(1, order, ar).gather(1, sel)
    p_sel = par.gather(1, sel)
    parent = torch.where(p_sel < 0, torch.zeros_like(p_sel), vmap.gather(1, p_sel.clamp_min(0)))
    zero = torch.zeros(B, 1, dtype=torch.long, device=dev)
    return (torch.cat([zero, tok.gather(1, sel)], 1), torch.cat([zero, parent], 1),
            torch.cat([zero, dep.gather(1, sel)], 1), torch.cat([zero, rank], 1))


def verify_dynamic(rule, p: Tensor, toks: Tensor, parent: Tensor, depth: Tensor, anc: Tensor, table: Tensor,
                   generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """Accepted path ``(B, D)`` (node ids, 0-padded), its length ``(B,)`` and the next token ``(B,)``.

    ``p (B, T, V)`` target at every node, ``table (B, T, W)`` children (``children_table``), ``anc``
    (``ancestors``). Every node's children are tested at once (``rule.step`` over B*T rows); see module doc."""
    B, T, V = p.shape
    W = table.size(-1)
    xs = torch.where(table >= 0, toks.gather(1, table.clamp_min(0).flatten(1)).view(B, T, W), -1)
    col, tok = rule.step(p.reshape(B * T, V), xs.reshape(B * T, W), generator)
    col, tok = col.view(B, T), tok.view(B, T)
    chosen = torch.where(col >= 0, table.gather(2, col.clamp_min(0)[..., None])[..., 0], -1)
    nodes = torch.arange(T, device=p.device)
    edge = chosen.gather(1, parent) == nodes  # node u: its parent chose it
    edge[:, 0] = True
    on = ~(anc & ~edge[:, None, :]).any(-1)  # every node of the root path was chosen
    key = torch.where(on, depth, -1)
    m, vstar = key.max(1)
    nxt = tok.gather(1, vstar[:, None])[:, 0]
    path = torch.zeros(B, T + 1, dtype=torch.long, device=p.device)  # depth < T; the caller trims to the tree depth
    path = path.scatter(1, torch.where(on, depth, 0), torch.where(on, nodes.expand(B, T), 0))
    return path[:, 1:], m, nxt


@torch.no_grad()
def dynamic_tree_generate(target: Transformer, drafter: EagleDrafter, rule, cond: Tensor,
                          sc: SamplingConfig = SamplingConfig(), *, spec: DynamicTree, max_new_tokens: int | None = None,
                          generator: torch.Generator | None = None, progress: bool = False,
                          timings: dict | None = None) -> tuple[Tensor, SpecStats]:
    """Tokens ``(B, n)`` and counters (``tree.tree_generate``'s conventions) with an EAGLE-2 dynamic tree.

    Needs an EAGLE drafter, a rule with deterministic drafts (``DeterministicLanternRule``; δ = 0 is exact
    speculative decoding of deterministic drafts) and sampling (not greedy) decoding. ``timings``, a dict,
    receives the seconds spent drafting, in the verify forward and in the rest of the loop (the device is
    synchronised before each clock read when ``timings`` is given, so on an accelerator the split is the work's)."""
    if getattr(rule, "drafts", "sampled") != "deterministic":
        raise ValueError(f"dynamic tree: rule {getattr(rule, 'name', rule)!r} samples its drafts; the EAGLE-2 tree "
                         "drafts deterministically (use lantern(delta, drafts='deterministic'), delta=0 for exact)")
    if not sc.sample_logits:
        raise ValueError("dynamic tree: sample_logits=False (greedy) is not supported; use a chain or static tree")
    if not isinstance(drafter, EagleDrafter):
        raise TypeError(f"dynamic tree: needs an EAGLE drafter, got {type(drafter).__name__}")
    if spec.budget == "auto":
        raise ValueError(f"dynamic tree {spec.name}: the budget is sized by the method (accel.speculative(..., "
                         "tree='dynauto-...') or accel.size_tree); pass an int budget here")
    n = check_max_new_tokens(max_new_tokens, target.config.block_size, "dynamic_tree_generate")
    check_labels(cond, target.config.num_classes, model="LlamaGen target")
    check_speculative_setup(target, drafter, rule)
    B, dev = cond.size(0), cond.device
    D, N, K = spec.depth, spec.budget, spec.top_k
    run = TreeRound.start(target, drafter, cond, sc, n=n, D=D, N=N, draft_len=n + (D - 1) * K + D + 4,
                          generator=generator)
    R, seq, rows, st, state = run.labels.size(0), run.seq, torch.arange(B, device=dev), run.st, run.state
    nodes = torch.arange(N + 1, device=dev)
    ar = torch.arange(D, device=dev)
    ranks_t = torch.zeros(N + 1, dtype=torch.long, device=dev)
    bad = torch.zeros(1, dtype=torch.long, device=dev)
    clock = timings if timings is not None else {}
    for k in ("draft_s", "verify_s", "loop_s"):
        clock.setdefault(k, 0.0)
    sync = (lambda: device_sync(dev)) if timings is not None else (lambda: None)  # clocks of queued device work
    sync()  # the prefill's queued work is not the first round's
    bar = TokenBar(B, n, f"dynamic tree ({spec.name})", progress, done=B)
    p = None
    while True:
        t0 = time.perf_counter()
        c = run.c
        hc = read_round(c, bad, p, None, st.nfe_target - 1, "dynamic-tree speculative decoding")
        bar.update(hc)
        if min(hc) >= n:
            clock["loop_s"] += time.perf_counter() - t0
            break
        c_max = max(hc)
        live = c < n
        t1 = time.perf_counter()
        toks, parent, depth, rank = draft_dynamic(drafter, state, spec, sc, c, c_max)
        sync()
        t2 = time.perf_counter()
        toks[:, 0] = seq[rows, c - 1]
        anc = ancestors(parent, D)
        slots, pos = c[:, None] + nodes, c[:, None] + depth
        mask = rows_tree_mask(c, anc, c_max + N + 1)
        logits, hidden = target(cfg_rows(toks, R), input_pos=cfg_rows(pos, R), slots=cfg_rows(slots, R),
                                cache=run.cache, mask=cfg_rows(mask, R), return_hidden=True)
        st.nfe_target += 1
        sync()
        t3 = time.perf_counter()
        p = process(logits, pos, sc)  # node i predicts token index c + depth(i)
        bad = nan_flag(bad, p, None)
        path, m, nxt = verify_dynamic(rule, p, toks, parent, depth, anc, children_table(parent, K), generator)
        path = torch.nn.functional.pad(path, (0, max(0, D - path.size(1))))[:, :D]  # budget < depth: short paths
        on_path = (ar[None] < m[:, None]) & live[:, None]
        ranks_t.scatter_add_(0, rank.gather(1, path).flatten(), on_path.long().flatten())
        run.commit(toks, path, m, nxt, hidden, live)
        sync()
        t4 = time.perf_counter()
        clock["draft_s"] += t2 - t1
        clock["verify_s"] += t3 - t2
        clock["loop_s"] += (t1 - t0) + (t4 - t3)
    bar.close()
    st.path_rank_counts = ranks_t.tolist()
    return run.finish(N)
