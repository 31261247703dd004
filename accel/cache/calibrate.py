"""ScaleKV calibration: the Attention Selectivity Index (ASI) of every (layer, scale), arXiv 2505.19602 §3.2.

For layer l at scale k with softmax attention alpha_ij of query i (current map r_k) to key j, history keys
P_{k-1} and current keys C_k:

    ASI(l, k) = E_i[ sum_{j in C_k} alpha_ij ]  *  E_i[ TopK'Sum_{j in P_{k-1}} alpha_ij / sum_{j in P_{k-1}} alpha_ij ]
                 (current-map attention ratio)      (history top-K' ratio)

High ASI = refiner (looks at the current map, and what it takes from history is concentrated), low = drafter.
Interpretation choices, stated (the extracted paper text leaves them open): the operator is the product
("." in the PDF); the history top-K' sum is taken *relative to the history mass* (else it is bounded by
1 - current ratio and the product would rank strongly-refining layers as drafters);
K' = ceil(topk_fraction * |P_{k-1}|); expectations also run over heads, batch rows and calibration images.
Z(l, k) = (ASI(l, k) - mu_k) / (sigma_k + eps) per scale over layers (population std).

``ASIRecorder`` is a cache policy that keeps everything (calibration runs on the full cache) and accumulates
the two expectations; it is deterministic given the decode's inputs (no randomness of its own).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm import tqdm

from accel.cache.budgets import map_sizes
from accel.cache.select import check_inputs


@dataclass
class ASIRecorder:
    topk_fraction: float = 0.1
    query_chunk: int = 1024  # bounds the (B, H, chunk, L) attention matrix in memory
    sums: dict = field(default_factory=dict)  # (layer, scale) -> [sum current ratio, sum top-K' ratio, count]

    def __post_init__(self):
        if not 0.0 < self.topk_fraction <= 1.0:
            raise ValueError(f"topk_fraction must be in (0, 1], got {self.topk_fraction}")

    def compress(self, layer: int, scale: int, k: Tensor, v: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        check_inputs(k, v, q)
        L, n = k.shape[2], q.shape[2]
        P = L - n
        if P == 0:  # first scale: no history, no index
            return k, v
        kp = max(1, math.ceil(self.topk_fraction * P))
        acc = self.sums.setdefault((layer, scale), [0.0, 0.0, 0])
        for s in range(0, n, self.query_chunk):
            a = (q[:, :, s:s + self.query_chunk].double() @ k.double().transpose(-1, -2)).softmax(-1)  # (B,H,c,L)
            hist = a[..., :P]
            acc[0] += a[..., P:].sum(-1).sum().item()
            acc[1] += (hist.topk(kp, dim=-1).values.sum(-1) / hist.sum(-1).clamp_min(1e-300)).sum().item()
            acc[2] += hist.shape[0] * hist.shape[1] * hist.shape[2]
        return k, v

    def asi(self, depth: int, num_scales: int) -> list[list[float] | None]:
        """ASI[scale][layer] (None for scales never seen, e.g. the first)."""
        out = []
        for kk in range(num_scales):
            if all((l, kk) not in self.sums for l in range(depth)):
                out.append(None)
                continue
            row = []
            for l in range(depth):
                if (l, kk) not in self.sums:
                    raise RuntimeError(f"layer {l} was not recorded at scale {kk}")
                c, r, n = self.sums[(l, kk)]
                row.append((c / n) * (r / n))
            out.append(row)
        return out


def znormalise(asi: list[list[float] | None], eps: float = 1e-6) -> list[list[float] | None]:
    """Z-normalise per scale over layers."""
    out = []
    for row in asi:
        if row is None:
            out.append(None)
            continue
        t = torch.tensor(row, dtype=torch.float64)
        out.append(((t - t.mean()) / (t.std(unbiased=False) + eps)).tolist())
    return out


def calibration_dict(recorder: ASIRecorder, maps, depth: int, **meta) -> dict:
    """The JSON-able calibration result: schedule, ASI, Z and free-form provenance ``meta``."""
    asi = recorder.asi(depth, len(maps))
    return {"method": "scalekv-asi", "maps": [list(m) for m in maps], "depth": depth,
            "topk_fraction": recorder.topk_fraction, "asi": asi, "z": znormalise(asi), **meta}


def calibrate_var(var, vae, *, n_images: int = 16, batch_size: int = 8, seed: int = 0, cfg: float = 1.5,
                  top_k: int = 0, top_p: float = 0.0, topk_fraction: float = 0.1, progress: bool = False) -> dict:
    """ASI of a VAR model from full-cache decodes of ``n_images`` (labels ``i % num_classes``; batch j seeded
    ``seed + j``). Deterministic for fixed inputs on a fixed device (no other randomness)."""
    if n_images < 1 or batch_size < 1:
        raise ValueError(f"n_images and batch_size must be >= 1, got {n_images}, {batch_size}")
    dev = next(var.parameters()).device
    rec = ASIRecorder(topk_fraction=topk_fraction)
    starts = range(0, n_images, batch_size)
    for j, s in enumerate(tqdm(starts, desc="ScaleKV calibration", disable=not progress)):
        labels = torch.arange(s, min(s + batch_size, n_images), device=dev) % var.num_classes
        g = torch.Generator(device=dev).manual_seed(seed + j)
        var.autoregressive_infer_cfg(vae, labels.shape[0], labels, generator=g, cfg=cfg, top_k=top_k, top_p=top_p,
                                     policy=rec)
    return calibration_dict(rec, map_sizes(var.patch_nums), var.depth, n_images=n_images, batch_size=batch_size,
                            seed=seed, cfg=cfg, top_k=top_k, top_p=top_p)
