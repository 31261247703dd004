"""Input checks shared by every family and technique: ranges, class labels, finite values.

Each check raises at once with a message that names the parameter, the value and the valid range, so a bad
setting never turns into a silent change of behaviour (e.g. a negative temperature into greedy decoding).
Non-finite model outputs raise ``NonFiniteError`` naming the model and the decode step.

Cost of the finite checks: ``torch.isfinite(t).all()`` is one reduction over a tensor the caller already has;
reading its value synchronises with the device. Decode loops that must not synchronise every step use
``FiniteWatch``: it records one flag per step on the device and is read once, after the loop.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor


class NonFiniteError(FloatingPointError):
    """A model produced NaN/inf where a distribution or a sample was expected."""


def check_range(name: str, value, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> None:
    """Raise ``ValueError`` unless ``lo <(=) value <(=) hi`` (``None``: unbounded; ``*_open``: strict)."""
    lo_s = "-inf" if lo is None else f"{lo:g}"
    hi_s = "inf" if hi is None else f"{hi:g}"
    rng = f"{'(' if lo_open or lo is None else '['}{lo_s}, {hi_s}{')' if hi_open or hi is None else ']'}"
    if integer and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise ValueError(f"{name} must be an integer in {rng}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ValueError(f"{name} must be a number in {rng}, got {value!r}")
    bad = ((lo is not None and (value <= lo if lo_open else value < lo))
           or (hi is not None and (value >= hi if hi_open else value > hi)))
    if bad:
        raise ValueError(f"{name}={value!r} is out of range; valid: {rng}")


def check_labels(labels: Tensor, num_classes: int, *, name: str = "class labels", model: str = "model") -> None:
    """Class labels must be a 1-D tensor of integers in ``[0, num_classes)``; the null (unconditional) class is
    not a label."""
    if labels.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of class ids (B,), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class ids, got dtype {labels.dtype}")
    if labels.numel() == 0:
        raise ValueError(f"{name} is empty; give at least one class id")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} contain {bad}, out of range for {model} with {num_classes} classes; "
                         f"valid: 0..{num_classes - 1}")


def check_finite(t: Tensor, *, what: str, model: str = "model", step: int | str | None = None) -> None:
    """Raise ``NonFiniteError`` if ``t`` holds NaN or inf (one reduction plus one device sync)."""
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError(_message(t, what, model, step))


def _message(t: Tensor, what: str, model: str, step) -> str:
    at = "" if step is None else f" at step {step}"
    n_nan = int(torch.isnan(t).sum())
    n_inf = int(torch.isinf(t).sum())
    return (f"{model}: non-finite {what}{at} ({n_nan} NaN, {n_inf} inf of {t.numel()} values); "
            "check the weights (a bad or half-precision-overflowing checkpoint) and the inputs")


class FiniteWatch:
    """Per-step counts of non-finite values kept on the device; ``check()`` reads them once (one sync for
    the whole loop) and names the first bad step. ``watch(step, t)`` costs one reduction, no sync."""

    def __init__(self, what: str, model: str = "model"):
        self.what, self.model = what, model
        self.counts: list[Tensor] = []
        self.steps: list = []

    def __call__(self, step, t: Tensor) -> None:
        self.counts.append((~torch.isfinite(t)).sum())
        self.steps.append(step)

    def check(self) -> None:
        if not self.counts:
            return
        counts = torch.stack(self.counts).tolist()
        for n, step in zip(counts, self.steps):
            if n:
                raise NonFiniteError(f"{self.model}: non-finite {self.what} at step {step} ({n} NaN/inf values); "
                                     "check the weights (a bad or overflowing checkpoint) and the inputs")
        self.counts, self.steps = [], []


def check_token_sampling(*, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                         cfg_scale: float | None = None, where: str = "sampling") -> None:
    """The one sampling convention (LlamaGen's ``sample()``): ``temperature > 0`` (greedy is the explicit
    ``sample_logits=False``, never a side effect of T -> 0), ``top_k >= 0`` (0 = off), ``top_p`` in (0, 1]
    (1 = off), ``cfg_scale >= 1`` (1 = no guidance)."""
    check_range(f"{where}: temperature", temperature, 0, None, lo_open=True)
    check_range(f"{where}: top_k", top_k, 0, None, integer=True)
    check_range(f"{where}: top_p", top_p, 0, 1, lo_open=True)
    if cfg_scale is not None:
        check_range(f"{where}: cfg_scale", cfg_scale, 1, None)


def check_max_new_tokens(max_new_tokens: int | None, block_size: int, where: str = "generate") -> int:
    """``None`` = the whole image (``block_size`` tokens); otherwise an integer in [1, block_size]."""
    if max_new_tokens is None:
        return block_size
    check_range(f"{where}: max_new_tokens", max_new_tokens, 1, block_size, integer=True)
    return max_new_tokens


def vocab_size_of(model) -> int | None:
    """The token vocabulary of a LlamaGen-like model or drafter (``None`` if it does not say)."""
    for obj in (model, getattr(model, "model", None), getattr(model, "head", None)):
        cfg = getattr(obj, "config", None)
        if cfg is not None and hasattr(cfg, "vocab_size"):
            return int(cfg.vocab_size)
    return None


def check_speculative_setup(target, drafter, rule) -> None:
    """Before any work: the drafter proposes ids of the target's vocabulary (and, a draft model, for the same token
    grid and classes), and a LANTERN neighbour table has one row per target token (it must come from the target's
    own codebook)."""
    V = vocab_size_of(target)
    Vq = vocab_size_of(drafter)
    if V is not None and Vq is not None and Vq != V:
        raise ValueError(f"draft vocabulary ({Vq} tokens, {getattr(drafter, 'name', type(drafter).__name__)}) "
                         f"differs from the target's ({V} tokens); the drafter must share the target's tokenizer")
    tcfg, dcfg = getattr(target, "config", None), getattr(getattr(drafter, "model", None), "config", None)
    for field in ("block_size", "num_classes"):
        if tcfg is not None and dcfg is not None and getattr(dcfg, field, None) != getattr(tcfg, field, None):
            raise ValueError(f"draft model {field}={getattr(dcfg, field, None)} differs from the target's "
                             f"{getattr(tcfg, field, None)}: the drafter must decode the same token grid and classes")
    table = getattr(rule, "neighbours", None)
    if V is not None and table is not None and table.shape[0] != V:
        raise ValueError(f"LANTERN neighbour table has {table.shape[0]} rows but the target's codebook has {V} "
                         "codes; build it with neighbour_table(<target tokenizer>.quantize.embedding.weight, k)")


def finite_pq(p: Tensor, q: Tensor | None) -> Tensor:
    """A 0-d bool tensor: whether target ``p`` (and draft ``q``) are finite (one reduction each, no sync)."""
    ok = torch.isfinite(p).all()
    return ok if q is None else ok & torch.isfinite(q).all()


def raise_non_finite_pq(p: Tensor, q: Tensor | None, step, where: str = "speculative decoding") -> None:
    bad_p = not bool(torch.isfinite(p).all())
    who = "target model (p)" if bad_p else "draft model (q)"
    check_finite(p if bad_p else q, what=f"probabilities in {where}", model=who, step=step)


def check_var_sampling(*, B: int = 1, cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0,
                       where: str = "VAR autoregressive_infer_cfg") -> None:
    """VAR's official conventions: ``cfg >= 0`` (the guidance ramps as t = cfg * si / (S-1); 0 = none),
    ``top_k >= 0`` and ``top_p`` in [0, 1] with 0 meaning off."""
    check_range(f"{where}: B", B, 1, None, integer=True)
    check_range(f"{where}: cfg", cfg, 0, None)
    check_range(f"{where}: top_k", top_k, 0, None, integer=True)
    check_range(f"{where}: top_p", top_p, 0, 1)


def check_mar_sampling(*, cfg: float = 1.0, temperature: float = 1.0, where: str = "MAR sample_tokens") -> None:
    """MAR's guidance ``uncond + cfg_t (cond - uncond)`` needs ``cfg >= 1`` (1 = none); the head's noise
    scale ``temperature`` must be > 0."""
    check_range(f"{where}: cfg", cfg, 1, None)
    check_range(f"{where}: temperature", temperature, 0, None, lo_open=True)
