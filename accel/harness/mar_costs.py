"""Where DiSA's time goes: MAR passes vs diffusion-head time per generation, measured, not estimated.

The paper's "~5x on MAR" mixes two savings: fewer AR iterations (fewer MAR encoder/decoder passes) and
fewer head steps per iteration (annealing). ``head_time`` isolates the second at a FIXED iteration count:
it records the head conditions of one real generation (``sample_tokens(record=True)``), then re-runs only
the head on exactly those rows, once per schedule, timed interleaved (``accel.harness.timing``). The head's
cost depends only on the row counts and the step counts, so replaying plain MAR's conditions times every
schedule on identical work apart from the steps. ``mar_pass_time`` times the encoder/decoder passes
of the same iterations, so the head's share of the end-to-end time is measured too.
"""
from __future__ import annotations

import torch

from accel.types import StepSchedule
from accel.harness.timing import Timing, time_interleaved
from accel.models.mar import mask_len_at, sample_tokens


@torch.inference_mode()
def record_conditions(model, labels: torch.Tensor, *, num_iter: int, generator: torch.Generator, cfg: float = 1.0,
                      cfg_schedule: str = "linear", temperature: float = 1.0) -> list[dict]:
    """Per-iteration head conditions (rows [cond; uncond] under CFG) and CFG scales of one plain MAR run."""
    run = sample_tokens(model, labels, generator=generator, num_iter=num_iter, cfg=cfg, cfg_schedule=cfg_schedule,
                        temperature=temperature, head_steps=2, record=True)  # 2 steps: only the conditions matter
    return [{"z": t["z"], "cfg": t["cfg_iter"]} for t in run.trace]


def head_time(model, trace: list[dict], schedules: dict[str, StepSchedule], *, repeats: int = 3, warmup: int = 1,
              seed: int = 0, device="cpu") -> dict[str, Timing]:
    """Seconds of head sampling per generation for each schedule on the recorded conditions, interleaved."""
    n = len(trace)

    def call_for(schedule: StepSchedule):
        def call(r: int):
            g = torch.Generator(device).manual_seed(seed + r)
            with torch.inference_mode():
                for k, it in enumerate(trace):
                    model.head.sample(it["z"], timesteps=schedule.timesteps(k, n), cfg=it["cfg"], generator=g)
        return call

    return time_interleaved({name: call_for(s) for name, s in schedules.items()}, repeats=repeats, warmup=warmup,
                            device=device)


def mar_pass_time(model, labels: torch.Tensor, *, num_iter: int, cfg: float = 1.0, repeats: int = 3,
                  warmup: int = 1, device="cpu") -> Timing:
    """Seconds of the ``num_iter`` MAR encoder/decoder passes of one generation (head excluded), with the
    known-token counts of MAR's cosine mask schedule (the cost depends on them, not on the token values)."""
    L, B = model.cfg.seq_len, labels.shape[0]
    known, remaining = [], L
    for k in range(num_iter):
        known.append(L - remaining)
        remaining = mask_len_at(k, num_iter, L, remaining)
    tokens = torch.zeros(B, L, model.cfg.token_embed_dim, device=device)
    masks = []
    for kn in known:
        m = torch.ones(B, L, device=device)
        m[:, :kn] = 0.0  # which positions are known does not change the cost, only how many
        masks.append(m)

    def call(r: int):
        with torch.inference_mode():
            for m in masks:
                model.condition(tokens, m, labels.to(device), cfg=float(cfg) != 1.0)

    return time_interleaved({"mar": call}, repeats=repeats, warmup=warmup, device=device)["mar"]
