"""Peak memory of one ``generate`` call, measured where the tensors live (DESIGN.md §4).

- CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``) over one call, after a reset.
- CPU: a fresh Python subprocess builds the method from the registry, runs one ``generate`` call and reports
  its own ``ru_maxrss`` (peak resident set, which sees every tensor the process touched, plus the
  interpreter and torch themselves, reported separately as ``rss_before_bytes``). A figure from the
  parent process would include everything else the benchmark allocated, so it is not used.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PeakMemory:
    bytes: int
    kind: str  # "cuda_allocator_peak" | "cpu_subprocess_max_rss"
    baseline_bytes: int | None = None  # CPU: the child's max RSS after building the method, before generate


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
    return PeakMemory(out["max_rss_bytes"], "cpu_subprocess_max_rss", out["rss_before_bytes"])


def _child(spec: dict) -> dict:
    from accel.harness.distributed import autocast  # noqa: PLC0415 - only the child needs these
    from accel.harness.registry import BuildContext, discover

    torch.set_num_threads(spec["threads"])  # same as the parent run
    reg = discover(packages=(), modules=spec["modules"])  # only the modules it needs: a leaner process
    entry = reg.get(spec["method"])
    ctx = BuildContext(model=spec["model"], device=torch.device("cpu"), dtype=getattr(torch, spec["dtype"]))
    method = entry.build(ctx)
    before = _max_rss_bytes()
    cond = torch.arange(spec["batch_size"]) % spec["num_classes"]
    with torch.no_grad(), autocast(ctx.device, ctx.dtype):
        method.generate(cond, generator=torch.Generator().manual_seed(spec["seed"]))
    return {"max_rss_bytes": _max_rss_bytes(), "rss_before_bytes": before}


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
