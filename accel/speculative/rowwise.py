"""A LlamaGen forward with per-row positions and cache slots, over the weights of ``accel.models.llamagen``.

Why an adapter: ``Transformer.forward`` takes one ``input_pos`` shared by the batch (RoPE row = cache slot).
Speculative decoding needs (a) a different position per row, because rows accept different numbers of
drafts (the official LANTERN code is batch 1 only), and (b) for tree verification, siblings that share a
RoPE position but live in different cache slots. This module runs the same submodules (embeddings, blocks'
norms/wqkv/wo/FFN, final norm, head, the RoPE table) with ``rope_pos (B, T)`` and ``slots (B, T)`` given
separately and a boolean ``mask (B, T, kv_len)`` (True = attend). ``tests/test_speculative_decoder.py``
checks it against ``Transformer.forward``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from accel.models.llamagen import Transformer, find_multiple


class RowCache:
    """Static per-layer ``(B, H_kv, L, D)`` key/value buffers written at per-row slots.

    Rollback is free (rejected slots are overwritten later); tree compaction is a gather (``move``).
    """

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int, *, device, dtype):
        self.max_len = find_multiple(max_len, 8)
        shape = (batch, n_kv_head, self.max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]

    @classmethod
    def for_model(cls, model: Transformer, batch: int, max_len: int) -> "RowCache":
        cfg, w = model.config, model.tok_embeddings.weight
        return cls(cfg.n_layer, batch, cfg.kv_heads, max_len, cfg.head_dim, device=w.device, dtype=w.dtype)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def write(self, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> None:
        """k, v ``(B, H, T, D)`` written at ``slots (B, T)``."""
        rows = torch.arange(slots.size(0), device=slots.device)[:, None]
        self.k[layer][rows, :, slots] = k.transpose(1, 2)  # indexed view is (B, T, H, D)
        self.v[layer][rows, :, slots] = v.transpose(1, 2)

    def move(self, src: Tensor, dst: Tensor) -> None:
        """Copy slots ``src (B, n)`` to ``dst (B, n)`` in every layer (tree path compaction)."""
        rows = torch.arange(src.size(0), device=src.device)[:, None]
        for buf in self.k + self.v:
            buf[rows, :, dst] = buf[rows, :, src].clone()


def rope_rows(x: Tensor, table: Tensor) -> Tensor:
    """Rotate adjacent pairs of ``x (B, T, H, D)`` by per-row ``table (B, T, D/2, 2)``, in float32."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, T, H, D/2, 2)
    t = table[:, :, None]  # (B, T, 1, D/2, 2)
    x0, x1 = xs[..., 0], xs[..., 1]
    cos, sin = t[..., 0], t[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(3).type_as(x)


def block_forward(block, x: Tensor, rope: Tensor, layer: int, slots: Tensor, cache: RowCache, mask: Tensor) -> Tensor:
    """One LlamaGen ``TransformerBlock`` (pre-norm attention + SwiGLU) with per-row slots."""
    attn = block.attention
    B, T, C = x.shape
    kv = attn.n_kv * attn.hd
    q, k, v = attn.wqkv(block.attention_norm(x)).split([C, kv, kv], dim=-1)
    q = rope_rows(q.view(B, T, attn.n_head, attn.hd), rope).transpose(1, 2)  # (B, H, T, D)
    k = rope_rows(k.view(B, T, attn.n_kv, attn.hd), rope).transpose(1, 2)  # (B, Hkv, T, D)
    v = v.view(B, T, attn.n_kv, attn.hd).transpose(1, 2)
    cache.write(layer, slots, k, v)
    kv_len = mask.size(-1)
    K, V = cache.k[layer][:, :, :kv_len], cache.v[layer][:, :, :kv_len]
    if attn.n_kv != attn.n_head:
        K = K.repeat_interleave(attn.n_head // attn.n_kv, dim=1)
        V = V.repeat_interleave(attn.n_head // attn.n_kv, dim=1)
    y = F.scaled_dot_product_attention(q, K, V, attn_mask=mask[:, None])  # (B, H, T, D)
    h = x + attn.wo(y.transpose(1, 2).reshape(B, T, C))
    return h + block.feed_forward(block.ffn_norm(h))


def causal_mask(slots: Tensor, kv_len: int) -> Tensor:
    """Chain mask ``(B, T, kv_len)``: a token at slot s sees slots ``<= s`` (slots are positions)."""
    return torch.arange(kv_len, device=slots.device)[None, None, :] <= slots[:, :, None]


def forward_rows(model: Transformer, idx: Tensor | None, cond_idx: Tensor | None, *, rope_pos: Tensor,
                 slots: Tensor, cache: RowCache, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Logits ``(B, T, V)`` float32 and final-normed hidden ``(B, T, dim)`` of ``[class token?, idx]``.

    rope_pos, slots: ``(B, T)`` long; mask: ``(B, T, kv_len)`` bool over cache slots (True = attend).
    RoPE positions past the table (drafts beyond the last image token) are clamped; they only affect
    tokens that are discarded.
    """
    x = model.embed(idx, cond_idx)  # (B, T, dim)
    if rope_pos.shape != x.shape[:2] or slots.shape != x.shape[:2]:
        raise ValueError(f"rope_pos/slots must be {tuple(x.shape[:2])}, got {tuple(rope_pos.shape)}/{tuple(slots.shape)}")
    table = model.freqs_cis
    rope = table[rope_pos.clamp(max=table.size(0) - 1)]  # (B, T, D/2, 2)
    for i, block in enumerate(model.layers):
        x = block_forward(block, x, rope, i, slots, cache, mask)
    h = model.norm(x)
    return model.output(h).float(), h
