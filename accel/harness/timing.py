"""Interleaved wall-clock timing (DESIGN.md §4).

The baseline and every method are timed in the same process, round-robin (A B C, A B C, ...), so drift in
machine load hits all of them alike. The first ``warmup`` rounds are run but not recorded. Each timed call
is bracketed by a device synchronise (CUDA kernels are asynchronous). The speed-up of a method is the ratio
of medians ``median(t_baseline) / median(t_method)`` from the same run; absolute times from different runs
are never compared.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@dataclass
class Timing:
    """Seconds per call of the recorded (post-warm-up) repeats, with the values each call returned."""

    times: list[float]
    outputs: list[Any] = field(default_factory=list, repr=False)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """Half the inter-quartile range (0 for fewer than 2 repeats), in seconds."""
        if len(self.times) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times, n=4, method="inclusive")
        return (q3 - q1) / 2


def time_interleaved(
    calls: dict[str, Callable[[int], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    clock: Callable[[], float] = time.perf_counter,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, Timing]:
    """Time each ``calls[name](repeat_index)`` ``repeats`` times, interleaved, after ``warmup`` untimed rounds.

    ``repeat_index`` counts from 0 over the timed rounds (warm-up rounds get negative indices), so callers
    can derive per-repeat seeds identical across methods.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if not calls:
        raise ValueError("nothing to time")
    out = {name: Timing([]) for name in calls}
    for r in range(-warmup, repeats):
        for name, fn in calls.items():
            synchronize(device)
            t0 = clock()
            value = fn(r)
            synchronize(device)
            dt = clock() - t0
            if r >= 0:
                out[name].times.append(dt)
                out[name].outputs.append(value)
            if progress is not None:
                progress(name, r)
    return out


def speedup(baseline: Timing, method: Timing) -> float:
    """Ratio of medians, both measured in the same interleaved run."""
    return baseline.median / method.median
