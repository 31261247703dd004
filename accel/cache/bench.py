"""``accel bench`` entries: ScaleKV and its baselines at a 10% KV budget on the zoo VAR, each compared with
the full-cache ``var-default`` baseline (speed interleaved, fidelity vs its output: PSNR/SSIM/tokens).

ScaleKV's budgets come from a calibration run at build time (``calibrate_var``: 16 images, seed 10000,
deterministic), never from the evaluated decodes.
"""
from __future__ import annotations

from accel.harness.registry import BuildContext, MethodEntry

FRACTION = 0.1
CALIB_IMAGES, CALIB_SEED = 16, 10_000


def _build(policy_name: str):
    def build(ctx: BuildContext):
        from accel import zoo
        from accel.cache.calibrate import calibrate_var
        from accel.cache.evaluate import choose_window
        from accel.cache.method import CompressedVAR
        from accel.cache.registry import build_policy
        from accel.zoo.sample import DEFAULTS

        var = zoo.load(ctx.model, device=ctx.device, dtype=ctx.dtype)
        vae = zoo.load(zoo.TOKENIZER[ctx.model], device=ctx.device, dtype=ctx.dtype)
        s = DEFAULTS.get(ctx.model, {})
        cfg, top_k, top_p = s.get("cfg", 1.5), s.get("top_k", 0), s.get("top_p", 0.0)
        calib = None
        if policy_name.startswith("scalekv"):
            calib = calibrate_var(var, vae, n_images=CALIB_IMAGES, batch_size=CALIB_IMAGES, seed=CALIB_SEED, cfg=cfg,
                                  top_k=top_k, top_p=top_p)
        w = choose_window(var.patch_nums, var.depth, FRACTION)
        pol = build_policy(policy_name, var.patch_nums, var.depth, FRACTION, window=w, calib=calib)
        m = CompressedVAR(var, vae, pol, name=f"var-{policy_name}", cfg=cfg, top_k=top_k, top_p=top_p)
        m.params = {"budget": FRACTION, "window": w, "policy": policy_name}
        return m

    return build


def _missing(model: str) -> str | None:
    from accel.harness.baselines import zoo_missing

    return zoo_missing(model)


BENCH_METHODS = [
    MethodEntry(f"var-{p}", "var", _build(p), models=("fmnist-var",), baseline="var-default", experiment="scalekv",
                params={"budget": FRACTION, "policy": p}, quick=p == "scalekv", reference_fidelity=True,
                unavailable=_missing)
    for p in ("scalekv", "scalekv-code", "snapkv", "pyramidkv", "streamingllm", "sliding")
]
