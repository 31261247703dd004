"""Condition Contrastive Alignment (CCA): guidance-free AR visual generation by fine-tuning.

Chen et al., "Toward Guidance-Free AR Visual Generation via Condition Contrastive Alignment", ICLR 2025
(arXiv 2410.09347; code thu-ml/CCA). The model is fine-tuned against a frozen copy of itself so that
sampling *without* classifier-free guidance matches guided quality (one batch of rows per step, not two).

Notation (paper -> code):
    p_theta(x|c)      the trained policy        ``logp_policy``   (sequence log-likelihood, summed over tokens)
    p_ref(x|c)        the frozen reference      ``logp_ref``
    Delta(x, c)       log p_theta - log p_ref   ``delta``
    beta, lambda      temperature, negative weight
    c^-               a mismatched condition    ``neg`` (from ``contrastive_conditions``)

The loss (paper Fig. 2 / §4):

    L(theta) = -E_{p(x,c)} log sigma(beta Delta(x, c)) - lambda E_{p(x)p(c)} log sigma(-beta Delta(x, c^-))

Its pointwise optimum is beta Delta* = log p(x|c)/p(x) - log lambda, i.e. p_theta ∝ p_ref [p(x|c)/p(x)]^(1/beta):
the same family of targets as CFG with scale ~ 1/beta (research note §1; derivation ours).

Negatives as the released code builds them (``LlamaGen_finetune.py``, ``VAR_CCA_trainer.py``): the labels
are rolled by one inside the batch (c^-_i = c_{i+1}); with probability ``uncond_ratio`` both c and c^- of a row
become the null class (keeps the null class trained, so CFG remains usable); a row whose c^- equals c (a
collision, or a null row) is not a negative: it enters the second term as a positive with weight 1.

Everything here is a pure function of tensors; the per-family sequence log-likelihoods teacher-force the
family's one forward pass.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from accel.models.var import teacher_forced_logits


def contrastive_conditions(labels: Tensor, null_class: int, uncond_ratio: float,
                           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Conditions ``(cond, neg, neg_is_positive)`` for a batch of matched ``labels`` (B,).

    ``neg`` is ``labels`` rolled by one (neg_i = labels_{i+1}); rows drawn with probability ``uncond_ratio``
    get the null class in both ``cond`` and ``neg``. ``neg_is_positive`` marks rows where ``neg == cond``
    (collisions and null rows), which the loss treats as positives.
    """
    if not 0.0 <= uncond_ratio <= 1.0:
        raise ValueError(f"uncond_ratio must be in [0, 1], got {uncond_ratio}")
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-d (B,), got shape {tuple(labels.shape)}")
    neg = labels.roll(-1, dims=0)
    null = torch.rand(labels.shape, generator=generator, device=labels.device) < uncond_ratio
    cond = torch.where(null, torch.full_like(labels, null_class), labels)
    neg = torch.where(null, torch.full_like(neg, null_class), neg)
    return cond, neg, neg == cond


def cca_loss(delta_pos: Tensor, delta_neg: Tensor, neg_is_positive: Tensor, beta: float,
             lam: float) -> Tensor:
    """The CCA loss (paper form) from per-row log-ratios.

    ``delta_pos`` (B,): Delta(x_i, c_i); ``delta_neg`` (B,): Delta(x_i, c^-_i); ``neg_is_positive`` (B,) bool.
    Returns  mean_i[-log sigma(beta Delta+_i)] + mean_i[w_i (-log sigma(s_i beta Delta-_i))]  with s = -1, w = lambda
    for true negatives and s = +1, w = 1 for collision / null rows (as the released code). The released code
    further divides by max(lambda, 1); recipes do that themselves (it only rescales the gradient).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if lam < 0:
        raise ValueError(f"lam (lambda) must be >= 0, got {lam}")
    if delta_pos.shape != delta_neg.shape or delta_neg.shape != neg_is_positive.shape:
        raise ValueError(f"delta_pos, delta_neg and neg_is_positive must have one shape (B,), got "
                         f"{tuple(delta_pos.shape)}, {tuple(delta_neg.shape)}, {tuple(neg_is_positive.shape)}")
    pos_term = -F.logsigmoid(beta * delta_pos)
    sign = torch.where(neg_is_positive, 1.0, -1.0).to(delta_neg.dtype)
    weight = torch.where(neg_is_positive, 1.0, float(lam)).to(delta_neg.dtype)
    neg_term = -weight * F.logsigmoid(sign * beta * delta_neg)
    return pos_term.mean() + neg_term.mean()


@torch.no_grad()
def reward_stats(delta_pos: Tensor, delta_neg: Tensor, neg_is_positive: Tensor, beta: float) -> dict:
    """Implicit-reward diagnostics (as the released code logs them): accuracy = fraction of true-negative rows
    with beta Delta+ > beta Delta-, margin = their mean beta (Delta+ - Delta-)."""
    real = ~neg_is_positive
    if not bool(real.any()):
        return {"reward_acc": float("nan"), "reward_margin": float("nan")}
    m = beta * (delta_pos[real] - delta_neg[real])
    return {"reward_acc": float((m > 0).float().mean()), "reward_margin": float(m.mean())}


def token_logp(logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
    """Sum over positions of log softmax(logits)[target]: (B, T, V), (B, T) -> (B,), in float32; with
    ``weights`` (T,) a weighted sum (see ``var_scale_ramp``)."""
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return logp.sum(-1) if weights is None else logp @ weights.to(logp)


def var_scale_ramp(patch_nums: Sequence[int]) -> Tensor:
    """Per-token weights (L,) that ramp over VAR's scales as its CFG does (t_k = cfg * k / (K - 1), zero at the
    first scale: ``accel.models.var``), scaled so that their mean over the L tokens is 1.

    A deviation from the paper, ours: CCA's log-ratio is a whole-sequence sum, so it sharpens the class evidence
    of the coarse scales (the layout) as much as the fine ones, while VAR's ramped CFG leaves the first scale
    unguided; weighting Delta = sum_k w_k Delta_k by this ramp puts the contrast where VAR's guidance acts.
    """
    K = len(patch_nums)
    if K < 2:
        raise ValueError(f"patch_nums needs >= 2 scales for a ramp, got {list(patch_nums)}")
    ramp = torch.cat([torch.full((pn * pn,), k / (K - 1)) for k, pn in enumerate(patch_nums)])
    return ramp * (len(ramp) / ramp.sum())


def llamagen_sequence_logp(model, codes: Tensor, cond: Tensor) -> Tensor:
    """log p(x|c) of LlamaGen: teacher-forced logits over ``[class, codes[:-1]]`` scored on ``codes`` (B, T)."""
    T = codes.shape[1]
    logits = model(codes[:, :-1], cond, input_pos=torch.arange(T, device=codes.device))  # (B, T, V)
    return token_logp(logits, codes)


def var_sequence_logp(model, vae, codes_per_scale: Sequence[Tensor], cond: Tensor,
                      weights: Tensor | None = None) -> Tensor:
    """log p(x|c) of VAR: teacher-forced logits over all scales (``teacher_forced_logits``), summed over the
    L = sum pn^2 tokens (``weights`` (L,): weighted). ``codes_per_scale``: per-scale index tensors (B, pn^2)."""
    logits = teacher_forced_logits(model, vae, cond, codes_per_scale)  # (B, L, V)
    return token_logp(logits, torch.cat(list(codes_per_scale), dim=1), weights)
