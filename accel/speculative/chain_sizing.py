"""γ of a chain speculative method, chosen on the device it runs on (issue 18, item 4; ``sizing.py`` holds the model).

A round of γ drafts costs ``γ · t_draft_step + t_verify(γ + 1) + t_loop`` and emits ``E(γ) = 1 + sum_i prod_{j<=i}
a_j`` tokens (Leviathan et al. 2023, Eq. 1, with the measured per-position acceptance a_j). ``size_chain`` measures
every term on the method's own device and batch size, then ``sizing.choose_chain`` picks the γ with the most tokens
per second:

- a_j, ``t_draft_step``, ``t_loop``: calibration decodes at γ_max (labels cycling through the classes; a seeded
  generator of their own, so the caller's stream is not touched) with the drafter's ``propose`` and the target's
  forwards clocked; ``t_loop`` is what is left of a round outside both (acceptance, sampling, bookkeeping), taken
  as the same for every γ;
- ``t_verify(T)``: the shape of ``sizing.verify_cost_curve`` (the target's forward over T = 1..γ_max + 1 tokens,
  CFG rows included, interleaved, medians), scaled so that T = γ_max + 1 costs what the calibration decodes'
  verify forwards did (median): the machine's speed can drift between the two measurements.

The chosen γ changes which random numbers a decode draws, so two machines may emit different tokens for one seed
(each from the same law: the exact rule's output does not depend on γ); pin an int γ to reproduce tokens.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from functools import partial

import torch

from accel.speculative.decoder import speculative_generate
from accel.speculative.sizing import Budget, choose_chain, device_sync, verify_cost_curve
from accel.validate import check_range


class Clocked:
    """An object (composition) whose calls are timed, the device synchronised around each: calling it (a target
    network) or its methods named in ``methods`` (a drafter's ``propose``, ``propose_tree``); ``times`` lists the
    seconds of each call, ``seconds`` their sum. Every other attribute is the inner object's."""

    def __init__(self, inner, device: torch.device, *methods: str):
        self.inner, self.device, self.methods, self.times = inner, device, methods, []

    @property
    def seconds(self) -> float:
        return sum(self.times)

    def _timed(self, fn, *a, **k):
        device_sync(self.device)
        t = time.perf_counter()
        out = fn(*a, **k)
        device_sync(self.device)
        self.times.append(time.perf_counter() - t)
        return out

    def __call__(self, *a, **k):
        return self._timed(self.inner, *a, **k)

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        return partial(self._timed, attr) if name in self.methods else attr


@dataclass(frozen=True)
class ChainSizing:
    """What ``size_chain`` measured and chose: ``gamma`` (>= 1), seconds per verify forward of T tokens (the whole
    batch), the acceptance profile, the per-round draft-step and loop seconds, and every γ ranked by tokens per
    second per image row (``chain0`` = no drafts: a plain step with the same loop; ``speculation_pays`` says
    whether the best γ >= 1 beats it)."""

    gamma: int
    batch_size: int
    verify_s: dict[int, float]
    accept_at: list[float]
    draft_step_s: float
    loop_s: float
    ranked: list[Budget]

    @property
    def speculation_pays(self) -> bool:
        best = next(b for b in self.ranked if b.name != "chain0")
        return best.tokens_per_second > next(b for b in self.ranked if b.name == "chain0").tokens_per_second

    def as_dict(self) -> dict:
        out = asdict(self)
        out["ranked"] = [(b.name, round(b.tokens_per_second, 3)) for b in self.ranked]
        return {**out, "speculation_pays": self.speculation_pays}


@torch.inference_mode()
def size_chain(method, batch_size: int = 1, *, gamma_max: int = 8, images: int = 32, repeats: int = 7,
               seed: int = 0) -> ChainSizing:
    """Measure the terms above for a chain ``SpeculativeLlamaGen`` at ``batch_size`` and return the best γ in
    ``[1, gamma_max]`` (``method`` is not changed; ``accel.size_gamma`` sets it). ``images``: how many the
    calibration decode draws (whole batches, at least one); ``repeats``: verify-curve medians per T."""
    if method.tree is not None or method.policy is not None:
        raise ValueError("size_chain sizes a plain chain (no tree, no compressed cache); pass an int gamma there")
    target, sc = method.target, method.sc
    check_range("gamma_max", gamma_max, 1, target.config.block_size - 2, integer=True)  # γ_max + 1 verify tokens
    check_range("batch_size", batch_size, 1, integer=True)
    check_range("images", images, 1, integer=True)
    dev = target.tok_embeddings.weight.device
    curve = verify_cost_curve(target, max_tokens=gamma_max + 1, cfg=sc.uses_cfg, repeats=repeats, batch=batch_size)
    target_c, drafter = Clocked(target, dev), Clocked(method.drafter, dev, "propose")
    g = torch.Generator(device=dev).manual_seed(seed)
    classes = target.config.num_classes

    def decode(i: int):  # the i-th calibration batch: labels cycle through the classes
        cond = (torch.arange(batch_size, device=dev) + i * batch_size) % classes
        return speculative_generate(target_c, drafter, method.rule, cond, sc, gamma=gamma_max, generator=g)[1]

    decode(-1)  # warm-up (first-call allocations), not counted
    calls = max(1, images // batch_size)
    target_c.times, drafter.times, total, verify = [], [], 0.0, []
    reached, accepted = [0] * gamma_max, [0] * gamma_max
    for i in range(calls):
        first = len(target_c.times)
        device_sync(dev)
        t = time.perf_counter()
        st = decode(i)
        device_sync(dev)
        total += time.perf_counter() - t
        verify += target_c.times[first + 1:]  # the first target call of a decode is its prefill
        reached = [a + b for a, b in zip(reached, st.reached)]
        accepted = [a + b for a, b in zip(accepted, st.accepted_at)]
    rounds = len(verify)
    accept_at = [a / r for a, r in zip(accepted, reached) if r]
    draft_step = drafter.seconds / rounds / gamma_max
    loop = max(0.0, (total - drafter.seconds - target_c.seconds) / rounds)  # outside drafter and target
    return choose_gamma(curve, statistics.median(verify), accept_at, draft_step, loop, gamma_max, batch_size)


def choose_gamma(curve: dict[int, float], verify_s: float, accept_at: list[float], draft_step_s: float,
                 loop_s: float, gamma_max: int, batch_size: int = 1) -> ChainSizing:
    """The decision of ``size_chain`` from its measurements: the curve's shape scaled so that T = γ_max + 1 costs
    ``verify_s`` (the calibration decodes' own verify forward: the machine's state can drift between the two
    measurements), every γ in [0, γ_max] ranked by ``sizing.choose_chain``, and the best γ >= 1."""
    scale = verify_s / curve[gamma_max + 1]
    curve = {T: v * scale for T, v in curve.items()}
    _, ranked = choose_chain(curve, accept_at, draft_step_s, loop_s, max_gamma=gamma_max)
    best = next(b for b in ranked if b.name != "chain0")
    return ChainSizing(int(best.name.removeprefix("chain")), batch_size, curve, accept_at, draft_step_s, loop_s,
                       ranked)
