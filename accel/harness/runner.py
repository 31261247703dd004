"""Measure a baseline and the methods compared with it, in one process (DESIGN.md §4).

For every batch size (batch 1 = latency, large batch = throughput) the baseline and all methods are timed
interleaved (``timing.time_interleaved``); each timed round gives every method the same conditions and the
same seed. Work counters come from the ``Sample.stats`` of the timed calls. Peak memory, quality (on
``n_images`` samples split by global index, see ``distributed``) and fidelity against the baseline's own
output follow. One results row per (method, batch size).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed
from tqdm.auto import tqdm

from accel.api.compile import compile as compile_method, compiled_parts, warm_up
from accel.harness import metrics as M
from accel.harness.distributed import IndexedSamples, autocast, chunk_seed, class_cond, generate_indexed, rank_world
from accel.harness.floor import floor_fields
from accel.harness.memory import cpu_subprocess_peak, cuda_peak
from accel.harness.quality import FeatureReference, evaluate
from accel.harness.registry import BuildContext, MethodEntry, Registry
from accel.harness.results import environment, make_row
from accel.harness.timing import speedup, time_interleaved
from accel.types import Method, Sample

_MEAN_KEYS = ("nfe_target", "nfe_draft", "head_steps", "gamma", "tree_budget")  # γ / tree budget a call used


@dataclass(frozen=True)
class RunConfig:
    batch_sizes: tuple[int, ...] = (1, 16)  # 1 = latency; the largest = throughput
    repeats: int = 5
    warmup: int = 1
    n_images: int = 0  # quality samples per method; 0 = speed only
    quality_batch: int = 64  # chunk size of the quality pass (fixed, so 1 and N processes agree)
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"  # given to factories as ctx.dtype; bf16/fp16 also run every generate under autocast
    memory: bool = True
    memory_all_batches: bool = True  # False: peak memory only at the largest batch size (a subprocess per row on CPU)
    num_classes: int = 10
    n_boot: int = 100
    samples_dir: Path | None = None  # write ADM-style samples.npz per method here
    compile: str | None = None  # torch.compile mode for every method of the group, baseline included (accel.compile)
    compile_parts: str = "networks"  # what accel.compile compiles: "networks", "decoders" (tokenizer decoders) or "all"


def aggregate_stats(stats: list[dict[str, Any]]) -> dict[str, float | int | None]:
    """Work counters over calls: means per call of nfe/head steps and of the speculative γ; mean accepted length
    ``1 + Σaccepted / Σverify_steps``; acceptance rate ``Σaccepted / Σdrafted``; peak analytic KV bytes."""

    def values(key):
        return [float(s[key]) for s in stats if s.get(key) is not None]

    out: dict[str, float | int | None] = {k: (float(np.mean(v)) if (v := values(k)) else None) for k in _MEAN_KEYS}
    acc, ver, dra = sum(values("accepted")), sum(values("verify_steps")), sum(values("drafted"))
    out["mean_accept_len"] = 1.0 + acc / ver if values("verify_steps") and ver > 0 else None
    out["acceptance_rate"] = acc / dra if values("drafted") and dra > 0 else None
    kv = values("kv_bytes")
    out["kv_bytes"] = int(max(kv)) if kv else None
    frac = values("kv_fraction")
    out["kv_fraction"] = float(np.mean(frac)) if frac else None
    return out


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}"


def compile_tag(cfg: RunConfig) -> str:
    """Suffix of compiled rows' method and baseline names (method and baseline alike), so they sit beside an eager
    run's rows: ``+compile`` (networks, default mode), ``+compile-decoders``, ``+compile-all``, then ``-MODE``
    for another mode."""
    if not cfg.compile:
        return ""
    parts = "" if cfg.compile_parts == "networks" else f"-{cfg.compile_parts}"
    mode = "" if cfg.compile == "default" else f"-{cfg.compile}"
    return f"+compile{parts}{mode}"


def _timing_call(method: Method, bs: int, cfg: RunConfig, device: torch.device) -> Callable[[int], Sample]:
    def call(r: int) -> Sample:
        start = (r + cfg.warmup) * bs  # warm-up rounds first; every method sees the same seeds per round
        cond = class_cond(torch.arange(start, start + bs), cfg.num_classes).to(device)
        # inference_mode, not no_grad: no version counters or view bookkeeping on the cache writes (LlamaGen's
        # batch-1 loop 1.16x faster on the 2-core CPU); every method of a group is timed alike
        with torch.inference_mode(), autocast(device, getattr(torch, cfg.dtype)):
            return method.generate(cond, generator=torch.Generator(device).manual_seed(chunk_seed(cfg.seed, start)))

    return call


def _peak_memory(entry: MethodEntry, call, model: str, bs: int, cfg: RunConfig, reg: Registry, device):
    if not cfg.memory or (not cfg.memory_all_batches and bs != max(cfg.batch_sizes)):
        return None
    if device.type == "cuda":
        return cuda_peak(lambda: call(0), device)
    if device.type == "cpu":
        need = tuple(dict.fromkeys(reg.sources[n] for n in (entry.name, reg.baseline_of(entry).name) if n in reg.sources))
        return cpu_subprocess_peak(method=entry.name, model=model, modules=need or reg.modules, batch_size=bs,
                                   num_classes=cfg.num_classes, seed=cfg.seed, dtype=cfg.dtype)
    return None


def _fidelity(samples: IndexedSamples, reference: IndexedSamples) -> dict[str, float | None]:
    out = {
        "psnr": float(M.psnr(samples.images, reference.images).mean()),
        "ssim": float(M.ssim(samples.images, reference.images).mean()),
        "token_agreement": None,
    }
    toks = [s.get("tokens") for s in samples.stats]
    ref_toks = [s.get("tokens") for s in reference.stats]
    if all(isinstance(t, torch.Tensor) for t in toks + ref_toks):
        a, b = torch.cat(toks), torch.cat(ref_toks)
        out["token_agreement"] = M.token_agreement(a, b) if a.shape == b.shape else None
    return out


def run_group(
    reg: Registry,
    baseline: MethodEntry,
    entries: list[MethodEntry],
    model: str,
    cfg: RunConfig,
    *,
    reference: FeatureReference | None = None,
    command: str = "",
    progress: Callable[[str], None] | None = None,
    run_id: str | None = None,
) -> list[dict[str, Any]]:
    """Rows for ``baseline`` and ``entries`` (all compared with it) on ``model``.

    Work counters come from the timed calls at the row's batch size; when ``n_images > 0`` the same
    counters over the whole quality pass (many more samples, batch ``quality_batch``) are added as
    ``counters_quality_pass``. ``run_id`` ties together the rows of one invocation (default: new)."""
    say = progress or (lambda msg: None)
    device, dtype = torch.device(cfg.device), getattr(torch, cfg.dtype)
    ctx = BuildContext(model=model, device=device, dtype=dtype)
    group = [baseline] + [e for e in entries if e.name != baseline.name]
    for e in group[1:]:
        if reg.baseline_of(e).name != baseline.name:
            raise ValueError(f"{e.name!r} is compared with {e.baseline!r}, not {baseline.name!r}")
    methods = {e.name: e.build(ctx) for e in group}
    if cfg.compile:  # every method with such parts, baseline included; one without (a table sampler) stays eager
        methods = {k: compile_method(m, cfg.compile, parts=cfg.compile_parts) if compiled_parts(m, cfg.compile_parts)
                   else m for k, m in methods.items()}
    compile_s: dict[str, float | None] = {e.name: None for e in group}
    tag = compile_tag(cfg)
    if cfg.compile:  # compile time: the first call (compilation + one call), before any quality or timed call
        for e in group:
            say(f"{model}: compiling {e.name} ({cfg.compile})")
            cond = class_cond(torch.arange(min(cfg.batch_sizes)), cfg.num_classes).to(device)
            with autocast(device, dtype):
                compile_s[e.name] = warm_up(methods[e.name], cond, generator=torch.Generator(device).manual_seed(cfg.seed))
    rank, _ = rank_world()
    run_id = run_id or new_run_id()
    env = environment(device)

    quality: dict[str, dict[str, Any]] = {e.name: {} for e in group}
    if cfg.n_images > 0:
        outs: dict[str, IndexedSamples] = {}
        for e in group:
            say(f"{model}: {cfg.n_images} samples from {e.name}")
            outs[e.name] = generate_indexed(methods[e.name], cfg.n_images, chunk=cfg.quality_batch, seed=cfg.seed,
                                            num_classes=cfg.num_classes, device=device,
                                            extract=reference.extract if reference else None, amp_dtype=dtype)
            s = outs[e.name]
            if reference is not None:
                quality[e.name].update(evaluate(s.feats, s.logits, s.cond, reference, seed=cfg.seed, n_boot=cfg.n_boot))
            if cfg.samples_dir is not None and rank == 0:
                M.save_samples_npz(Path(cfg.samples_dir) / f"{model}_{e.name}.npz", s.images)
        scorer = baseline.token_scorer(ctx) if baseline.token_scorer else None
        for e in group:
            s = outs[e.name]
            if scorer is not None and all(isinstance(st.get("tokens"), torch.Tensor) for st in s.stats):
                with torch.no_grad():
                    ll = torch.cat([scorer(st["tokens"].to(device), s.cond[i * cfg.quality_batch:(i + 1) * cfg.quality_batch].to(device)).cpu()
                                    for i, st in enumerate(s.stats)])
                quality[e.name]["loglik_per_token"] = float(ll.mean())
            if e.reference_fidelity:
                quality[e.name].update(_fidelity(s, outs[baseline.name]))
            pass_counters = {k: v for k, v in aggregate_stats(s.stats).items() if v is not None}
            quality[e.name]["counters_quality_pass"] = pass_counters or None

    rows = []
    _, world = rank_world()
    if world > 1:  # other ranks wait (idle) while rank 0 times, so they do not steal its cores
        torch.distributed.barrier()
    for bs in cfg.batch_sizes:
        calls = {e.name: _timing_call(methods[e.name], bs, cfg, device) for e in group}
        say(f"{model}: timing batch {bs}: {', '.join(calls)} ({cfg.warmup} warm-up + {cfg.repeats} interleaved rounds)")
        with tqdm(total=(cfg.warmup + cfg.repeats) * len(calls), desc=f"timing {model} batch {bs}", unit="call",
                  disable=progress is None or rank != 0, leave=False) as bar:  # a bar only for CLI callers
            timings = (time_interleaved(calls, repeats=cfg.repeats, warmup=cfg.warmup, device=device,
                                        progress=lambda name, r: bar.update(1)) if rank == 0 else None)
        if rank != 0:
            continue
        base_t = timings[baseline.name]
        counters = {e.name: aggregate_stats([s.stats for s in timings[e.name].outputs]) for e in group}
        base_kv = counters[baseline.name]["kv_bytes"]
        for e in group:
            t, c = timings[e.name], dict(counters[e.name])
            if c["kv_fraction"] is None and c["kv_bytes"] is not None and base_kv:
                c["kv_fraction"] = c["kv_bytes"] / base_kv
            if cfg.memory and (cfg.memory_all_batches or bs == max(cfg.batch_sizes)):
                say(f"{model}: peak memory of {e.name} at batch {bs}")
            mem = _peak_memory(e, calls[e.name], model, bs, cfg, reg, device)
            rows.append(make_row(
                experiment=e.group, family=e.family, model=model, method=e.name + tag,
                params={**e.params, **getattr(methods[e.name], 'params', {}),
                        **({"compile": cfg.compile, "compile_parts": cfg.compile_parts} if cfg.compile else {})},
                batch_size=bs, compile=cfg.compile, compile_s=compile_s[e.name],
                n_images=cfg.n_images or None, seed=cfg.seed, latency_s=t.median, latency_spread_s=t.spread,
                images_per_s=bs / t.median, speedup=speedup(base_t, t), baseline=baseline.name + tag, repeats=cfg.repeats,
                **floor_fields(methods[e.name], bs, t.median, device, dtype),
                **c, peak_mem_bytes=mem.bytes if mem else None, peak_mem_kind=mem.kind if mem else None,
                peak_mem_before_generate_bytes=mem.baseline_bytes if mem else None,
                **quality[e.name], env=env, command=command, run_id=run_id, dtype=cfg.dtype,
            ))
    if world > 1:
        torch.distributed.barrier()
    return rows
