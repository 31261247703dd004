"""MAR's one sampling loop and its per-iteration plan (research note §1.2; Li et al., arXiv 2406.11838).

Every MAR sampler in accel is this loop (``accel.models.mar`` re-exports it):

- ``sample_tokens(model, labels, plan=..., generator=...)``: the loop. It owns the state (known tokens
  ``seq`` (B, L, C) and ``mask`` (B, L), 1 = unknown), runs one ``predict`` per iteration and writes the
  predicted tokens.
- ``Plan``: per iteration, which positions are predicted with which CFG scale (``iteration``) and, once
  their conditions are known, which head timesteps and noise (``head``). ``MaskedPlan`` is MAR's own
  (the official loop; replayed orders / noises for parity); DiSA's fixed schedules are
  ``MaskedPlan(head_steps=schedule)``; DiSA's adaptive schedule (``accel.annealing.disa.AdaptivePlan``) and
  CSpD's windows (``accel.speculative.cspd.WindowPlan``) are plans of their own packages.
- ``predict(...)``: one iteration, nothing written: the MAR pass (``MAR.head_condition``) and the head
  (``DiffLoss.sample`` / ``sample_trajectory``), with per-column head schedules grouped into one head run
  per distinct schedule. CSpD verifies a window with it.

Positions are a bool (B, L) mask (head rows in (sample, position) order, MAR's own) or indices (B, n)
(rows in (sample, index) order, e.g. a window of the generation order); every row predicts the same
number of positions per iteration (rows may know different numbers of tokens: MAR's encoder pads them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Protocol, Sequence, runtime_checkable

import torch
from tqdm.auto import tqdm

from accel.models.mar_head import DDPMSchedule, HeadNoise, HeadStats, clip_schedule, clip_timesteps
from accel.validate import FiniteWatch, check_labels, check_mar_sampling

if TYPE_CHECKING:  # annotations only: mar.py imports this module
    from accel.models.mar import MAR


@dataclass
class TokenSample:
    """Result of ``sample_tokens``: latents (B, C, seq_h*p, seq_w*p) (scaled by LATENT_SCALE, as official),
    work counters, (``record=True``) per-iteration ``trace`` dicts (z / sampled / x_T / step_noise / head
    statistics), and the final state in sequence layout: ``seq`` (B, L, C) and ``mask`` (B, L), 1 = unknown
    (a caller continues the loop from them, e.g. CSpD between its prefill, drafts and verification)."""

    tokens: torch.Tensor
    stats: dict = field(default_factory=dict)
    trace: list[dict] = field(default_factory=list)
    seq: torch.Tensor | None = None
    mask: torch.Tensor | None = None


HeadSteps = int | str | Sequence[int] | Callable[[int, int], "int | str | Sequence[int]"] | None


def mask_len_at(step: int, num_iter: int, seq_len: int, remaining: int) -> int:
    """Tokens still masked after iteration ``step``: floor(L cos(pi/2 (step+1)/num_iter)), clamped to
    [1, remaining-1] (MAR's cosine schedule; at the last step everything left is predicted anyway)."""
    mask_ratio = math.cos(math.pi / 2.0 * (step + 1) / num_iter)
    return max(1, min(remaining - 1, math.floor(seq_len * mask_ratio)))


@lru_cache(maxsize=None)
def mask_lengths(num_iter: int, seq_len: int) -> tuple[int, ...]:
    """``mask_len_at`` of every iteration of a run from nothing known (the same for every row)."""
    out, remaining = [], seq_len
    for step in range(num_iter):
        remaining = mask_len_at(step, num_iter, seq_len, remaining)
        out.append(remaining)
    return tuple(out)


def cfg_at(cfg: float, schedule: str, seq_len: int, mask_len: int) -> float | torch.Tensor:
    """Muse-style CFG schedule: linear 1 + (cfg-1)(L - mask_len)/L (float32, as official) or constant."""
    if schedule == "linear":
        return 1 + (cfg - 1) * torch.tensor([seq_len - mask_len], dtype=torch.float32) / seq_len
    if schedule == "constant":
        return cfg
    raise ValueError(f"unknown cfg_schedule {schedule!r}; valid: ['constant', 'linear']")


@lru_cache(maxsize=256)
def _ddpm(key, max_timestep: int | None) -> DDPMSchedule:
    if isinstance(key, tuple):  # explicit timesteps: clipped first, so equal clipped lists share one object
        return DDPMSchedule.from_timesteps(clip_timesteps(key, max_timestep))
    return clip_schedule(DDPMSchedule.respaced(key), max_timestep)


def head_schedule(head_steps: HeadSteps, step: int, num_iter: int, default: int | str = "100",
                  max_timestep: int | None = None) -> DDPMSchedule:
    """The head's DDPM schedule at AR iteration ``step`` of ``num_iter``: ``head_steps`` is None (= ``default``,
    the config's ``num_sampling_steps``), an int / respacing string, an explicit timestep list, a
    ``StepSchedule`` (DiSA: ``timesteps(step, num_iter)``) or a callable ``(step, num_iter) -> any of those``;
    clipped at ``max_timestep`` (``MARConfig.max_timestep``). Equal specs give the same (immutable) object."""
    spec = head_steps
    if hasattr(spec, "timesteps") and callable(spec.timesteps):
        spec = spec.timesteps(step, num_iter)
    elif callable(spec):
        spec = spec(step, num_iter)
    spec = default if spec is None else spec
    key = tuple(int(t) for t in spec) if isinstance(spec, (list, tuple, torch.Tensor)) else spec
    return _ddpm(key, max_timestep)


@dataclass
class Iteration:
    """What one MAR iteration predicts.

    ``positions``: a bool (B, L) mask (head rows in (sample, position) order, MAR's own) or indices (B, n)
    (rows in (sample, index) order); ``cfg``: a float or one scale per conditional row (B*n,); ``final_noise``:
    the token is the last Gaussian step drawn with noise, N(final_mean, final_std^2) (CSpD's convention),
    instead of the head's output (its mean: MAR adds no noise at the last step); ``count``: tokens per row
    (known to the plan; None = counted from ``positions``)."""

    positions: torch.Tensor
    cfg: float | torch.Tensor = 1.0
    temperature: float = 1.0
    final_noise: bool = False
    count: int | None = None


@dataclass
class HeadCall:
    """The head's timesteps and noise for one iteration.

    ``schedule``: one DDPMSchedule for every row, or one per column of index positions (B, n), or one per row of
    index positions (B, 1) (rows / columns with the same object share one head run; DiSA inside CSpD);
    ``noise``: supplied draws for the conditional rows
    (``HeadNoise`` x_T (B*n, C), steps (S_max, B*n, C) in loop order; a column runs the first S of them) or
    None: drawn from the generator in the official order."""

    schedule: DDPMSchedule | Sequence[DDPMSchedule]
    noise: HeadNoise | None = None


@runtime_checkable
class Plan(Protocol):
    """Per-iteration decisions of ``sample_tokens``; the loop owns the state, the forward and the head.

    ``iteration(step, orders)`` (no randomness) says which positions are predicted with which CFG scale;
    ``head(step, z_rows, model=, generator=, stats=)`` picks the head's timesteps and noise once the rows'
    conditions are known (an adaptive plan may measure them, drawing from ``generator``, and record what it
    did in ``stats``); it is called after the MAR pass and before the head samples."""

    num_iter: int
    guided: bool  # rows [cond; uncond] are run (cfg != 1 somewhere)

    def iteration(self, step: int, orders: torch.Tensor) -> Iteration: ...

    def head(self, step: int, z_rows: torch.Tensor, *, model: "MAR", generator: torch.Generator | None,
             stats: dict) -> HeadCall: ...


@dataclass(frozen=True)
class MaskedPlan:
    """MAR's own plan (research note §1.2): ``num_iter`` iterations of the cosine mask schedule, each
    predicting the next block from the END of every row's order; Muse CFG schedule (``cfg_at``); head
    timesteps per iteration from ``head_steps`` (see ``head_schedule``: a DiSA ``StepSchedule`` is a plan
    here); ``noises``: one ``HeadNoise`` per iteration to replay recorded draws instead of drawing."""

    num_iter: int = 64
    cfg: float = 1.0
    cfg_schedule: str = "linear"
    temperature: float = 1.0
    head_steps: HeadSteps = None
    noises: Sequence[HeadNoise] | None = None

    def __post_init__(self):
        check_mar_sampling(cfg=self.cfg, temperature=self.temperature)
        if self.noises is not None and len(self.noises) != self.num_iter:
            raise ValueError(f"got {len(self.noises)} HeadNoise entries for {self.num_iter} iterations")
        cfg_at(self.cfg, self.cfg_schedule, 1, 1)  # validates the schedule name

    @property
    def guided(self) -> bool:
        return float(self.cfg) != 1.0

    def iteration(self, step: int, orders: torch.Tensor) -> Iteration:
        L = orders.shape[1]
        lens = mask_lengths(self.num_iter, L)  # host-side counts: no device sync
        remaining, mask_len = (L if step == 0 else lens[step - 1]), lens[step]
        lo = 0 if step == self.num_iter - 1 else mask_len  # the last iteration predicts everything left
        # per-row indices in ascending position order: the head rows come out exactly as with a (B, L) bool mask,
        # but gathering by index needs no device->host sync (a bool mask's nonzero does)
        pos = orders[:, lo:remaining].sort(-1).values  # (B, remaining - lo)
        cfg = float(cfg_at(self.cfg, self.cfg_schedule, L, mask_len))  # float32 value, exact as a Python float
        return Iteration(pos, cfg, self.temperature, count=remaining - lo)

    def head(self, step: int, z_rows: torch.Tensor, *, model: "MAR", generator, stats: dict) -> HeadCall:
        c = model.cfg
        sched = head_schedule(self.head_steps, step, self.num_iter, c.num_sampling_steps, c.max_timestep)
        return HeadCall(sched, None if self.noises is None else self.noises[step])


@dataclass
class Prediction:
    """One iteration's head output: ``tokens`` (B*n, C) for the conditional rows in head-row order, their
    ``head`` statistics (when a trajectory was run), the rows' conditions, work counts and (``record``) the
    trace dict of ``sample_tokens``."""

    tokens: torch.Tensor
    head: HeadStats | None
    z_rows: torch.Tensor
    head_steps: int
    head_rows: int
    trace: dict | None = None


def predict(model: "MAR", seq: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None, it: Iteration,
            head: HeadCall | Callable[[torch.Tensor], HeadCall], *, guided: bool,
            generator: torch.Generator | None, trajectory: bool = False, record: bool = False) -> Prediction:
    """One MAR iteration, nothing written: the MAR pass on the known tokens ``seq`` / ``mask`` (1 = unknown),
    the head on ``it.positions`` (``head``: a HeadCall, or a function of the rows' conditions returning one).
    ``trajectory`` (or ``record``, or ``it.final_noise``) runs ``DiffLoss.sample_trajectory`` and returns the
    rows' ``HeadStats``. Cost: one ``condition`` pass plus, per distinct schedule, S net calls on its rows."""
    z_rows = model.head_condition(seq, mask, labels, it.positions, cfg=guided)  # (R, dec), R = B*n (x2 guided)
    call = head(z_rows) if callable(head) else head
    n = len(z_rows) // 2 if guided else len(z_rows)
    trajectory = trajectory or record or it.final_noise
    kw = dict(temperature=it.temperature, generator=generator)
    if isinstance(call.schedule, DDPMSchedule):
        groups = [(None, call.schedule)]
    else:  # one schedule per column of (B, ncol) index positions, or per row of (B, 1): one head run per schedule
        if it.positions.dtype == torch.bool:
            raise ValueError("per-column / per-row schedules need index positions (B, n)")
        B, ncol = it.positions.shape
        per_row = ncol == 1 and len(call.schedule) == B  # e.g. CSpD's textbook verification: one row per prefix
        if not per_row and len(call.schedule) != ncol:
            raise ValueError(f"per-column schedules: got {len(call.schedule)} for positions "
                             f"{tuple(it.positions.shape)}; give one per column, or one per row of (B, 1) positions")
        cols: dict[int, list[int]] = {}
        for j, sch in enumerate(call.schedule):
            cols.setdefault(id(sch), []).append(j)
        groups = [(js, call.schedule[js[0]]) for js in cols.values()]
        if len(groups) == 1:
            groups = [(None, groups[0][1])]
    parts, steps, rows_run, trace = [], 0, 0, None
    for js, sched in groups:
        if js is None:
            idx, z_g, cfg, noise = None, z_rows, it.cfg, call.noise
        else:
            dev = z_rows.device
            idx = (torch.tensor(js, device=dev) if per_row else  # rows, or (B*|js|,) rows of the columns js
                   (torch.arange(B, device=dev)[:, None] * ncol + torch.tensor(js, device=dev)).reshape(-1))
            z_g = torch.cat([z_rows[idx], z_rows[n + idx]]) if guided else z_rows[idx]
            cfg = it.cfg[idx] if isinstance(it.cfg, torch.Tensor) and it.cfg.ndim else it.cfg
            noise = None if call.noise is None else HeadNoise(call.noise.x_T[idx], call.noise.steps[:, idx])
        if noise is not None and noise.steps.shape[0] != sched.num_steps:
            noise = HeadNoise(noise.x_T, noise.steps[: sched.num_steps])  # a shorter head: its first S draws
        rows = len(z_g) // 2 if guided else len(z_g)
        if trajectory:
            traj = model.head.sample_trajectory(z_g, schedule=sched, cfg=cfg, noise=noise, **kw)
            stats = HeadStats.of(traj, rows)
            parts.append((idx, stats))
            if record and js is None:
                trace = {"z": z_g, "sampled": traj.sample, "x_T": traj.x_T[:rows], "step_noise": traj.noise[:, :rows],
                         "cfg_iter": cfg, "timesteps": sched.timesteps, "head": stats}
        else:
            parts.append((idx, model.head.sample(z_g, schedule=sched, cfg=cfg, noise=noise, **kw)[:rows]))
        steps += sched.num_steps
        rows_run += sched.num_steps * len(z_g)
    if len(parts) == 1:
        out = parts[0][1]
    else:  # reassemble the groups in head-row order
        fields = HeadStats.FIELDS if trajectory else (None,)
        full = {f: None for f in fields}
        for idx, part in parts:
            for f in fields:
                val = part if f is None else getattr(part, f)
                if full[f] is None:
                    full[f] = val.new_empty((n,) + val.shape[1:])
                full[f][idx] = val
        out = HeadStats(*(full[f] for f in fields)) if trajectory else full[None]
    stats = out if trajectory else None
    if record and trace is None:  # several head runs (per-row / per-column schedules): the merged statistics
        trace = {"z": z_rows, "head": stats}
    tokens = out.sample if trajectory else out
    if it.final_noise:  # the last Gaussian step with the model's own noise (CSpD)
        tokens = stats.final_mean + stats.final_std * torch.randn(
            stats.final_mean.shape, generator=generator, device=stats.final_mean.device)
    return Prediction(tokens, stats, z_rows, steps, rows_run, trace)


def write_tokens(seq: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> None:
    """Write (B*n, C) head-row values at ``positions`` (bool (B, L) or indices (B, n)) in place; mark them known."""
    if positions.dtype == torch.bool:
        seq[positions] = values.to(seq.dtype)
        mask[positions] = 0.0
    else:
        ar = torch.arange(seq.shape[0], device=seq.device)[:, None]
        seq[ar, positions] = values.to(seq.dtype).reshape(positions.shape + values.shape[-1:])
        mask[ar, positions] = 0.0


@torch.no_grad()
def sample_tokens(model: MAR, labels: torch.Tensor | None, *, plan: Plan | None = None,
                  generator: torch.Generator | None = None, batch: int | None = None,
                  orders: torch.Tensor | None = None, state: tuple[torch.Tensor, torch.Tensor] | None = None,
                  record: bool = False, progress: bool = False, **settings) -> TokenSample:
    """Generate (B, C, h, w) token latents with MAR's masked-AR loop (research note §1.2), driven by a ``Plan``.

    - ``labels`` (B,) class ids, or None for unconditional (then ``batch``); the CFG null class is
      ``fake_latent``; guided plans run rows [cond; uncond] and guide eps.
    - ``plan``: per-iteration positions, CFG, head timesteps and noise. None builds MAR's own ``MaskedPlan``
      from ``settings`` (``num_iter=64, cfg=1.0, cfg_schedule="linear", temperature=1.0, head_steps=None,
      noises=None``, see ``MaskedPlan`` / ``head_schedule``); DiSA and CSpD pass their own plans.
    - ``generator`` (on the model's device) draws the per-sample orders (``randperm``, unless ``orders``
      (B, L) are given) and then whatever the plan and the head draw, in iteration order; same generator
      state = same output.
    - ``state``: (seq (B, L, C), mask (B, L)) to continue from (copied), e.g. CSpD's drafts; default nothing known.
    - ``record``: keep per-iteration z / sampled / x_T / step_noise (cond half) / head stats in ``trace``.

    Cost per iteration: one ``condition`` pass (encoder on buffer + #known rows, decoder on buffer + L rows,
    x2 under CFG) plus S head-net evaluations on the predicted rows (x2 under CFG).
    """
    if plan is None:
        plan = MaskedPlan(**settings)
    elif settings:
        raise ValueError(f"give MAR's settings or a plan, not both (got plan and {sorted(settings)})")
    c = model.cfg
    L = c.seq_len
    device = next(model.parameters()).device
    B = labels.shape[0] if labels is not None else batch
    if B is None:
        raise ValueError("give labels or batch")
    if not 1 <= plan.num_iter <= L:
        raise ValueError(f"num_iter must lie in [1, {L}] (more iterations than tokens leave empty steps)")
    if generator is None and (orders is None or getattr(plan, "noises", None) is None):
        raise ValueError("pass a torch.Generator (sampling never uses the global RNG)")
    if orders is None:
        orders = model.sample_orders(B, generator, device)
    orders = orders.to(device).long()
    if tuple(orders.shape) != (B, L) or not bool((orders.sort(-1).values == torch.arange(L, device=device)).all()):
        raise ValueError(f"orders must be {B} permutations of range({L})")
    if labels is not None:
        check_labels(labels, c.class_num, model="MAR")
    labels = None if labels is None else labels.to(device)
    if state is None:
        seq, mask = torch.zeros(B, L, c.token_embed_dim, device=device), torch.ones(B, L, device=device)
    else:
        seq, mask = state[0].clone(), state[1].clone()
    out = TokenSample(seq, {"nfe_target": 0, "head_steps": 0, "head_rows": 0, "tokens_per_iter": [],
                            "steps_per_iter": []})
    watch = FiniteWatch("diffusion-head samples", "MAR")  # read once after the loop: no per-step sync
    for step in tqdm(range(plan.num_iter), disable=not progress, desc="MAR"):
        it = plan.iteration(step, orders)
        pred = predict(model, seq, mask, labels, it,
                       lambda z: plan.head(step, z, model=model, generator=generator, stats=out.stats),
                       guided=plan.guided, generator=generator, record=record)
        watch(step, pred.tokens)
        write_tokens(seq, mask, it.positions, pred.tokens)  # in place: z of this iteration is already computed
        out.stats["nfe_target"] += 1
        out.stats["head_steps"] += pred.head_steps
        out.stats["head_rows"] += pred.head_rows
        out.stats["tokens_per_iter"].append(it.count if it.count is not None else (
            it.positions.shape[1] if it.positions.dtype != torch.bool else int(it.positions[0].sum())))
        out.stats["steps_per_iter"].append(pred.head_steps)
        if record:
            out.trace.append(pred.trace)
    watch.check()
    out.tokens, out.seq, out.mask = model.unpatchify(seq), seq, mask
    return out
