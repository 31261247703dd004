"""A few-second calibration of the device's matmul peak (FLOP/s, in a given dtype) and memory bandwidth.

* matmul peak: square ``n x n`` matmuls (2 n^3 FLOPs each) in the dtype the run computes in, repeated for
  ``seconds / 2``; the best single call counts (a peak, so interference from other processes is excluded
  as far as possible);
* bandwidth: ``dst.copy_(src)`` of a buffer much larger than the caches; bytes moved = read + write =
  2 x buffer; best call.

On CUDA every call is bracketed by ``torch.cuda.synchronize``. Results are cached per process for a
(device, dtype, thread count) key: the floor of every results row of one run uses the same figures.
"""
from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass

import torch

from accel.harness.timing import synchronize

# (matmul side, copy buffer bytes) per device type: large enough to reach peak, small enough to take < 1 s.
SIZES = {"cuda": (8192, 1 << 30), "cpu": (1024, 1 << 27)}


@dataclass(frozen=True)
class DevicePeak:
    device: str
    dtype: str
    threads: int
    flops_per_s: float
    bytes_per_s: float
    matmul_n: int
    copy_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


def _best_time(fn, device: torch.device, seconds: float, min_calls: int = 3) -> float:
    fn()  # warm-up (allocation, kernel selection)
    synchronize(device)
    best, start, calls = float("inf"), time.perf_counter(), 0
    while calls < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return best


def matmul_flops_per_s(device: torch.device | str, dtype: torch.dtype, n: int, seconds: float = 1.0) -> float:
    device = torch.device(device)
    g = torch.Generator(device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=g).to(dtype)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    return 2.0 * n ** 3 / _best_time(lambda: torch.matmul(a, b, out=out), device, seconds)


def copy_bytes_per_s(device: torch.device | str, nbytes: int, seconds: float = 1.0) -> float:
    device = torch.device(device)
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2.0 * src.numel() * 4 / _best_time(lambda: dst.copy_(src), device, seconds)


@functools.lru_cache(maxsize=None)
def _measure(device: str, dtype: str, threads: int, seconds: float) -> DevicePeak:
    dev = torch.device(device)
    n, nbytes = SIZES.get(dev.type, SIZES["cpu"])
    flops = matmul_flops_per_s(dev, getattr(torch, dtype), n, seconds / 2)
    bw = copy_bytes_per_s(dev, nbytes, seconds / 2)
    return DevicePeak(device, dtype, threads, flops, bw, n, nbytes)


def device_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                seconds: float = 2.0) -> DevicePeak:
    """Measured matmul FLOP/s in ``dtype`` and copy bandwidth of ``device`` (cached per process)."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    return _measure(str(torch.device(device)), str(dtype).removeprefix("torch."), torch.get_num_threads(), seconds)
