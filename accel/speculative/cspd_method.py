"""CSpD as Methods (``accel.types.Method``) over MAR models, plus its baseline: the target MAR alone, one token
per AR step (num_iter = L, same head steps, CFG and temperature), the paper's "target model alone".
The zoo wiring of both is ``accel/presets/cspd.py``.
"""
from __future__ import annotations

from dataclasses import asdict

import torch

from accel.annealing.disa import describe
from accel.models.mar import decode_tokens, sample_tokens
from accel.speculative.cspd import CSpDConfig, cspd_sample_tokens
from accel.types import Sample


def describe_config(c: CSpDConfig) -> dict:
    """JSON params of a config: the schedule as its short name (``linear50-5``), None when constant."""
    return {**{k: v for k, v in asdict(c).items() if k != "schedule"},
            "schedule": None if c.schedule is None else describe(c.schedule)}


class TargetOnlyMAR:
    """Target MAR alone, one token per AR step (num_iter = seq_len), decoded by the KL-VAE."""

    def __init__(self, target, vae, config: CSpDConfig = CSpDConfig(), name: str = "cspd-target-only"):
        self.name, self.target, self.vae, self.config = name, target, vae, config
        self.params = {"num_iter": "seq_len", "head_steps": config.head_steps, "cfg": config.cfg,
                       "temperature": config.temperature, "schedule": describe_config(config)["schedule"]}

    @torch.inference_mode()
    def generate(self, cond: torch.Tensor, *, generator: torch.Generator) -> Sample:
        c, L = self.config, self.target.cfg.seq_len
        steps = c.head_steps if c.schedule is None else c.schedule  # a DiSA StepSchedule is a head_steps plan
        out = sample_tokens(self.target, cond, generator=generator, num_iter=L, cfg=c.cfg,
                            cfg_schedule=c.cfg_schedule, temperature=c.temperature, head_steps=steps)
        stats = {k: v for k, v in out.stats.items() if k in ("nfe_target", "head_steps", "head_rows")}
        return Sample(decode_tokens(self.vae, out.tokens).float(), stats)


class CSpDMAR:
    """Continuous speculative decoding: target p, draft q (same tokenizer), ``CSpDConfig``."""

    def __init__(self, target, draft, vae, config: CSpDConfig = CSpDConfig(), name: str = "cspd"):
        """``draft=None``: the draft-free control (see ``cspd_sample_tokens``)."""
        self.name, self.target, self.draft, self.vae, self.config = name, target, draft, vae, config
        self.params = {**describe_config(config), "draft": None if draft is None else "draft"}

    @torch.inference_mode()
    def generate(self, cond: torch.Tensor, *, generator: torch.Generator) -> Sample:
        out = cspd_sample_tokens(self.target, self.draft, cond, self.config, generator=generator)
        return Sample(decode_tokens(self.vae, out.tokens).float(), out.stats)
