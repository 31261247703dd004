"""Continuous speculative decoding (CSpD) for MAR: Wang et al., arXiv 2411.11925.
(work in progress: head statistics first)"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from accel.models.mar_head import DDPMSchedule, DiffLoss, HeadNoise


@dataclass
class HeadStats:
    """Per-token statistics of an aligned head run (official ``manager``), all (R, C).

    final_mean / final_std: the last step's Gaussian (respaced index 0; std = exp(logvar/2) * temperature);
    log_std_sum: sum_{i>=1} log sigma_i of the path; sample: the head's token (= final_mean, no noise at i=0)."""

    final_mean: torch.Tensor
    final_std: torch.Tensor
    log_std_sum: torch.Tensor
    sample: torch.Tensor


def aligned_head_stats(head: DiffLoss, z, schedule: DDPMSchedule, x_T, inter_noise, temperature=1.0, cfg=1.0):
    """Run ``head`` on conditions z (R, Dz) with the SHARED x_T (N, C) and inter_noise (S, N, C) indexed by
    respaced index i (official layout; trajectory alignment). Under CFG, R = 2N rows [cond; uncond]."""
    traj = head.sample_trajectory(z, schedule=schedule, temperature=temperature, cfg=cfg,
                                  noise=HeadNoise(x_T, inter_noise.flip(0)))
    half_logvar = 0.5 * traj.log_variance  # (S, R, C), loop order: the last entry is respaced index 0
    return HeadStats(traj.mean[-1], half_logvar[-1].exp() * temperature, half_logvar[:-1].sum(0), traj.sample)
