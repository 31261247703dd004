"""Sampling helpers shared by every token-AR decode loop: pure functions of tensors and a generator.

Semantics follow LlamaGen's ``sample()`` (research/lantern_llamagen.md §1.7): temperature floored at 1e-5,
top-k keeps ties with the k-th largest logit, top-p keeps the first token crossing the threshold,
filtered logits become -inf, greedy = arg-max of the probabilities.
"""
from __future__ import annotations

import torch
from torch import Tensor

from accel.validate import check_finite, check_token_sampling


def top_k_top_p_filter(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Return a copy of ``logits`` (..., V) with tokens outside top-k / top-p set to -inf."""
    out = logits
    if top_k > 0:
        k = min(max(top_k, 1), logits.size(-1))
        kth = torch.topk(out, k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        remove = cum > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # keep the first token over the threshold
        remove[..., 0] = False
        out = out.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return out


def logits_to_probs(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Processed next-token distribution: softmax(filter(logits / T)).

    ``temperature`` must be > 0, ``top_k`` >= 0 (0 = off), ``top_p`` in (0, 1] (1 = off): greedy decoding is
    an explicit choice of the caller (``sample_from(..., greedy=True)``), never the side effect of T -> 0
    (LlamaGen's own floor of 1e-5 is kept for T in (0, 1e-5)).
    """
    check_token_sampling(temperature=temperature, top_k=top_k, top_p=top_p, where="logits_to_probs")
    return probs_unchecked(logits, temperature, top_k, top_p)


def probs_unchecked(logits: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """:func:`logits_to_probs` without its argument checks, for hot loops whose settings were validated once
    (a ``SamplingConfig``). T = 1 skips the division (x / 1 = x exactly)."""
    if temperature != 1.0:
        logits = logits / max(temperature, 1e-5)
    if top_k > 0 or top_p < 1.0:
        logits = top_k_top_p_filter(logits, top_k, top_p)
    return torch.softmax(logits, dim=-1)


def sample_from(probs: Tensor, generator: torch.Generator | None, greedy: bool = False, *,
                step: int | None = None, model: str = "model") -> Tensor:
    """One token per row of ``probs`` (B, V) -> (B,) long. ``greedy`` takes the arg-max.

    A non-finite distribution that makes the draw fail raises ``NonFiniteError`` naming ``model`` and
    ``step`` (checked only on failure: no cost otherwise). The greedy path cannot fail, so decode loops
    also keep a ``FiniteWatch`` over their probabilities.
    """
    if greedy:
        return torch.topk(probs, 1, dim=-1).indices[:, 0]
    try:
        return torch.multinomial(probs, 1, generator=generator)[:, 0]
    except RuntimeError:
        check_finite(probs, what="next-token probabilities", model=model, step=step)
        raise


def cfg_combine(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance on logits: uncond + (cond - uncond) * scale."""
    return uncond + (cond - uncond) * scale
