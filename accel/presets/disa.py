"""DiSA on the zoo MAR at its model card's iterations and sampling settings, head steps from a schedule spec,
timed against ``mar-default``."""
from __future__ import annotations

from accel.annealing.disa import describe, make_schedule
from accel.api.techniques import disa
from accel.harness.registry import MethodEntry
from accel.presets.zoo_models import generator, zoo_missing


def _build(spec: str):
    return lambda ctx: disa(generator(ctx, tokenizer_dtype=True), make_schedule(spec))


SPECS = [("linear:50:5", True), ("cosine:50:5", False), ("two-stage:50:5", False), ("adaptive:50:5", False)]
ENTRIES = [MethodEntry(f"disa-{describe(make_schedule(s))}", "mar", _build(s), models=("fmnist-mar",),
                       baseline="mar-default", experiment="disa", quick=quick, unavailable=zoo_missing,
                       params={"schedule": s, "iterations": "model card"}) for s, quick in SPECS]
