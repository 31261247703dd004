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
* **Queries.** LlamaGen's one forward hands every cache its layer's rotated queries
  (``update(layer, slots, k, v, kv_len, q, mask)``, the protocol of ``llamagen.KVCache``); the raster cache
  folds in SDPA's ``1/sqrt(D)`` (the contract's ``logits = q k^T``). The decode itself is the one
  ``llamagen_generate.generate`` loop, given this cache.
* **Speculative decoding** (exact or LANTERN, ``speculative.decoder.speculative_generate(..., cache=...)``,
  batch 1): a verify forward is a block ``[x_{c-1}, d_1..d_γ]`` at positions ``c..c+γ``. Its first token is
  committed (appended, as in the raster decode); the drafts stay pending, attended to causally after the
  kept history, and are committed when the next block starts past them (rejected ones are dropped:
  rollback = truncation). A chunk is compressed once its last position is committed, with the queries of
  its committed tokens, so the store evolves as in the raster decode of the same tokens (same positions kept,
  up to the float rounding of a batched forward). The loop
  keeps every block from extending past a compressing chunk end (``block_limit``): a token after it must see
  the compressed history, as in the raster decode. So every committed token attends to exactly the keys it
  would attend to in the raster decode with the same policy: speculative decoding with a policy samples the
  target-with-policy distribution (exact rule), and greedy speculative equals greedy raster decoding.
* **ScaleKV** is refused: its drafter/refiner budgets come from the Attention Selectivity Index calibrated
  per (layer, *scale*) of a next-scale schedule; raster chunks are not scales (every row plays the same
  role), so there is nothing for its split to exploit and no calibration path here.
* GQA (``n_kv_head < n_head``) is refused: the policies score with one query head per key head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from accel.models.kv_cache import KVCache, KeepAll
from accel.types import CachePolicy
from accel.cache.budgets import Budget, history_lengths
from accel.cache.pyramidkv import PyramidKV
from accel.cache.snapkv import SnapKV
from accel.cache.window import SlidingWindow, StreamingLLM
from accel.models.llamagen import Transformer
from accel.models.llamagen_generate import SamplingConfig, generate
from accel.types import Sample

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
    """A compressed stand-in for ``llamagen.KVCache`` in ``Transformer.forward`` (module docstring).

    Per layer: the committed history in a ``base.KVCache`` (which records the exact bytes per chunk and layer),
    the pending drafts of the last block, and the committed queries of the current chunk. The block start is
    ``kv_len - T`` (positions are contiguous in raster decoding), so no device sync is needed; ``slots`` are
    not used (keys are compacted, their RoPE is already applied).
    """

    def __init__(self, model: Transformer, maps, policy: CachePolicy | None):
        cfg = model.config
        if cfg.kv_heads != cfg.n_head:
            raise ValueError(f"GQA (n_kv_head={cfg.n_kv_head} < n_head={cfg.n_head}) is not supported: the policies "
                             "score keys with one query head per key head")
        self.store = KVCache(cfg.n_layer, policy)
        self.head_dim = cfg.head_dim
        hist = history_lengths(maps)
        self.ends = [H - 1 for H in hist]  # last position (= step) of every chunk
        budget = getattr(policy, "budget", None)
        self.compressing = [self.ends[j] for j in (budget.compressed_scales if budget is not None else ())]
        n = cfg.n_layer
        self.held = [0] * n  # committed positions per layer
        self.chunk = [0] * n  # the chunk the next committed position belongs to
        self.q: list[list[Tensor]] = [[] for _ in range(n)]  # committed queries of the current chunk
        self.pending: list[tuple[Tensor, Tensor, Tensor] | None] = [None] * n  # drafts' (k, v, q)
        self.attending = [0] * n  # k+v bytes each layer attended to in the current forward
        self.peak = 0

    def block_limit(self, pos: int) -> int:
        """Most tokens a forward starting at position ``pos`` may hold: up to the next compressing chunk end."""
        return next((e - pos + 1 for e in self.compressing if e >= pos), 1 << 30)

    def peak_attended_bytes(self) -> int:
        """Largest total (over layers) k+v bytes any forward attended to, pending drafts included."""
        return self.peak

    def _commit(self, layer: int, k: Tensor, v: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        """Append committed positions (split at chunk ends); compress every chunk whose last position arrives."""
        k_all = v_all = None
        while k.size(2):
            j = self.chunk[layer]
            last = j == len(self.ends) - 1 and self.held[layer] > self.ends[j]  # past the schedule
            take = k.size(2) if last else min(k.size(2), self.ends[j] - self.held[layer] + 1)
            k_all, v_all = self.store.append(layer, j, k[:, :, :take], v[:, :, :take])
            self.q[layer].append(q[:, :, :take])
            self.held[layer] += take
            if not last and self.held[layer] - 1 == self.ends[j]:
                self.store.compress(layer, j, torch.cat(self.q[layer], dim=2))  # (B, H, n_j, D)
                self.q[layer] = []
                self.chunk[layer] = min(j + 1, len(self.ends) - 1)
            k, v, q = k[:, :, take:], v[:, :, take:], q[:, :, take:]
        return k_all, v_all  # the history before this call's compression: the committed token attends to it

    def update(self, layer: int, slots: Tensor, k: Tensor, v: Tensor, kv_len: int, q: Tensor,
               mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        B, _, T, D = k.shape
        p0, held = kv_len - T, self.held[layer]
        pend = self.pending[layer]
        n_pend = 0 if pend is None else pend[0].size(2)
        if not held <= p0 <= held + n_pend:
            raise ValueError(f"a block at position {p0}: layer {layer} holds positions < {held} and {n_pend} "
                             "pending drafts (raster decoding writes contiguous positions)")
        cross = [e for e in self.compressing if p0 <= e < p0 + T - 1]
        if cross:
            raise ValueError(f"a {T}-token block at position {p0} runs past the compression after position "
                             f"{cross[0]}; keep blocks within block_limit({p0}) = {self.block_limit(p0)}")
        if p0 > held:  # the drafts accepted since the last block
            self._commit(layer, *(t[:, :, : p0 - held] for t in pend))
        q = q * D ** -0.5  # (B, H, T, D); SDPA's scale folded in
        k_all, v_all = self._commit(layer, k[:, :, :1], v[:, :, :1], q[:, :, :1])
        self.pending[layer] = (k[:, :, 1:], v[:, :, 1:], q[:, :, 1:]) if T > 1 else None
        if T > 1:
            k_all, v_all = torch.cat([k_all, k[:, :, 1:]], dim=2), torch.cat([v_all, v[:, :, 1:]], dim=2)
        L = k_all.size(2)
        self.attending[layer] = 2 * k_all.numel() * k_all.element_size()
        if layer == len(self.held) - 1:
            self.peak = max(self.peak, sum(self.attending))
        if mask is not None or T > 1:  # causal: the kept history, then the block in order
            rows = torch.arange(L, device=k.device)[None, :] <= (L - T + torch.arange(T, device=k.device))[:, None]
            mask = rows[None, None].expand(B, 1, T, L)
        return k_all, v_all, mask


@dataclass
class RasterDecode:
    tokens: Tensor  # (B, n) long
    cache: RasterKVCache


def raster_cache(model: Transformer, policy: CachePolicy | None, max_new_tokens: int | None = None,
                 every: int | None = None) -> RasterKVCache:
    """The compressed cache of one raster decode of ``max_new_tokens`` tokens in chunks of ``every`` steps."""
    cfg = model.config
    n = max_new_tokens or cfg.block_size
    maps = chunk_maps(cfg.cls_token_num + n - 1, every or cfg.grid_size)
    budget = getattr(policy, "budget", None)
    if budget is not None and budget.maps != maps:
        raise ValueError(f"policy budget is for chunks {budget.maps}, this decode has {maps}")
    return RasterKVCache(model, maps, policy)


@torch.no_grad()
def generate_compressed(model: Transformer, cond: Tensor, policy: CachePolicy | None = None,
                        max_new_tokens: int | None = None, sc: SamplingConfig = SamplingConfig(), *,
                        every: int | None = None, generator: torch.Generator | None = None,
                        trace: dict | None = None) -> RasterDecode:
    """``llamagen_generate.generate`` with a compressed cache (bitwise equal tokens with ``KeepAll``)."""
    n = max_new_tokens or model.config.block_size
    if n > model.config.block_size:
        raise ValueError(f"max_new_tokens={n} exceeds block_size={model.config.block_size}")
    cache = raster_cache(model, policy, n, every)
    return RasterDecode(generate(model, cond, n, sc, generator=generator, trace=trace, cache=cache), cache)


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

    @torch.inference_mode()
    def generate(self, cond: Tensor, *, generator: torch.Generator) -> Sample:
        r = generate_compressed(self.model, cond, self.policy, sc=self.sc, every=self.every, generator=generator)
        g, st = self.model.config.grid_size, r.cache.store
        x = self.tokenizer.decode_code(r.tokens, hw=(g, g))
        stats = {"nfe_target": r.tokens.shape[1], "tokens": r.tokens, "kv_bytes": st.peak_attended_bytes(),
                 "kv_kept_bytes": [sum(row) for row in st.kept_bytes],
                 "kv_attended_bytes": [sum(row) for row in st.attended_bytes],
                 "kv_kept_table": [list(row) for row in st.kept_bytes],
                 "kv_attended_table": [list(row) for row in st.attended_bytes]}
        return Sample(((x.float() + 1) / 2).clamp(0, 1), stats)
