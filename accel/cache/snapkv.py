"""SnapKV (Li et al., arXiv 2404.14469) adapted to scale-wise decoding.

Observation window W = the last ``window`` queries of the current scale (in raster order; the whole scale
when it is smaller). Each key j is scored by the attention the window pays it,
``s_j = sum_{i in W} softmax_j(q_i k_j)`` (SnapKV Eq. 1-2), smoothed by 1-D average pooling (kernel 5, the
released default) so neighbouring keys are kept together; each (batch row, head) keeps the top
``b - |W|`` keys plus the window keys. ``b = budget.keep(layer, scale)`` (identity when absent or already
fitting). PyramidKV (``pyramidkv.py``) reuses this selection with layer-decayed budgets.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from accel.cache.budgets import Budget
from accel.cache.select import SCORINGS, select_with_window, target, window_scores


@dataclass(frozen=True)
class SnapKV:
    budget: Budget
    window: int = 16
    kernel: int = 5
    scoring: str = "paper"  # "paper": softmax + avg pooling (SnapKV); "code": raw logits + max pooling

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")

    def compress(self, layer: int, scale: int, k: Tensor, v: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        b = target(self.budget, layer, scale, k, v, q)
        if b is None:
            return k, v
        L, n = k.shape[2], q.shape[2]
        w = min(self.window, n)
        win_pos = torch.arange(L - w, L, device=k.device)  # the window queries' own keys
        scores = window_scores(q[:, :, n - w:], k, win_pos, self.scoring, self.kernel)
        return select_with_window(k, v, scores, win_pos, b)
