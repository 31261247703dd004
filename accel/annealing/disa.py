"""DiSA: diffusion step annealing for MAR (Zhao et al., arXiv 2505.20297), plus an adaptive schedule.

``AnnealedMAR(model, vae, schedule)`` is a ``Method``: MAR's masked-AR loop (``accel.models.mar.sample_tokens``)
driven by ``plan(schedule)``, whose diffusion head runs ``schedule.timesteps(k, N)`` at AR iteration k
(paper Sec. 3: many steps while few tokens are known, few at the end). With ``ConstantSchedule(S)`` (MAR
respacing) it is plain MAR with S head steps, draw for draw: same generator state -> bitwise the same tokens.

Beyond the paper (reviewers asked for uncertainty-driven schedules): ``AdaptiveSchedule`` picks each
iteration's step count from a measured signal, the spread of the head's one-step x0 predictions

    s_k = mean_{rows, channels} Var_m[ x0_hat(x_t^(m), t*, z) ],   x_t^(m) ~ N(0, I), m = 1..M

at the noisiest kept timestep t* (950 with DiSA's clip), on the conditional rows only. For a Gaussian
token x0 | z ~ N(mu, sigma^2) and an ideal denoiser this is ~ abar_t* sigma^4, so it falls as tokens get
more constrained (the paper's variance argument, Sec. 3.1) and costs M net rows per predicted token, drawn
from the same generator. Steps: T_k = lower + round((upper - lower) * min(1, s_k / s_ref) ** power), with
s_ref = ``reference`` or, if None, s_0 of the same call (the first iteration knows nothing, so it is the
most uncertain; this makes the schedule depend on the batch, which is documented, not hidden). It is the
same loop with another plan (``AdaptivePlan``): the plan measures the rows' conditions before the head runs.

Stats (``Sample.stats``): nfe_target (MAR passes), head_steps (sum over iterations of the steps run),
head_rows (net row-evaluations, the head's real cost, probes included), probe_rows, steps_per_iter.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from accel.annealing.schedules import DISA_RESPACING, ConstantSchedule, Respacing, disa_schedule
from accel.types import StepSchedule
from accel.models.mar import HeadCall, MaskedPlan, decode_tokens, head_schedule, sample_tokens
from accel.models.mar_head import DDPMSchedule
from accel.types import Sample


@dataclass(frozen=True)
class AdaptiveSchedule:
    """Signal-driven step counts (see module docstring). Not a ``StepSchedule``: it needs the signal."""

    upper: int = 50
    lower: int = 5
    probes: int = 4  # M noise draws per conditional row for the spread signal
    power: float = 1.0  # <1 keeps more steps at moderate uncertainty, >1 fewer
    reference: float | None = None  # fixed s_ref; None = the first iteration's signal of the same call
    respacing: Respacing = field(default=DISA_RESPACING)
    strategy = "adaptive"

    def __post_init__(self):
        if not 2 <= self.lower <= self.upper:  # the learned-range DDPM needs >= 2 steps
            raise ValueError(f"need 2 <= lower <= upper, got upper={self.upper}, lower={self.lower}")
        if self.probes < 2 or self.power <= 0 or (self.reference is not None and self.reference <= 0):
            raise ValueError("need probes >= 2, power > 0 and reference > 0 (or None)")

    def requested_steps(self, signal: float, reference: float) -> int:
        ratio = min(1.0, max(0.0, signal / reference)) if reference > 0 else 1.0
        return self.lower + round((self.upper - self.lower) * ratio ** self.power)

    def timesteps(self, signal: float, reference: float) -> tuple[int, ...]:
        return self.respacing.timesteps(self.requested_steps(signal, reference))

    def probe_timestep(self) -> int:
        return self.respacing.timesteps(self.upper)[-1]


@torch.no_grad()
def x0_spread(head, z: torch.Tensor, t: int, probes: int, generator: torch.Generator) -> torch.Tensor:
    """Per-row mean over channels of Var_m[x0_hat] from ``probes`` draws x_t ~ N(0, I) at original timestep t
    (unguided, z = conditional rows (N, Dz)) -> (N,). One net call on probes * N rows."""
    sched = DDPMSchedule.from_timesteps([t])  # one kept timestep: abar_t is all step_stats' x0 needs
    N, C = z.shape[0], head.in_channels
    x = torch.randn((probes * N, C), generator=generator, device=z.device, dtype=z.dtype)
    x0 = head.step_stats(x, 0, z.repeat(probes, 1), sched, 1.0).pred_xstart  # DDPM eq. 11 inverted
    return x0.reshape(probes, N, C).var(0).mean(-1)


@dataclass(frozen=True)
class AdaptivePlan(MaskedPlan):
    """MAR's plan whose head timesteps at each iteration come from ``adaptive.timesteps(s_k, s_ref)``, s_k the
    x0 spread of that iteration's conditional rows (``x0_spread``, drawn from the generator after the MAR pass
    and before the head's draws). Records ``signal`` and ``probe_rows`` (also counted in ``head_rows``)."""

    adaptive: AdaptiveSchedule = field(default_factory=AdaptiveSchedule)

    def head(self, step: int, z_rows: torch.Tensor, *, model, generator, stats: dict) -> HeadCall:
        z_cond = z_rows[: len(z_rows) // 2] if self.guided else z_rows
        a = self.adaptive
        signal = float(x0_spread(model.head, z_cond, a.probe_timestep(), a.probes, generator).mean())
        stats.setdefault("signal", []).append(signal)
        reference = stats["signal"][0] if a.reference is None else a.reference  # s_0 of this call, or fixed
        probe_rows = a.probes * len(z_cond)
        stats["probe_rows"] = stats.get("probe_rows", 0) + probe_rows
        stats["head_rows"] += probe_rows
        return HeadCall(head_schedule(a.timesteps(signal, reference), step, self.num_iter,
                                      max_timestep=model.cfg.max_timestep))


def plan(schedule: StepSchedule | AdaptiveSchedule, *, num_iter: int = 64, cfg: float = 1.0,
         cfg_schedule: str = "linear", temperature: float = 1.0) -> MaskedPlan:
    """The ``sample_tokens`` plan of a DiSA schedule: MAR's own plan with the schedule's timesteps per AR step
    (a ``StepSchedule``), or the signal-driven ``AdaptivePlan``."""
    kw = dict(num_iter=num_iter, cfg=cfg, cfg_schedule=cfg_schedule, temperature=temperature)
    if isinstance(schedule, AdaptiveSchedule):
        return AdaptivePlan(**kw, adaptive=schedule)
    return MaskedPlan(**kw, head_steps=schedule)


class AnnealedMAR:
    """MAR + KL-VAE + a step schedule, as a harness ``Method`` (``generate(cond, generator=...)``)."""

    def __init__(self, model, vae, schedule: StepSchedule | AdaptiveSchedule, *, num_iter: int = 64,
                 cfg: float = 1.0, cfg_schedule: str = "linear", temperature: float = 1.0, name: str | None = None,
                 progress: bool = False):
        self.model, self.vae, self.schedule = model, vae, schedule
        self.settings = dict(num_iter=num_iter, cfg=cfg, cfg_schedule=cfg_schedule, temperature=temperature)
        self.plan = plan(schedule, **self.settings)
        self.progress = progress
        self.name = name or f"disa-{describe(schedule)}-it{num_iter}"
        self.params = {"schedule": describe(schedule), **self.settings}

    @torch.no_grad()
    def sample_tokens(self, labels: torch.Tensor | None, *, generator: torch.Generator, batch: int | None = None):
        """Token latents (``TokenSample``) for ``labels`` under the schedule."""
        out = sample_tokens(self.model, labels, plan=self.plan, generator=generator, batch=batch,
                            progress=self.progress)
        out.stats.setdefault("probe_rows", 0)
        return out

    @torch.inference_mode()
    def generate(self, cond: torch.Tensor, *, generator: torch.Generator) -> Sample:
        out = self.sample_tokens(cond, generator=generator)
        keep = ("nfe_target", "head_steps", "head_rows", "probe_rows", "steps_per_iter")
        return Sample(decode_tokens(self.vae, out.tokens).float(), {k: out.stats[k] for k in keep})


def ddpm_schedules(schedule: StepSchedule, num_ar_steps: int, max_timestep: int | None = None) -> list:
    """One ``DDPMSchedule`` per AR step (built once per distinct timestep list). For samplers with their own
    loop, e.g. CSpD at one token per step (num_ar_steps = L): give draft q and target p the SAME
    ``ddpm_schedules(schedule, L)[n]`` at AR step n, and draw the aligned noise with that step count S_n."""
    return [head_schedule(schedule, k, num_ar_steps, max_timestep=max_timestep) for k in range(num_ar_steps)]


def describe(schedule) -> str:
    """Short name, e.g. ``linear50-5``, ``const100``, ``adaptive50-5``; ``-noclip`` / ``-clip950`` marks
    the respacing when it is not the strategy's usual one (DiSA strategies clip, constant does not)."""
    if isinstance(schedule, ConstantSchedule):
        clip = "" if schedule.respacing.clip is None else f"-clip{schedule.respacing.clip}"
        return f"const{schedule.steps}{clip}"
    clip = "-noclip" if schedule.respacing.clip is None else (
        "" if schedule.respacing.clip == DISA_RESPACING.clip else f"-clip{schedule.respacing.clip}")
    return f"{schedule.strategy}{schedule.upper}-{schedule.lower}{clip}"


def make_schedule(spec: str):
    """``"linear:50:5"``, ``"cosine:25:5"``, ``"two-stage:100:5"``, ``"constant:100"`` (MAR respacing),
    ``"adaptive:50:5"``; append ``":noclip"`` for the unclipped DiSA variant."""
    parts = spec.split(":")
    noclip = parts[-1] == "noclip"
    parts = parts[:-1] if noclip else parts
    kind, nums = parts[0], [int(p) for p in parts[1:]]
    if kind == "constant" and len(nums) == 1:
        return ConstantSchedule(nums[0])  # MAR's own respacing (no clip): plain MAR
    if kind == "adaptive":
        return AdaptiveSchedule(*nums, respacing=Respacing(clip=None) if noclip else DISA_RESPACING)
    if len(nums) != 2:
        raise ValueError(f"schedule spec {spec!r}: expected KIND:UPPER:LOWER[:noclip] or constant:STEPS")
    return disa_schedule(kind, nums[0], nums[1], clip=None if noclip else DISA_RESPACING.clip)
