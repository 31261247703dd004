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
from accel.distill.student_llamagen import DDLlamaGen
from accel.models.llamagen import Transformer
from accel.models.llamagen_generate import SamplingConfig, generate


def llamagen_codes(vq) -> Tensor:
    """The token space of a LlamaGen VQ: its codebook as looked up (l2-normalised rows)."""
    return vq.quantize.codebook().detach()


@torch.no_grad()
def llamagen_noise_map(model: Transformer, codes: Tensor, cond: Tensor, noise: Tensor,
                       sc: SamplingConfig = SamplingConfig(), solver: FlowSolver = FlowSolver(),
                       prefix: Tensor | None = None) -> Tensor:
    """Token ids (B, n) that the DD1 map assigns to ``noise`` (B, n, d) under teacher ``model``.

    ``sc`` sets the teacher distribution (CFG, temperature, top-k/top-p); its ``sample_logits`` is unused:
    the flow map replaces sampling, so the result is a deterministic function of (cond, noise).
    ``prefix`` (B, P): the first P tokens are given and only ``noise[:, P:]`` is mapped, conditioned on them:
    the trajectory from X_{P+1} = (prefix, eps_>P) on.
    """
    n = noise.size(1)
    if noise.size(-1) != codes.size(-1):
        raise ValueError(f"noise dim {noise.size(-1)} != code dim {codes.size(-1)}")
    if n > model.config.block_size:
        raise ValueError(f"{n} noise tokens for a block of {model.config.block_size}")

    def pick(probs: Tensor, t: int) -> Tensor:
        return solver.tokens(noise[:, t], codes, probs.clamp_min(0).log())

    return generate(model, cond, n, sc, pick=pick, prefix=prefix)


def llamagen_pair_map(teacher: Transformer, vq, sc: SamplingConfig, solver: FlowSolver, *,
                      prefix_student=None, prefix_len: int = 0):
    """(noise_map, seq_len, token_dim, num_classes) for ``accel.distill.data.generate_pairs``.

    ``prefix_student`` (a ``DDLlamaGen``) with ``prefix_len`` = t: on-policy pairs for the student's second step
    (accel's addition; the paper builds X_t from the teacher's own trajectory). The first t tokens are the
    student's one-step tokens from the noise, the rest the teacher map continued from them with the same noise,
    so a pair's (X_t, end point) is what two-step sampling feeds the student and what the teacher would make of it.
    """
    codes = llamagen_codes(vq)
    if prefix_student is not None:
        if not isinstance(prefix_student, DDLlamaGen):
            raise TypeError(f"prefix_student must be a LlamaGen DD student (DDLlamaGen), got "
                            f"{type(prefix_student).__name__}")
        if prefix_student.codes.shape != codes.shape or not torch.equal(
                torch.cdist(prefix_student.codes.float(), codes.float()).argmin(-1), torch.arange(codes.size(0))):
            # the same codebook up to storage rounding: every student code's nearest tokenizer code has its index
            raise ValueError("prefix_student's token space (its codes) is not this tokenizer's codebook")
        if not 0 < prefix_len < teacher.config.block_size:
            raise ValueError(f"prefix_len={prefix_len}: must be in (0, {teacher.config.block_size}) tokens")

    def noise_map(noise: Tensor, labels: Tensor) -> Tensor:
        prefix = None
        if prefix_student is not None:
            prefix = prefix_student.sample(labels, noise, (0,))[:, :prefix_len]
        return llamagen_noise_map(teacher, codes, labels, noise, sc, solver, prefix=prefix)

    cfg = teacher.config
    return noise_map, cfg.block_size, codes.size(1), cfg.num_classes
