"""Analytic KV-cache bytes, FLOPs and parameter counts of VAR inference, from a config alone (no weights).

Used for memory/compute tables of full-size models (VAR-d16..d36, any scale list) and to check the
bytes that ``KVCache`` measures. Notation: depth layers, C width, H heads (C = H * head_dim), hidden =
round(mlp_ratio * C), V vocab, Cvae codebook width, pn_s the side of scale s, l_s = pn_s^2 its tokens,
Lk_s the keys scale s attends to (full cache: Lk_s = l_0 + ... + l_s), rows = 2 with CFG (the official
sampler runs the conditional and the unconditional row for each image), else 1.

KV-cache bytes (keys and values of every layer for every cached token; Pope et al., "Efficiently Scaling
Transformer Inference", arXiv 2211.05102, Sec. 2: per token, every layer caches one key and one value
vector of width d_model = n_heads * d_head)::

    KV bytes = 2 * layers * tokens * dim * bytes_per_element * batch        (batch = rows per image)

With the full cache the peak is reached at the last scale, tokens = L = sum_s l_s (VAR-d16 at 256 px, fp16,
one row: 2 * 16 * 680 * 1024 * 2 B = 44.6 MB, as in shared/research/dd_var_scalekv.md §1.4). A cache policy
that keeps ``kept[s][layer]`` tokens after scale s makes scale s+1 attend to kept[s][layer] + l_{s+1} keys.

FLOPs (multiply-add = 2 FLOPs; matmuls only, elementwise ops such as norms, softmax, GELU and the
interpolations are left out; per-token terms as in Kaplan et al., "Scaling Laws for Neural Language Models",
arXiv 2001.08361, Table 1, with both attention matmuls counted as in Hoffmann et al., "Training
Compute-Optimal LLMs", arXiv 2203.15556, Appendix F). Per block, per row, at scale s::

    qkv       2 * l_s * C * 3C
    logits    2 * l_s * Lk_s * C          (q @ k^T over all heads)
    reduce    2 * l_s * Lk_s * C          (softmax(.) @ v)
    proj      2 * l_s * C * C
    ffn       2 * l_s * C * hidden * 2    (fc1 and fc2)
    adaln     2 * C * 6C                  (ada_lin on the class condition, once per block and scale;
                                           with shared_aln once per scale for all blocks)

plus per row and scale: head AdaLN 2 * C * 2C, head 2 * l_s * C * V, and word_embed 2 * l_s * Cvae * C
for every scale after the first (the first scale's input is the class embedding).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from accel.models.var import PATCH_NUMS, VARConfig


@dataclass(frozen=True)
class VARCost:
    """Per generated image (``rows`` rows through the transformer). ``kv_bytes_per_scale[s]`` = KV bytes that
    scale s attends to (all layers); ``kv_bytes_peak`` = their maximum; FLOPs per scale and in total."""

    patch_nums: tuple[int, ...]
    tokens: int
    rows: int
    kv_bytes_per_scale: tuple[int, ...]
    kv_bytes_peak: int
    flops_per_scale: tuple[int, ...]
    flops: int
    flops_breakdown: dict[str, int]


def kv_bytes(layers: int, tokens: int, dim: int, bytes_per_element: int, batch: int = 1) -> int:
    """KV bytes = 2 (k and v) * layers * tokens * dim * bytes_per_element * batch."""
    return 2 * layers * tokens * dim * bytes_per_element * batch


def attended_tokens(patch_nums: Sequence[int], depth: int,
                    kept: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """Keys each (scale, layer) attends to: the full history, or ``kept[s-1][layer] + l_s`` under a policy."""
    out, cum = [], 0
    for s, pn in enumerate(patch_nums):
        cum += pn * pn
        if kept is None or s == 0:
            out.append([cum] * depth)
        else:
            out.append([int(kept[s - 1][layer]) + pn * pn for layer in range(depth)])
    return out


def var_cost(cfg: VARConfig, vocab_size: int = 4096, Cvae: int = 32, patch_nums: Sequence[int] | None = None, *,
             bytes_per_element: int = 2, cfg_guidance: bool = True,
             kept: Sequence[Sequence[int]] | None = None) -> VARCost:
    """KV bytes and FLOPs per image of ``autoregressive_infer_cfg`` for ``cfg`` (scale list ``patch_nums``
    overrides the config's; ``kept[s][layer]`` = tokens a cache policy keeps after scale s)."""
    pns = tuple(int(p) for p in (patch_nums if patch_nums is not None else cfg.patch_nums))
    if not pns or any(p < 1 for p in pns):
        raise ValueError(f"patch_nums must be positive integers, got {pns}")
    if kept is not None and (len(kept) < len(pns) - 1 or any(len(row) != cfg.depth for row in kept)):
        raise ValueError(f"kept must have >= {len(pns) - 1} rows of {cfg.depth} layer counts")
    C, depth, rows = cfg.embed_dim, cfg.depth, 2 if cfg_guidance else 1
    hidden = round(C * cfg.mlp_ratio)
    keys = attended_tokens(pns, depth, kept)
    parts = dict(qkv=0, attn_logits=0, attn_reduce=0, proj=0, ffn=0, adaln=0, head_adaln=0, head=0, word_embed=0)
    per_scale, kv = [], []
    for s, pn in enumerate(pns):
        l = pn * pn
        f = dict(qkv=depth * 2 * l * C * 3 * C, proj=depth * 2 * l * C * C, ffn=depth * 2 * l * C * hidden * 2,
                 attn_logits=sum(2 * l * k * C for k in keys[s]), attn_reduce=sum(2 * l * k * C for k in keys[s]),
                 adaln=(1 if cfg.shared_aln else depth) * 2 * C * 6 * C, head_adaln=2 * C * 2 * C,
                 head=2 * l * C * vocab_size, word_embed=2 * l * Cvae * C if s > 0 else 0)
        for k, v in f.items():
            parts[k] += rows * v
        per_scale.append(rows * sum(f.values()))
        kv.append(sum(kv_bytes(1, k, C, bytes_per_element, rows) for k in keys[s]))
    return VARCost(pns, sum(p * p for p in pns), rows, tuple(kv), max(kv), tuple(per_scale), sum(per_scale), parts)


def num_params(cfg: VARConfig, vocab_size: int, Cvae: int) -> int:
    """Exact parameter count of ``VAR(cfg, vocab_size, Cvae)`` (buffers excluded)."""
    C, H, hidden, SN = cfg.embed_dim, cfg.num_heads, round(cfg.embed_dim * cfg.mlp_ratio), len(cfg.patch_nums)
    L, first_l = sum(p * p for p in cfg.patch_nums), cfg.patch_nums[0] ** 2
    n = Cvae * C + C + (cfg.num_classes + 1) * C + first_l * C + L * C + SN * C
    n += (6 * C * C + 6 * C) if cfg.shared_aln else 0
    block = 3 * C * C + 2 * C + (H if cfg.attn_l2_norm else 0) + C * C + C + C * hidden + hidden + hidden * C + C
    block += 6 * C if cfg.shared_aln else 6 * C * C + 6 * C
    return n + cfg.depth * block + 2 * C * C + 2 * C + C * vocab_size + vocab_size


def schedule(px: int) -> tuple[int, ...]:
    """Official scale list for a 256/512/1024 px image."""
    if px not in PATCH_NUMS:
        raise KeyError(f"no official VAR schedule for {px} px; valid: {sorted(PATCH_NUMS)}")
    return PATCH_NUMS[px]
