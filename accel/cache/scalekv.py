"""ScaleKV (Li et al., arXiv 2505.19602): scale-aware KV cache compression for next-scale prediction.

Notation (paper §3 -> code):

    ASI(l, k)  Attention Selectivity Index of layer l at scale k    calibrate.asi_table / calibrate.ASIRecorder
    Z(l, k)    ASI z-normalised per scale                           calibrate.znormalise
    drafter    low Z (dispersed attention): large cache             budgets.scalekv(..., mask)
    refiner    high Z (attends to the current map): small cache
    B_r(k)     refiner budget, B_r(0) - delta * k (paper) or the released code's split  budgets.scalekv(split=)
    W          observation window: centre token of each of g x g patches of the current map (g = 4: 16 tokens)
    s_i^h      token score, Eq. 4: sum_{j in W} softmax(q_j K^T)_i, average pooling ("paper")
               or raw logits + max pooling, as the released code ("code")

Each (batch row, head) keeps the window tokens plus the top ``b - |W|`` others, with ``b`` from the ScaleKV
budget of (layer, scale); the total over layers equals the uniform budget at every compressed scale.
When the current map is smaller than the g x g grid the window falls back to the scale's last ``window``
tokens (as the released code does). Deviation from the released code, stated: it recomputes q without the
q bias / l2-norm / scale for scoring; here q is exactly the attention's q (the hook contract).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from accel.cache.budgets import Budget, scalekv as scalekv_budget, uniform
from accel.cache.select import SCORINGS, centroid_window, select_with_window, target, window_scores


@dataclass(frozen=True)
class ScaleKV:
    """``budget`` must be a ScaleKV allocation (see ``from_calibration``); ``drafters[scale][layer]`` records
    which layers it treats as drafters (informational)."""

    budget: Budget
    window: int = 16
    kernel: int = 5
    scoring: str = "paper"
    drafters: tuple[tuple[bool, ...], ...] | None = None

    def __post_init__(self):
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {self.scoring!r}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")

    def window_positions(self, scale: int, L: int) -> Tensor:
        """Flat cache positions of the observation window of ``scale`` when the cache holds ``L`` tokens."""
        h, w = self.budget.maps[scale]
        cw = centroid_window(h, w, self.window)
        if cw is None:
            cw = torch.arange(max(h * w - self.window, 0), h * w)
        return cw + (L - h * w)

    def compress(self, layer: int, scale: int, k: Tensor, v: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        b = target(self.budget, layer, scale, k, v, q)
        if b is None:
            return k, v
        L, n = k.shape[2], q.shape[2]
        win_pos = self.window_positions(scale, L).to(k.device)
        q_win = q.index_select(2, win_pos - (L - n))  # (B, H, |W|, D)
        scores = window_scores(q_win, k, win_pos, self.scoring, self.kernel)
        return select_with_window(k, v, scores, win_pos, b)

    @classmethod
    def from_calibration(cls, calib: dict, fraction: float, *, split: str = "paper", scoring: str = "paper",
                         drafter_fraction: float = 0.125, window: int = 16, kernel: int = 5,
                         refiner_start: float = 600 / 650, refiner_decay: float = 70 / 650) -> "ScaleKV":
        """Budgets from a calibration dict (``calibrate.calibration_dict``: maps, depth, z) at ``fraction``."""
        base = uniform(calib["maps"], calib["depth"], fraction, min_keep=window)
        budget, mask = scalekv_budget(base, calib["z"], drafter_fraction=drafter_fraction, split=split,
                                      refiner_start=refiner_start, refiner_decay=refiner_decay, window=window)
        return cls(budget, window=window, kernel=kernel, scoring=scoring, drafters=mask)
