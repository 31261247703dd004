"""The few types and interfaces shared across accel (DESIGN.md §3). Keep this small.

- ``Sample`` / ``Method``: what every decode returns, and the only seam the harness knows.
- ``StepSchedule``: diffusion steps per AR step (DiSA's schedules; MAR's plans and CSpD take them).
- ``CachePolicy``: which cached keys/values a layer keeps (ScaleKV and its baselines; VAR and LlamaGen caches).
- ``Drafter`` / ``AcceptanceRule``: what speculative decoding's loops call (p = target, q = draft).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass
class Sample:
    """What every method returns: images in [0, 1] plus work counters.

    ``stats`` keys used across the harness: nfe_target, nfe_draft, accepted, drafted, verify_steps,
    head_steps, kv_bytes, tokens (generated token ids, when the family has them), ... Absent = not applicable.
    """

    images: torch.Tensor  # (B, 3, H, W) float in [0, 1]
    stats: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Method(Protocol):
    """The only seam the harness knows: ``generate(cond, generator=...) -> Sample``."""

    name: str

    def generate(self, cond: torch.Tensor, *, generator: torch.Generator) -> Sample: ...


@runtime_checkable
class CachePolicy(Protocol):
    """Decides which cached keys/values a layer keeps after a scale or chunk (``accel/models/kv_cache.py``):
    ``compress(layer, scale, k, v, q) -> (k, v)`` with the history ``(B, H, L, D)`` and that step's queries."""

    def compress(self, layer: int, scale: int, k: Tensor, v: Tensor, q: Tensor) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class StepSchedule(Protocol):
    """``schedule(ar_step, num_ar_steps) -> diffusion steps`` and the head timesteps it runs (DiSA, Eq. 6)."""

    def __call__(self, ar_step: int, num_ar_steps: int) -> int: ...

    def timesteps(self, ar_step: int, num_ar_steps: int) -> tuple[int, ...]: ...


@runtime_checkable
class Drafter(Protocol):
    """Proposes draft tokens for LlamaGen's speculative loops (``accel/speculative/drafters.py``):
    ``begin(labels, max_len) -> state``; ``propose(state, gamma, sc, greedy, generator, *, c_max=None) -> (drafts
    (B, γ), q (B, γ, V))`` (``c_max``: the committed lengths' maximum, already on the host; None = read it);
    ``observe(state, seq, start, hidden, n_new)`` after each target forward."""

    def begin(self, labels: Tensor, max_len: int): ...

    def propose(self, state, gamma: int, sc, greedy: bool, generator: torch.Generator | None, *,
                c_max: int | None = None): ...

    def observe(self, state, seq: Tensor, start: Tensor, hidden: Tensor, n_new: Tensor) -> None: ...


@runtime_checkable
class AcceptanceRule(Protocol):
    """Speculative acceptance (``accel/speculative/rules.py``, ``lantern.py``): the probability of accepting draft
    ``x`` given target ``p`` and draft ``q`` (B, V), and the distribution to resample from on rejection."""

    def accept_prob(self, p: Tensor, q: Tensor, x: Tensor) -> Tensor: ...

    def residual(self, p: Tensor, q: Tensor, x: Tensor) -> Tensor: ...
