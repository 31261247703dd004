"""DD1 whole-sequence map (arXiv 2412.17153, Fig. 6): noise tokens -> token sequence, deterministically.

Noise tokens ``eps_1..eps_n`` are drawn once; token i's distribution comes from the teacher conditioned
on the already-mapped tokens ``q_<i`` (with CFG exactly as the teacher samples), and
``q_i = Phi(eps_i; p(. | q_<i))`` is the per-token flow map of ``accel.distill.flow``. This defines the
trajectory X_1 = (eps_1..eps_n), X_2 = (q_1, eps_2..), ..., X_{n+1} = (q_1..q_n) the students learn.

LlamaGen: token by token in raster order, in the space of the l2-normalised codebook (what the VQ looks
up). VAR: scale by scale, tokens within a scale independent given earlier scales (see ``var_noise_map``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from accel.distill.flow import FlowSolver
from accel.models.llamagen import Transformer
from accel.models.llamagen_generate import SamplingConfig, generate


def llamagen_codes(vq) -> Tensor:
    """The token space of a LlamaGen VQ: its codebook as looked up (l2-normalised rows)."""
    return vq.quantize.codebook().detach()


@torch.no_grad()
def llamagen_noise_map(model: Transformer, codes: Tensor, cond: Tensor, noise: Tensor,
                       sc: SamplingConfig = SamplingConfig(), solver: FlowSolver = FlowSolver()) -> Tensor:
    """Token ids (B, n) that the DD1 map assigns to ``noise`` (B, n, d) under teacher ``model``.

    ``sc`` sets the teacher distribution (CFG, temperature, top-k/top-p); its ``sample_logits`` is unused:
    the flow map replaces sampling, so the result is a deterministic function of (cond, noise).
    """
    n = noise.size(1)
    if noise.size(-1) != codes.size(-1):
        raise ValueError(f"noise dim {noise.size(-1)} != code dim {codes.size(-1)}")
    if n > model.config.block_size:
        raise ValueError(f"{n} noise tokens for a block of {model.config.block_size}")

    def pick(probs: Tensor, t: int) -> Tensor:
        return solver.tokens(noise[:, t], codes, probs.clamp_min(0).log())

    return generate(model, cond, n, sc, pick=pick)


def llamagen_pair_map(teacher: Transformer, vq, sc: SamplingConfig, solver: FlowSolver):
    """(noise_map, seq_len, token_dim, num_classes) for ``accel.distill.data.generate_pairs``."""
    codes = llamagen_codes(vq)

    def noise_map(noise: Tensor, labels: Tensor) -> Tensor:
        return llamagen_noise_map(teacher, codes, labels, noise, sc, solver)

    cfg = teacher.config
    return noise_map, cfg.block_size, codes.size(1), cfg.num_classes
