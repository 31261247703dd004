"""CSpD as harness Methods (``accel.types.Method``) on the zoo MARs, plus its baseline.

The baseline CSpD is compared with is the target MAR ALONE in the same one-token-per-step regime
(num_iter = L, same head steps, CFG and temperature): that is the paper's "target model alone" (MAR at 256
AR steps), not ``mar-default`` (the model card's fewer iterations).

Composition with DiSA (issue 9): ``cspd-disa`` is CSpD whose two heads follow a DiSA step schedule per AR
position (``CSpDConfig.schedule``; here the paper's linear 50->5 with its 950 clip), timed against the same
``cspd-target-only``; ``cspd-disa-target-only`` is the target alone with that schedule (DiSA without CSpD, one
token per step), which separates the two gains. Builders take a schedule as a ``make_schedule`` spec string
(``"linear:50:5"``), so entry params stay JSON.
"""
from __future__ import annotations

from dataclasses import asdict

import torch

from accel.harness.registry import BuildContext, MethodEntry
from accel.speculative.cspd import CSpDConfig, cspd_sample_tokens
from accel.types import Sample

TARGET, DRAFT = "fmnist-mar", "fmnist-mar-draft"
_SETTING_KEYS = {"cfg": "cfg", "cfg_schedule": "cfg_schedule", "temperature": "temperature",
                 "head_steps": "head_steps", "num_sampling_steps": "head_steps"}


DISA_SPEC = "linear:50:5"  # DiSA's MAR recipe (50 -> 5 requested, 48 -> 5 run: the 950 clip)


def config(**overrides) -> CSpDConfig:
    """``CSpDConfig(**overrides)``; ``schedule`` may be a ``make_schedule`` spec (``"linear:50:5"``)."""
    sched = overrides.get("schedule")
    if isinstance(sched, str):
        from accel.annealing.disa import make_schedule

        overrides = {**overrides, "schedule": make_schedule(sched)}
    return CSpDConfig(**overrides)


def describe_config(c: CSpDConfig) -> dict:
    """JSON params of a config: the schedule as its short name (``linear50-5``), None when constant."""
    from accel.annealing.disa import describe

    return {**{k: v for k, v in asdict(c).items() if k != "schedule"},
            "schedule": None if c.schedule is None else describe(c.schedule)}


def zoo_settings(model: str) -> dict:
    """The zoo model card's sampling settings that CSpD shares with its baseline (cfg, temperature, steps)."""
    try:
        from accel.zoo.sample import DEFAULTS
    except ImportError:
        return {}
    return {_SETTING_KEYS[k]: v for k, v in DEFAULTS.get(model, {}).items() if k in _SETTING_KEYS}


def _load(name: str, ctx: BuildContext | None = None):
    from accel import zoo

    dev = None if ctx is None else ctx.device
    return zoo.load(name, device=dev), zoo.load(zoo.TOKENIZER.get(name, "fmnist-mar-vae"), device=dev)


class TargetOnlyMAR:
    """Target MAR alone, one token per AR step (num_iter = seq_len), decoded by the KL-VAE."""

    def __init__(self, target, vae, config: CSpDConfig = CSpDConfig(), name: str = "cspd-target-only"):
        self.name, self.target, self.vae, self.config = name, target, vae, config
        self.params = {"num_iter": "seq_len", "head_steps": config.head_steps, "cfg": config.cfg,
                       "temperature": config.temperature, "schedule": describe_config(config)["schedule"]}

    def generate(self, cond: torch.Tensor, *, generator: torch.Generator) -> Sample:
        from accel.models.mar import decode_tokens, sample_tokens

        c, L = self.config, self.target.cfg.seq_len
        steps = c.head_steps if c.schedule is None else c.schedule  # a DiSA StepSchedule is a head_steps plan
        out = sample_tokens(self.target, cond, generator=generator, num_iter=L, cfg=c.cfg,
                            cfg_schedule=c.cfg_schedule, temperature=c.temperature, head_steps=steps)
        stats = {k: v for k, v in out.stats.items() if k in ("nfe_target", "head_steps", "head_rows")}
        return Sample(decode_tokens(self.vae, out.tokens).float(), stats)


class CSpDMAR:
    """Continuous speculative decoding: target p, draft q (same tokenizer), ``CSpDConfig``."""

    def __init__(self, target, draft, vae, config: CSpDConfig = CSpDConfig(), name: str = "cspd"):
        """``draft=None``: the draft-free control (see ``cspd_sample_tokens``)."""
        self.name, self.target, self.draft, self.vae, self.config = name, target, draft, vae, config
        self.params = {**describe_config(config), "draft": None if draft is None else "draft"}

    def generate(self, cond: torch.Tensor, *, generator: torch.Generator) -> Sample:
        from accel.models.mar import decode_tokens

        out = cspd_sample_tokens(self.target, self.draft, cond, self.config, generator=generator)
        return Sample(decode_tokens(self.vae, out.tokens).float(), out.stats)


def build_target_only(ctx: BuildContext, **overrides) -> TargetOnlyMAR:
    target, vae = _load(ctx.model, ctx)
    name = overrides.pop("name", "cspd-target-only")
    return TargetOnlyMAR(target, vae, config(**{**zoo_settings(ctx.model), **overrides}), name=name)


def build_cspd(ctx: BuildContext, name: str = "cspd", draft: str = DRAFT, **overrides) -> CSpDMAR:
    """``draft=None``: the draft-free control (the target samples each window from its one pass)."""
    target, vae = _load(ctx.model, ctx)
    q = None if draft is None else _load(draft, ctx)[0]
    cfg = config(**{**zoo_settings(ctx.model), **overrides})
    return CSpDMAR(target, q, vae, cfg, name=name)


def _missing(model: str) -> str | None:
    from accel.harness.baselines import zoo_missing

    return zoo_missing(model, DRAFT)


def entry(name: str, quick: bool = True, draft: str | None = DRAFT, **overrides) -> MethodEntry:
    """A CSpD grid point as a harness entry, timed against ``cspd-target-only`` (``draft=None``: control)."""
    params = {**describe_config(config(**overrides)), "draft": draft}
    return MethodEntry(name, "mar", lambda ctx: build_cspd(ctx, name=name, draft=draft, **overrides), models=(TARGET,),
                       baseline="cspd-target-only", experiment="cspd", params=params, quick=quick,
                       unavailable=_missing)


def target_only_entry(name: str, quick: bool = True, **overrides) -> MethodEntry:
    """The target alone, one token per AR step, with ``overrides`` (e.g. a DiSA ``schedule`` spec), timed
    against ``cspd-target-only``."""
    return MethodEntry(name, "mar", lambda ctx: build_target_only(ctx, name=name, **overrides), models=(TARGET,),
                       baseline="cspd-target-only", experiment="cspd", quick=quick, unavailable=_missing,
                       params={"decode": "target MAR alone, one token per AR step", **overrides})


# Not in the no-argument preset: one token per AR step (the CSpD baseline) and left-to-right verification take
# most of an hour on 2 CPU cores, and on the zoo pair no draft is accepted (results/cspd/README.md).
BENCH_METHODS = [
    MethodEntry("cspd-target-only", "mar", build_target_only, models=(TARGET,), experiment="cspd", quick=False,
                params={"decode": "target MAR alone, one token per AR step"}, unavailable=_missing),
    entry("cspd", quick=False, gamma=32),
    entry("cspd-independent", quick=False, gamma=32, verify="independent"),
    entry("cspd-disa", quick=False, gamma=32, schedule=DISA_SPEC),
    target_only_entry("cspd-disa-target-only", quick=False, schedule=DISA_SPEC),
]
