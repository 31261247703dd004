"""MAR's per-token diffusion head: ``SimpleMLPAdaLN`` + cosine DDPM with learned-range variance.

Re-implements ``DiffLoss`` of LTH14/mar (arXiv 2406.11838, §3) from the facts in
``shared/research/cspd_mar_disa.md`` §1.3; parameter names equal the official ``diffloss.net.*`` keys.
The DDPM maths is Ho et al. 2020 (eqs. 6-7, 11) with Nichol & Dhariwal 2021's cosine schedule (eq. 17)
and learned-range variance (eq. 15), including the official respacing (``space_timesteps``).

Head API (used by MAR generation, CSpD and DiSA; the step count is chosen PER CALL, never stored)
------------------------------------------------------------------------------------------------
Notation: ``S`` steps, loop index ``k = 0..S-1`` (k = 0 is the noisiest step), respaced index
``i = S-1-k``, original timestep ``t = schedule.timesteps[i]`` (what the net sees). ``R`` rows of
conditions ``z`` (with CFG ``R = 2N``, rows ``[cond; uncond]`` exactly as the official code), ``C`` token
channels.

- ``DDPMSchedule.respaced(steps)`` / ``DDPMSchedule.from_timesteps(ts)``: a schedule for ``steps`` (an int,
  or an official respacing string such as ``"100"``, ``"ddim25"``, ``"10,20"``) or for an explicit list of
  kept original timesteps (e.g. DiSA's 950-clipped lists). Cheap to build (one pass over 1000 betas).
- ``DiffLoss.sample(z, steps=.. | timesteps=.. | schedule=.., temperature, cfg, generator, noise) -> (R, C)``
- ``DiffLoss.sample_trajectory(...) -> HeadTrajectory``: the same run, also returning per step ``k`` the
  input state, posterior mean, log-variance, predicted x0, the noise used and the resulting sample.
- ``DiffLoss.step_stats(x_t, i, z, schedule, cfg) -> StepStats``: mean / log-variance / x0 of
  p(x_{t-1} | x_t) at respaced index ``i`` for a GIVEN ``x_t`` (CSpD evaluates the target head along the
  draft's trajectory with it). One net call (on R rows).

Randomness: without ``noise``, ``x_T`` is drawn as ``randn(N or R, C)`` (N rows duplicated under CFG)
and then one ``randn(R, C)`` per step, in exactly the official order, from ``generator`` (so a generator
seeded like the official ``torch.manual_seed`` reproduces its draws on CPU). With
``noise=HeadNoise(x_T, steps)`` nothing is drawn: ``x_T`` is ``(R, C)`` or ``(N, C)`` (duplicated),
``steps`` is ``(S, R, C)`` or ``(S, N, C)`` (duplicated to the uncond half, which never influences the
conditional rows) in LOOP order k (CSpD's ``inter_noise[i]`` is indexed by i: pass ``inter_noise.flip(0)``).
The step-``k`` noise is still used at the last step (i = 0) only as a draw: no noise is added there.
CFG acts on eps only (variance channels unguided); temperature scales only the added noise. ``cfg`` is one
scale, or a tensor of one scale per conditional row (CSpD guides each window position with its own
one-token-per-step value). ``HeadStats.of(trajectory)``: the per-row last-step Gaussian and path log-std sum
that CSpD's acceptance rule reads.

Cost: ``S`` net evaluations on ``R`` rows (``depth`` AdaLN MLP blocks of width ``w``); ``cond_embed(z)``
and the S time embeddings are computed once per call, since neither depends on x_t.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

NUM_TRAIN_TIMESTEPS = 1000  # official ``create_diffusion(diffusion_steps=1000)``
FREQ_EMBED_DIM = 256  # TimestepEmbedder frequency_embedding_size
MAX_BETA = 0.999  # betas_for_alpha_bar clip (Nichol & Dhariwal 2021, §3.2)


# ----------------------------------------------------------------------------------------------------
# Schedules (all float64, cast to float32 only where used, like the official numpy arrays)
# ----------------------------------------------------------------------------------------------------

def cosine_betas(num_timesteps: int = NUM_TRAIN_TIMESTEPS, max_beta: float = MAX_BETA) -> torch.Tensor:
    """beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta), abar(s) = cos^2((s+0.008)/1.008 * pi/2)."""
    abar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731  (N&D eq. 17)
    betas = [min(1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), max_beta)
             for i in range(num_timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


def space_timesteps(num_timesteps: int, section_counts: int | str | Sequence[int]) -> list[int]:
    """Kept original timesteps, exactly as the official ``space_timesteps`` (sorted).

    ``"ddimN"`` takes the integer stride giving N steps; otherwise each of the equal sections gets its count
    with fractional stride ``(size-1)/(count-1)`` and Python ``round`` (banker's rounding, as official).
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    elif isinstance(section_counts, int):
        section_counts = [section_counts]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < count or count < 1:
            raise ValueError(f"cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


@dataclass(frozen=True, eq=False)
class DDPMSchedule:
    """A (respaced) DDPM schedule. Index i = 0..S-1 is the respaced index; ``timesteps[i]`` the original t.

    Arrays are float64 (the official numpy arrays); ``at(i)`` gives the float32 scalars a step uses.
    """

    timesteps: tuple[int, ...]  # respaced index -> original timestep (official ``timestep_map``)
    betas: torch.Tensor  # (S,) respaced betas: 1 - abar_i / abar_{i-1}
    alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor  # beta~_i = beta_i (1 - abar_{i-1}) / (1 - abar_i)   (DDPM eq. 7)
    posterior_log_variance_clipped: torch.Tensor  # log beta~ with beta~_0 := beta~_1
    posterior_mean_coef1: torch.Tensor  # multiplies x0  (DDPM eq. 7)
    posterior_mean_coef2: torch.Tensor  # multiplies x_t

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @classmethod
    def from_timesteps(cls, timesteps: Sequence[int], num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                       base_betas: torch.Tensor | None = None) -> "DDPMSchedule":
        """Respace the cosine schedule onto the kept original ``timesteps`` (official ``SpacedDiffusion``)."""
        base = cosine_betas(num_train_timesteps) if base_betas is None else base_betas.double()
        kept = sorted(set(int(t) for t in timesteps))
        if not kept:
            raise ValueError("a DDPM schedule needs at least one timestep")
        if kept[0] < 0 or kept[-1] >= len(base):
            raise ValueError(f"timesteps must lie in [0, {len(base) - 1}], got {kept[0]}..{kept[-1]}")
        abar_all = torch.cumprod(1.0 - base, 0)
        abar = abar_all[kept]
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        betas = 1.0 - abar / abar_prev
        alphas = 1.0 - betas
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        if len(kept) > 1:
            post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        else:  # official: np.array([]) -> the learned-range variance would fail; we refuse clearly
            post_logvar = torch.full_like(post_var, float("nan"))
        return cls(tuple(kept), betas, abar, post_var, post_logvar,
                   betas * abar_prev.sqrt() / (1.0 - abar),
                   (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar))

    @classmethod
    def respaced(cls, steps: int | str, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> "DDPMSchedule":
        """Official ``create_diffusion(timestep_respacing=steps, noise_schedule="cosine")``; "" = all steps."""
        if steps == "" or steps is None:
            steps = num_train_timesteps
        return cls.from_timesteps(space_timesteps(num_train_timesteps, steps), num_train_timesteps)

    def table(self, device=None) -> dict[str, torch.Tensor]:
        """Float32 per-step coefficients (S,) on ``device``, computed in float64 then cast, like the official
        ``_extract_into_tensor``. Built once per sampling call; index with the respaced index i."""
        vals = {
            "sqrt_recip_abar": torch.sqrt(1.0 / self.alphas_cumprod),
            "sqrt_recipm1_abar": torch.sqrt(1.0 / self.alphas_cumprod - 1.0),
            "coef1": self.posterior_mean_coef1,
            "coef2": self.posterior_mean_coef2,
            "min_log": self.posterior_log_variance_clipped,
            "max_log": torch.log(self.betas),
            "t": torch.tensor(self.timesteps, dtype=torch.float64),
        }
        out = {k: v.to(dtype=torch.float32).to(device) for k, v in vals.items()}
        out["t"] = out["t"].long()
        return out


def clip_timesteps(timesteps: Sequence[int], max_timestep: int | None) -> tuple[int, ...]:
    """DiSA's ``clip_timesteps``: every t > max_timestep becomes max_timestep, duplicates dropped, ascending.
    ``None`` keeps the timesteps (sorted)."""
    if max_timestep is None:
        return tuple(sorted(timesteps))
    if max_timestep < 0:
        raise ValueError(f"max_timestep must be >= 0, got {max_timestep}")
    return tuple(sorted({min(int(t), max_timestep) for t in timesteps}))


def clip_schedule(schedule: "DDPMSchedule", max_timestep: int | None) -> "DDPMSchedule":
    """``schedule`` with its timesteps clipped (``clip_timesteps``); the same object when nothing changes."""
    if max_timestep is None or max(schedule.timesteps) <= max_timestep:
        return schedule
    if max_timestep < 1:
        raise ValueError(f"max_timestep must be >= 1, got {max_timestep}")
    return DDPMSchedule.from_timesteps(clip_timesteps(schedule.timesteps, max_timestep))


def resolve_schedule(steps: int | str | None = None, timesteps: Sequence[int] | None = None,
                     schedule: DDPMSchedule | None = None) -> DDPMSchedule:
    """Exactly one of ``steps`` / ``timesteps`` / ``schedule`` -> a DDPMSchedule."""
    given = [x is not None for x in (steps, timesteps, schedule)]
    if sum(given) != 1:
        raise ValueError("give exactly one of steps=, timesteps=, schedule= (the head stores no step count)")
    if schedule is not None:
        return schedule
    if timesteps is not None:
        return DDPMSchedule.from_timesteps(timesteps)
    return DDPMSchedule.respaced(steps)


# ----------------------------------------------------------------------------------------------------
# The net (official SimpleMLPAdaLN; key names kept)
# ----------------------------------------------------------------------------------------------------

def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def timestep_embedding(t: torch.Tensor, dim: int = FREQ_EMBED_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of (possibly fractional) timesteps t: (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = FREQ_EMBED_DIM):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))


class ResBlock(nn.Module):
    def __init__(self, w: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(w, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(w, 3 * w))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, w: int, out: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(w, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(w, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """eps/variance predictor: (x_t (N, C), t (N,) original timesteps, c (N, Dz)) -> (N, 2C) = [eps | v]."""

    def __init__(self, in_channels: int, model_channels: int, out_channels: int, z_channels: int,
                 num_res_blocks: int):
        super().__init__()
        self.in_channels = in_channels
        self.time_embed = TimestepEmbedder(model_channels)
        self.cond_embed = nn.Linear(z_channels, model_channels)
        self.input_proj = nn.Linear(in_channels, model_channels)
        self.res_blocks = nn.ModuleList([ResBlock(model_channels) for _ in range(num_res_blocks)])
        self.final_layer = FinalLayer(model_channels, out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(x, self.time_embed(t) + self.cond_embed(c))

    def forward_embedded(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The net given y = time_embed(t) + cond_embed(c) (the sampler computes both once per call: the
        condition is the same at every step and there are only S distinct timesteps)."""
        x = self.input_proj(x)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, cfg_scale) -> torch.Tensor:
        """Rows [cond; uncond]: the net sees x[:N/2] twice; eps = e_u + s (e_c - e_u) written to both
        halves (Ho & Salimans 2022, eq. 6 on eps); the variance channels are not guided."""
        return self.guide(self.forward_embedded(self.dup_half(x), self.time_embed(t) + self.cond_embed(c)), cfg_scale)

    @staticmethod
    def dup_half(x: torch.Tensor) -> torch.Tensor:
        half = x[: len(x) // 2]
        return torch.cat([half, half], dim=0)

    def guide(self, out: torch.Tensor, cfg_scale) -> torch.Tensor:
        eps, rest = out[:, : self.in_channels], out[:, self.in_channels:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)


# ----------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------

@dataclass
class HeadNoise:
    """Noise supplied to a head run instead of drawing it (trajectory alignment, fixture replay).

    ``x_T``: (R, C) or (N, C) with CFG (duplicated); ``steps``: (S, R, C) or (S, N, C), LOOP order k."""

    x_T: torch.Tensor
    steps: torch.Tensor


@dataclass
class StepStats:
    """p(x_{t-1} | x_t) at one step: Gaussian mean / log-variance (per element), predicted x0 and eps."""

    mean: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor
    eps: torch.Tensor


@dataclass
class HeadTrajectory:
    """One denoising run; per-step tensors are (S, R, C) in loop order k (respaced index i = S-1-k).

    ``states[k]`` is the x_t fed to step k (states[0] = x_T); ``samples[k]`` = ``mean[k] + [i != 0] *
    exp(0.5 log_variance[k]) * noise[k] * temperature``; ``sample`` = samples[-1] (the head output)."""

    schedule: DDPMSchedule
    x_T: torch.Tensor
    states: torch.Tensor
    mean: torch.Tensor
    log_variance: torch.Tensor
    pred_xstart: torch.Tensor
    noise: torch.Tensor
    samples: torch.Tensor
    temperature: float

    @property
    def sample(self) -> torch.Tensor:
        return self.samples[-1]

    @property
    def timesteps(self) -> tuple[int, ...]:
        """Original timestep used at each loop step k."""
        return tuple(reversed(self.schedule.timesteps))


@dataclass
class HeadStats:
    """Per-row statistics of a head run (CSpD's ``manager``), all (N, C): the last step's Gaussian
    N(final_mean, final_std^2) (respaced index 0; std = exp(logvar / 2) * temperature), log_std_sum =
    sum_{i>=1} log sigma_i of the path, and the head's token ``sample`` (= final_mean: no noise at i = 0)."""

    final_mean: torch.Tensor
    final_std: torch.Tensor
    log_std_sum: torch.Tensor
    sample: torch.Tensor

    FIELDS = ("final_mean", "final_std", "log_std_sum", "sample")

    @classmethod
    def of(cls, traj: "HeadTrajectory", rows: int | None = None) -> "HeadStats":
        """Statistics of the first ``rows`` rows of a trajectory (under CFG: the cond half), None = all."""
        n = traj.sample.shape[0] if rows is None else rows
        half_logvar = 0.5 * traj.log_variance[:, :n]  # (S, n, C), loop order: the last entry is index i = 0
        return cls(traj.mean[-1, :n], half_logvar[-1].exp() * traj.temperature, half_logvar[:-1].sum(0),
                   traj.sample[:n])


def _guidance(cfg, rows: int) -> float | torch.Tensor:
    """A CFG scale as the loop uses it: a Python float (a 0-dim float32 tensor converts exactly), or one scale
    per conditional row, ``(rows / 2, 1)``, for rows [cond; uncond] (e.g. CSpD's per-position schedule). A
    one-element tensor (``cfg_at``'s linear schedule) is a scalar."""
    if isinstance(cfg, torch.Tensor) and cfg.numel() > 1:
        if cfg.numel() != rows // 2 or rows % 2:
            raise ValueError(f"a per-row cfg needs one scale per conditional row ({rows // 2}), got {cfg.numel()}")
        return cfg.reshape(-1, 1)
    return float(cfg)


class DiffLoss(nn.Module):
    """MAR's diffusion head. Holds only the net: every sampling call gets its own schedule."""

    def __init__(self, target_channels: int, z_channels: int, depth: int, width: int):
        super().__init__()
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(target_channels, width, 2 * target_channels, z_channels, depth)

    # -- one step -------------------------------------------------------------------------------------
    def step_stats(self, x_t: torch.Tensor, i: int, z: torch.Tensor, schedule: DDPMSchedule,
                   cfg: float | torch.Tensor = 1.0) -> StepStats:
        """Official ``p_mean_variance`` (clip_denoised=False) at respaced index i for the given x_t (R, C).

        One net evaluation on R rows. With ``cfg != 1`` rows are [cond; uncond] and only x_t[:R/2] is read.
        Same arithmetic as the sampling loop (up to float rounding of the one-row time embedding)."""
        if not 0 <= i < schedule.num_steps:
            raise IndexError(f"respaced index {i} outside 0..{schedule.num_steps - 1}")
        co = self._prepare(z, schedule)
        return self._step(x_t, i, co, self.net.time_embed(co["t"][i:i + 1]), _guidance(cfg, z.shape[0]))

    def _prepare(self, z: torch.Tensor, schedule: DDPMSchedule) -> dict:
        """Per-call constants: the float32 coefficient table and cond_embed(z) (R, w) (the same every step)."""
        co = schedule.table(z.device)
        co["c_emb"] = self.net.cond_embed(z)
        return co

    def _step(self, x_t: torch.Tensor, i: int, co: dict, t_emb: torch.Tensor, cfg: float | torch.Tensor) -> StepStats:
        if x_t.shape[0] != co["c_emb"].shape[0]:
            raise ValueError(f"x_t has {x_t.shape[0]} rows but z has {co['c_emb'].shape[0]}")
        guided = isinstance(cfg, torch.Tensor) or cfg != 1.0
        if guided and x_t.shape[0] % 2:
            raise ValueError("with cfg != 1 the rows must be [cond; uncond] (an even count)")
        y = t_emb + co["c_emb"]  # time_embed(t) + cond_embed(z), t = timesteps[i] (t_emb: (1, w) or (w,))
        if guided:  # a tensor cfg is one scale per conditional row, (R/2, 1)
            out = self.net.guide(self.net.forward_embedded(self.net.dup_half(x_t), y), cfg)
        else:
            out = self.net.forward_embedded(x_t, y)
        eps, v = torch.split(out, self.in_channels, dim=1)
        frac = (v + 1) / 2  # learned-range interpolation (Nichol & Dhariwal eq. 15)
        log_variance = frac * co["max_log"][i] + (1 - frac) * co["min_log"][i]
        pred_xstart = co["sqrt_recip_abar"][i] * x_t - co["sqrt_recipm1_abar"][i] * eps  # DDPM eq. 11 inverted
        mean = co["coef1"][i] * pred_xstart + co["coef2"][i] * x_t  # DDPM eq. 7
        return StepStats(mean, log_variance, pred_xstart, eps)

    # -- full loops -----------------------------------------------------------------------------------
    def sample(self, z: torch.Tensor, *, steps: int | str | None = None, timesteps: Sequence[int] | None = None,
               schedule: DDPMSchedule | None = None, temperature: float = 1.0, cfg: float | torch.Tensor = 1.0,
               generator: torch.Generator | None = None, noise: HeadNoise | None = None) -> torch.Tensor:
        """Official ``DiffLoss.sample``: (R, Dz) conditions -> (R, C) tokens (see module docstring)."""
        return self._loop(z, resolve_schedule(steps, timesteps, schedule), temperature, cfg, generator,
                          noise, record=False)

    def sample_trajectory(self, z: torch.Tensor, *, steps: int | str | None = None,
                          timesteps: Sequence[int] | None = None, schedule: DDPMSchedule | None = None,
                          temperature: float = 1.0, cfg: float | torch.Tensor = 1.0,
                          generator: torch.Generator | None = None, noise: HeadNoise | None = None) -> HeadTrajectory:
        """Like ``sample`` (same draws, same result) but records every step as a ``HeadTrajectory``."""
        return self._loop(z, resolve_schedule(steps, timesteps, schedule), temperature, cfg, generator,
                          noise, record=True)

    def _noise(self, noise: HeadNoise | None, generator, R: int, S: int, cfg: bool, like: torch.Tensor):
        C = self.in_channels
        if noise is None:
            if generator is None:
                raise ValueError("pass a torch.Generator (or supplied noise): sampling never uses global RNG")
            x_T = torch.randn((R // 2 if cfg else R, C), generator=generator, device=like.device, dtype=like.dtype)
            return (torch.cat([x_T, x_T]) if cfg else x_T), None
        x_T, steps = noise.x_T.to(like), noise.steps.to(like)
        if cfg and x_T.shape[0] == R // 2:
            x_T = torch.cat([x_T, x_T])
        if cfg and steps.ndim == 3 and steps.shape[1] == R // 2:
            steps = torch.cat([steps, steps], dim=1)
        if tuple(x_T.shape) != (R, C) or tuple(steps.shape) != (S, R, C):
            raise ValueError(f"supplied noise has x_T {tuple(noise.x_T.shape)}, steps {tuple(noise.steps.shape)}; "
                             f"expected ({R} or {R // 2} with CFG, {C}) and ({S}, {R}, {C})")
        return x_T, steps

    def _loop(self, z, schedule: DDPMSchedule, temperature, cfg, generator, noise, record: bool):
        R, S, C = z.shape[0], schedule.num_steps, self.in_channels
        if S < 2:
            raise ValueError("learned-range DDPM sampling needs at least 2 steps (official code fails at 1)")
        cfg = _guidance(cfg, R)
        use_cfg = isinstance(cfg, torch.Tensor) or cfg != 1.0
        if use_cfg and R % 2:
            raise ValueError("with cfg != 1 the condition rows must be [cond; uncond] (an even count)")
        x, step_noise = self._noise(noise, generator, R, S, use_cfg, z)
        rec = {k: [] for k in ("states", "mean", "log_variance", "pred_xstart", "noise", "samples")} if record else None
        x_T, co = x, self._prepare(z, schedule)
        t_emb = self.net.time_embed(co["t"])  # (S, w): every step's time embedding, once per call
        for k in range(S):
            i = S - 1 - k
            st = self._step(x, i, co, t_emb[i], cfg)
            if step_noise is None:  # drawn even at i = 0, as official p_sample does
                n = torch.randn((R, C), generator=generator, device=z.device, dtype=z.dtype)
            else:
                n = step_noise[k]
            nonzero = float(i != 0)
            new = st.mean + nonzero * torch.exp(0.5 * st.log_variance) * n * temperature  # DDPM Alg. 2
            if record:
                for key, val in (("states", x), ("mean", st.mean), ("log_variance", st.log_variance),
                                 ("pred_xstart", st.pred_xstart), ("noise", n), ("samples", new)):
                    rec[key].append(val)
            x = new
        if not record:
            return x
        return HeadTrajectory(schedule, x_T, temperature=float(temperature),
                              **{k: torch.stack(v) for k, v in rec.items()})
