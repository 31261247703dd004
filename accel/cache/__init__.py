"""KV-cache policies for scale-wise (VAR-style) decoding: ScaleKV and its baselines.

Every policy is a small dataclass with one pure ``compress(layer, scale, k, v, q) -> (k, v)`` (contract in
``accel/models/kv_cache.py``). ``build_policy(name, ...)`` constructs any of them from a budget fraction.
"""
from accel.cache.budgets import Budget, pyramid, uniform
from accel.cache.pyramidkv import PyramidKV
from accel.cache.scalekv import ScaleKV
from accel.cache.snapkv import SnapKV
from accel.cache.window import SlidingWindow, StreamingLLM

__all__ = ["Budget", "uniform", "pyramid", "SlidingWindow", "StreamingLLM", "SnapKV", "PyramidKV", "ScaleKV"]
