"""Diffusion-step schedules for DiSA (Zhao et al., "Diffusion Step Annealing", arXiv 2505.20297).

DiSA gives the diffusion head of a masked-AR model (MAR) many denoising steps early in generation and
few late, when more tokens are known and each new token is more constrained (paper Sec. 3).

Notation (code name -> paper / official code ``MAR_DiSA/models/diffloss.py``):

    ar_step, num_ar_steps   AR iteration k and the iteration count N (``step``, ``ar_num_iter``)
    U = num_ar_steps - 1    last iteration index
    upper, lower            T_early, T_late (``diff_upper_steps``, ``diff_lower_steps``)
    K = upper - lower       largest index into DiSA's pre-built list ``[create_diffusion(str(T)) for T in
                            range(lower, upper + 1)]``; the requested step count is ``lower + id``
    id formulas             linear    int((U - k) / U * K)
                            cosine    int((cos(pi * k / U) + 1) / 2 * K)
                            two-stage K if k < U / 2 else 0
                            constant  0  (i.e. T_late everywhere)

The requested count is NOT the number of steps run. DiSA's ``create_diffusion`` clips every kept
timestep to <= 950 and de-duplicates (``clip_timesteps=950``), silently, so "50 steps" are 48 steps
ending ``..., 917, 938, 950``; MAR itself (and DiSA's ``--diff_sampler default``) keeps t = 999. Here the
clip is an explicit field of :class:`Respacing`: ``DISA_RESPACING`` (clip 950, the official DiSA
sampler) and ``MAR_RESPACING`` (no clip, MAR's sampler). A schedule returns the exact timestep list,
so a head that accepts a timestep list reproduces both.

Schedules are pure frozen dataclasses, callable as ``schedule(ar_step, num_ar_steps) -> steps`` (the
``StepSchedule`` protocol of DESIGN.md), with ``timesteps(...)`` for the respaced original timesteps.
Any sampler that runs a diffusion head per AR step can use them. CSpD (one token per AR step, N = L):
at AR step n give draft q and target p the SAME ``schedule.timesteps(n, L)`` (or the prebuilt
``accel.annealing.disa.ddpm_schedules(schedule, L)[n]``) and draw the shared x_T / per-step noise with that
step count; trajectory alignment needs identical timesteps and noise shapes in both heads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

from accel.types import StepSchedule
from accel.models.mar_head import clip_timesteps

NUM_TRAIN_TIMESTEPS = 1000  # MAR's training diffusion (cosine, 1000 steps)
DISA_CLIP = 950  # DiSA's create_diffusion(clip_timesteps=950); a "time-offset correction"


@lru_cache(maxsize=None)
def space_timesteps(num_timesteps: int, count: int) -> tuple[int, ...]:
    """Official ``space_timesteps(num_timesteps, str(count))`` (one section): ``count`` timesteps with
    fractional stride (size - 1) / (count - 1), accumulated in float and rounded with Python's round()
    (banker's rounding, as in the official code). T = 5 of 1000 gives (0, 250, 500, 749, 999)."""
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"cannot take {count} steps out of {num_timesteps} timesteps")
    stride = 1 if count <= 1 else (num_timesteps - 1) / (count - 1)
    cur, taken = 0.0, []
    for _ in range(count):
        taken.append(round(cur))
        cur += stride
    return tuple(sorted(set(taken)))


@dataclass(frozen=True)
class Respacing:
    """How a requested step count becomes original timesteps. ``clip=None`` is MAR's respacing;
    ``clip=950`` is DiSA's (every timestep t > clip becomes clip, then duplicates are dropped); DiSA's
    ``--diff_sampler default`` uses ``clip=1001``, a no-op, i.e. identical to MAR."""

    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
    clip: int | None = None

    def __post_init__(self):
        if self.clip is not None and self.clip < 0:  # clip >= num_train_timesteps - 1 is a no-op
            raise ValueError(f"clip must be >= 0, got {self.clip}")

    def timesteps(self, steps: int) -> tuple[int, ...]:
        """Sorted original timesteps (ascending, like the official ``timestep_map``)."""
        return clip_timesteps(space_timesteps(self.num_train_timesteps, int(steps)), self.clip)


MAR_RESPACING = Respacing(clip=None)
DISA_RESPACING = Respacing(clip=DISA_CLIP)


def _check_step(ar_step: int, num_ar_steps: int) -> None:
    if num_ar_steps < 1 or not 0 <= ar_step < num_ar_steps:
        raise ValueError(f"need 0 <= ar_step < num_ar_steps, got ar_step={ar_step}, num_ar_steps={num_ar_steps}")


@dataclass(frozen=True)
class _Annealed:
    """Shared logic: requested steps = lower + id(k, U, K); subclasses define ``index``."""

    upper: int = 50
    lower: int = 5
    respacing: Respacing = field(default=DISA_RESPACING)
    strategy = "?"

    def __post_init__(self):
        if not 1 <= self.lower <= self.upper <= self.respacing.num_train_timesteps:
            raise ValueError(f"need 1 <= lower <= upper <= {self.respacing.num_train_timesteps}, "
                             f"got upper={self.upper}, lower={self.lower}")

    def index(self, ar_step: int, last: int, span: int) -> int:
        raise NotImplementedError

    def requested_steps(self, ar_step: int, num_ar_steps: int) -> int:
        """The step count DiSA asks for (``lower + id``), before the clip removes duplicates."""
        _check_step(ar_step, num_ar_steps)
        if num_ar_steps == 1:  # official code divides by U = 0; one iteration = the first one -> upper
            return self.upper
        return self.lower + self.index(ar_step, num_ar_steps - 1, self.upper - self.lower)

    def timesteps(self, ar_step: int, num_ar_steps: int) -> tuple[int, ...]:
        return self.respacing.timesteps(self.requested_steps(ar_step, num_ar_steps))

    def __call__(self, ar_step: int, num_ar_steps: int) -> int:
        """Number of denoising steps actually run (= network evaluations per token row)."""
        return len(self.timesteps(ar_step, num_ar_steps))


@dataclass(frozen=True)
class LinearSchedule(_Annealed):
    strategy = "linear"

    def index(self, ar_step, last, span):
        return int((last - ar_step) / last * span)


@dataclass(frozen=True)
class CosineSchedule(_Annealed):
    strategy = "cosine"

    def index(self, ar_step, last, span):
        return int((math.cos(math.pi * ar_step / last) + 1) / 2 * span)


@dataclass(frozen=True)
class TwoStageSchedule(_Annealed):
    strategy = "two-stage"

    def index(self, ar_step, last, span):
        return span if ar_step < last / 2 else 0


@dataclass(frozen=True)
class ConstantSchedule:
    """``steps`` everywhere. ``ConstantSchedule(100)`` (MAR respacing) is plain MAR's default head;
    DiSA's "constant" strategy is ``ConstantSchedule(lower, DISA_RESPACING)``."""

    steps: int = 100
    respacing: Respacing = field(default=MAR_RESPACING)
    strategy = "constant"

    def __post_init__(self):
        if not 1 <= self.steps <= self.respacing.num_train_timesteps:
            raise ValueError(f"steps must be in [1, {self.respacing.num_train_timesteps}], got {self.steps}")

    def requested_steps(self, ar_step: int, num_ar_steps: int) -> int:
        _check_step(ar_step, num_ar_steps)
        return self.steps

    def timesteps(self, ar_step: int, num_ar_steps: int) -> tuple[int, ...]:
        return self.respacing.timesteps(self.requested_steps(ar_step, num_ar_steps))

    def __call__(self, ar_step: int, num_ar_steps: int) -> int:
        return len(self.timesteps(ar_step, num_ar_steps))


STRATEGIES = {"linear": LinearSchedule, "cosine": CosineSchedule, "two-stage": TwoStageSchedule,
              "constant": None}


def disa_schedule(strategy: str, upper: int = 50, lower: int = 5, clip: int | None = DISA_CLIP):
    """The official ``--diff_annealing_strategy`` names; ``clip=None`` gives the unclipped variant."""
    if strategy not in STRATEGIES:
        raise KeyError(f"unknown DiSA strategy {strategy!r}; valid: {sorted(STRATEGIES)}")
    respacing = Respacing(clip=clip)
    if strategy == "constant":  # official: id = 0 -> T_late everywhere
        if not 1 <= lower <= upper:
            raise ValueError(f"need 1 <= lower <= upper, got upper={upper}, lower={lower}")
        return ConstantSchedule(lower, respacing)
    return STRATEGIES[strategy](upper, lower, respacing)


def steps_per_iteration(schedule: StepSchedule, num_ar_steps: int) -> list[int]:
    """Steps actually run at each AR iteration (what ``disa_schedules.json`` records)."""
    return [schedule(k, num_ar_steps) for k in range(num_ar_steps)]
