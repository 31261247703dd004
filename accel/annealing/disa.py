"""DiSA: diffusion step annealing for MAR (Zhao et al., arXiv 2505.20297), plus an adaptive schedule.

``AnnealedMAR(model, vae, schedule)`` is a ``Method``: MAR's masked-AR loop (``accel.models.mar.sample_tokens``)
whose diffusion head runs ``schedule.timesteps(k, N)`` at AR iteration k (paper Sec. 3: many steps while few
tokens are known, few at the end). With ``ConstantSchedule(S)`` (MAR respacing) it is plain MAR with S head
steps, draw for draw: same generator state -> bitwise the same tokens.

Beyond the paper (reviewers asked for uncertainty-driven schedules): ``AdaptiveSchedule`` picks each
iteration's step count from a measured signal, the spread of the head's one-step x0 predictions

    s_k = mean_{rows, channels} Var_m[ x0_hat(x_t^(m), t*, z) ],   x_t^(m) ~ N(0, I), m = 1..M

at the noisiest kept timestep t* (950 with DiSA's clip), on the conditional rows only. For a Gaussian
token x0 | z ~ N(mu, sigma^2) and an ideal denoiser this is ~ abar_t* sigma^4, so it falls as tokens get
more constrained (the paper's variance argument, Sec. 3.1) and costs M net rows per predicted token, drawn
from the same generator. Steps: T_k = lower + round((upper - lower) * min(1, s_k / s_ref) ** power), with
s_ref = ``reference`` or, if None, s_0 of the same call (the first iteration knows nothing, so it is the
most uncertain; this makes the schedule depend on the batch, which is documented, not hidden).

Stats (``Sample.stats``): nfe_target (MAR passes), head_steps (sum over iterations of the steps run),
head_rows (net row-evaluations, the head's real cost, probes included), probe_rows, steps_per_iter.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from accel.annealing.schedules import DISA_RESPACING, ConstantSchedule, Respacing, StepSchedule, disa_schedule
from accel.models.mar_head import clip_timesteps
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
    from accel.models.mar_head import DDPMSchedule

    sched = DDPMSchedule.from_timesteps([t])  # one kept timestep: abar_t is all step_stats' x0 needs
    N, C = z.shape[0], head.in_channels
    x = torch.randn((probes * N, C), generator=generator, device=z.device, dtype=z.dtype)
    x0 = head.step_stats(x, 0, z.repeat(probes, 1), sched, 1.0).pred_xstart  # DDPM eq. 11 inverted
    return x0.reshape(probes, N, C).var(0).mean(-1)


class AnnealedMAR:
    """MAR + KL-VAE + a step schedule, as a harness ``Method`` (``generate(cond, generator=...)``)."""

    def __init__(self, model, vae, schedule: StepSchedule | AdaptiveSchedule, *, num_iter: int = 64,
                 cfg: float = 1.0, cfg_schedule: str = "linear", temperature: float = 1.0, name: str | None = None,
                 progress: bool = False):
        self.model, self.vae, self.schedule = model, vae, schedule
        self.settings = dict(num_iter=num_iter, cfg=cfg, cfg_schedule=cfg_schedule, temperature=temperature)
        self.progress = progress
        self.name = name or f"disa-{describe(schedule)}-it{num_iter}"
        self.params = {"schedule": describe(schedule), **self.settings}

    @torch.no_grad()
    def sample_tokens(self, labels: torch.Tensor | None, *, generator: torch.Generator, batch: int | None = None):
        """Token latents (``TokenSample``) for ``labels`` under the schedule."""
        from accel.models.mar import sample_tokens

        if isinstance(self.schedule, AdaptiveSchedule):
            return adaptive_sample_tokens(self.model, labels, self.schedule, generator=generator, batch=batch,
                                          progress=self.progress, **self.settings)
        sched = self.schedule
        out = sample_tokens(self.model, labels, generator=generator, batch=batch, progress=self.progress,
                            head_steps=lambda k, n: sched.timesteps(k, n), **self.settings)
        out.stats["steps_per_iter"] = [sched(k, self.settings["num_iter"]) for k in range(self.settings["num_iter"])]
        out.stats["probe_rows"] = 0
        return out

    def generate(self, cond: torch.Tensor, *, generator: torch.Generator) -> Sample:
        from accel.models.mar import decode_tokens

        out = self.sample_tokens(cond, generator=generator)
        keep = ("nfe_target", "head_steps", "head_rows", "probe_rows", "steps_per_iter")
        return Sample(decode_tokens(self.vae, out.tokens).float(), {k: out.stats[k] for k in keep})


@torch.no_grad()
def adaptive_sample_tokens(model, labels, schedule: AdaptiveSchedule, *, generator: torch.Generator,
                           batch: int | None = None, num_iter: int = 64, cfg: float = 1.0,
                           cfg_schedule: str = "linear", temperature: float = 1.0, progress: bool = False):
    """MAR's loop (as ``accel.models.mar.sample_tokens``: same orders, masks, CFG schedule and draw order)
    with a probe before each head call. A thin adapter: ``sample_tokens``' ``head_steps`` callable does not
    see the head conditions, which the signal needs."""
    from tqdm.auto import tqdm

    from accel.models.mar import TokenSample, cfg_at, mask_len_at
    from accel.validate import check_finite, check_mar_sampling

    check_mar_sampling(cfg=cfg, temperature=temperature, where="DiSA adaptive_sample_tokens")
    c, L = model.cfg, model.cfg.seq_len
    device = next(model.parameters()).device
    B = labels.shape[0] if labels is not None else batch
    if B is None:
        raise ValueError("give labels or batch")
    if not 1 <= num_iter <= L:
        raise ValueError(f"num_iter must lie in [1, {L}]")
    labels = None if labels is None else labels.to(device)
    use_cfg = float(cfg) != 1.0
    orders = model.sample_orders(B, generator, device)
    mask = torch.ones(B, L, device=device)
    tokens = torch.zeros(B, L, c.token_embed_dim, device=device)
    stats = {"nfe_target": 0, "head_steps": 0, "head_rows": 0, "probe_rows": 0, "tokens_per_iter": [],
             "steps_per_iter": [], "signal": []}
    t_probe, reference = schedule.probe_timestep(), schedule.reference
    for step in tqdm(range(num_iter), disable=not progress, desc="MAR adaptive"):
        z = model.condition(tokens, mask, labels, cfg=use_cfg)  # (B or 2B, L, dec)
        mask_len = mask_len_at(step, num_iter, L, int(mask[0].sum().item()))
        mask_next = torch.zeros_like(mask).scatter(-1, orders[:, :mask_len], 1.0)
        to_pred = mask.bool() if step == num_iter - 1 else mask.bool() & ~mask_next.bool()
        mask = mask_next
        z_rows = z[torch.cat([to_pred, to_pred]) if use_cfg else to_pred]  # (R, dec)
        z_cond = z_rows[: len(z_rows) // 2] if use_cfg else z_rows
        signal = float(x0_spread(model.head, z_cond, t_probe, schedule.probes, generator).mean())
        reference = signal if reference is None else reference
        ts = clip_timesteps(schedule.timesteps(signal, reference), model.cfg.max_timestep)
        cfg_iter = cfg_at(cfg, cfg_schedule, L, mask_len)
        cfg_iter = cfg_iter.to(device) if isinstance(cfg_iter, torch.Tensor) else cfg_iter
        sampled = model.head.sample(z_rows, timesteps=ts, temperature=temperature, cfg=cfg_iter, generator=generator)
        sampled = sampled[: len(sampled) // 2] if use_cfg else sampled
        check_finite(sampled, what="diffusion-head samples", model="MAR (DiSA adaptive)", step=step)  # loop syncs anyway
        tokens = tokens.clone()
        tokens[to_pred] = sampled.to(tokens.dtype)
        probe_rows = schedule.probes * len(z_cond)
        stats["nfe_target"] += 1
        stats["head_steps"] += len(ts)
        stats["head_rows"] += len(ts) * len(z_rows) + probe_rows
        stats["probe_rows"] += probe_rows
        stats["tokens_per_iter"].append(int(to_pred[0].sum().item()))
        stats["steps_per_iter"].append(len(ts))
        stats["signal"].append(signal)
    return TokenSample(model.unpatchify(tokens), stats)


def ddpm_schedules(schedule: StepSchedule, num_ar_steps: int, max_timestep: int | None = None) -> list:
    """One ``DDPMSchedule`` per AR step (built once per distinct timestep list). For samplers with their own
    loop, e.g. CSpD at one token per step (num_ar_steps = L): give draft q and target p the SAME
    ``ddpm_schedules(schedule, L)[n]`` at AR step n, and draw the aligned noise with that step count S_n."""
    from accel.models.mar_head import DDPMSchedule

    cache: dict = {}
    out = []
    for k in range(num_ar_steps):
        ts = clip_timesteps(schedule.timesteps(k, num_ar_steps), max_timestep)  # MARConfig.max_timestep
        if ts not in cache:
            cache[ts] = DDPMSchedule.from_timesteps(ts)
        out.append(cache[ts])
    return out


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
