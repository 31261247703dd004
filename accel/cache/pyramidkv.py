"""PyramidKV (Cai et al., arXiv 2406.02069): SnapKV selection with layer-decayed ("pyramidal") budgets.

Lower layers attend broadly and get more tokens, upper layers fewer: at each compressed scale the budgets
form the arithmetic sequence of ``budgets.pyramid`` (b_max at layer 0 down to b_min = (b - W)/beta + W at
the last layer), summing to exactly the uniform total N * B_u(k).
"""
from __future__ import annotations

from dataclasses import dataclass

from accel.cache.budgets import Budget, pyramid
from accel.cache.snapkv import SnapKV


@dataclass(frozen=True)
class PyramidKV(SnapKV):
    """``budget`` must already be pyramidal; build one from a uniform budget with ``from_uniform``."""

    beta: float = 20.0

    @classmethod
    def from_uniform(cls, base: Budget, *, beta: float = 20.0, window: int = 16, kernel: int = 5,
                     scoring: str = "paper") -> "PyramidKV":
        return cls(pyramid(base, beta=beta, window=window), window=window, kernel=kernel, scoring=scoring, beta=beta)
