"""The limit model: FLOPs and bytes moved per decode step, from a config alone, and the floor time they imply.

A step (one LlamaGen token, one MAR encoder/decoder pass or diffusion-head step, one VAR scale) cannot run
faster than the larger of its compute time and its memory time on a device with matmul peak ``P`` (FLOP/s)
and memory bandwidth ``W`` (bytes/s); this is the roofline bound of Williams, Waterman & Patterson,
"Roofline: an insightful visual performance model" (CACM 2009)::

    floor(step) = max(F_step / P, B_step / W),        floor(call) = sum over steps of floor(step)
    fraction of floor = floor(call) / measured latency of the call           (1.0 = at the hardware limit)

``P`` and ``W`` are measured, not looked up (``accel.harness.device_peak``). Counting (see README, "Limit
model"): a multiply-add is 2 FLOPs, matmuls only (norms, softmax, activations and sampling are left out, as in
``accel.models.var_calc``); bytes = every weight matrix read once per step (weights stay in the
compute dtype; the embedding tables only contribute the rows gathered), + the KV cache each step attends to,
+ every matmul's input read and output written (unfused activations; logits are fp32), at
``bytes_per_element`` of the compute dtype. With classifier-free guidance the rows double (every family runs
[cond; uncond] in one batch). The tokenizer's decode (VQ / KL-VAE decoder) is not part of the floor.

A method exposes ``work_model(batch_size, bytes_per_element) -> Work`` to get a floor in ``accel bench``
rows; a method without it gets ``floor_s = frac_floor = null``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from accel.harness.device_peak import DevicePeak, device_peak
from accel.models.llamagen import GPTConfig
from accel.models.mar import MARConfig, mask_len_at
from accel.models.mar_head import DDPMSchedule, clip_schedule
from accel.models.var import VARConfig
from accel.models.var_calc import num_params, var_cost

LOGIT_BYTES = 4  # every family returns float32 logits


@dataclass(frozen=True)
class StepWork:
    """One step: FLOPs and bytes moved (weights read, KV cache read, activations read + written)."""

    flops: float
    weight_bytes: float
    kv_bytes: float = 0.0
    act_bytes: float = 0.0

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes + self.act_bytes

    def floor_s(self, peak: DevicePeak) -> float:
        return max(self.flops / peak.flops_per_s, self.bytes / peak.bytes_per_s)

    def __add__(self, other: "StepWork") -> "StepWork":
        return StepWork(self.flops + other.flops, self.weight_bytes + other.weight_bytes,
                        self.kv_bytes + other.kv_bytes, self.act_bytes + other.act_bytes)


@dataclass(frozen=True)
class Work:
    """The work of one ``generate`` call: ``steps`` = (label, StepWork, how many times it runs)."""

    family: str
    batch_size: int
    steps: tuple[tuple[str, StepWork, int], ...]

    @property
    def flops(self) -> float:
        return sum(w.flops * n for _, w, n in self.steps)

    @property
    def bytes(self) -> float:
        return sum(w.bytes * n for _, w, n in self.steps)

    @property
    def n_steps(self) -> int:
        return sum(n for _, _, n in self.steps)

    def floor_s(self, peak: DevicePeak) -> float:
        """Sum of the per-step rooflines (a step cannot borrow the idle compute of another)."""
        return sum(w.floor_s(peak) * n for _, w, n in self.steps)

    def memory_bound_fraction(self, peak: DevicePeak) -> float:
        """Share of the floor spent in steps whose memory time exceeds their compute time."""
        total = self.floor_s(peak)
        mem = sum(w.floor_s(peak) * n for _, w, n in self.steps
                  if w.bytes / peak.bytes_per_s >= w.flops / peak.flops_per_s)
        return mem / total if total else 0.0


def _linear(n: float, d_in: int, d_out: int, elt: int, out_elt: int | None = None) -> StepWork:
    """A matmul on ``n`` rows: 2 n d_in d_out FLOPs, its input read and its output written (weights apart)."""
    return StepWork(2.0 * n * d_in * d_out, 0.0, 0.0, n * (d_in * elt + d_out * (out_elt or elt)))


def _attention(rows: int, t_q: int, t_k: int, dim: int, elt: int, kv_cached: bool) -> StepWork:
    """q k^T and softmax(.) v over all heads (2 * 2 t_q t_k dim FLOPs per row); a cached k/v is KV traffic."""
    kv = 2.0 * rows * t_k * dim * elt
    return StepWork(4.0 * rows * t_q * t_k * dim, 0.0, kv if kv_cached else 0.0,
                    (0.0 if kv_cached else kv) + 2.0 * rows * t_q * dim * elt)


def _check(batch_size: int, bytes_per_element: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if bytes_per_element not in (1, 2, 4, 8):
        raise ValueError(f"bytes_per_element must be 1, 2, 4 or 8, got {bytes_per_element}")


# ----------------------------------------------------------------------------------------------- LlamaGen
def llamagen_weight_params(cfg: GPTConfig) -> int:
    """Parameters read by every LlamaGen step: all layers, the final norm and the output head (the token and
    class embedding tables are gathered, not read whole)."""
    d, h, qkv = cfg.dim, cfg.ffn_hidden, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim
    return cfg.n_layer * (d * qkv + d * d + 3 * d * h + 2 * d) + d + d * cfg.vocab_size


def llamagen_step(cfg: GPTConfig, rows: int, t_new: int, kv_len: int, elt: int) -> StepWork:
    """One forward of ``t_new`` tokens per row through the static cache, attending to ``kv_len`` positions."""
    d, n = cfg.dim, rows * t_new
    kv_dim = cfg.kv_heads * cfg.head_dim
    layer = (_linear(n, d, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, elt) + _linear(n, d, d, elt)
             + _linear(n, d, 2 * cfg.ffn_hidden, elt) + _linear(n, cfg.ffn_hidden, d, elt))
    attn = StepWork(4.0 * rows * t_new * kv_len * d, 0.0, 2.0 * rows * kv_len * kv_dim * elt, 2.0 * n * d * elt)
    head = _linear(n, d, cfg.vocab_size, elt, LOGIT_BYTES)
    w = StepWork(0.0, llamagen_weight_params(cfg) * elt, 0.0, n * d * elt)  # + the gathered embedding rows
    return StepWork(cfg.n_layer * (layer.flops + attn.flops), 0.0, cfg.n_layer * attn.kv_bytes,
                    cfg.n_layer * (layer.act_bytes + attn.act_bytes)) + head + w


def llamagen_work(cfg: GPTConfig, batch_size: int, *, cfg_guidance: bool, bytes_per_element: int = 4,
                  n_tokens: int | None = None) -> Work:
    """``accel.models.llamagen_generate.generate``: the class-token prefill, then one token per step; step t
    attends to ``cls + t`` cached positions; rows = 2B under CFG (both halves at every step)."""
    _check(batch_size, bytes_per_element)
    n = n_tokens or cfg.block_size
    rows, c = batch_size * (2 if cfg_guidance else 1), cfg.cls_token_num
    steps = [("prefill", llamagen_step(cfg, rows, c, c, bytes_per_element), 1)]
    steps += [(f"token {t}", llamagen_step(cfg, rows, 1, c + t, bytes_per_element), 1) for t in range(1, n)]
    return Work("llamagen", batch_size, tuple(steps))


# ---------------------------------------------------------------------------------------------------- MAR
def _vit_block(cfg_dim: int, mlp_ratio: float, rows: int, n: int, elt: int) -> StepWork:
    hidden = int(cfg_dim * mlp_ratio)
    t = rows * n
    return (_linear(t, cfg_dim, 3 * cfg_dim, elt) + _linear(t, cfg_dim, cfg_dim, elt) + _linear(t, cfg_dim, hidden, elt)
            + _linear(t, hidden, cfg_dim, elt) + _attention(rows, n, n, cfg_dim, elt, kv_cached=False))


def _vit_block_params(dim: int, mlp_ratio: float) -> int:
    hidden = int(dim * mlp_ratio)
    return 3 * dim * dim + 3 * dim + dim * dim + dim + 2 * dim * hidden + hidden + dim + 4 * dim


def mar_pass_params(cfg: MARConfig) -> int:
    """Parameters read by one encoder + decoder pass (blocks, norms, z_proj, decoder_embed)."""
    e, d = cfg.encoder_embed_dim, cfg.decoder_embed_dim
    return (cfg.encoder_depth * _vit_block_params(e, cfg.mlp_ratio)
            + cfg.decoder_depth * _vit_block_params(d, cfg.mlp_ratio)
            + cfg.token_embed_dim * e + e + 4 * e + e * d + d + 2 * d)


def mar_head_params(cfg: MARConfig) -> int:
    """Parameters of the diffusion MLP read by every head step (input_proj, res blocks, final layer;
    ``cond_embed`` and the time embedding run once per call)."""
    w, c = cfg.diffloss_w, cfg.token_embed_dim
    res_block = 2 * w * w + 2 * w + 3 * w * w + 3 * w + 2 * w  # mlp (two w x w), adaLN (w -> 3w), in_ln
    return c * w + w + cfg.diffloss_d * res_block + 2 * w * w + 2 * w + w * 2 * c + 2 * c


def mar_pass(cfg: MARConfig, rows: int, known: int, elt: int) -> StepWork:
    """``MAR.condition``: z_proj on all L tokens, encoder on buffer + known, decoder on buffer + L."""
    e, d, L, buf = cfg.encoder_embed_dim, cfg.decoder_embed_dim, cfg.seq_len, cfg.buffer_size
    n_e, n_d = buf + known, buf + L
    w = StepWork(0.0, mar_pass_params(cfg) * elt)
    return (w + _linear(rows * L, cfg.token_embed_dim, e, elt) + _linear(rows * n_e, e, d, elt)
            + _scale(_vit_block(e, cfg.mlp_ratio, rows, n_e, elt), cfg.encoder_depth)
            + _scale(_vit_block(d, cfg.mlp_ratio, rows, n_d, elt), cfg.decoder_depth))


def mar_head_step(cfg: MARConfig, head_rows: int, elt: int) -> StepWork:
    """One evaluation of the diffusion MLP on ``head_rows`` rows (adaLN is recomputed: y changes with t)."""
    w, c = cfg.diffloss_w, cfg.token_embed_dim
    block = _linear(head_rows, w, 3 * w, elt) + _linear(head_rows, w, w, elt) + _linear(head_rows, w, w, elt)
    final = _linear(head_rows, w, 2 * w, elt) + _linear(head_rows, w, 2 * c, elt)
    weights = StepWork(0.0, mar_head_params(cfg) * elt)
    return weights + _linear(head_rows, c, w, elt) + _scale(block, cfg.diffloss_d) + final


def mar_work(cfg: MARConfig, batch_size: int, *, num_iter: int, head_steps: int | str | None = None,
             cfg_guidance: bool, bytes_per_element: int = 4) -> Work:
    """``accel.models.mar.sample_tokens``: per iteration one ``condition`` pass on the known tokens, then the
    head steps (``head_steps``: a step count or respacing string, None = the config's; after the config's
    ``max_timestep`` clipping, as sampling does) on the rows predicted at that iteration (x2 under CFG)."""
    _check(batch_size, bytes_per_element)
    L = cfg.seq_len
    if not 1 <= num_iter <= L:
        raise ValueError(f"num_iter must lie in [1, {L}], got {num_iter}")
    S = clip_schedule(DDPMSchedule.respaced(head_steps if head_steps is not None else cfg.num_sampling_steps),
                      cfg.max_timestep).num_steps
    rows = batch_size * (2 if cfg_guidance else 1)
    steps, remaining = [], L
    for k in range(num_iter):
        mask_len = mask_len_at(k, num_iter, L, remaining)
        predicted = remaining if k == num_iter - 1 else remaining - mask_len
        steps.append((f"pass {k}", mar_pass(cfg, rows, L - remaining, bytes_per_element), 1))
        hr = rows * predicted
        cond = _linear(hr, cfg.decoder_embed_dim, cfg.diffloss_w, bytes_per_element)
        steps.append((f"head {k}", mar_head_step(cfg, hr, bytes_per_element), S))
        cond_w = StepWork(0.0, cfg.decoder_embed_dim * cfg.diffloss_w * bytes_per_element)
        steps.append((f"head cond {k}", cond + cond_w, 1))
        remaining = mask_len
    return Work("mar", batch_size, tuple(steps))


def _scale(w: StepWork, k: int) -> StepWork:
    return StepWork(w.flops * k, w.weight_bytes * k, w.kv_bytes * k, w.act_bytes * k)


# ---------------------------------------------------------------------------------------------------- VAR
def var_weight_params(cfg: VARConfig, vocab_size: int, Cvae: int) -> int:
    """Parameters read by every VAR scale: ``var_calc.num_params`` less the gathered tables (class, level and
    position embeddings): the blocks, shared AdaLN, the head (AdaLN + linear) and word_embed."""
    C = cfg.embed_dim
    tables = (cfg.num_classes + 1) * C + cfg.first_l * C + cfg.L * C + len(cfg.patch_nums) * C
    return num_params(cfg, vocab_size, Cvae) - tables


def var_work(cfg: VARConfig, batch_size: int, *, vocab_size: int = 4096, Cvae: int = 32,
             bytes_per_element: int = 4, cfg_guidance: bool = True) -> Work:
    """``VAR.autoregressive_infer_cfg``: one pass per scale on 2B rows ([cond; uncond]; B rows at cfg 0), FLOPs
    and the attended KV bytes per scale from ``accel.models.var_calc.var_cost``."""
    _check(batch_size, bytes_per_element)
    cost = var_cost(cfg, vocab_size, Cvae, bytes_per_element=bytes_per_element, cfg_guidance=cfg_guidance)
    C, hidden, rows = cfg.embed_dim, round(cfg.embed_dim * cfg.mlp_ratio), (2 if cfg_guidance else 1) * batch_size
    steps = []
    for s, pn in enumerate(cost.patch_nums):
        t = rows * pn * pn
        act = cfg.depth * t * (C + 3 * C + 2 * C + 2 * C + C + hidden + hidden + C + 2 * C) * bytes_per_element
        act += t * (C * bytes_per_element + vocab_size * LOGIT_BYTES) + t * (Cvae + C) * bytes_per_element
        steps.append((f"scale {s}", StepWork(float(cost.flops_per_scale[s] * batch_size),
                                             var_weight_params(cfg, vocab_size, Cvae) * bytes_per_element,
                                             float(cost.kv_bytes_per_scale[s] * batch_size), float(act)), 1))
    return Work("var", batch_size, tuple(steps))


# ----------------------------------------------------------------------------------------------- harness
def floor_fields(method: Any, batch_size: int, latency_s: float, device: torch.device | str,
                 dtype: torch.dtype) -> dict[str, Any]:
    """``floor_s``, ``frac_floor`` and a ``floor`` detail dict for a results row; nulls when ``method`` has
    no ``work_model``. The device peak is calibrated once per process (``device_peak``)."""
    work_model = getattr(method, "work_model", None)
    if work_model is None:
        return {"floor_s": None, "frac_floor": None}
    work = work_model(batch_size, torch.empty((), dtype=dtype).element_size())
    peak = device_peak(device, dtype)
    floor = work.floor_s(peak)
    return {"floor_s": floor, "frac_floor": floor / latency_s if latency_s > 0 else None,
            "floor": {"flops": work.flops, "bytes": work.bytes, "steps": work.n_steps,
                      "memory_bound_share": work.memory_bound_fraction(peak), "peak": peak.as_dict()}}
