"""``CompressedVAR``: a VAR sampler with a KV-cache policy, as a harness ``Method`` (DESIGN.md §3).

Composition by wrapping: ``CompressedVAR(var, vae, policy)``; ``policy=None`` or ``KeepAll()`` is the
full-cache reference. ``Sample.stats`` carries the exact cache bytes the decode held (from ``KVCache``):
``kv_bytes`` = peak bytes any scale attended to (kept history + that scale's fresh k/v, all layers),
``kv_kept_bytes`` / ``kv_attended_bytes`` per scale (summed over layers) and ``tokens`` (B, L).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from accel.types import CachePolicy
from accel.types import Sample


@dataclass
class CompressedVAR:
    var: torch.nn.Module  # accel.models.var.VAR
    vae: torch.nn.Module  # accel.models.var_vqvae.VQVAE
    policy: CachePolicy | None = None
    name: str = "var"
    cfg: float = 1.5
    top_k: int = 0
    top_p: float = 0.0

    @torch.inference_mode()
    def generate(self, cond: torch.Tensor, *, generator: torch.Generator) -> Sample:
        out = self.var.autoregressive_infer_cfg(self.vae, cond.shape[0], cond, generator=generator, cfg=self.cfg,
                                                top_k=self.top_k, top_p=self.top_p, policy=self.policy)
        c = out.cache
        stats = {
            "nfe_target": len(out.idx_Bl),
            "tokens": torch.cat(out.idx_Bl, dim=1),
            "kv_bytes": c.peak_attended_bytes(),
            "kv_kept_bytes": [sum(r) for r in c.kept_bytes],
            "kv_attended_bytes": [sum(r) for r in c.attended_bytes],
            "kv_kept_table": [list(r) for r in c.kept_bytes],
            "kv_attended_table": [list(r) for r in c.attended_bytes],
        }
        return Sample(out.images, stats)
