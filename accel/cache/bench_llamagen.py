"""``accel bench`` entries: the raster cache policies (accel/cache/llamagen.py) at a 25 % budget on the zoo
LlamaGen, each compared with the full-cache ``llamagen-ar`` baseline (speed interleaved, fidelity vs its output).

25 %, not VAR's 10 %: the zoo LlamaGen caches 64 positions, so 10 % (6) would not hold a row-sized observation
window; window 4 of each 8-token row chunk, 4 sinks for StreamingLLM.
"""
from __future__ import annotations

from dataclasses import replace

from accel.harness.registry import BuildContext, MethodEntry

FRACTION, WINDOW = 0.25, 4


def _build(policy_name: str):
    def build(ctx: BuildContext):
        from accel import zoo
        from accel.cache.llamagen import CompressedLlamaGen, build_raster_policy
        from accel.models.llamagen_generate import SamplingConfig
        from accel.zoo.sample import DEFAULTS

        model = zoo.load(ctx.model, device=ctx.device, dtype=ctx.dtype)  # cast, as llamagen-ar
        tokenizer = zoo.load(zoo.TOKENIZER[ctx.model], device=ctx.device)
        sc = replace(SamplingConfig(), **DEFAULTS.get(ctx.model, {}))
        pol = build_raster_policy(policy_name, model, FRACTION, window=WINDOW)
        m = CompressedLlamaGen(model, tokenizer, pol, sc, name=f"llamagen-{policy_name}")
        m.params = {"budget": FRACTION, "window": WINDOW, "policy": policy_name, "every": model.config.grid_size}
        return m

    return build


def _missing(model: str) -> str | None:
    from accel.harness.baselines import zoo_missing

    return zoo_missing(model)


BENCH_METHODS = [
    MethodEntry(f"llamagen-{p}", "llamagen", _build(p), models=("fmnist-llamagen",), baseline="llamagen-ar",
                experiment="scalekv", params={"budget": FRACTION, "policy": p}, quick=False, reference_fidelity=True,
                unavailable=_missing)
    for p in ("snapkv", "pyramidkv", "streamingllm", "sliding")
]
