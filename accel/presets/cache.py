"""KV-cache compression on the bench, through ``accel.kv_compress``.

VAR (``var-*``, timed against ``var-default``): ScaleKV and its baselines at a 10 % budget; ScaleKV's budgets
come from a calibration at build time (16 images, seed 10000, deterministic), never from the evaluated decodes.

LlamaGen (``llamagen-*``, timed against ``llamagen-ar``): the raster policies at a 25 % budget. 25 %, not 10 %:
the zoo LlamaGen caches 64 positions, so 10 % (6) would not hold a row-sized observation window; window 4 of
each 8-token row chunk, 4 sinks for StreamingLLM.

Each is compared with its full-cache baseline (speed interleaved, fidelity vs its output: PSNR/SSIM/tokens).
"""
from __future__ import annotations

from accel.api import techniques as T
from accel.harness.registry import BuildContext, MethodEntry
from accel.presets.zoo_models import generator, zoo_missing

VAR_FRACTION = 0.1
LLAMAGEN_FRACTION, LLAMAGEN_WINDOW = 0.25, 4


def _var(policy: str):
    def build(ctx: BuildContext):
        g = generator(ctx, tokenizer_dtype=True)
        spec = (T.scalekv(VAR_FRACTION, variant="code" if policy == "scalekv-code" else "paper")
                if policy.startswith("scalekv") else getattr(T, policy)(VAR_FRACTION))
        return T.kv_compress(g, spec)

    return build


def _llamagen(policy: str):
    def build(ctx: BuildContext):
        g = generator(ctx)
        spec = {"snapkv": T.snapkv(LLAMAGEN_FRACTION, window=LLAMAGEN_WINDOW),
                "pyramidkv": T.pyramidkv(LLAMAGEN_FRACTION, window=LLAMAGEN_WINDOW),
                "streamingllm": T.streamingllm(LLAMAGEN_FRACTION), "sliding": T.sliding(LLAMAGEN_FRACTION)}[policy]
        m = T.kv_compress(g, spec)
        m.params = {"budget": LLAMAGEN_FRACTION, "window": LLAMAGEN_WINDOW, "policy": policy,
                    "every": g.model.config.grid_size}
        return m

    return build


ENTRIES = [
    MethodEntry(f"var-{p}", "var", _var(p), models=("fmnist-var",), baseline="var-default", experiment="scalekv",
                params={"budget": VAR_FRACTION, "policy": p}, quick=p == "scalekv", reference_fidelity=True,
                unavailable=zoo_missing)
    for p in ("scalekv", "scalekv-code", "snapkv", "pyramidkv", "streamingllm", "sliding")
] + [
    MethodEntry(f"llamagen-{p}", "llamagen", _llamagen(p), models=("fmnist-llamagen",), baseline="llamagen-ar",
                experiment="scalekv", params={"budget": LLAMAGEN_FRACTION, "policy": p}, quick=False,
                reference_fidelity=True, unavailable=zoo_missing)
    for p in ("snapkv", "pyramidkv", "streamingllm", "sliding")
]
