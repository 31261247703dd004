"""Continuous speculative decoding (CSpD) for MAR: Wang et al., arXiv 2411.11925.

Every MAR iteration here is ``accel.models.mar.sample_tokens`` (prefill, drafts, control) or its body
``predict`` (verification), driven by a ``WindowPlan``: positions = the next window of the shared order,
head timesteps per AR position, aligned noise, CFG per position.

A draft MAR (q) proposes ``gamma`` tokens one per step (MAR's one-token-per-step regime, num_iter = L) in
the random order it shares with the target MAR (p); the target verifies the window in ONE pass (its MAE
encoder/decoder on the context at the window start, then its diffusion head on all drafted positions).

- Denoising-trajectory alignment (paper): draft and target heads use the same x_T and per-step noise for a
  position (``align=False``: independent noise, the paper's ablation).
- Token pre-filling (paper): the target alone generates the first ``floor(prefill * L) + 1`` tokens (official
  ``step <= ratio * num_iter``: 13 of 256 at 5%).
- Acceptance / residual: ``cspd_math`` (log space). Token of a head = its last Gaussian step
  N(final_mean, final_std^2) with the model's own last-step noise; under that convention the rule with
  ``std_product="none"`` is exact (see cspd_math). MAR itself adds no noise at the last step; std there is
  ~1e-2 of the token scale (documented deviation, the official residual proposals add it too).
- ``verify="left_to_right"`` (paper algorithm): keep drafts up to the first rejection, resample that one,
  discard the rest. With the released conditioning a batch shares one cursor, so a window commits min over
  rows of (accepted prefix) + 1 tokens; each row's committed tokens stay exact (the cut is a stopping time of
  its own left-to-right test, independent of its later drafts). The textbook loop keeps one cursor per row:
  row b commits its own accepted prefix + 1, so rows sit at different AR positions (the draft's and the
  verifier's MAR passes pad their different known counts; per-row head schedules and CFG scales under DiSA /
  the linear CFG schedule), rows that are done leave the batch, and a window's length is
  min(gamma, tokens left in the most advanced row), fixed before drafting. ``verify="independent"``
  (official code): every drafted token is accepted or resampled on its own, the cursor always moves by gamma.
- Host reads: one per window (finiteness of the ratios, each row's accepted prefix, the verdicts); the per-
  position counters stay on the device and are read once after the loop.

What is preserved depends on ``conditioning``:

- ``"released"`` (paper and official code): the verifier conditions every drafted token on the window-start
  context (ONE target pass), i.e. the target MAR predicting those positions in one iteration, not the
  one-token-per-step target chain. Consequence (tested): exact per-token verification samples the same law as
  the draft-free control ``q=None``, which is cheaper; only left-to-right verification (shorter groups) or a
  relaxed rule (official inner temperature 42, drafts kept) make the draft change the output.
- ``"textbook"`` (speculative sampling, Leviathan et al. 2211.17192 Alg. 1 / Chen et al. 2302.01318, with the
  paper's continuous ratio, Eq. 3-5 of 2411.11925): draft j is judged by p(x_j | context, x_1..x_{j-1}); the g
  prefixes run as ONE target call of B*g rows with different known-token counts (MAR's encoder pads them,
  ``textbook_prefixes``). With ``verify="left_to_right"`` and the exact rule the output has the law of the target
  alone, one token per AR step (tested: KS against the gamma = 1 control, and the target as its own draft is
  accepted at every window position). Cost: the verifying MAR pass runs g rows per sample instead of one.

Composition with DiSA (arXiv 2505.20297, issue 9): ``CSpDConfig.schedule`` is a ``StepSchedule`` of
``accel.annealing`` read at one token per AR step (num_ar_steps = L): the token at AR position n (its index in
the shared order) is drawn by BOTH heads with ``schedule.timesteps(n, L)``, and its aligned x_T / per-step
noise has that step count S_n (a window draws (B, g, max S_n, C) step noise; position n uses its first S_n
loop steps, so a constant schedule draws exactly what ``head_steps`` draws). The exactness argument of
cspd_math then holds per token with p = the target head run with S_n steps. ``schedule=None``: ``head_steps``
everywhere. Positions of a verify window that share a step count share one head call.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from accel.types import StepSchedule
from accel.models.mar import HeadCall, Iteration, cfg_at, head_schedule, mask_len_at, predict, sample_tokens
from accel.models.mar_head import DDPMSchedule, DiffLoss, HeadNoise, HeadStats
from accel.speculative import cspd_math as M
from accel.validate import check_finite

VERIFY = ("left_to_right", "independent")
CONDITIONING = ("released", "textbook")


@dataclass(frozen=True)
class CSpDConfig:
    gamma: int = 32  # draft length; paper: 32 is fastest (Table 1)
    prefill: float = 0.05  # fraction generated by the target alone (paper Table 4: 5% recommended)
    align: bool = True  # shared x_T / per-step noise between draft and target heads
    verify: str = "left_to_right"  # or "independent" (official code)
    std_product: str = "none"  # "none" (exact) | "paper" | "official" (see cspd_math)
    inner_temperature: float = 1.0  # official default 42: NOT distribution-preserving
    head_steps: int | str = "100"  # DDPM steps of both heads (MAR evaluation default 100)
    temperature: float = 1.0  # scales the heads' added noise (MAR's temperature)
    cfg: float = 1.0
    cfg_schedule: str = "linear"
    max_residual_tries: int = 100  # official cap; rows still open fall back to a target sample (counted)
    schedule: StepSchedule | None = None  # DiSA step schedule per AR position (replaces head_steps); None: constant
    # what the target sees when judging draft j: "released" = the window-start context (one pass, paper and
    # released code); "textbook" = the window-start context AND drafts 1..j-1 (speculative sampling's p(x_j | x_<j))
    conditioning: str = "released"

    def __post_init__(self):
        if self.conditioning not in CONDITIONING:
            raise ValueError(f"conditioning must be one of {CONDITIONING}, got {self.conditioning!r}")
        if self.conditioning == "textbook" and self.verify != "left_to_right":
            raise ValueError(f"conditioning='textbook' needs verify='left_to_right' (draft j is judged given drafts "
                             f"1..j-1, valid only while they are all kept), got verify={self.verify!r}")
        if self.schedule is not None and not isinstance(self.schedule, StepSchedule):
            raise TypeError(f"schedule must be a StepSchedule (schedule(k, N), timesteps(k, N)), got "
                            f"{type(self.schedule).__name__}")
        if self.gamma < 1:
            raise ValueError(f"gamma must be >= 1, got {self.gamma}")
        if not 0.0 <= self.prefill <= 1.0:
            raise ValueError(f"prefill must lie in [0, 1], got {self.prefill}")
        if self.verify not in VERIFY:
            raise KeyError(f"verify {self.verify!r}; valid: {VERIFY}")
        if self.std_product not in M.STD_PRODUCTS:
            raise KeyError(f"std_product {self.std_product!r}; valid: {M.STD_PRODUCTS}")

    @classmethod
    def official(cls, **kw) -> "CSpDConfig":
        """The released code's choices (gamma 4 in its demo): per-token verification, reciprocal std product,
        inner temperature 42. Not distribution-preserving; for comparison only."""
        return cls(**{"gamma": 4, "verify": "independent", "std_product": "official", "inner_temperature": 42.0, **kw})


def head_stats(head: DiffLoss, z, schedule: DDPMSchedule, noise: HeadNoise, temperature=1.0, cfg=1.0,
               all_rows: bool = False) -> HeadStats:
    """One head run with supplied noise (loop order); the uncond half (CFG: a scale, or one per conditional
    row) is dropped unless ``all_rows``."""
    traj = head.sample_trajectory(z, schedule=schedule, temperature=temperature, cfg=cfg, noise=noise)
    guided = isinstance(cfg, torch.Tensor) and cfg.numel() > 1 or float(cfg) != 1.0
    return HeadStats.of(traj, None if all_rows or not guided else z.shape[0] // 2)  # rows [cond; uncond]


def aligned_head_stats(head: DiffLoss, z, schedule: DDPMSchedule, x_T, inter_noise, temperature=1.0, cfg=1.0):
    """Official layout: SHARED x_T (N, C) and inter_noise (S, N, C) indexed by respaced index i; all rows
    (under CFG the official manager keeps [cond; uncond])."""
    return head_stats(head, z, schedule, HeadNoise(x_T, inter_noise.flip(0)), temperature, cfg, all_rows=True)


def step_schedules(cfg: CSpDConfig, L: int, max_timestep: int | None = None) -> list[DDPMSchedule]:
    """The DDPM schedule at each AR position n = 0..L-1 (one token per step): ``cfg.schedule.timesteps(n, L)``,
    one object per distinct timestep list, or ``head_steps`` everywhere when ``cfg.schedule`` is None; clipped
    at the target's ``max_timestep`` (``MARConfig.max_timestep``)."""
    spec = cfg.head_steps if cfg.schedule is None else cfg.schedule
    return [head_schedule(spec, n, L, max_timestep=max_timestep) for n in range(L)]


@dataclass
class WindowPlan:
    """CSpD's plan for ``sample_tokens`` / ``predict``: iteration k predicts the next ``sizes[k]`` positions of
    the shared order, from AR position ``start`` on (index positions (B, g): rows in (sample, index) order).
    ``start`` is one AR position for every row, or one per row (the textbook loop's per-row cursors).

    Per AR position n: head schedule ``schedules[n]`` and CFG scale ``cfg_scales[n]`` (the one-token-per-step
    value; None = unguided). ``noise``: the aligned draws (x_T (B, G, C), steps (B, G, S_max, C)) of the plan's
    G = sum(sizes) positions, or None: drawn at each iteration (x_T, then steps for the window's longest
    head). ``final_noise``: the token is the last Gaussian step with the model's own noise (drawn after the
    head); off for verification, which only reads the statistics."""

    start: int | Sequence[int]
    sizes: Sequence[int]
    schedules: Sequence[DDPMSchedule]
    cfg_scales: Sequence[float] | None
    temperature: float = 1.0
    noise: tuple[torch.Tensor, torch.Tensor] | None = None
    final_noise: bool = True

    @property
    def num_iter(self) -> int:
        return len(self.sizes)

    @property
    def guided(self) -> bool:
        return self.cfg_scales is not None

    @property
    def per_row(self) -> bool:
        return not isinstance(self.start, int)

    def _window(self, step: int) -> tuple[int, int]:
        """(offset of iteration ``step`` inside the window, its number of positions)."""
        return sum(self.sizes[:step]), self.sizes[step]

    def _ar(self, step: int, B: int) -> list[list[int]]:
        """AR positions (B, g) predicted by iteration ``step``, as host lists."""
        off, g = self._window(step)
        starts = list(self.start) if self.per_row else [self.start] * B
        return [[s + off + j for j in range(g)] for s in starts]

    def iteration(self, step: int, orders: torch.Tensor) -> Iteration:
        off, g = self._window(step)
        if self.per_row:
            idx = torch.tensor(self.start, device=orders.device)[:, None] + off + torch.arange(g, device=orders.device)
            pos = orders.gather(1, idx)  # (B, g): row b's AR positions start_b + off + j
        else:
            pos = orders[:, self.start + off:self.start + off + g]
        cfg = 1.0
        if self.guided:  # each position its own scale: (B*g,) in (sample, index) order
            cfg = torch.tensor([self.cfg_scales[k] for ks in self._ar(step, len(orders)) for k in ks],
                               device=orders.device)
        return Iteration(pos, cfg, self.temperature, final_noise=self.final_noise, count=g)

    def head(self, step: int, z_rows: torch.Tensor, *, model, generator, stats: dict) -> HeadCall:
        """Schedules: one per column (shared start) or one per (row, index) in (b, j) order (per-row starts:
        with one position per row, as the draft loop runs, that is one per row of (B, 1) positions)."""
        off, g = self._window(step)
        B = len(z_rows) // (2 if self.guided else 1) // g
        ar = self._ar(step, B)
        scheds = ([self.schedules[k] for ks in ar for k in ks] if self.per_row else
                  [self.schedules[k] for k in ar[0]])
        S, C = max(s.num_steps for s in scheds), model.cfg.token_embed_dim
        if self.noise is None:
            x_T = torch.randn((B, g, C), generator=generator, device=z_rows.device)
            steps = torch.randn((B, g, S, C), generator=generator, device=z_rows.device)
        else:
            x_T, steps = self.noise[0][:, off:off + g], self.noise[1][:, off:off + g, :S]
        noise = HeadNoise(x_T.reshape(-1, C), steps.permute(2, 0, 1, 3).reshape(S, -1, C))  # loop order, rows (b, j)
        return HeadCall(scheds, noise)


@dataclass
class CSpDResult:
    tokens: torch.Tensor  # (B, C, h, w) latents, as MAR's sample_tokens
    stats: dict = field(default_factory=dict)


class _Clock:
    """Cost split (seconds per part), synchronising CUDA before each reading."""

    def __init__(self, device):
        self.device, self.parts, self.t = torch.device(device), {}, None

    def lap(self, part: str | None):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if part is not None and self.t is not None:
            self.parts[part] = self.parts.get(part, 0.0) + now - self.t
        self.t = now


@torch.no_grad()
def cspd_sample_tokens(p, q, labels, cfg: CSpDConfig, *, generator: torch.Generator, batch: int | None = None,
                       progress: bool = False) -> CSpDResult:
    """Generate MAR token latents with CSpD; p = target MAR, q = draft MAR (same tokenizer / seq_len).

    Every MAR iteration (prefill, drafts, the draft-free control) is ``accel.models.mar.sample_tokens`` with a
    ``WindowPlan``; verification is one ``predict`` (the same loop body, nothing written).
    ``q=None`` is the control "target-parallel": each window is sampled by the target alone from its one pass.
    With the exact rule, ``verify="independent"`` outputs exactly this distribution (each drafted token is
    replaced in law by p(x_j | window-start context), independently across j), at the extra cost of drafting.
    """
    L, C = p.cfg.seq_len, p.cfg.token_embed_dim
    if q is not None and (q.cfg.seq_len, q.cfg.token_embed_dim) != (L, C):
        raise ValueError(f"draft tokens ({q.cfg.seq_len}x{q.cfg.token_embed_dim}) differ from target's ({L}x{C})")
    dev = next(p.parameters()).device
    B = labels.shape[0] if labels is not None else batch
    if B is None:
        raise ValueError("give labels or batch")
    labels = None if labels is None else labels.to(dev)
    # DDPM schedule of the token at each AR position (shared by p and q), clipped at the target's max_timestep
    scheds = step_schedules(cfg, L, p.cfg.max_timestep)
    use_cfg = float(cfg.cfg) != 1.0
    # the one-token-per-step CFG value at AR step n (MAR's linear/constant schedule)
    scales = None if not use_cfg else [float(cfg_at(cfg.cfg, cfg.cfg_schedule, L, mask_len_at(n, L, L, L - n)))
                                       for n in range(L)]
    orders = p.sample_orders(B, generator, dev)  # shared random order (B, L)
    state = (torch.zeros(B, L, C, device=dev), torch.ones(B, L, device=dev))
    st = dict(nfe_target=0, nfe_draft=0, head_steps=0, head_rows=0, verify_steps=0, windows=0, residuals=0)
    # on the device, read once after the loop: per window position j (0-based), drafts judged, accepted, reached
    # (all earlier drafts of the window accepted), accepted-and-reached, the summed gap ||mean_q - mean_p|| /
    # rms(std_p) (the exact rule's scale) and drafts committed; then residual fallbacks and proposals
    by_pos = torch.zeros(len(BY_POS) + 1, cfg.gamma, dtype=torch.float64, device=dev)
    res_counts = torch.zeros(2, dtype=torch.long, device=dev)
    clock = _Clock(dev)

    def window(start, sizes, noise=None, final_noise=True) -> WindowPlan:
        return WindowPlan(start, sizes, scheds, scales, cfg.temperature, noise, final_noise)

    def run(model, plan, nfe: str, rows, record=False):  # MAR's loop from the rows' state; counts its work
        r = sample_tokens(model, sub(labels, rows), plan=plan, generator=generator, orders=sub(orders, rows),
                          state=(sub(state[0], rows), sub(state[1], rows)), record=record)
        st[nfe] += r.stats["nfe_target"]
        st["head_steps"] += r.stats["head_steps"]
        st["head_rows"] += r.stats["head_rows"]
        return r

    n_prefill = min(L, math.floor(cfg.prefill * L) + 1) if cfg.prefill > 0 else 0
    # AR position of each row's next token (host). Shared by all rows except in the textbook loop, where each
    # row commits its own accepted prefix + 1 (per-row cursors; rows with nothing left leave the batch)
    cursor = [n_prefill] * B
    windows_by_row = [0] * B
    bar = tqdm(total=L, disable=not progress, desc="CSpD")
    clock.lap(None)
    if n_prefill:  # token pre-filling by the target alone, one token per iteration
        r = run(p, window(0, [1] * n_prefill), "nfe_target", None)
        state = (r.seq, r.mask)
        bar.update(n_prefill)
    clock.lap("prefill")
    while min(cursor) < L:
        act = [b for b in range(B) if cursor[b] < L]
        rows = None if len(act) == B else torch.tensor(act, device=dev)
        Bw, starts = len(act), [cursor[b] for b in act]
        start = starts[0] if len(set(starts)) == 1 else starts  # one int: the shared-cursor computation
        g = min(cfg.gamma, L - max(starts))  # a window length fixed before drafting keeps every row exact
        plan = window(start, [g])
        pos = plan.iteration(0, sub(orders, rows)).positions  # (Bw, g)
        S = max(scheds[k].num_steps for ks in plan._ar(0, Bw) for k in ks)  # step noise for the longest head
        xT_q, steps_q = randn(generator, dev, Bw, g, C), randn(generator, dev, Bw, g, S, C)
        xT_p, steps_p = (xT_q, steps_q) if cfg.align else (randn(generator, dev, Bw, g, C),
                                                           randn(generator, dev, Bw, g, S, C))
        if q is None:  # control: the target alone samples the window from one pass (no draft)
            r = run(p, window(start, [g], (xT_p, steps_p)), "nfe_target", None)
            state = (r.seq, r.mask)
            st["windows"] += 1
            cursor = [c + g for c in cursor]
            bar.update(g)
            continue
        r = run(q, window(start, [1] * g, (xT_q, steps_q)), "nfe_draft", rows, record=True)  # draft g tokens
        x_q = r.seq[torch.arange(Bw, device=dev)[:, None], pos]  # (Bw, g, C)
        mq, sq, lq = (torch.stack([getattr(t["head"], f) for t in r.trace], 1) for f in HeadStats.FIELDS[:3])
        clock.lap("draft")
        vplan = window(start, [g], (xT_p, steps_p), final_noise=False)
        v_it = vplan.iteration(0, sub(orders, rows))
        v_state, v_labels = (sub(state[0], rows), sub(state[1], rows)), sub(labels, rows)
        textbook = cfg.conditioning == "textbook"
        if textbook:
            v_state, v_labels, v_it = textbook_prefixes(v_state, v_labels, pos, x_q, v_it)

        def head(z, vplan=vplan, textbook=textbook, Bw=Bw):  # the head's call, once the target's MAR pass is done
            clock.lap("verify_mar")
            call = vplan.head(0, z, model=p, generator=generator, stats=st)
            # textbook rows are (b, j) with one position each: one schedule per row
            return HeadCall(list(call.schedule) * Bw, call.noise) if textbook and not vplan.per_row else call

        pred = predict(p, *v_state, v_labels, v_it, head, guided=use_cfg, generator=generator,
                       trajectory=True)  # ONE target call (released: window-start context; textbook: g prefixes)
        hp = HeadStats(*(getattr(pred.head, f).reshape(Bw, g, C) for f in HeadStats.FIELDS))
        st["nfe_target"] += 1
        st["head_steps"] += pred.head_steps
        st["head_rows"] += pred.head_rows
        clock.lap("verify_head")
        log_sigma = M.log_std_product(hp.log_std_sum, lq, cfg.std_product)  # (Bw, g)
        log_r = M.log_acceptance_ratio(x_q, hp.final_mean, hp.final_std, mq, sq, log_sigma, cfg.inner_temperature)
        acc, _ = M.accept(log_r, generator)
        k = M.first_rejection(acc)  # (Bw,) leading accepted drafts
        # the window's ONE host read: finiteness, each row's accepted prefix and (independent) the verdicts
        host = torch.cat([torch.isfinite(log_r).all().double()[None], k.double(), acc.flatten().double()]).tolist()
        if not host[0]:
            check_finite(log_r, what="log acceptance ratios (target and draft head densities)", model="CSpD",
                         step=f"window at token {min(starts)}")
        k_host, acc_host = [int(x) for x in host[1:1 + Bw]], host[1 + Bw:]
        j = torch.arange(g, device=dev)[None]  # (1, g)
        if cfg.verify == "independent":  # every draft accepted or resampled on its own
            commit = [g] * Bw
            keep_draft = acc
            n_need = g * Bw - int(sum(acc_host))
        else:  # left to right: the accepted prefix and one resampled token (its own per row in the textbook loop)
            commit = [min(kk + 1, g) for kk in k_host] if textbook else [min(min(k_host) + 1, g)] * Bw
            keep_draft = j < k[:, None]
            n_need = sum(1 for kk, c in zip(k_host, commit) if kk < c)
        commit_mask = j < torch.tensor(commit, device=dev)[:, None]  # (Bw, g)
        keep_draft = keep_draft & commit_mask
        out = x_q.clone()
        if n_need:  # rejected drafts -> residual samples
            need = commit_mask & ~keep_draft
            res, tries, fb = M.sample_residual(hp.final_mean[need], hp.final_std[need], mq[need], sq[need],
                                               log_sigma[need], generator, cfg.max_residual_tries)
            out[need] = res
            res_counts += torch.stack([fb.sum(), tries.sum()])
            st["residuals"] += n_need
        clock.lap("residual")
        seq, mask = state[0].clone(), state[1].clone()
        r_idx = (torch.arange(B, device=dev) if rows is None else rows)[:, None].expand(Bw, g)[commit_mask]
        seq[r_idx, pos[commit_mask]] = out[commit_mask].to(seq.dtype)
        mask[r_idx, pos[commit_mask]] = 0.0
        state = (seq, mask)
        reached = torch.cat([acc.new_ones(Bw, 1), acc[:, :-1]], 1).cumprod(1).bool()  # (Bw, g)
        gap = (mq - hp.final_mean).norm(dim=-1) / hp.final_std.square().mean(-1).sqrt()  # (Bw, g)
        by_pos[:, :g] += torch.stack([torch.ones_like(gap), acc.double(), reached.double(), (acc & reached).double(),
                                      gap.double(), keep_draft.double()]).sum(1)
        st["verify_steps"] += Bw
        st["windows"] += 1
        before = min(cursor)
        for b, c in zip(act, commit):
            cursor[b] += c
            windows_by_row[b] += 1
        bar.update(min(cursor) - before)
    bar.close()
    counts, res_host = by_pos.tolist(), res_counts.tolist()  # the loop's one read of its counters
    for key, row in zip(BY_POS, counts):
        st[key] = row if key == "gap_sigma_by_pos" else [int(round(v)) for v in row]
    st["accepted"], st["drafted"] = sum(st["accepted_by_pos"]), sum(st["drafted_by_pos"])
    st["committed_drafts"] = int(round(sum(counts[-1])))
    st["fallbacks"], st["residual_tries"] = int(res_host[0]), int(res_host[1])
    st["windows_by_row"] = windows_by_row
    st["time_split_s"] = clock.parts
    st["steps_per_iter"] = [s.num_steps for s in scheds]
    return CSpDResult(p.unpatchify(state[0]), st)


BY_POS = ("drafted_by_pos", "accepted_by_pos", "reached_by_pos", "accepted_reached_by_pos", "gap_sigma_by_pos")


def sub(t: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor | None:
    """The rows still decoding (None: all of them)."""
    return t if t is None or rows is None else t[rows]


def textbook_prefixes(state, labels, pos: torch.Tensor, x_q: torch.Tensor, it: Iteration):
    """The g verification contexts of textbook speculative sampling, as ONE batch of B*g rows (b, j):
    row (b, j) knows row b's window-start context plus drafts x_q[b, :j] at pos[b, :j] and predicts pos[b, j],
    i.e. the target evaluates p(x_j | context, x_<j) (Leviathan et al. 2211.17192 Alg. 1; CSpD's Eq. 3-5 ratio
    is then taken on these conditionals). Rows know different numbers of tokens (n .. n+g-1): MAR's encoder
    pads them. Returns ((seq, mask), labels, the Iteration on (B*g, 1) index positions); the head
    rows come out in (b, j) order, the order of the released layout, so the window's noise and CFG carry over."""
    seq, mask = state
    B, g = pos.shape
    L = seq.shape[1]
    ar = torch.arange(B, device=seq.device)
    seq = seq.clone()
    seq[ar[:, None], pos] = x_q.to(seq.dtype)  # drafts written in every copy: a masked position is never read
    mask = mask[:, None].expand(B, g, L).clone()  # (B, g, L)
    earlier = torch.ones(g, g, dtype=torch.bool, device=seq.device).tril(-1)  # earlier[j, i] = i < j
    known = torch.zeros(B, g, L, dtype=torch.bool, device=seq.device)
    known.scatter_(2, pos[:, None].expand(B, g, g), earlier[None].expand(B, g, g))
    mask[known] = 0.0
    rows = (seq.repeat_interleave(g, 0), mask.reshape(B * g, L))
    lab = None if labels is None else labels.repeat_interleave(g)
    return rows, lab, Iteration(pos.reshape(B * g, 1), it.cfg, it.temperature, final_noise=False, count=1)


def randn(generator: torch.Generator, device, *shape) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device)
