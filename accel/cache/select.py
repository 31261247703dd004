"""Shared pieces of scored KV selection (SnapKV 2404.14469, PyramidKV 2406.02069, ScaleKV 2505.19602).

All pure functions of tensors. Shapes: ``k, v`` (B, H, L, D) whole history (this scale's n tokens last),
``q`` (B, H, n, D) this scale's queries with ``logits = q @ k^T`` (softmax scale already folded in).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SCORINGS = ("paper", "code")


def check_inputs(k: Tensor, v: Tensor, q: Tensor, n_current: int | None = None) -> None:
    if k.dim() != 4 or k.shape != v.shape:
        raise ValueError(f"k and v must both be (B, H, L, D); got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q must be (B, H, Lq, D) matching k {tuple(k.shape)}; got {tuple(q.shape)}")
    if q.shape[2] > k.shape[2]:
        raise ValueError(f"{q.shape[2]} queries but only {k.shape[2]} cached keys: k must include this scale")
    if n_current is not None and q.shape[2] != n_current:
        raise ValueError(f"q has {q.shape[2]} queries but this scale has {n_current} tokens (wrong schedule?)")


def gather(k: Tensor, v: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Keep positions ``idx`` (B, H, m), sorted ascending so the kept cache stays in time order."""
    idx = idx.sort(dim=-1).values.unsqueeze(-1).expand(-1, -1, -1, k.shape[-1])  # (B, H, m, D)
    return k.gather(2, idx), v.gather(2, idx)


def keep_fixed(k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the same positions (1-D, ascending) in every batch row and head (window-type policies)."""
    return k.index_select(2, positions), v.index_select(2, positions)


def pool(scores: Tensor, kernel: int, mode: str) -> Tensor:
    """1-D pooling along keys, stride 1, 'same' padding (SnapKV's clustering of neighbouring keys)."""
    if kernel <= 1:
        return scores
    if kernel % 2 == 0:
        raise ValueError(f"pooling kernel must be odd, got {kernel}")
    B, H, L = scores.shape
    x = scores.reshape(B * H, 1, L)
    if mode == "avg":
        x = F.avg_pool1d(x, kernel, stride=1, padding=kernel // 2)  # count_include_pad, as SnapKV
    elif mode == "max":
        x = F.max_pool1d(x, kernel, stride=1, padding=kernel // 2)
    else:
        raise ValueError(f"pooling must be 'avg' or 'max', got {mode!r}")
    return x.reshape(B, H, L)


def window_scores(q_win: Tensor, k: Tensor, win_pos: Tensor, scoring: str, kernel: int) -> Tensor:
    """Importance of every key for the observation-window queries, window keys set to -inf. (B, H, L).

    * ``"paper"`` (ScaleKV Eq. 4, SnapKV): ``s_j = sum_{i in W} softmax_j(q_i k_j)`` over all keys, then
      average pooling.
    * ``"code"`` (released ScaleKV ``update_kv``): raw logits ``sum_{i in W} q_i k_j`` with the window keys
      masked to -inf, then max pooling.
    """
    logits = q_win.float() @ k.float().transpose(-1, -2)  # (B, H, W, L), fp32: softmax is fragile
    if scoring == "paper":
        s = pool(logits.softmax(dim=-1).sum(dim=-2), kernel, "avg")
    elif scoring == "code":
        s = logits.sum(dim=-2)
        s[..., win_pos] = float("-inf")
        s = pool(s, kernel, "max")
    else:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    s[..., win_pos] = float("-inf")
    return s


def select_with_window(k: Tensor, v: Tensor, scores: Tensor, win_pos: Tensor, budget: int) -> tuple[Tensor, Tensor]:
    """Keep the window positions plus the ``budget - |W|`` best-scored others, per batch row and head."""
    n_win = win_pos.numel()
    if budget < n_win:
        raise ValueError(f"budget {budget} is smaller than the observation window ({n_win} tokens)")
    B, H, L, _ = k.shape
    top = scores.topk(budget - n_win, dim=-1).indices  # (B, H, budget - W); window scores are -inf
    idx = torch.cat((top, win_pos.to(top.device).expand(B, H, n_win)), dim=-1)
    return gather(k, v, idx)


def centroid_window(h: int, w: int, size: int) -> Tensor | None:
    """ScaleKV's observation window: the centre token of each of g x g patches (g = sqrt(size)) of an h x w
    map, as flat indices into the map; ``None`` when the map is smaller than the grid (caller falls back)."""
    g = int(round(size ** 0.5))
    if g * g != size:
        raise ValueError(f"centroid window size must be a square number, got {size}")
    if h < g or w < g:
        return None
    rows = [i * (h // g) + (h // g - 1) // 2 for i in range(g)]
    cols = [j * (w // g) + (w // g - 1) // 2 for j in range(g)]
    return torch.tensor([r * w + c for r in rows for c in cols], dtype=torch.long)


def target(budget, layer: int, scale: int, k: Tensor, v: Tensor, q: Tensor) -> int | None:
    """The token count to keep at (layer, scale), or ``None`` for the identity short-circuit (no budget
    there, or the cache already fits). Validates shapes against the budget's schedule."""
    h, w = budget.maps[scale]
    check_inputs(k, v, q, h * w)
    b = budget.keep(layer, scale)
    return None if b is None or b >= k.shape[2] else b
