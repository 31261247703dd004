"""The VAR cache policies (``CachePolicy``, accel/types.py) applied to LlamaGen's raster next-token decoding.

Mapping of the per-scale contract ``policy.compress(layer, scale, k, v, q)`` onto raster decoding:

* **Steps.** The decode makes ``n = cls_token_num + max_new_tokens - 1`` single-token forwards (the class
  token, then every token but the last), each appending one position per layer. A "scale" here is a *chunk*
  of ``every`` consecutive steps (default: one row of the token grid); ``chunk_maps`` gives the schedule as
  map sizes ``(1, n_j)``, so ``Budget``, ``uniform``/``pyramid`` and the policies' shape checks apply unchanged.
* **When.** After the last step of every chunk, per layer, right after that step's attention: the stored
  history is compressed with ``q`` = the chunk's queries ``(B, H, n_j, D)`` (SnapKV/PyramidKV score keys by
  the attention of the chunk's last ``window`` queries). Within a chunk the cache grows by ``n_j`` positions
  beyond the budget, so the attention's peak is ``b + every`` positions; ``every=1`` compresses each step.
* **Budget** (``cap_budget``): a fixed cap ``b = floor(f * n)`` positions per layer (``f`` of the full cache's
  positions); a chunk is compressed when the history exceeds ``b`` (never after the last chunk: nothing
  attends to it). The kept cache is then exactly ``b`` positions (per-layer pyramidal for PyramidKV, same
  total). ``Budget.kept_fraction`` (kept over full history at the compressed chunks) is larger than ``f``.
* **RoPE.** Keys are cached *after* the 2D rotation of their own absolute position, and each query is rotated
  at its absolute position (``input_pos`` still drives the RoPE table), so ``q . k`` depends only on the two
  positions, not on where the key sits in the buffer: compacting by gather is exact (the attention over the
  kept keys equals the full attention with the evicted keys masked out; tested). The decode attends with no
  mask (one query, every kept key is in its past).
* **CFG.** The forward batch is ``[cond; uncond]``; every row (and head) selects its own keys.
* **Queries.** ``Attention.forward`` hands the cache only ``k, v``. ``capture_queries`` registers forward
  hooks on every layer's ``attention.wqkv`` for the duration of one decode; the cache rebuilds ``q`` from
  that exact output with the same RoPE and folds in SDPA's ``1/sqrt(D)`` (the contract's ``logits = q k^T``).
  A ``q`` argument on ``llamagen.KVCache.update`` would remove the hooks.
* **ScaleKV** is refused: its drafter/refiner budgets come from the Attention Selectivity Index calibrated
  per (layer, *scale*) of a next-scale schedule; raster chunks are not scales (every row plays the same
  role), so there is nothing for its split to exploit and no calibration path here.
* GQA (``n_kv_head < n_head``) is refused: the policies score with one query head per key head.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from accel.models.kv_cache import KVCache, KeepAll
from accel.types import CachePolicy
from accel.cache.budgets import Budget, history_lengths
from accel.cache.pyramidkv import PyramidKV
from accel.cache.snapkv import SnapKV
from accel.cache.window import SlidingWindow, StreamingLLM
from accel.models.llamagen import Transformer, apply_rope
from accel.models.llamagen_generate import SamplingConfig, cfg_batch, guided_logits
from accel.sampling import logits_to_probs, sample_from

RASTER_POLICIES = ("full", "sliding", "streamingllm", "snapkv", "pyramidkv")


def chunk_maps(n_steps: int, every: int) -> tuple[tuple[int, int], ...]:
    """Schedule of ``n_steps`` single-token steps in chunks of ``every``: map sizes ``(1, n_j)``."""
    if n_steps < 1 or every < 1:
        raise ValueError(f"n_steps and every must be >= 1, got {n_steps}, {every}")
    return tuple((1, min(every, n_steps - s)) for s in range(0, n_steps, every))


def cap_budget(maps, depth: int, fraction: float, *, min_keep: int = 1) -> Budget:
    """Keep ``b = floor(f * H_last)`` positions per layer after every chunk whose history exceeds ``b``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    hist = history_lengths(maps)
    b = math.floor(fraction * hist[-1] + 1e-9)  # + 1e-9: 0.25 * 64 must give 16
    if b < min_keep:
        raise ValueError(f"budget {b} positions (fraction {fraction} of {hist[-1]}) is below the {min_keep} "
                         "the policy needs (observation window / sinks)")
    rows = [(b if k < len(maps) - 1 and H > b else None,) * depth for k, H in enumerate(hist)]
    return Budget(tuple(maps), tuple(rows))


def build_raster_policy(name: str, model: Transformer, fraction: float, *, max_new_tokens: int | None = None,
                        every: int | None = None, window: int = 8, sinks: int = 4, kernel: int = 5) -> CachePolicy:
    """A policy by name for ``model``'s raster decode (``every`` defaults to one grid row)."""
    if name.startswith("scalekv"):
        raise ValueError(f"{name!r} does not apply to raster decoding: ScaleKV's budgets come from a per-(layer, "
                         "scale) calibration of a next-scale schedule (see accel/cache/llamagen.py)")
    if name not in RASTER_POLICIES:
        raise KeyError(f"unknown raster cache policy {name!r}; valid: {', '.join(RASTER_POLICIES)}")
    if name == "full":
        return KeepAll()
    cfg = model.config
    maps = chunk_maps(cfg.cls_token_num + (max_new_tokens or cfg.block_size) - 1, every or cfg.grid_size)
    base = cap_budget(maps, cfg.n_layer, fraction, min_keep=sinks if name == "streamingllm" else window)
    if name == "sliding":
        return SlidingWindow(base)
    if name == "streamingllm":
        return StreamingLLM(base, sinks=sinks)
    if name == "snapkv":
        return SnapKV(base, window=window, kernel=kernel)
    return PyramidKV.from_uniform(base, window=window, kernel=kernel)


class RasterKVCache:
    """Stands in for ``llamagen.KVCache`` in ``Transformer.forward``: appends each step's k/v to a compacted
    history (``base.KVCache``, which records the exact bytes per chunk and layer) and applies the policy after
    each chunk's last step (module docstring). ``input_pos`` is used for the queries' RoPE only."""

    def __init__(self, model: Transformer, maps, policy: CachePolicy | None):
        cfg = model.config
        if cfg.kv_heads != cfg.n_head:
            raise ValueError(f"GQA (n_kv_head={cfg.n_kv_head} < n_head={cfg.n_head}) is not supported: the policies "
                             "score keys with one query head per key head")
        self.store = KVCache(cfg.n_layer, policy)
        self.n_head, self.head_dim, self.rope = cfg.n_head, cfg.head_dim, model.freqs_cis
        self.ends = {H - 1 for H in history_lengths(maps)}  # last step of every chunk
        self.chunk_of = [j for j, (h, w) in enumerate(maps) for _ in range(h * w)]  # step -> chunk
        self.steps = [0] * cfg.n_layer
        self.qkv: list[Tensor | None] = [None] * cfg.n_layer  # written by capture_queries' hooks
        self.q: list[list[Tensor]] = [[] for _ in range(cfg.n_layer)]  # queries of the current chunk

    def update(self, layer: int, input_pos: Tensor, k: Tensor, v: Tensor, kv_len: int) -> tuple[Tensor, Tensor]:
        B, _, T, D = k.shape
        if T != 1:
            raise ValueError(f"RasterKVCache takes one token per forward, got {T}")
        qkv, self.qkv[layer] = self.qkv[layer], None
        if qkv is None:
            raise RuntimeError("no captured queries: decode inside capture_queries(model, cache)")
        s = self.steps[layer]
        chunk = self.chunk_of[s]
        q = apply_rope(qkv[..., : self.n_head * D].view(B, 1, self.n_head, D), self.rope[input_pos])
        self.q[layer].append(q.transpose(1, 2) * D ** -0.5)  # (B, H, 1, D); SDPA's scale folded in
        k_all, v_all = self.store.append(layer, chunk, k, v)
        if s in self.ends:
            self.store.compress(layer, chunk, torch.cat(self.q[layer], dim=2))  # (B, H, n_j, D)
            self.q[layer] = []
        self.steps[layer] = s + 1
        return k_all, v_all  # this step attends to the whole history; only later steps see the compressed one


@contextmanager
def capture_queries(model: Transformer, cache: RasterKVCache):
    """Forward hooks copying every layer's ``wqkv`` output into ``cache.qkv[layer]``, removed on exit."""
    def hook(i):
        def write(_mod, _inp, out):
            cache.qkv[i] = out
        return write

    handles = [blk.attention.wqkv.register_forward_hook(hook(i)) for i, blk in enumerate(model.layers)]
    try:
        yield cache
    finally:
        for h in handles:
            h.remove()


@dataclass
class RasterDecode:
    tokens: Tensor  # (B, n) long
    cache: RasterKVCache


@torch.no_grad()
def generate_compressed(model: Transformer, cond: Tensor, policy: CachePolicy | None = None,
                        max_new_tokens: int | None = None, sc: SamplingConfig = SamplingConfig(), *,
                        every: int | None = None, generator: torch.Generator | None = None,
                        trace: dict | None = None) -> RasterDecode:
    """``llamagen_generate.generate`` with a compressed cache; same sampling, same RNG use (bitwise equal
    tokens with ``KeepAll``). ``trace['raw']`` receives the model's logits of every step (both CFG halves)."""
    cfg = model.config
    n = max_new_tokens or cfg.block_size
    if n > cfg.block_size:
        raise ValueError(f"max_new_tokens={n} exceeds block_size={cfg.block_size}")
    B, c = cond.size(0), cfg.cls_token_num
    labels = cfg_batch(model, cond, sc.uses_cfg)
    maps = chunk_maps(c + n - 1, every or cfg.grid_size)
    budget = getattr(policy, "budget", None)
    if budget is not None and budget.maps != maps:
        raise ValueError(f"policy budget is for chunks {budget.maps}, this decode has {maps}")
    cache = RasterKVCache(model, maps, policy)
    out = torch.empty(B, n, dtype=torch.long, device=cond.device)
    pos = torch.arange(c + n, device=cond.device)
    with capture_queries(model, cache):
        logits = model(None, labels, input_pos=pos[:c], cache=cache)[:, -1]
        for t in range(n):
            if t > 0:
                x = out[:, t - 1: t]
                p = c + t - 1
                logits = model(torch.cat([x, x]) if sc.uses_cfg else x, input_pos=pos[p: p + 1], cache=cache,
                               kv_len=p + 1)[:, -1]
            probs = logits_to_probs(guided_logits(logits, B, sc, t), sc.temperature, sc.top_k, sc.top_p)
            out[:, t] = sample_from(probs, generator, greedy=not sc.sample_logits)
            if trace is not None:
                trace.setdefault("raw", []).append(logits.clone())
    return RasterDecode(out, cache)


@dataclass
class CompressedLlamaGen:
    """A harness ``Method``: LlamaGen raster decode with a cache policy (``None``/``KeepAll``: full cache).

    ``Sample.stats``: ``tokens``; ``kv_bytes`` = the peak k+v bytes the attention held (kept history + the current
    chunk, all layers; the full cache holds exactly its positions, where ``llamagen-ar`` reports its static
    buffer rounded up to a multiple of 8 positions); ``kv_kept_bytes`` / ``kv_attended_bytes`` per chunk (summed
    over layers) and the per-(chunk, layer) tables.
    """

    model: Transformer
    tokenizer: torch.nn.Module  # accel.models.llamagen_vq.VQModel
    policy: CachePolicy | None = None
    sc: SamplingConfig = SamplingConfig()
    every: int | None = None
    name: str = "llamagen"

    def generate(self, cond: Tensor, *, generator: torch.Generator) -> "Sample":
        from accel.types import Sample

        r = generate_compressed(self.model, cond, self.policy, sc=self.sc, every=self.every, generator=generator)
        g, st = self.model.config.grid_size, r.cache.store
        x = self.tokenizer.decode_code(r.tokens, hw=(g, g))
        stats = {"nfe_target": r.tokens.shape[1], "tokens": r.tokens, "kv_bytes": st.peak_attended_bytes(),
                 "kv_kept_bytes": [sum(row) for row in st.kept_bytes],
                 "kv_attended_bytes": [sum(row) for row in st.attended_bytes],
                 "kv_kept_table": [list(row) for row in st.kept_bytes],
                 "kv_attended_table": [list(row) for row in st.attended_bytes]}
        return Sample(((x.float() + 1) / 2).clamp(0, 1), stats)
