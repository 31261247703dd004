"""Peak memory of one ``generate`` call, measured where the tensors live (DESIGN.md §4).

- CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``) over one call, after a reset.
- CPU: a fresh Python subprocess builds the method from the registry, resets the kernel's resident
  high-water mark (Linux ``/proc/self/clear_refs``), runs one ``generate`` call and reports its peak resident
  set during that call (``VmHWM``; it sees every tensor, plus the interpreter, torch and the loaded weights,
  whose resident size just before the call is reported as ``rss_before_bytes``). Without /proc it reports
  the process's lifetime ``ru_maxrss`` instead (kind ``cpu_subprocess_max_rss``). A figure from the parent
  process would include everything else the benchmark allocated, so it is not used.
"""
from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass

import torch

from accel.harness.distributed import autocast
from accel.harness.registry import BuildContext, discover


@dataclass(frozen=True)
class PeakMemory:
    bytes: int
    kind: str  # "cuda_allocator_peak" | "cpu_subprocess_peak_rss_during_generate" | "cpu_subprocess_max_rss"
    baseline_bytes: int | None = None  # CPU: the child's max RSS after building the method, before generate


def _status_bytes(key: str) -> int | None:
    """``VmRSS``/``VmHWM`` of this process from /proc (Linux), in bytes; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _max_rss_bytes() -> int:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb if sys.platform == "darwin" else kb * 1024  # Linux reports KiB, macOS bytes


def cuda_peak(fn, device: torch.device) -> PeakMemory:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return PeakMemory(int(torch.cuda.max_memory_allocated(device)), "cuda_allocator_peak")


def cpu_subprocess_peak(
    *, method: str, model: str, modules: tuple[str, ...], batch_size: int, num_classes: int, seed: int,
    dtype: str = "float32", timeout_s: float = 900,
) -> PeakMemory:
    """Max RSS of a fresh process that builds ``method`` for ``model`` and runs one batch."""
    spec = dict(method=method, model=model, modules=list(modules), batch_size=batch_size,
                num_classes=num_classes, seed=seed, dtype=dtype, threads=torch.get_num_threads())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-m", "accel.harness.memory", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess for {method}/{model} failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    kind = "cpu_subprocess_peak_rss_during_generate" if out["during_generate"] else "cpu_subprocess_max_rss"
    return PeakMemory(out["max_rss_bytes"], kind, out["rss_before_bytes"])


def _child(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])  # same as the parent run
    reg = discover(spec["modules"])  # the modules the parent registry came from
    entry = reg.get(spec["method"])
    ctx = BuildContext(model=spec["model"], device=torch.device("cpu"), dtype=getattr(torch, spec["dtype"]))
    method = entry.build(ctx)
    gc.collect()
    cond = torch.arange(spec["batch_size"]) % spec["num_classes"]
    # Preferably the peak *during* generate: reset the high-water mark after building, read VmHWM after.
    # Otherwise (no /proc) the process's lifetime max RSS, which may be the loading peak.
    during = _reset_peak_rss() and _status_bytes("VmHWM") is not None
    before = _status_bytes("VmRSS") if during else _max_rss_bytes()
    with torch.inference_mode(), autocast(ctx.device, ctx.dtype):
        method.generate(cond, generator=torch.Generator().manual_seed(spec["seed"]))
    peak = _status_bytes("VmHWM") if during else _max_rss_bytes()
    return {"max_rss_bytes": peak, "rss_before_bytes": before, "during_generate": during}


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
