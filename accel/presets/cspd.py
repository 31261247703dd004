"""CSpD on the zoo MARs, and its baseline.

The baseline CSpD is compared with is the target MAR ALONE in the same one-token-per-step regime
(num_iter = L, same head steps, CFG and temperature): that is the paper's "target model alone" (MAR at 256
AR steps), not ``mar-default`` (the model card's fewer iterations).

Composition with DiSA: ``cspd-disa`` is CSpD whose two heads follow a DiSA step schedule per AR position
(``CSpDConfig.schedule``; here the paper's linear 50->5 with its 950 clip), timed against the same
``cspd-target-only``; ``cspd-disa-target-only`` is the target alone with that schedule (DiSA without CSpD, one
token per step), which separates the two gains. Builders take a schedule as a ``make_schedule`` spec string
(``"linear:50:5"``), so entry params stay JSON.
"""
from __future__ import annotations

from accel import zoo
from accel.annealing.disa import make_schedule
from accel.harness.registry import BuildContext, MethodEntry
from accel.presets.zoo_models import defaults, missing_with
from accel.speculative.cspd import CSpDConfig
from accel.speculative.cspd_method import CSpDMAR, TargetOnlyMAR, describe_config

TARGET, DRAFT, ALIGNED = "fmnist-mar", "fmnist-mar-draft", "fmnist-mar-draft-aligned"
DISA_SPEC = "linear:50:5"  # DiSA's MAR recipe (50 -> 5 requested, 48 -> 5 run: the 950 clip)
_SETTING_KEYS = {"cfg": "cfg", "cfg_schedule": "cfg_schedule", "temperature": "temperature",
                 "head_steps": "head_steps", "num_sampling_steps": "head_steps"}


def config(**overrides) -> CSpDConfig:
    """``CSpDConfig(**overrides)``; ``schedule`` may be a ``make_schedule`` spec (``"linear:50:5"``)."""
    sched = overrides.get("schedule")
    if isinstance(sched, str):
        overrides = {**overrides, "schedule": make_schedule(sched)}
    return CSpDConfig(**overrides)


def zoo_settings(model: str) -> dict:
    """The zoo model card's sampling settings that CSpD shares with its baseline (cfg, temperature, steps)."""
    return {_SETTING_KEYS[k]: v for k, v in defaults(model).items() if k in _SETTING_KEYS}


def _load(name: str, ctx: BuildContext | None = None):
    dev = None if ctx is None else ctx.device
    return zoo.load(name, device=dev), zoo.load(zoo.TOKENIZER.get(name, "fmnist-mar-vae"), device=dev)


def build_target_only(ctx: BuildContext, **overrides) -> TargetOnlyMAR:
    target, vae = _load(ctx.model, ctx)
    name = overrides.pop("name", "cspd-target-only")
    return TargetOnlyMAR(target, vae, config(**{**zoo_settings(ctx.model), **overrides}), name=name)


def build_cspd(ctx: BuildContext, name: str = "cspd", draft: str | None = DRAFT, **overrides) -> CSpDMAR:
    """``draft=None``: the draft-free control (the target samples each window from its one pass)."""
    target, vae = _load(ctx.model, ctx)
    q = None if draft is None else _load(draft, ctx)[0]
    return CSpDMAR(target, q, vae, config(**{**zoo_settings(ctx.model), **overrides}), name=name)


def law(c: CSpDConfig, draft: str | None) -> str:
    """The output law a CSpD configuration samples (issue 20: every row names it):

    - ``one-token``: the target alone, one token per AR step (textbook conditioning, left-to-right, exact rule;
      tokens are the head's last Gaussian step with its noise);
    - ``parallel-g<k>``: the target decoding each k-window from one pass (the draft-free control, and the released
      conditioning's per-token loop under the exact rule);
    - ``parallel-random-window``: released conditioning, left-to-right: each committed token is exact given the
      window-start context, windows end at the first rejection (neither of the above);
    - ``relaxed``: an inner temperature != 1 or a std-product term: no law of the target is preserved."""
    if c.inner_temperature != 1.0 or c.std_product != "none":
        return "relaxed"
    if draft is None:
        return "one-token" if c.gamma == 1 else f"parallel-g{c.gamma}"
    if c.conditioning == "textbook":
        return "one-token"
    return f"parallel-g{c.gamma}" if c.verify == "independent" else "parallel-random-window"


def entry(name: str, quick: bool = True, draft: str | None = DRAFT, **overrides) -> MethodEntry:
    """A CSpD grid point as a harness entry, timed against ``cspd-target-only`` (``draft=None``: control)."""
    c = config(**overrides)
    params = {**describe_config(c), "draft": draft, "law": law(c, draft)}
    need = () if draft is None else (draft,)
    return MethodEntry(name, "mar", lambda ctx: build_cspd(ctx, name=name, draft=draft, **overrides), models=(TARGET,),
                       baseline="cspd-target-only", experiment="cspd", params=params, quick=quick,
                       unavailable=missing_with(*need))


def target_only_entry(name: str, quick: bool = True, **overrides) -> MethodEntry:
    """The target alone, one token per AR step, with ``overrides`` (e.g. a DiSA ``schedule`` spec), timed
    against ``cspd-target-only``."""
    return MethodEntry(name, "mar", lambda ctx: build_target_only(ctx, name=name, **overrides), models=(TARGET,),
                       baseline="cspd-target-only", experiment="cspd", quick=quick, unavailable=missing_with(),
                       params={"decode": "target MAR alone, one token per AR step", "law": "one-token", **overrides})


# Not in the no-argument preset: one token per AR step (the CSpD baseline) and left-to-right verification take
# most of an hour on 2 CPU cores, and on the zoo pair no draft is accepted (results/cspd/README.md).
ENTRIES = [
    MethodEntry("cspd-target-only", "mar", build_target_only, models=(TARGET,), experiment="cspd", quick=False,
                params={"decode": "target MAR alone, one token per AR step", "law": "one-token"},
                unavailable=missing_with()),
    entry("cspd", quick=False, gamma=32),
    entry("cspd-independent", quick=False, gamma=32, verify="independent"),
    entry("cspd-textbook", quick=False, gamma=4, conditioning="textbook"),
    entry("cspd-disa", quick=False, gamma=32, schedule=DISA_SPEC),
    target_only_entry("cspd-disa-target-only", quick=False, schedule=DISA_SPEC),
]
