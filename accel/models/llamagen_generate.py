"""Fast AR decoding for LlamaGen: the baseline every speed-up is measured against.

Static KV cache, batched CFG (the batch is ``[cond; null]``, one forward per token), no per-step
allocation beyond the new token and no host sync inside the loop (``kv_len`` is a Python int at every
forward), so ``torch.compile`` of the Transformer (``accel.compile``) traces one graph for every step. Semantics match the official ``generate()`` (research §1.7): the
prefill token always uses CFG; token t uses CFG iff ``cfg_interval < 0 or t <= cfg_interval + 1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from accel.models.llamagen import Transformer
from accel.sampling import cfg_combine, probs_unchecked, sample_from
from accel.validate import FiniteWatch, check_labels, check_max_new_tokens, check_range, check_token_sampling


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings; defaults are LlamaGen's FID-evaluation settings (top_k 0, top_p 1, T 1)."""

    cfg_scale: float = 1.0
    cfg_interval: int = -1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    sample_logits: bool = True  # False = greedy arg-max

    def __post_init__(self):
        check_token_sampling(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                             cfg_scale=self.cfg_scale, where="SamplingConfig")
        check_range("SamplingConfig: cfg_interval", self.cfg_interval, -1, None, integer=True)

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale > 1.0

    def cfg_at(self, t: int) -> bool:
        """Whether token t (0-based) is produced with guidance."""
        return self.uses_cfg and (self.cfg_interval < 0 or t <= self.cfg_interval + 1)


def cfg_batch(model: Transformer, cond: Tensor, uses_cfg: bool) -> Tensor:
    """Labels for the forward batch: ``[cond; null]`` under CFG, else ``cond``."""
    if not uses_cfg:
        return cond
    if model.config.class_dropout_prob <= 0:
        raise ValueError("CFG needs the null class row (class_dropout_prob > 0 in the config)")
    return torch.cat([cond, torch.full_like(cond, model.config.null_class)])


def guided_logits(logits: Tensor, batch: int, sc: SamplingConfig, t: int | Tensor) -> Tensor:
    """Classifier-free guidance: per-row logits ``(B, ..., V)`` from the forward output ``(B or 2B, ..., V)``.

    The one CFG combine of every LlamaGen decode loop (plain, speculative, compressed cache). ``t``: the token
    index being predicted, an int shared by the batch or a tensor ``(B,)`` / ``(B, T)`` per row and position
    (speculative decoding), so ``cfg_interval`` is honoured per token. Guided logits are
    ``uncond + (cond - uncond) * cfg_scale`` (``sampling.cfg_combine``).
    """
    if not sc.uses_cfg:
        return logits
    cond, uncond = logits[:batch], logits[batch:]
    if isinstance(t, int):
        return cfg_combine(cond, uncond, sc.cfg_scale) if sc.cfg_at(t) else cond
    guided = cfg_combine(cond, uncond, sc.cfg_scale)
    if sc.cfg_interval < 0:
        return guided
    return torch.where((t <= sc.cfg_interval + 1)[..., None], guided, cond)


@torch.no_grad()
def generate(model: Transformer, cond: Tensor, max_new_tokens: int | None = None, sc: SamplingConfig = SamplingConfig(),
             *, generator: torch.Generator | None = None, trace: dict | None = None,
             pick: Callable[[Tensor, int], Tensor] | None = None, prefix: Tensor | None = None,
             cache=None) -> Tensor:
    """Sample ``(B, max_new_tokens)`` token ids (long) for class labels ``cond`` (B,).

    ``prefix`` ``(B, P)``: the first P tokens are given (e.g. Distilled Decoding's teacher-involved variant);
    they are pre-filled in one forward through the cache and sampling starts at position P.

    ``pick(probs, t) -> (B,) ids`` replaces the sampler (e.g. Distilled Decoding's deterministic flow map
    from a noise token to a code); by default tokens are drawn from ``probs`` with ``generator`` (or
    arg-max when ``sc.sample_logits`` is False). ``trace``, when a dict, receives per-step lists ``logits``
    (guided, before temperature/filtering), ``probs`` (processed distribution) and ``raw`` (model output, both
    CFG halves) for parity checks.

    ``cache``: the KV cache the forward writes (default: a fresh static ``KVCache`` for the ``[cond; null]``
    batch); any object with ``KVCache.update``'s signature, e.g. ``accel.cache.llamagen.RasterKVCache``, which
    compresses the history with a cache policy using the queries the forward hands it.
    """
    n = check_max_new_tokens(max_new_tokens, model.config.block_size)
    check_labels(cond, model.config.num_classes, model="LlamaGen")
    watch = FiniteWatch("next-token probabilities", "LlamaGen")  # read once after the loop: no per-step sync
    B = cond.size(0)
    labels = cfg_batch(model, cond, sc.uses_cfg)
    R, c = labels.size(0), model.config.cls_token_num  # R = 2B under CFG ([cond; null] rows share the tokens)
    if cache is None:
        cache = model.new_cache(R, c + n)
    # Everything the loop touches is allocated here: the output, the next forward's input (R, 1), written in
    # place, and the positions (each step's input_pos is a view). kv_len is passed as a Python int to every
    # forward, prefill included: no device sync in the loop and one unbroken graph under torch.compile.
    out = torch.empty(B, n, dtype=torch.long, device=cond.device)
    step_in = torch.empty(R, 1, dtype=torch.long, device=cond.device)
    pos = torch.arange(c + n, device=cond.device)
    logits = model(None, labels, input_pos=pos[:c], cache=cache, kv_len=c)[:, -1]
    P = 0 if prefix is None else prefix.size(1)
    if P:
        if prefix.size(0) != B or P >= n:
            raise ValueError(f"prefix must be (B={B}, P < {n}); got {tuple(prefix.shape)}")
        out[:, :P] = prefix
        x = torch.cat([prefix, prefix]) if sc.uses_cfg else prefix
        logits = model(x, input_pos=pos[c: c + P], cache=cache, kv_len=c + P)[:, -1]
    for t in range(P, n):
        if t > P:
            p = c + t - 1
            logits = model(step_in, input_pos=pos[p: p + 1], cache=cache, kv_len=p + 1)[:, -1]
        guided = guided_logits(logits, B, sc, t)
        probs = probs_unchecked(guided, sc.temperature, sc.top_k, sc.top_p)  # sc checked its settings once
        watch(t, probs)
        tok = pick(probs, t) if pick is not None else sample_from(probs, generator, greedy=not sc.sample_logits,
                                                                  step=t, model="LlamaGen")
        out[:, t] = tok
        step_in.view(R // B, B).copy_(tok.expand(R // B, B))  # (B,) -> every CFG half of the next input
        if trace is not None:
            for k, v in (("raw", logits), ("logits", guided), ("probs", probs)):
                trace.setdefault(k, []).append(v.clone())
    watch.check()
    return out
