"""Build any cache policy by name at a budget fraction (what the experiment and CLI use)."""
from __future__ import annotations

from accel.models.kv_cache import KeepAll
from accel.cache.budgets import uniform
from accel.cache.pyramidkv import PyramidKV
from accel.cache.scalekv import ScaleKV
from accel.cache.snapkv import SnapKV
from accel.cache.window import SlidingWindow, StreamingLLM

POLICIES = ("full", "sliding", "streamingllm", "snapkv", "pyramidkv", "scalekv", "scalekv-code")


def build_policy(name: str, patch_nums, depth: int, fraction: float, *, window: int = 16, calib: dict | None = None,
                 sinks: int = 4, kernel: int = 5, drafter_fraction: float = 0.125):
    """``scalekv``: the paper's variant (linear refiner decay, softmax + avg pooling); ``scalekv-code``: the
    released code's (drafters keep their history, raw logits + max pooling). Both need ``calib``."""
    if name not in POLICIES:
        raise KeyError(f"unknown cache policy {name!r}; valid: {', '.join(POLICIES)}")
    if name == "full":
        return KeepAll()
    base = uniform(patch_nums, depth, fraction, min_keep=window)
    if name == "sliding":
        return SlidingWindow(base)
    if name == "streamingllm":
        return StreamingLLM(base, sinks=sinks)
    if name == "snapkv":
        return SnapKV(base, window=window, kernel=kernel)
    if name == "pyramidkv":
        return PyramidKV.from_uniform(base, window=window, kernel=kernel)
    if calib is None:
        raise ValueError(f"{name} needs a calibration (accel calibrate scalekv ...)")
    if [list(m) for m in base.maps] != [list(m) for m in calib["maps"]] or calib["depth"] != depth:
        raise ValueError(f"calibration was made for maps {calib['maps']} / depth {calib['depth']}, not this model")
    code = name == "scalekv-code"
    return ScaleKV.from_calibration(calib, fraction, split="code" if code else "paper",
                                    scoring="code" if code else "paper", drafter_fraction=drafter_fraction,
                                    window=window, kernel=kernel)
