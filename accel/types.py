"""The few types shared across accel (DESIGN.md §3). Keep this small."""
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
