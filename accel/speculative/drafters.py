"""Drafters for speculative decoding of LlamaGen (p = target, q = draft).

Both keep their own static cache (a ``RowCache``) in an explicit ``DraftState`` and never need an explicit
rollback: every round they first (re)write the positions the target just committed, so slots left over from
rejected drafts are overwritten before any query can see them.

- ``ModelDrafter``: a smaller LlamaGen (e.g. the zoo's ``fmnist-llamagen-draft``). Per round it feeds the
  last two committed tokens (re-writing the older one covers the case where the last draft, never fed to the
  drafter, was accepted), then one token per further draft.
- ``EagleDrafter``: EAGLE-1 (Li et al. 2024, arXiv 2401.15077) as LANTERN uses it (research §3.4): input at
  position s is ``fc([embed(x_s), h_s])`` where h_s is the target's final-normed hidden state that predicted
  x_s, then one LlamaGen decoder block; its output regresses h_{s+1} and is read out by the target's own
  (shared, frozen) head; ``embed`` is the target's token embedding. Runs on the CFG batch [cond; null].

Protocol (what ``decoder.py`` calls): ``begin(labels, max_len) -> state``;
``propose(state, gamma, sc, greedy, generator) -> (drafts (B, γ), q (B, γ, V))``;
``observe(state, seq, start, hidden, n_new)`` after each target forward: the target read tokens at
positions ``start + i`` and produced ``hidden[:, i]`` (R, T, dim); the row's first ``n_new`` of them are
now committed and ``seq`` (B, *) holds the committed tokens (``seq[:, s]`` = token index s).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from accel.models.llamagen import GPTConfig, Transformer, TransformerBlock, rope_2d_table
from accel.models.llamagen_generate import SamplingConfig
from accel.sampling import logits_to_probs
from accel.speculative.rowwise import RowCache, block_forward, causal_mask, forward_rows


def guide(logits: Tensor, t: Tensor, sc: SamplingConfig) -> Tensor:
    """CFG per row and position: logits ``(R, T, V)`` (R = 2B under CFG), token indices ``t (B, T)``."""
    if not sc.uses_cfg:
        return logits
    B = t.size(0)
    cond, uncond = logits[:B], logits[B:]
    guided = uncond + (cond - uncond) * sc.cfg_scale
    if sc.cfg_interval < 0:
        return guided
    return torch.where((t <= sc.cfg_interval + 1)[..., None], guided, cond)


def process(logits: Tensor, t: Tensor, sc: SamplingConfig) -> Tensor:
    """Target or draft distribution after CFG, temperature, top-k, top-p: ``(B, T, V)``."""
    return logits_to_probs(guide(logits, t, sc), sc.temperature, sc.top_k, sc.top_p)


def draw(q: Tensor, greedy: bool, generator: torch.Generator | None) -> Tensor:
    """One draft per row from ``q (B, V)``."""
    return q.argmax(-1) if greedy else torch.multinomial(q, 1, generator=generator)[:, 0]


def cfg_rows(x: Tensor, R: int) -> Tensor:
    """Repeat per-row inputs (B, ...) for the CFG batch of R = B or 2B rows."""
    return x if x.size(0) == R else torch.cat([x, x])


@dataclass
class DraftState:
    labels: Tensor  # (R,) [cond; null] or cond
    cache: RowCache
    forwards: int = 0
    extra: dict = field(default_factory=dict)


class ModelDrafter:
    """A smaller LlamaGen as drafter (same tokenizer/vocabulary as the target)."""

    def __init__(self, model: Transformer, name: str = "llamagen-draft"):
        self.model, self.name = model, name

    def begin(self, labels: Tensor, max_len: int) -> DraftState:
        return DraftState(labels, RowCache.for_model(self.model, labels.size(0), max_len))

    def observe(self, state: DraftState, seq: Tensor, start: Tensor, hidden: Tensor, n_new: Tensor) -> None:
        state.extra["seq"], state.extra["c"] = seq, start + n_new  # committed count (tokens seq[:, :c])

    @torch.no_grad()
    def propose(self, state: DraftState, gamma: int, sc: SamplingConfig, greedy: bool,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        seq, c = state.extra["seq"], state.extra["c"]
        B, R = c.size(0), state.labels.size(0)
        rows = torch.arange(B, device=c.device)
        first = not state.extra.get("started", False)
        if first:  # class token at 0 and x_0 at 1 (all rows have c = 1 here)
            pos = torch.stack([c - 1, c], 1)
            idx, cond = seq[rows, c - 1][:, None], state.labels
        else:  # x_{c-2} at c-1 (maybe never fed), x_{c-1} at c
            pos = torch.stack([c - 1, c], 1)
            idx, cond = torch.stack([seq[rows, c - 2], seq[rows, c - 1]], 1), None
        state.extra["started"] = True
        kv_len = int(c.max()) + gamma + 1
        drafts, qs = [], []
        for i in range(gamma):
            Rpos = cfg_rows(pos, R)
            logits, _ = forward_rows(self.model, cfg_rows(idx, R), cond, rope_pos=Rpos, slots=Rpos,
                                     cache=state.cache, mask=causal_mask(Rpos, kv_len))
            state.forwards += 1
            q = process(logits[:, -1:], (c + i)[:, None], sc)[:, 0]  # predicts token index c + i
            d = draw(q, greedy, generator)
            drafts.append(d)
            qs.append(q)
            idx, cond, pos = d[:, None], None, (c + 1 + i)[:, None]
        return torch.stack(drafts, 1), torch.stack(qs, 1)


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

    def forward_train(self, emb: Tensor, hidden: Tensor) -> Tensor:
        """Teacher forcing over a whole sequence: emb, hidden ``(B, T, dim)`` -> predicted next hidden."""
        B, T, _ = emb.shape
        x = self.fc(torch.cat([emb, hidden], -1))
        pos = torch.arange(T, device=emb.device).expand(B, T)
        cache = RowCache(1, B, self.config.kv_heads, T, self.config.head_dim, device=emb.device, dtype=x.dtype)
        return block_forward(self.layer, x, self.rope_table(emb.device)[pos], 0, pos, cache,
                             causal_mask(pos, cache.max_len))


class EagleDrafter:
    """EAGLE-style drafter over a target; the target's embedding and head are shared, not copied."""

    def __init__(self, head: EagleHead, target: Transformer, name: str = "eagle"):
        if head.config.dim != target.config.dim or head.config.vocab_size != target.config.vocab_size:
            raise ValueError("EAGLE head and target disagree on dim/vocab")
        self.head, self.target, self.name = head, target, name
        self.table = head.rope_table(target.tok_embeddings.weight.device)

    def begin(self, labels: Tensor, max_len: int) -> DraftState:
        cfg, w = self.head.config, self.target.tok_embeddings.weight
        return DraftState(labels, RowCache(1, labels.size(0), cfg.kv_heads, max_len, cfg.head_dim,
                                           device=w.device, dtype=w.dtype))

    def observe(self, state: DraftState, seq: Tensor, start: Tensor, hidden: Tensor, n_new: Tensor) -> None:
        state.extra.update(seq=seq, start=start, hidden=hidden, n_new=n_new)

    def _step(self, state, tok: Tensor, hid: Tensor, pos: Tensor, kv_len: int) -> Tensor:
        R = state.labels.size(0)
        Rpos = cfg_rows(pos, R)
        x = self.head.fc(torch.cat([self.target.tok_embeddings(cfg_rows(tok, R)), hid], -1))
        h = block_forward(self.head.layer, x, self.table[Rpos.clamp(max=self.table.size(0) - 1)], 0, Rpos,
                          state.cache, causal_mask(Rpos, kv_len))
        state.forwards += 1
        return h  # (R, T, dim) predicted next hidden states

    @torch.no_grad()
    def propose(self, state: DraftState, gamma: int, sc: SamplingConfig, greedy: bool,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        seq, start, hidden, n_new = (state.extra[k] for k in ("seq", "start", "hidden", "n_new"))
        B, T = start.size(0), hidden.size(1)
        pos = start[:, None] + torch.arange(T, device=start.device)  # pairs (h_s, x_s) at positions s
        tok = seq.gather(1, pos.clamp(max=seq.size(1) - 1))
        c = start + n_new  # committed tokens; the last valid pair is at c - 1
        kv_len = int(c.max()) + gamma + 1
        h = self._step(state, tok, hidden, pos, max(kv_len, int(pos.max()) + 1))
        last = cfg_rows(n_new - 1, h.size(0))
        h = h[torch.arange(h.size(0), device=h.device), last][:, None]  # (R, 1, dim)
        drafts, qs = [], []
        for i in range(gamma):
            q = process(self.target.output(h).float(), (c + i)[:, None], sc)[:, 0]
            d = draw(q, greedy, generator)
            drafts.append(d)
            qs.append(q)
            if i + 1 < gamma:
                h = self._step(state, d[:, None], h, (c + i)[:, None], kv_len)
        return torch.stack(drafts, 1), torch.stack(qs, 1)
