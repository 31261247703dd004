"""Speculative decoding loop for LlamaGen: draft γ tokens, verify them in one target forward, accept/resample.

Leviathan et al. 2023 (arXiv 2211.17192) Alg. 1 with any acceptance rule of ``rules.py``/``lantern.py``
(p = target, q = draft). Classifier-free guidance runs in both models on the batch [cond; null] and is applied
to the logits before temperature/top-k/top-p, as LlamaGen's ``generate`` does; cfg_interval is honoured per
token. Batches > 1 keep per-row positions (rows accept different numbers of drafts): the target runs LlamaGen's
one forward (``Transformer.forward``) with ``input_pos (B, γ+1)`` and its static cache written at per-row slots.

Drafts: sampled from q, or the argmax of q for a rule with ``drafts == "deterministic"`` (LANTERN's released
default path, ``lantern_deterministic.py``: q = 1). Host reads: one per round (issue 18): the committed lengths
``c`` and the previous verification's NaN flag are copied together; the loop's exit test, the forwards' ``kv_len``
(``max(c) + g + 1``) and the drafter's cache bound are computed from that copy. Statistics stay on the device until
the end of the call; a non-finite p or q raises at the next round's read (same step number).

Positions: the class token sits at 0 and image token t at 1 + t; ``c`` (per row) counts committed tokens, so
the target cache is valid for positions < c and token c - 1 is fed next.

Composition with KV-cache compression: ``cache`` replaces the target's static cache by any object with
``llamagen.KVCache``'s ``update`` and ``block_limit`` (e.g. ``accel.cache.llamagen.raster_cache(target, policy)``,
batch 1). Each round drafts ``min(γ, block_limit(c) - 1)`` tokens, so no verify block runs past a point where
the cache compresses; every committed token then attends to the keys it would attend to in plain decoding
with that cache, so the exact rule samples the target-with-compressed-cache distribution and greedy
speculative decoding equals greedy decoding with the same policy (tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from accel.models.llamagen import Transformer
from accel.models.llamagen_generate import SamplingConfig, cfg_batch
from accel.speculative.drafters import cfg_rows, draw, process, row_positions
from accel.speculative.rules import verify_chain
from accel.validate import (check_labels, check_max_new_tokens, check_speculative_setup, finite_pq,
                             raise_non_finite_pq)


@dataclass
class SpecStats:
    """Work counters of one call (summed over rows; per-position counts are conditional on reaching i)."""

    gamma: int
    verify_steps: int = 0  # row-rounds while the row was unfinished
    accepted: int = 0  # drafts accepted (only those inside the image)
    drafted: int = 0
    nfe_target: int = 0  # target forward calls (prefill included)
    nfe_draft: int = 0
    reached: list | None = None  # reached[i]: row-rounds in which draft i was tested
    accepted_at: list | None = None  # accepted_at[i]: ... and accepted
    path_rank_counts: list | None = None  # dynamic trees: rounds whose accepted path held the r-th ranked node

    def as_dict(self) -> dict:
        per_pos = [a / r if r else None for a, r in zip(self.accepted_at, self.reached)]
        return dict(nfe_target=self.nfe_target, nfe_draft=self.nfe_draft, accepted=self.accepted,
                    drafted=self.drafted, verify_steps=self.verify_steps,
                    mean_accept_len=1 + self.accepted / max(self.verify_steps, 1),
                    acceptance_rate=self.accepted / max(self.drafted, 1), accept_at_position=per_pos, gamma=self.gamma,
                    **({} if self.path_rank_counts is None else {"path_rank_counts": self.path_rank_counts}))


def read_round(c: Tensor, bad: Tensor, p: Tensor | None, q: Tensor | None, step: int, where: str) -> list[int]:
    """The round's one host read, shared by the chain, static-tree and dynamic-tree loops: the committed lengths
    ``c (B,)`` and the previous verification's NaN flag ``bad (1,)`` (``nan_flag``) copied together. A set flag
    raises ``NonFiniteError`` for that verification's ``p`` / ``q`` (``step``: its target forward). Returns ``c``
    as host ints, from which the loop takes its exit test, its forwards' ``kv_len`` and its progress count."""
    host = torch.cat([c, bad]).tolist()
    if host[-1]:
        raise_non_finite_pq(p, q, step, where)
    return host[:-1]


class TokenBar:
    """The loops' progress bar over committed tokens (``rows · n`` in all), fed each round's host copy of ``c``
    (``read_round``); ``done``: tokens already committed when the loop starts."""

    def __init__(self, rows: int, n: int, desc: str, enabled: bool, done: int = 0):
        self.n, self.done = n, done
        self.bar = tqdm(total=rows * n, initial=done, disable=not enabled, desc=desc, leave=False)

    def update(self, hc: list[int]) -> None:
        if not self.bar.disable:
            now = sum(min(x, self.n) for x in hc)
            self.bar.update(now - self.done)
            self.done = now

    def close(self) -> None:
        self.bar.close()


def nan_flag(bad: Tensor, p: Tensor, q: Tensor | None) -> Tensor:
    """``bad`` or'ed with "``p`` (or ``q``) has a non-finite entry", on the device (read by ``read_round``)."""
    return bad | (~finite_pq(p, q)).long()


def round_counts(rounds: list, n: int, gamma: int) -> Tensor:
    """The chain loop's counters from its rounds ``(c, m, verdicts (B, g), g)``, computed once after the loop
    (a few batched ops instead of a dozen per round): ``[verify_steps, accepted, drafted, reached[0..gamma),
    accepted_at[0..gamma)]`` over unfinished rows (``c < n``); drafts past the image end are not counted as
    accepted, and the per-position profile (reached / accepted_at) counts only drafts inside the image."""
    if not rounds:
        return torch.zeros(3 + 2 * gamma, dtype=torch.long)
    c, m = (torch.stack([r[i] for r in rounds]) for i in range(2))  # (rounds, B)
    live = c < n
    g = torch.tensor([r[3] for r in rounds], device=c.device)[:, None]  # (rounds, 1)
    ok = torch.stack([torch.nn.functional.pad(r[2], (0, gamma - r[3])) for r in rounds]) & live[..., None]
    left = n - c
    totals = torch.stack([live.sum(), (torch.minimum(m, left) * live).sum(),
                          (torch.minimum(g, left.clamp_min(0)) * live).sum()])
    before = torch.cumprod(ok.long(), -1)[..., :-1].bool()  # every earlier draft of the round accepted
    reach = torch.cat([torch.ones_like(ok[..., :1]), before], -1) & live[..., None]
    at = torch.arange(gamma, device=c.device)
    reach &= (at < g[..., None]) & (c[..., None] + at < n)  # positions the round drafted, inside the image
    return torch.cat([totals, reach.sum((0, 1)), (reach & ok).sum((0, 1))])


@torch.no_grad()
def speculative_generate(target: Transformer, drafter, rule, cond: Tensor, sc: SamplingConfig = SamplingConfig(),
                         *, gamma: int = 4, max_new_tokens: int | None = None, generator: torch.Generator | None = None,
                         progress: bool = False, cache=None) -> tuple[Tensor, SpecStats]:
    """Tokens ``(B, n)`` (long) for class labels ``cond (B,)`` and the work counters.

    ``cache``: the target's KV cache (default: a static ``KVCache``); a compressing cache needs batch 1 (module
    docstring)."""
    if gamma < 1:
        raise ValueError(f"gamma must be >= 1, got {gamma}")
    n = check_max_new_tokens(max_new_tokens, target.config.block_size, "speculative_generate")
    check_labels(cond, target.config.num_classes, model="LlamaGen target")
    check_speculative_setup(target, drafter, rule)
    greedy = not sc.sample_logits
    draft_greedy = greedy or getattr(rule, "drafts", "sampled") == "deterministic"  # q = 1 drafts: argmax of q
    B, dev = cond.size(0), cond.device
    labels = cfg_batch(target, cond, sc.uses_cfg)
    R = labels.size(0)
    max_len = 1 + n + 2 * gamma + 2  # finished rows keep running (frozen) until every row is done
    limited = cache is not None
    if limited and B != 1:
        raise ValueError(f"speculative decoding with a given target cache supports batch 1 (rows would need "
                         f"their own compression points); got batch {B}")
    cache = target.new_cache(R, max_len) if cache is None else cache
    seq = torch.zeros(B, n + 2 * gamma + 2, dtype=torch.long, device=dev)
    rows = torch.arange(B, device=dev)
    st = SpecStats(gamma, reached=[0] * gamma, accepted_at=[0] * gamma)

    zero = torch.zeros(R, 1, dtype=torch.long, device=dev)  # prefill: class token at position 0
    logits, hidden = target(None, labels, input_pos=zero, cache=cache, kv_len=1, return_hidden=True)
    st.nfe_target += 1
    seq[:, 0] = draw(process(logits, torch.zeros(B, 1, dtype=torch.long, device=dev), sc)[:, 0], greedy, generator)
    c = torch.ones(B, dtype=torch.long, device=dev)
    state = drafter.begin(labels, max_len)
    drafter.observe(state, seq, torch.zeros_like(c), hidden, torch.ones_like(c))
    bar = TokenBar(B, n, f"speculative γ={gamma}", progress, done=B)
    offs = torch.arange(gamma + 1, device=dev)
    rounds = []  # (c, m, verdicts, g) of each round, kept on the device; the counters come after the loop
    bad = torch.zeros(1, dtype=torch.long, device=dev)  # NaN flag of the last verification, read with c
    p, q = None, None
    while True:
        hc = read_round(c, bad, p, None if greedy else q, st.nfe_target - 1, "speculative verification")
        bar.update(hc)
        if min(hc) >= n:
            break
        live = c < n
        c_max = max(hc)
        g = min(gamma, cache.block_limit(hc[0]) - 1) if limited else gamma  # g = 0: a plain AR step
        d, q = drafter.propose(state, g, sc, draft_greedy, generator, c_max=c_max)  # (B, g), (B, g, V)
        pos = c[:, None] + offs[: g + 1]  # tokens [x_{c-1}, d_1..d_g] at positions c..c+g
        inp = torch.cat([seq[rows, c - 1][:, None], d], 1)
        ipos, slots = row_positions(pos, R, g > 0 and min(hc) == c_max)  # rows at one position (batch 1): slices
        logits, hidden = target(cfg_rows(inp, R), input_pos=ipos, slots=slots, cache=cache, kv_len=c_max + g + 1,
                                return_hidden=True)
        st.nfe_target += 1
        p = process(logits, pos, sc)  # row c+i predicts token index c+i
        v = verify_chain(rule, p, q, d, greedy=greedy, generator=generator, check_finite=False)
        bad = nan_flag(bad, p, None if greedy else q)
        m = torch.where(live, v.n_accepted, torch.zeros_like(v.n_accepted))
        seq[rows[:, None], pos[:, :g]] = d
        seq[rows, c + m] = v.next_token
        rounds.append((c, m, v.accepted, g))
        # finished rows stay frozen: the drafter sees "1 new token ending at c - 1" again
        drafter.observe(state, seq, torch.where(live, c, c - 1), hidden, torch.where(live, m + 1, torch.ones_like(m)))
        c = torch.where(live, c + m + 1, c)
    bar.close()
    counts = round_counts(rounds, n, gamma).tolist()  # the counters, read once
    st.verify_steps, st.accepted, st.drafted = counts[:3]
    st.reached, st.accepted_at = counts[3:3 + gamma], counts[3 + gamma:]
    st.nfe_draft = state.forwards
    return seq[:, :n], st
