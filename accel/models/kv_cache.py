"""The explicit per-layer KV cache of scale-wise (VAR-style) decoding, and the KV-cache policy contract
(the protocol itself, ``CachePolicy``, lives with the central types in ``accel/types.py``).

Contract (DESIGN.md §3, shared by ScaleKV 2505.19602 and its baselines SnapKV, PyramidKV, StreamingLLM, ...)::

    policy.compress(layer, scale, k, v, q) -> (k, v)

* ``k``, ``v``: the layer's whole cached history *after* this scale's entries were appended,
  shape ``(B, H, L, D)`` (with CFG, B counts the conditional and unconditional rows separately).
* ``q``: this scale's queries exactly as used in the attention logits, shape ``(B, H, Lq, D)``, i.e.
  ``logits = q @ k.transpose(-1, -2)`` (VAR: l2-normalised q times ``scale_mul`` with softmax scale 1; for
  models with a ``1/sqrt(D)``-type scale the scale is folded into ``q``).
* Called once per (layer, scale), right *after* that scale's attention, so it shrinks only what later
  scales attend to. It returns the tensors to keep, shape ``(B, H, L', D)`` with ``L' <= L`` (same B, H, D;
  a scored gather, DESIGN.md habit 6). It must be a pure function of its inputs and its own fields.

DESIGN.md writes the last argument as ``attn``; accel passes the queries instead, because every policy here
scores keys from ``q @ k^T`` of its observation window only, and the fused attention kernel never forms the
full attention matrix (materialising it for the policy would cost more than the cache it saves).

``KeepAll`` is the identity policy; decoding with it must be bitwise equal to decoding without a policy.
``KVCache`` is the object the decode loop threads through the blocks: it appends once per scale, applies
the policy, and records the exact bytes it holds per layer and scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from accel.types import CachePolicy


@dataclass(frozen=True)
class KeepAll:
    """Full cache: returns its inputs unchanged (the 100 % budget reference)."""

    def compress(self, layer: int, scale: int, k: Tensor, v: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        return k, v


def tensor_bytes(*ts: Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


class KVCache:
    """Per-layer key/value history of one scale-wise decode, shape ``(B, H, L_kept, D)`` per layer.

    Per (layer, scale) the attention calls ``append`` (this scale's k/v joined to the history; the result is
    what this scale's queries attend to) and then ``compress`` (policy applied, kept tensors stored).
    ``attended_bytes[scale][layer]`` = bytes of k+v this scale attended to; ``kept_bytes[scale][layer]`` =
    bytes of k+v kept for later scales (exact ``numel * element_size`` of the stored tensors).
    """

    def __init__(self, num_layers: int, policy: CachePolicy | None = None):
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if policy is not None and not isinstance(policy, CachePolicy):
            raise TypeError(f"policy must have compress(layer, scale, k, v, q); got {type(policy).__name__}")
        self.num_layers, self.policy = num_layers, policy
        self.k: list[Tensor | None] = [None] * num_layers
        self.v: list[Tensor | None] = [None] * num_layers
        self.attended_bytes: list[list[int]] = []
        self.kept_bytes: list[list[int]] = []

    def _row(self, table: list[list[int]], scale: int) -> list[int]:
        while len(table) <= scale:
            table.append([0] * self.num_layers)
        return table[scale]

    def append(self, layer: int, scale: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Join this scale's ``k, v`` (B, H, l, D) to the layer's history; returns the full (B, H, L, D) pair."""
        if k.shape != v.shape or k.dim() != 4:
            raise ValueError(f"k and v must both be (B, H, l, D); got {tuple(k.shape)} and {tuple(v.shape)}")
        if self.k[layer] is not None:
            k = torch.cat((self.k[layer], k), dim=2)
            v = torch.cat((self.v[layer], v), dim=2)
        self.k[layer], self.v[layer] = k, v
        self._row(self.attended_bytes, scale)[layer] = tensor_bytes(k, v)
        return k, v

    def compress(self, layer: int, scale: int, q: Tensor) -> None:
        """Apply the policy to the layer's history (after this scale's attention); store what it keeps."""
        k, v = self.k[layer], self.v[layer]
        if k is None:
            raise RuntimeError(f"compress(layer={layer}) before any append")
        if self.policy is not None:
            k2, v2 = self.policy.compress(layer, scale, k, v, q)
            B, H, L, D = k.shape
            for name, t in (("k", k2), ("v", v2)):
                if t.dim() != 4 or (t.shape[0], t.shape[1], t.shape[3]) != (B, H, D) or t.shape[2] > L:
                    raise ValueError(f"{type(self.policy).__name__}.compress(layer={layer}, scale={scale}) returned "
                                     f"{name} of shape {tuple(t.shape)}; expected (B={B}, H={H}, L'<={L}, D={D})")
            if k2.shape != v2.shape:
                raise ValueError(f"policy returned k {tuple(k2.shape)} and v {tuple(v2.shape)} of different shapes")
            k, v = k2, v2
        self.k[layer], self.v[layer] = k, v
        self._row(self.kept_bytes, scale)[layer] = tensor_bytes(k, v)

    def length(self, layer: int) -> int:
        """Number of cached positions the layer currently keeps."""
        return 0 if self.k[layer] is None else self.k[layer].shape[2]

    def bytes(self) -> int:
        """Bytes of k+v held right now, over all layers."""
        return sum(tensor_bytes(k, v) for k, v in zip(self.k, self.v) if k is not None)

    def peak_attended_bytes(self) -> int:
        """Largest total (over layers) k+v bytes any scale attended to."""
        return max((sum(row) for row in self.attended_bytes), default=0)
