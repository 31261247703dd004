"""LlamaGen class-conditional GPT (c2i), re-implemented to load the official checkpoints unchanged.

Architecture (research/lantern_llamagen.md §1): pre-norm Llama blocks with RMSNorm, fused bias-free
``wqkv``, SwiGLU FFN with the official hidden-size rounding, 2D RoPE laid out as the official
``precompute_freqs_cis_2d`` (zero rows for the class token, interleaved pairs, row/column halves), a
class embedding whose last row is the null class used by classifier-free guidance.

This file holds LlamaGen's one forward pass, used by plain decoding, speculative decoding (chain and tree,
per-row positions) and KV-cache compression alike. The KV cache is an explicit :class:`KVCache` passed to
:meth:`Transformer.forward`: static ``(B, H_kv, L, D)`` buffers written at per-call slots (so rollback is
free: rejected positions are simply overwritten later; tree compaction is a gather). Nothing is stored on
the modules between calls.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from accel.checkpoint import load_strict, read_state_dict


def find_multiple(n: int, k: int) -> int:
    """Round ``n`` up to a multiple of ``k`` (official helper)."""
    return n if n % k == 0 else n + k - n % k


@dataclass(frozen=True)
class GPTConfig:
    """Official ``ModelArgs`` field names and defaults (dropouts are inactive at inference)."""

    dim: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: int | None = None  # None = n_head (no GQA); all released models use None
    multiple_of: int = 256  # FFN hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    token_dropout_p: float = 0.1
    attn_dropout_p: float = 0.0
    resid_dropout_p: float = 0.1
    ffn_dropout_p: float = 0.1
    drop_path_rate: float = 0.0
    num_classes: int = 1000
    caption_dim: int = 2048
    class_dropout_prob: float = 0.1  # > 0 adds the null-class row used by CFG
    model_type: str = "c2i"
    vocab_size: int = 16384
    cls_token_num: int = 1
    block_size: int = 256  # number of image tokens (a square grid)
    max_batch_size: int = 32
    max_seq_len: int = 2048

    def __post_init__(self):
        if self.model_type != "c2i":
            raise NotImplementedError(f"model_type={self.model_type!r}: accel supports class-conditional 'c2i' only")
        if self.cls_token_num != 1:
            raise ValueError(f"c2i models use cls_token_num=1 (got {self.cls_token_num})")
        if self.dim % self.n_head:
            raise ValueError(f"dim={self.dim} is not divisible by n_head={self.n_head}")
        if self.head_dim % 4:
            raise ValueError(f"2D RoPE needs head_dim divisible by 4 (got {self.head_dim})")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if math.isqrt(self.block_size) ** 2 != self.block_size:
            raise ValueError(f"block_size={self.block_size} is not a square token grid")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)

    @property
    def null_class(self) -> int:
        return self.num_classes

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown LlamaGen GPT config fields: {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | Path) -> "GPTConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


# Official GPT_models presets (c2i, 1000 classes, 16384 codes). Params: B 110.9M, L 342.9M, XL 774.7M,
# XXL 1411.0M, 3B 3096.7M. GPT-3B has head_dim 100.
GPT_PRESETS = {
    "GPT-B": dict(n_layer=12, n_head=12, dim=768),
    "GPT-L": dict(n_layer=24, n_head=16, dim=1024),
    "GPT-XL": dict(n_layer=36, n_head=20, dim=1280),
    "GPT-XXL": dict(n_layer=48, n_head=24, dim=1536),
    "GPT-3B": dict(n_layer=24, n_head=32, dim=3200),
}


def gpt_config(name: str, **overrides) -> GPTConfig:
    """A preset by its official name, e.g. ``gpt_config("GPT-XL", block_size=576)`` for 384 px."""
    if name not in GPT_PRESETS:
        raise KeyError(f"unknown LlamaGen preset {name!r}; valid: {sorted(GPT_PRESETS)}")
    return GPTConfig(**{**GPT_PRESETS[name], **overrides})


def rope_2d_table(grid: int, head_dim: int, base: float, cls_token_num: int) -> Tensor:
    """2D RoPE table ``(cls + grid*grid, head_dim/2, 2)`` of [cos, sin], official layout.

    Cell (h, w) gets angles ``concat(h * freqs, w * freqs)`` with ``head_dim/4`` frequencies per axis; the
    first ``cls_token_num`` rows are zeros (cos = sin = 0), so the class token's q and k become zero.
    """
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))  # (hd/4,)
    f = torch.outer(torch.arange(grid, dtype=torch.float32), freqs)  # (grid, hd/4)
    angles = torch.cat([f[:, None, :].expand(grid, grid, -1), f[None, :, :].expand(grid, grid, -1)], dim=-1)
    table = torch.stack([angles.cos(), angles.sin()], dim=-1).reshape(grid * grid, half, 2)
    return torch.cat([torch.zeros(cls_token_num, half, 2), table])


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of ``x`` (B, T, H, D) by ``table``, in float32.

    ``table``: ``(T, D/2, 2)`` shared by the batch, or ``(B, T, D/2, 2)`` per row (speculative decoding).
    """
    xs = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, T, H, D/2, 2)
    t = table.view(1, xs.size(1), 1, xs.size(3), 2) if table.dim() == 3 else table[:, :, None]  # (B|1, T, 1, D/2, 2)
    x0, x1 = xs[..., 0], xs[..., 1]
    cos, sin = t[..., 0], t[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    return out.flatten(3).type_as(x)


class KVCache:
    """Static per-layer key/value buffers ``(B, H_kv, L, D)`` indexed by cache slot.

    ``L`` is rounded up to a multiple of 8 like the official cache. Writing at a slot overwrites, so rolling
    back after a rejected draft needs no copy: the next write at those slots replaces them. Slots are shared
    by the batch ``(T,)`` (plain decoding: slot = position) or per row ``(B, T)`` (speculative decoding, where
    rows accept different numbers of drafts and tree nodes share a RoPE position but not a slot); tree
    compaction is a gather (:meth:`move`).

    The cache protocol of :meth:`Transformer.forward` is :meth:`update`; another object with the same method
    (e.g. ``accel.cache.llamagen.RasterKVCache``, a compressed history) can stand in for this one.
    """

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 device=None, dtype=torch.float32):
        self.max_len = find_multiple(max_len, 8)
        shape = (batch, n_kv_head, self.max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]

    @property
    def batch(self) -> int:
        return self.k[0].size(0)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def update(self, layer: int, slots: Tensor, k: Tensor, v: Tensor, kv_len: int, q: Tensor | None = None,
               mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Write k, v ``(B, H_kv, T, D)`` at ``slots`` ((T,) or (B, T)); return the first ``kv_len`` slots and
        the attention mask unchanged (``q``, the layer's rotated queries, is for caches that score keys)."""
        if slots.dim() == 1:
            self.k[layer][:, :, slots] = k
            self.v[layer][:, :, slots] = v
        else:
            rows = torch.arange(slots.size(0), device=slots.device)[:, None]
            self.k[layer][rows, :, slots] = k.transpose(1, 2)  # the indexed view is (B, T, H, D)
            self.v[layer][rows, :, slots] = v.transpose(1, 2)
        return self.k[layer][:, :, :kv_len], self.v[layer][:, :, :kv_len], mask

    def block_limit(self, pos: int) -> int:
        """Most tokens one forward starting at position ``pos`` may write (the buffer's end)."""
        return self.max_len - pos

    def move(self, src: Tensor, dst: Tensor) -> None:
        """Copy slots ``src (B, n)`` to ``dst (B, n)`` in every layer (tree path compaction)."""
        rows = torch.arange(src.size(0), device=src.device)[:, None]
        for buf in self.k + self.v:
            buf[rows, :, dst] = buf[rows, :, src].clone()

    def select_rows(self, rows: Tensor) -> None:
        """Keep only batch ``rows`` (e.g. drop finished sequences)."""
        self.k = [t[rows] for t in self.k]
        self.v = [t[rows] for t in self.v]


def attention_plan(table: Tensor, input_pos: Tensor, T: int, *, cache, slots: Tensor | None = None,
                   mask: Tensor | None = None, kv_len: int | None = None, dtype: torch.dtype | None = None):
    """RoPE rows, cache slots, attention mask and ``kv_len`` of one forward (shared by every block).

    Shared positions ``input_pos (T,)``: slots = positions; with a cache and T > 1 the mask is causal over
    positions ``(T, kv_len)``; a single token attends to all ``kv_len`` slots with no mask (the fast path: no
    allocation, no host sync when ``kv_len`` is given). Per-row ``input_pos (B, T)`` (or explicit ``slots
    (B, T)``): RoPE positions past the table are clamped (drafts beyond the last image token, whose outputs are
    discarded) and, with a cache, the default mask is causal over slots ``(B, T, kv_len)`` (a token at slot s
    sees slots <= s). A given ``mask`` (bool, True = attend; ``(T, kv_len)``, ``(B, T, kv_len)`` or
    ``(B, 1|H, T, kv_len)``) sets ``kv_len`` by its last dimension. Returns ``(rope, slots, mask, kv_len)`` with
    a 3-D mask lifted to ``(B, 1, T, kv_len)`` for the heads. ``dtype`` (the activations'): a bool mask is
    returned as the additive mask SDPA would otherwise build from it in every layer (0 where True, -inf
    elsewhere: the same values, so the same outputs), once per forward.
    """
    if input_pos.size(-1) != T:
        raise ValueError(f"input_pos has {input_pos.size(-1)} positions for {T} tokens")
    per_row = input_pos.dim() == 2 or slots is not None
    rope = table[input_pos.clamp(max=table.size(0) - 1)] if per_row else table[input_pos]
    if slots is None:
        slots = input_pos
    elif slots.size(-1) != T:
        raise ValueError(f"slots has {slots.size(-1)} entries for {T} tokens")
    if cache is None:
        kv_len = 0
    elif mask is not None:
        kv_len = mask.size(-1)
    else:
        if kv_len is None:
            kv_len = int(slots.max()) + 1
        if slots.dim() == 2:
            mask = torch.arange(kv_len, device=slots.device)[None, None, :] <= slots[:, :, None]  # (B, T, kv_len)
        elif T > 1:
            mask = torch.arange(kv_len, device=slots.device)[None, :] <= slots[:, None]  # (T, kv_len)
    if mask is not None and mask.dim() == 3:
        mask = mask[:, None]  # (B, 1, T, kv_len)
    if mask is not None and dtype is not None and mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return rope, slots, mask, kv_len


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.ffn_dropout = nn.Dropout(cfg.ffn_dropout_p)

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.layer, self.n_head, self.n_kv, self.hd = layer, cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_dropout_p = cfg.attn_dropout_p
        self.resid_dropout = nn.Dropout(cfg.resid_dropout_p)

    def forward(self, x: Tensor, rope: Tensor, slots: Tensor, cache: KVCache | None,
                mask: Tensor | None, kv_len: int) -> Tensor:
        """``x (B, T, C)``; rope, slots, mask, kv_len from :func:`attention_plan`."""
        B, T, C = x.shape
        kv = self.n_kv * self.hd
        qkv = self.wqkv(x)
        qk = apply_rope(qkv[..., : C + kv].view(B, T, self.n_head + self.n_kv, self.hd), rope)  # q and k: one rotation
        q, k = qk.transpose(1, 2).split([self.n_head, self.n_kv], dim=1)  # (B, H, T, D), (B, Hkv, T, D)
        v = qkv[..., C + kv:].view(B, T, self.n_kv, self.hd).transpose(1, 2)
        causal = mask is None and cache is None and T > 1
        if cache is not None:
            k, v, mask = cache.update(self.layer, slots, k, v, kv_len, q, mask)  # (B, Hkv, kv_len, D)
        if self.n_kv != self.n_head:
            k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           dropout_p=self.attn_dropout_p if self.training else 0.0)
        return self.resid_dropout(self.wo(y.transpose(1, 2).reshape(B, T, C)))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.attention = Attention(cfg, layer)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, rope, slots, cache, mask, kv_len):
        h = x + self.attention(self.attention_norm(x), rope, slots, cache, mask, kv_len)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    """Class embedding; row ``num_classes`` is the null class (present when class_dropout_prob > 0)."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + (dropout_prob > 0), dim)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding_table(labels).unsqueeze(1)  # (B, 1, dim)


class Transformer(nn.Module):
    """LlamaGen GPT. Official state-dict keys (``cls_embedding.embedding_table.weight``, ``layers.{i}...``)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.cls_embedding = LabelEmbedder(cfg.num_classes, cfg.dim, cfg.class_dropout_prob)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout_p)  # training only, like every dropout here
        self.layers = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # A plain attribute (not a buffer), as in the official code: never in the state dict.
        self.freqs_cis = rope_2d_table(cfg.grid_size, cfg.head_dim, cfg.rope_base, cfg.cls_token_num)

    def _apply(self, fn, recurse=True):
        # The RoPE table is a plain attribute (not a buffer): follow the module's device, stay float32.
        super()._apply(fn, recurse)
        self.freqs_cis = self.freqs_cis.to(self.tok_embeddings.weight.device)
        return self

    def new_cache(self, batch: int, max_len: int | None = None, dtype=None) -> KVCache:
        cfg = self.config
        w = self.tok_embeddings.weight
        return KVCache(cfg.n_layer, batch, cfg.kv_heads, max_len or cfg.cls_token_num + cfg.block_size,
                       cfg.head_dim, device=w.device, dtype=dtype or w.dtype)

    def embed(self, idx: Tensor | None, cond_idx: Tensor | None) -> Tensor:
        parts = []
        if cond_idx is not None:
            parts.append(self.cls_embedding(cond_idx)[:, : self.config.cls_token_num])
        if idx is not None:
            parts.append(self.tok_embeddings(idx))
        if not parts:
            raise ValueError("forward needs idx, cond_idx or both")
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(self, idx: Tensor | None, cond_idx: Tensor | None = None, *, input_pos: Tensor,
                cache: KVCache | None = None, mask: Tensor | None = None, return_hidden: bool = False,
                kv_len: int | None = None, slots: Tensor | None = None):
        """Logits ``(B, T, V)`` (float32) for the sequence ``[class token?, idx]``.

        ``input_pos``: RoPE positions, ``(T,)`` shared by the batch or ``(B, T)`` per row. Without a cache the
        attention is causal over these T tokens (teacher forcing; row t predicts the token after position t),
        or follows ``mask``. With a cache the new k/v are written at ``slots`` (default: the positions; per row
        ``(B, T)`` when given, e.g. tree nodes that share a position) and the queries attend to cache slots
        ``[0, kv_len)``: causally by default, or through ``mask`` (bool, True = attend, ``(T, kv_len)``,
        ``(B, T, kv_len)`` or broadcastable to ``(B, H, T, kv_len)``, e.g. a tree mask), whose last dimension
        then sets kv_len (see :func:`attention_plan`). The cache receives every layer's rotated queries too, so
        a compressing cache can score keys (``accel.cache.llamagen.RasterKVCache``). ``return_hidden`` also
        returns the final-normed hidden state ``(B, T, dim)`` (the input of the output head, what EAGLE drafters
        consume). ``kv_len`` (a Python int, default ``max(slots) + 1``) saves a device sync per call and keeps
        ``torch.compile`` graphs unbroken.
        """
        if self.training and self.config.drop_path_rate > 0:
            raise NotImplementedError("drop_path_rate > 0 (stochastic depth) is not implemented for training")
        x = self.tok_dropout(self.embed(idx, cond_idx))  # (B, T, dim)
        rope, slots, mask, kv_len = attention_plan(self.freqs_cis, input_pos, x.size(1), cache=cache, slots=slots,
                                                   mask=mask, kv_len=kv_len, dtype=x.dtype)
        for layer in self.layers:
            x = layer(x, rope, slots, cache, mask, kv_len)
        h = self.norm(x)
        logits = self.output(h).float()
        return (logits, h) if return_hidden else logits

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_gpt(cfg: GPTConfig, device=None, dtype=None) -> Transformer:
    return Transformer(cfg).to(device=device, dtype=dtype)


def load_gpt(path: str | Path, cfg: GPTConfig, *, key: str | None = None, device=None, dtype=None) -> Transformer:
    """Load an official LlamaGen GPT file (``{"model": sd}``, ``{"ema": sd}`` via ``key``, raw, safetensors)."""
    model = Transformer(cfg)
    load_strict(model, read_state_dict(path, key), what=str(path))
    return model.to(device=device, dtype=dtype).eval()
