"""Per-(layer, scale) KV budgets for scale-wise decoding: uniform, PyramidKV and ScaleKV allocations.

Notation (ScaleKV, arXiv 2505.19602 §3; VAR 2404.02905):

    n_k   tokens of scale k (h_k * w_k);            H_k = n_0 + ... + n_k   full history after scale k
    N     layers;  f  budget fraction;              B_u(k) = floor(f * H_k) uniform tokens per layer
    b_{l,k} tokens layer l keeps after scale k     (None = keep everything, no compression)

**Budget %** is defined as kept tokens over full history at the compressed scales:
``sum_{l, k in S} b_{l,k} / sum_{l, k in S} H_k`` -- a token count, stated separately from memory (bytes).
Because ``B_u(k) = floor(f H_k)``, every compressed scale holds at most ``f`` of the full history, so the
cache bytes kept there are at most ``f`` of the full-cache bytes.

**Compressed scales** S: every scale except the last (nothing attends after it) whose uniform budget is at
least ``min_keep`` tokens (the observation window must fit) and smaller than the history. This mirrors the
released ScaleKV code, which only starts evicting once the cache exceeds its capacity.

**Conservation.** Every non-uniform allocation here keeps, at each compressed scale, the same total as the
uniform one: ``sum_l b_{l,k} = N * B_u(k)``; hence also the paper's total ``B_uniform * N * K``.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

MapSize = tuple[int, int]


def map_sizes(patch_nums: Sequence[int | Sequence[int]]) -> tuple[MapSize, ...]:
    """(h, w) of every scale; VAR's ``patch_nums`` are square side lengths, (h, w) pairs are accepted too."""
    out = []
    for p in patch_nums:
        h, w = (int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1]))
        if h < 1 or w < 1:
            raise ValueError(f"map sizes must be positive, got {p}")
        out.append((h, w))
    if not out:
        raise ValueError("patch_nums is empty")
    return tuple(out)


def history_lengths(maps: Sequence[MapSize]) -> tuple[int, ...]:
    """H_k = number of cached tokens after scale k without compression (cumulative n_k)."""
    return tuple(itertools.accumulate(h * w for h, w in maps))


@dataclass(frozen=True)
class Budget:
    """Tokens each layer keeps after each scale: ``tokens[scale][layer]`` (``None`` = keep all)."""

    maps: tuple[MapSize, ...]
    tokens: tuple[tuple[int | None, ...], ...]

    def __post_init__(self):
        if len(self.tokens) != len(self.maps):
            raise ValueError(f"budget has {len(self.tokens)} scales but the schedule has {len(self.maps)}")
        hist = self.history
        for k, row in enumerate(self.tokens):
            if len(row) != self.depth:
                raise ValueError(f"scale {k}: {len(row)} layers, expected {self.depth}")
            for l, b in enumerate(row):
                if b is not None and not 0 < b <= hist[k]:
                    raise ValueError(f"budget[{k}][{l}] = {b} outside (0, H_k={hist[k]}]")

    @property
    def depth(self) -> int:
        return len(self.tokens[0])

    @property
    def history(self) -> tuple[int, ...]:
        return history_lengths(self.maps)

    def keep(self, layer: int, scale: int) -> int | None:
        if not (0 <= scale < len(self.maps) and 0 <= layer < self.depth):
            raise IndexError(f"(layer={layer}, scale={scale}) outside {self.depth} layers x {len(self.maps)} scales")
        return self.tokens[scale][layer]

    @property
    def compressed_scales(self) -> tuple[int, ...]:
        return tuple(k for k, row in enumerate(self.tokens) if any(b is not None for b in row))

    def kept_fraction(self) -> float:
        """Budget %: kept tokens / full history over all layers at the compressed scales (1.0 if none: then
        the whole cache is kept, never NaN)."""
        hist, S = self.history, self.compressed_scales
        kept = sum(hist[k] if b is None else b for k in S for b in self.tokens[k])
        full = sum(hist[k] * self.depth for k in S)
        return kept / full if full else 1.0

    def to_dict(self) -> dict:
        return {"maps": [list(m) for m in self.maps], "tokens": [list(r) for r in self.tokens]}

    @classmethod
    def from_dict(cls, d: dict) -> "Budget":
        return cls(tuple(tuple(m) for m in d["maps"]), tuple(tuple(r) for r in d["tokens"]))

    def kept_tokens(self) -> list[list[int]]:
        """Tokens each layer holds after every scale: a capped scale keeps its cap, an uncapped one what it
        attended to (the history so far plus its own tokens). Defined for budgets whose layers keep the same
        count (``uniform``), since the next scale's history is that count."""
        kept, prev = [], 0
        for k, (h, w) in enumerate(self.maps):
            L = prev + h * w
            kept.append([L if b is None or b >= L else b for b in self.tokens[k]])
            if len(set(kept[-1])) != 1:
                raise ValueError(f"scale {k}: layers keep different counts {kept[-1]}; kept_tokens needs a "
                                 "layer-uniform budget")
            prev = kept[-1][0]
        return kept


def uniform(patch_nums, depth: int, fraction: float, *, min_keep: int = 1) -> Budget:
    """B_u(k) = floor(f * H_k) for every layer at every compressed scale (see module docstring)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if depth < 1 or min_keep < 1:
        raise ValueError(f"depth and min_keep must be >= 1, got {depth}, {min_keep}")
    maps = map_sizes(patch_nums)
    rows = []
    hist = history_lengths(maps)
    for k, H in enumerate(hist):
        b = math.floor(fraction * H + 1e-9)  # + 1e-9: 0.1 * 650 must give 65, not 64
        compress = k < len(maps) - 1 and min_keep <= b < H
        rows.append((b if compress else None,) * depth)
    asked = any(math.floor(fraction * H + 1e-9) < H for H in hist[:-1])
    if asked and all(r[0] is None for r in rows):
        # nothing can be compressed: keeping the whole cache would silently use more memory than asked for
        fits = [H for H in hist[:-1] if H > min_keep]
        smallest = f"the smallest feasible fraction is {min_keep / max(fits):.4g} (window {min_keep} of " \
                   f"{max(fits)} cached tokens)" if fits else f"no scale before the last caches more than {min_keep} tokens"
        raise ValueError(f"KV budget fraction={fraction:g} cannot be met with an observation window of {min_keep} "
                         f"tokens: every compressible scale would keep fewer tokens than the window; {smallest}. "
                         "Raise the fraction or lower the window")
    return Budget(maps, tuple(rows))


def allocate(targets: Sequence[float], total: int, lo: int, hi: int) -> list[int]:
    """Integers b_i in [lo, hi] with sum exactly ``total``, as close to ``targets`` as an additive shift allows.

    Find lambda with sum_i clip(t_i + lambda, lo, hi) = total (monotone: bisection), then floor and hand the
    remainder to the largest fractional parts. Raises if ``total`` is outside [n*lo, n*hi].
    """
    n = len(targets)
    if not n * lo <= total <= n * hi:
        raise ValueError(f"cannot split {total} tokens over {n} layers within [{lo}, {hi}]")
    clip = lambda x: min(max(x, lo), hi)  # noqa: E731
    a, b = lo - max(targets) - 1.0, hi - min(targets) + 1.0
    for _ in range(200):
        mid = (a + b) / 2
        a, b = (mid, b) if sum(clip(t + mid) for t in targets) < total else (a, mid)
    x = [clip(t + b) for t in targets]
    out = [min(math.floor(xi), hi) for xi in x]
    order = sorted(range(n), key=lambda i: (-(x[i] - out[i]), i))
    rem = total - sum(out)
    while rem != 0:  # at most a few passes; bounds keep it feasible
        for i in order:
            if rem > 0 and out[i] < hi:
                out[i] += 1
                rem -= 1
            elif rem < 0 and out[i] > lo:
                out[i] -= 1
                rem += 1
            if rem == 0:
                break
    return out


def pyramid(base: Budget, *, beta: float = 20.0, window: int = 0) -> Budget:
    """PyramidKV (arXiv 2406.02069) layer-decayed budgets, same per-scale total as ``base`` (uniform).

    With uniform b and window W: b_min = (b - W) / beta, b_max = 2 (b - W) - b_min, and layer l gets
    b_max - l (b_max - b_min) / (N - 1) + W (an arithmetic sequence whose mean is b), then integerised
    with ``allocate`` so the layers sum to exactly N * b.
    """
    rows = []
    hist = base.history
    for k, row in enumerate(base.tokens):
        if any(b is None for b in row):
            rows.append(row)
            continue
        N, total = len(row), sum(row)
        b = total / N
        bmin = (b - window) / beta
        bmax = 2 * (b - window) - bmin
        step = (bmax - bmin) / (N - 1) if N > 1 else 0.0
        targets = [bmax - l * step + window for l in range(N)]
        rows.append(tuple(allocate(targets, total, max(window, 1), hist[k])))
    return Budget(base.maps, tuple(rows))


def scalekv(base: Budget, z: Sequence[Sequence[float] | None], *, drafter_fraction: float = 0.125,
            split: str = "paper", refiner_start: float = 600 / 650, refiner_decay: float = 70 / 650,
            window: int = 1) -> tuple[Budget, tuple[tuple[bool, ...], ...]]:
    """ScaleKV budgets (2505.19602 §3.3): drafters (low z-normalised ASI) get more, refiners less.

    Drafters: the ``round(drafter_fraction * N * |S|)`` lowest z over all (layer, compressed scale) pairs
    (the paper ranks all pairs jointly after per-scale z-normalisation). At the j-th compressed scale k,
    with N_d drafters and N_r refiners, the total stays ``N * B_u(k)`` (module docstring), and:

    * ``split="paper"``: linear refiner decay ``B_r(k) = B_u(k) * (refiner_start - refiner_decay * j)``
      (defaults = the paper's ablation B_r(0) = 600, delta = 70 at B_uniform = 650, made relative to B_u(k)
      because VAR's uniform budget grows with the scale); drafters get
      ``B_d(k) = (N B_u(k) - N_r B_r(k)) / N_d``.
    * ``split="code"``: the released code's JSONs: drafters keep the whole history H_k and refiners share
      the rest, ``B_r(k) = (N B_u(k) - N_d H_k) / N_r``.

    Both are integerised by ``allocate`` within [window, H_k] (a drafter capped at H_k returns its excess
    to the refiners; refiners never go below the observation window). A scale with no drafter or no
    refiner stays uniform. Returns the budget and the drafter mask ``[scale][layer]``.
    """
    if split not in ("paper", "code"):
        raise ValueError(f"split must be 'paper' or 'code', got {split!r}")
    if not 0.0 <= drafter_fraction <= 1.0:
        raise ValueError(f"drafter_fraction must be in [0, 1], got {drafter_fraction}")
    S, N, hist = base.compressed_scales, base.depth, base.history
    if len(z) != len(base.maps):
        raise ValueError(f"z has {len(z)} scales, the schedule {len(base.maps)}")
    pairs = []
    for k in S:
        if z[k] is None or len(z[k]) != N:
            raise ValueError(f"compressed scale {k} needs {N} z-scores (ASI calibration), got {z[k]}")
        pairs += [(float(z[k][l]), k, l) for l in range(N)]
    n_d = round(drafter_fraction * len(pairs))
    drafters = {(k, l) for _, k, l in sorted(pairs)[:n_d]}
    mask = tuple(tuple((k, l) in drafters for l in range(N)) for k in range(len(base.maps)))
    rows = list(base.tokens)
    for j, k in enumerate(S):
        total, D = sum(base.tokens[k]), [l for l in range(N) if mask[k][l]]
        if not D or len(D) == N:
            continue
        b, n_r = total / N, N - len(D)
        if split == "paper":
            br = b * max(refiner_start - refiner_decay * j, 0.0)
            bd = (total - n_r * br) / len(D)
        else:
            bd = float(hist[k])
            br = (total - len(D) * bd) / n_r
        targets = [bd if mask[k][l] else br for l in range(N)]
        rows[k] = tuple(allocate(targets, total, max(window, 1), hist[k]))
    return Budget(base.maps, tuple(rows)), mask


def choose_window(patch_nums, depth: int, fraction: float, max_window: int = 16) -> int:
    """Observation window (a square number, ScaleKV's g x g centroids) for a small model: the largest square
    <= ``max_window`` and <= half the uniform budget at the last compressed-before-final scale
    (the paper's 16 tokens assume 650-token budgets; the zoo VAR keeps only a few tokens)."""
    b = uniform(patch_nums, depth, fraction, min_keep=1).tokens[len(patch_nums) - 2][0]
    if b is None:
        return 1
    return max(1, min(int(math.isqrt(max_window)), int(math.isqrt(max(b // 2, 1))))) ** 2
