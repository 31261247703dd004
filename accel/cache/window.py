"""Position-only baselines: sliding window and StreamingLLM (Xiao et al., arXiv 2309.17453).

Both keep the same positions in every batch row and head, need no scores, and keep exactly
``b = budget.keep(layer, scale)`` tokens (identity when there is no budget or the cache already fits).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from accel.cache.budgets import Budget
from accel.cache.select import keep_fixed, target


@dataclass(frozen=True)
class SlidingWindow:
    """Keep the ``b`` most recent cached tokens (the latest scales, in raster order)."""

    budget: Budget

    def compress(self, layer: int, scale: int, k: Tensor, v: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        b = target(self.budget, layer, scale, k, v, q)
        if b is None:
            return k, v
        L = k.shape[2]
        return keep_fixed(k, v, torch.arange(L - b, L, device=k.device))


@dataclass(frozen=True)
class StreamingLLM:
    """Attention sinks + recent window: the first ``sinks`` cached tokens (for VAR: the class/start token and
    the coarsest scales) plus the ``b - sinks`` most recent ones (2309.17453 §3.2: 4 sinks by default)."""

    budget: Budget
    sinks: int = 4

    def __post_init__(self):
        if self.sinks < 0:
            raise ValueError(f"sinks must be >= 0, got {self.sinks}")

    def compress(self, layer: int, scale: int, k: Tensor, v: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        b = target(self.budget, layer, scale, k, v, q)
        if b is None:
            return k, v
        L, s = k.shape[2], min(self.sinks, b)
        pos = torch.cat((torch.arange(s), torch.arange(L - (b - s), L))).to(k.device)
        return keep_fixed(k, v, pos)
