"""Drafters for speculative decoding of LlamaGen (p = target, q = draft).

Both drive LlamaGen's one forward (``Transformer.forward`` / ``TransformerBlock`` with per-row positions, or
shared ones at batch 1: ``one_row_steps``), keep their own static cache (a ``llamagen.KVCache`` written at
per-row slots) in an explicit ``DraftState`` and never need an explicit rollback: every round they first
(re)write the positions the target just committed, so slots left over from rejected drafts are overwritten before
any query can see them.

- ``ModelDrafter``: a smaller LlamaGen (e.g. the zoo's ``fmnist-llamagen-draft``). Per round it feeds the
  last two committed tokens (re-writing the older one covers the case where the last draft, never fed to the
  drafter, was accepted), then one token per further draft.
- ``EagleDrafter``: EAGLE-1 (Li et al. 2024, arXiv 2401.15077) as LANTERN uses it (research §3.4): input at
  position s is ``fc([embed(x_s), h_s])`` where h_s is the target's final-normed hidden state that predicted
  x_s, then one LlamaGen decoder block; its output regresses h_{s+1} and is read out by the target's own
  (shared, frozen) head; ``embed`` is the target's token embedding. Runs on the CFG batch [cond; null].

Protocol (what ``decoder.py`` calls): ``begin(labels, max_len) -> state``;
``propose(state, gamma, sc, greedy, generator, *, c_max=None) -> (drafts (B, γ), q (B, γ, V))`` (``c_max``: the
maximum committed length when the caller already has it on the host, so ``propose`` reads nothing from the device;
``propose_tree(state, tree, sc, greedy, generator, *, c_max=None)`` likewise);
``observe(state, seq, start, hidden, n_new)`` after each target forward: the target read tokens at
positions ``start + i`` and produced ``hidden[:, i]`` (R, T, dim); the row's first ``n_new`` of them are
now committed and ``seq`` (B, *) holds the committed tokens (``seq[:, s]`` = token index s).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from accel.models.llamagen import GPTConfig, KVCache, Transformer, TransformerBlock, attention_plan, rope_2d_table
from accel.models.llamagen_generate import SamplingConfig, guided_logits
from accel.sampling import probs_unchecked
from accel.speculative.rules import sample


def process(logits: Tensor, t: Tensor, sc: SamplingConfig) -> Tensor:
    """Target or draft distribution after CFG, temperature, top-k, top-p: ``(B, T, V)`` for logits ``(R, T, V)``
    (R = 2B under CFG) predicting token indices ``t (B, T)``; the settings were checked once by ``SamplingConfig``
    (this runs several times per speculative round)."""
    return probs_unchecked(guided_logits(logits, t.size(0), sc, t), sc.temperature, sc.top_k, sc.top_p)


def draw(q: Tensor, greedy: bool, generator: torch.Generator | None) -> Tensor:
    """One draft per row from ``q (B, V)``."""
    return q.argmax(-1) if greedy else sample(q, generator)


def cfg_rows(x: Tensor, R: int) -> Tensor:
    """Repeat per-row inputs (B, ...) for the CFG batch of R = B or 2B rows."""
    return x if x.size(0) == R else torch.cat([x, x])


def row_positions(pos: Tensor, R: int, shared: bool) -> tuple[Tensor, Tensor | None]:
    """``(input_pos, slots)`` of a cached forward over R rows at per-row positions ``pos (B, T)``. ``shared``
    (every row at the same positions, e.g. batch 1): one ``(T,)`` row, given as the slots too, so RoPE is clamped
    past its table as per row, the cache writes a plain slice and the causal mask is ``(T, kv_len)`` instead of
    ``(R, T, kv_len)``: the same values (tokens unchanged), a cheaper verify. Otherwise ``(cfg_rows(pos, R), None)``.
    For one token the shared path drops the mask, so ``kv_len`` must then be the token's position + 1 (the drafters'
    one-token steps at batch 1 pass it: ``one_row_steps``); that moves the floats a little, not the exact rule's law.
    """
    return (pos[0], pos[0]) if shared else (cfg_rows(pos, R), None)


def one_row_steps(c: Tensor) -> bool:
    """Whether a drafter's forwards take the shared-position path (``row_positions``): with one row (batch 1) the
    positions are the same for every CFG row, so RoPE is one row, cache writes are slices and a one-token step
    attends to slots ``< kv_len`` with no mask (kv_len = its position + 1: the slots past it may hold rejected
    drafts). Several rows keep per-row positions and the causal mask over slots."""
    return c.size(0) == 1


def expand_level(tree, parents: list[int], dist: Tensor, level: list[int], toks: Tensor, qs: Tensor,
                 greedy: bool, generator: torch.Generator | None) -> None:
    """Draw the children of ``parents`` (their q: ``dist (B, len(parents), V)``) into ``toks``/``qs``."""
    for j, par in enumerate(parents):
        kids = tree.children(par)
        if not kids:
            continue
        q = dist[:, j]
        if greedy:
            keys = q
        else:  # Gumbel-top-k = sequential sampling without replacement
            u = torch.rand(q.shape, generator=generator, device=q.device).clamp_min(1e-20)
            keys = q.clamp_min(1e-38).log().masked_fill(q <= 0, float("-inf")) - (-u.log()).log()
        pick = keys.topk(len(kids), dim=-1).indices
        for r, kid in enumerate(kids):
            toks[:, kid] = pick[:, r]
            qs[:, kid] = q


@dataclass
class DraftState:
    labels: Tensor  # (R,) [cond; null] or cond
    cache: KVCache
    forwards: int = 0
    extra: dict = field(default_factory=dict)


class ModelDrafter:
    """A smaller LlamaGen as drafter (same tokenizer/vocabulary as the target)."""

    def __init__(self, model: Transformer, name: str = "llamagen-draft"):
        self.model, self.name = model, name

    def begin(self, labels: Tensor, max_len: int) -> DraftState:
        return DraftState(labels, self.model.new_cache(labels.size(0), max_len))

    def observe(self, state: DraftState, seq: Tensor, start: Tensor, hidden: Tensor, n_new: Tensor) -> None:
        state.extra.update(seq=seq, start=start, n_new=n_new, width=hidden.size(1))

    def _forward(self, state, idx, cond, pos, kv_len, mask=None, slots=None, shared=False):
        """``pos``, ``slots``, ``mask`` per row ``(B, ...)``; ``shared`` (``one_row_steps``): one row of positions
        through ``row_positions`` (a one-token step then needs kv_len = its position + 1)."""
        R = state.labels.size(0)
        ipos, row_slots = row_positions(pos, R, shared)
        logits = self.model(None if idx is None else cfg_rows(idx, R), cond, input_pos=ipos, cache=state.cache,
                            kv_len=kv_len, slots=row_slots if slots is None else cfg_rows(slots, R),
                            mask=None if mask is None else cfg_rows(mask, R))
        state.forwards += 1
        return logits

    def catch_up(self, state: DraftState, kv_len: int, c_max: int | None = None) -> Tensor:
        """Write the newly committed tokens; return the logits ``(R, V)`` that predict the next token.

        The target read tokens at positions ``start + i``; the committed window is ``seq[start-1 : c]`` at
        positions ``start .. c`` (c = start + n_new), fed padded to a fixed width (entries past c are
        overwritten before any query can attend to them). ``c_max``: a host-side max of c, which bounds the
        window's last position (start <= c - 1) without a device read.
        """
        seq, start, n_new, W = (state.extra[k] for k in ("seq", "start", "n_new", "width"))
        if not state.extra.get("started", False):  # class token at 0 and x_0 at 1 (all rows: c = 1)
            state.extra["started"] = True
            pos = torch.stack([start, start + 1], 1)
            return self._forward(state, seq[:, :1], state.labels, pos, kv_len)[:, -1]
        pos = start[:, None] + torch.arange(W + 1, device=start.device)
        idx = seq.gather(1, (pos - 1).clamp(max=seq.size(1) - 1))
        last = int(pos.max()) if c_max is None else c_max - 1 + W
        logits = self._forward(state, idx, None, pos, max(kv_len, last + 1), shared=one_row_steps(start))
        last = cfg_rows(n_new, logits.size(0))
        return logits[torch.arange(logits.size(0), device=logits.device), last]

    @torch.no_grad()
    def propose(self, state: DraftState, gamma: int, sc: SamplingConfig, greedy: bool,
                generator: torch.Generator | None, *, c_max: int | None = None) -> tuple[Tensor, Tensor]:
        c = state.extra["start"] + state.extra["n_new"]  # committed tokens
        c_max = int(c.max()) if c_max is None else c_max
        kv_len = c_max + gamma + 1
        logits = self.catch_up(state, kv_len, c_max)[:, None]
        if gamma == 0:  # catch up only (the target makes a plain step)
            return c.new_zeros(c.size(0), 0), logits.new_zeros(c.size(0), 0, logits.size(-1))
        drafts, qs = [], []
        one = one_row_steps(c)
        for i in range(gamma):
            if i:  # token c + i - 1 at position c + i
                logits = self._forward(state, drafts[-1][:, None], None, (c + i)[:, None],
                                       c_max + i + 1 if one else kv_len, shared=one)
            q = process(logits[:, -1:], (c + i)[:, None], sc)[:, 0]  # predicts token index c + i
            drafts.append(draw(q, greedy, generator))
            qs.append(q)
        return torch.stack(drafts, 1), torch.stack(qs, 1)

    @torch.no_grad()
    def propose_tree(self, state: DraftState, tree, sc: SamplingConfig, greedy: bool,
                     generator: torch.Generator | None, *, c_max: int | None = None) -> tuple[Tensor, Tensor]:
        """Draft a static tree: node i at slot c + i, RoPE position c + depth(i); see ``tree.py``. ``c_max`` as
        in ``propose``."""
        c = state.extra["start"] + state.extra["n_new"]
        kv_len = (int(c.max()) if c_max is None else c_max) + tree.size + 1
        B = c.size(0)
        logits = self.catch_up(state, kv_len, c_max)  # root (R, V)
        toks = torch.zeros(B, tree.size + 1, dtype=torch.long, device=c.device)
        qs = torch.zeros(B, tree.size + 1, logits.size(-1), device=c.device)
        parents, dist = [0], process(logits[:, None], (c)[:, None], sc)  # (B, 1, V)
        for d, level in enumerate(tree.levels):
            expand_level(tree, parents, dist, level, toks, qs, greedy, generator)
            if d + 1 == len(tree.levels):
                break
            nodes = torch.as_tensor(level, device=c.device)
            slots = c[:, None] + nodes
            mask = tree.mask(c, nodes, kv_len)
            pos = (c[:, None] + d + 1).expand(B, len(level))
            logits = self._forward(state, toks[:, nodes], None, pos, kv_len, mask=mask, slots=slots)
            parents, dist = level, process(logits, (c[:, None] + d + 1).expand(B, len(level)), sc)
        return toks[:, 1:], qs[:, 1:]


class EagleHead(nn.Module):
    """EAGLE-1 drafter weights: ``fc`` over [token embedding, target hidden] and one LlamaGen block."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.fc = nn.Linear(2 * cfg.dim, cfg.dim, bias=True)
        self.layer = TransformerBlock(cfg, 0)

    def rope_table(self, device) -> Tensor:
        cfg = self.config
        return rope_2d_table(cfg.grid_size, cfg.head_dim, cfg.rope_base, cfg.cls_token_num).to(device)

    def new_cache(self, batch: int, max_len: int, *, device, dtype) -> KVCache:
        return KVCache(1, batch, self.config.kv_heads, max_len, self.config.head_dim, device=device, dtype=dtype)

    def block(self, x: Tensor, pos: Tensor, cache: KVCache, table: Tensor, *, slots: Tensor | None = None,
              mask: Tensor | None = None, kv_len: int | None = None) -> Tensor:
        """The decoder block over ``x (B, T, dim)`` (the ``fc`` output) at per-row positions ``pos (B, T)`` (or
        shared ones ``(T,)`` with ``slots``), through LlamaGen's attention path (``attention_plan``: slots, default
        causal mask, kv_len)."""
        rope, slots, mask, kv_len = attention_plan(table, pos, x.size(1), cache=cache, slots=slots, mask=mask,
                                                   kv_len=kv_len, dtype=x.dtype)
        return self.layer(x, rope, slots, cache, mask, kv_len)

    def forward_train(self, emb: Tensor, hidden: Tensor) -> Tensor:
        """Teacher forcing over a whole sequence: emb, hidden ``(B, T, dim)`` -> predicted next hidden."""
        B, T, _ = emb.shape
        x = self.fc(torch.cat([emb, hidden], -1))
        pos = torch.arange(T, device=emb.device).expand(B, T)
        cache = self.new_cache(B, T, device=emb.device, dtype=x.dtype)
        return self.block(x, pos, cache, self.rope_table(emb.device), kv_len=cache.max_len)


class EagleDrafter:
    """EAGLE-style drafter over a target; the target's embedding and head are shared, not copied."""

    def __init__(self, head: EagleHead, target: Transformer, name: str = "eagle"):
        if head.config.dim != target.config.dim or head.config.vocab_size != target.config.vocab_size:
            raise ValueError("EAGLE head and target disagree on dim/vocab")
        self.head, self.target, self.name = head, target, name
        self.table = head.rope_table(target.tok_embeddings.weight.device)

    def begin(self, labels: Tensor, max_len: int) -> DraftState:
        w = self.target.tok_embeddings.weight
        return DraftState(labels, self.head.new_cache(labels.size(0), max_len, device=w.device, dtype=w.dtype))

    def observe(self, state: DraftState, seq: Tensor, start: Tensor, hidden: Tensor, n_new: Tensor) -> None:
        state.extra.update(seq=seq, start=start, hidden=hidden, n_new=n_new)

    def _step(self, state, tok: Tensor, hid: Tensor, pos: Tensor, kv_len: int, shared: bool = False) -> Tensor:
        """Per-row positions ``pos (B, T)``; ``shared`` (``one_row_steps``): one row through ``row_positions`` (a
        one-token step then needs kv_len = its position + 1)."""
        R = state.labels.size(0)
        x = self.head.fc(torch.cat([self.target.tok_embeddings(cfg_rows(tok, R)), hid], -1))
        ipos, slots = row_positions(pos, R, shared)
        h = self.head.block(x, ipos, state.cache, self.table, slots=slots, kv_len=kv_len)
        state.forwards += 1
        return h  # (R, T, dim) predicted next hidden states

    def catch_up(self, state: DraftState, kv_len: int, pos_bound: int | None = None) -> Tensor:
        """Feed the pairs (h_s, x_s) the target just produced; return the drafter output ``(R, 1, dim)`` at
        the last committed pair (it predicts the next token). Pairs past it are overwritten later.
        ``pos_bound``: a host-side bound on the committed lengths (the pairs start before it), which saves the
        device read of their last position."""
        seq, start, hidden, n_new = (state.extra[k] for k in ("seq", "start", "hidden", "n_new"))
        pos = start[:, None] + torch.arange(hidden.size(1), device=start.device)
        tok = seq.gather(1, pos.clamp(max=seq.size(1) - 1))
        last = int(pos.max()) if pos_bound is None else pos_bound - 1 + hidden.size(1) - 1
        one = one_row_steps(start)  # one row and one pair (n_new = 1): last is its position, no mask
        h = self._step(state, tok, hidden, pos, last + 1 if one and pos.size(1) == 1 else max(kv_len, last + 1), one)
        last = cfg_rows(n_new - 1, h.size(0))
        return h[torch.arange(h.size(0), device=h.device), last][:, None]

    @torch.no_grad()
    def propose(self, state: DraftState, gamma: int, sc: SamplingConfig, greedy: bool,
                generator: torch.Generator | None, *, c_max: int | None = None) -> tuple[Tensor, Tensor]:
        c = state.extra["start"] + state.extra["n_new"]  # committed tokens; the last valid pair is at c - 1
        c_max = int(c.max()) if c_max is None else c_max
        kv_len = c_max + gamma + 1
        h = self.catch_up(state, kv_len, pos_bound=c_max)
        if gamma == 0:  # catch up only (the target makes a plain step)
            return c.new_zeros(c.size(0), 0), h.new_zeros(c.size(0), 0, self.target.config.vocab_size)
        drafts, qs = [], []
        one = one_row_steps(c)
        for i in range(gamma):
            if i:  # the pair (h, draft i - 1) at position c + i - 1
                h = self._step(state, drafts[-1][:, None], h, (c + i - 1)[:, None], c_max + i if one else kv_len, one)
            q = process(self.target.output(h).float(), (c + i)[:, None], sc)[:, 0]
            drafts.append(draw(q, greedy, generator))
            qs.append(q)
        return torch.stack(drafts, 1), torch.stack(qs, 1)

    @torch.no_grad()
    def propose_tree(self, state: DraftState, tree, sc: SamplingConfig, greedy: bool,
                     generator: torch.Generator | None, *, c_max: int | None = None) -> tuple[Tensor, Tensor]:
        """Static tree: node i's pair (h_parent, token_i) at slot c-1+i, RoPE position c-1+depth(i). ``c_max`` as
        in ``propose``."""
        c = state.extra["start"] + state.extra["n_new"]
        B, base = c.size(0), c - 1
        kv_len = (int(c.max()) if c_max is None else c_max) + tree.size + 1
        h = self.catch_up(state, kv_len, pos_bound=c_max)
        H = h.new_zeros(h.size(0), tree.size + 1, h.size(-1))
        H[:, :1] = h
        toks = torch.zeros(B, tree.size + 1, dtype=torch.long, device=c.device)
        V = self.target.config.vocab_size
        qs = torch.zeros(B, tree.size + 1, V, device=c.device)
        parents, dist = [0], process(self.target.output(h).float(), c[:, None], sc)
        for d, level in enumerate(tree.levels):
            expand_level(tree, parents, dist, level, toks, qs, greedy, generator)
            if d + 1 == len(tree.levels):
                break
            nodes = torch.as_tensor(level, device=c.device)
            par = torch.as_tensor([tree.parents[i - 1] for i in level], device=c.device)
            pos = (base[:, None] + d + 1).expand(B, len(level))
            emb = self.target.tok_embeddings(cfg_rows(toks[:, nodes], h.size(0)))
            x = self.head.fc(torch.cat([emb, H[:, par]], -1))
            Rpos = cfg_rows(pos, h.size(0))
            out = self.head.block(x, Rpos, state.cache, self.table, slots=cfg_rows(base[:, None] + nodes, h.size(0)),
                                  mask=cfg_rows(tree.mask(base, nodes, kv_len), h.size(0)))
            state.forwards += 1
            H[:, nodes] = out
            parents = level
            dist = process(self.target.output(out).float(), (c[:, None] + d + 1).expand(B, len(level)), sc)
        return toks[:, 1:], qs[:, 1:]
