"""``accel bench``: the main job. Every registered method on the bundled zoo, timed against its baseline in
the same run, with quality on the zoo classifier; writes ``bench.jsonl``, plots and ``summary.md`` into
``--out`` and prints the table.

With no arguments it runs the quick preset (the methods marked ``quick``, small N). Under
``accelerate launch``/``torchrun`` the quality samples are split across processes by global index; rank 0
times and writes.
"""
from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from accel.harness import costs
from accel.harness.plots import plot_all
from accel.harness.results import append_rows, current_command, read_rows
from accel.harness.runner import new_run_id, run_group, RunConfig
from accel.harness.summary import markdown_table, summary_markdown
from accel.presets import registry
from accel.presets.zoo_models import load_reference

# The quick preset. Quality N per family, sized by measured zoo throughput on 2 shared CPU cores (LlamaGen AR:
# ~3.5 img/s at batch 16 with 1 thread under load; MAR with its card's 16 iterations x 50 head steps is ~10x
# slower), so the whole preset stays near 10 minutes; every FID label carries its N. --n-images overrides.
PRESET = dict(batch_sizes=(1, 8), repeats=3, warmup=1, quality_batch=50)
PRESET_N = {"llamagen": 200, "var": 200, "mar": 50}
DEFAULT_N = 200
MIN_QUALITY_N = 4  # precision/recall with k=3 needs more than 3 samples; FID's covariance at least 2
DTYPES = ("float32", "bfloat16", "float16")


def configure(p):
    p.add_argument("--method", action="append", default=None, help="method to run (repeatable); default: the quick preset")
    p.add_argument("--model", action="append", default=None, help="zoo model (repeatable); default: each method's first model")
    p.add_argument("--n-images", type=int, default=None,
                   help=f"samples per method for quality (0: speed only; default per family: "
                        f"{', '.join(f'{k} {v}' for k, v in PRESET_N.items())}, others {DEFAULT_N})")
    p.add_argument("--batch-size", type=int, action="append", default=None,
                   help=f"timing batch size (repeatable; default {' '.join(map(str, PRESET['batch_sizes']))}: latency and throughput)")
    p.add_argument("--quality-batch", type=int, default=PRESET["quality_batch"], help="chunk size of the quality pass")
    p.add_argument("--repeats", type=int, default=PRESET["repeats"], help="timed rounds after warm-up")
    p.add_argument("--warmup", type=int, default=PRESET["warmup"], help="untimed warm-up rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (recorded). Default on CPU: 1, because on shared cores more threads "
                        "can be 10x slower and noisy; on CUDA: torch's choice")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder; bench.jsonl there is appended to (default: a fresh runs/bench/UTC-TIME/, so "
                        "the committed results/ only changes when asked for with --out results/)")
    p.add_argument("--memory", choices=("largest", "all", "none"), default="largest",
                   help="peak memory at the largest batch size only (default), at every batch size, or not at all "
                        "(on CPU each measurement is a fresh subprocess)")
    p.add_argument("--no-memory", action="store_true", help="same as --memory none")
    p.add_argument("--save-samples", action="store_true", help="also write ADM-style samples.npz per method into OUT/samples/")
    p.add_argument("--plugin", action="append", default=[],
                   help="extra module defining BENCH_METHODS (repeatable), for methods outside accel")
    p.add_argument("--list", action="store_true", help="list registered methods and models, then exit")
    p.add_argument("--preset", choices=("quick", "gpu"), default="quick",
                   help="quick: the zoo methods (default); gpu: cost structure at full-size shapes with random weights "
                        "(accel.harness.costs)")
    p.add_argument("--compile", nargs="?", const="default", default=None,
                   choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                   help="torch.compile every method of a group, baseline included (accel.compile, in place); the "
                        "first call's time is the row's compile_s; compare with an eager run's rows")
    p.add_argument("--tiny", action="store_true", help="with --preset gpu: tiny configs (runs in seconds on a CPU)")


def unwritable(out: Path) -> str | None:
    """Why files cannot be written into folder ``out`` (checked before any work), or None. Creates nothing."""
    if out.exists() and not out.is_dir():
        return "exists and is not a folder"
    parent = next((d for d in (out, *out.parents) if d.exists()), None)
    if parent is None or not parent.is_dir():
        return "no existing parent folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def _err(msg: str) -> int:
    print(f"accel bench: {msg}", file=sys.stderr)
    return 2


def _select(reg, args):
    """([(baseline entry, [entries], model)], [skip notes]) in registry order, or an error string.

    The preset skips methods whose models are unavailable (listed in the notes); an explicitly requested
    method that cannot run is an error."""
    names = args.method or [n for n, e in reg.entries.items() if e.quick]
    unknown = [n for n in names if n not in reg.entries]
    if unknown:
        return f"unknown method {', '.join(unknown)}; valid: {', '.join(sorted(reg.entries)) or '(none registered)'}"
    bad_models = [m for m in args.model or [] if m not in reg.models()]
    if bad_models:
        return f"unknown model {', '.join(bad_models)}; valid: {', '.join(reg.models()) or '(none registered)'}"
    groups: dict[tuple[str, str], list] = defaultdict(list)
    notes = []
    for n in names:
        e = reg.get(n)
        base = reg.baseline_of(e)
        for m in [m for m in args.model if m in e.models] if args.model else [e.models[0]]:
            why = e.why_unavailable(m) or base.why_unavailable(m)
            if why and args.method:
                return f"method {n} cannot run on {m}: {why}"
            if why:
                notes.append(f"skipped {n} on {m}: {why}")
                continue
            groups[(base.name, m)].append(e)
    if not groups:
        return ("nothing to run: " + "; ".join(notes)) if notes else \
            f"none of the methods {', '.join(names)} runs on model(s) {', '.join(args.model)}"
    return [(reg.get(b), es, m) for (b, m), es in groups.items()], notes


def _load_reference(device):
    return load_reference(device)


def _gpu_preset(args, device) -> int:
    """``--preset gpu``: ``accel.harness.costs`` rows into OUT/bench.jsonl, OUT/summary.md (and the table)."""
    import torch


    command = current_command()
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)  # None: bf16 on CUDA, fp32 on CPU
    rows = costs.run_preset(costs.tiny_preset() if args.tiny else costs.full_preset(), device, dtype, command=command,
                            progress=lambda msg: print(f"   {msg}", file=sys.stderr))
    append_rows(args.out / "bench.jsonl", rows)
    summary = costs.summary_markdown(rows, command=command)
    (args.out / "summary.md").write_text(summary)
    print(summary)
    return 0


def _init_distributed(device: str) -> None:
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")


def main(args) -> int:
    if "numpy" not in sys.modules:
        # numpy/scipy's OpenBLAS only serves the metrics' small (D <= a few hundred) matrices: one thread is as
        # fast there and avoids 100x slow-downs from spinning BLAS threads when the cores are shared.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import torch


    for name in ("n_images", "repeats", "warmup", "quality_batch"):
        if getattr(args, name) is not None and getattr(args, name) < (1 if name in ("repeats", "quality_batch") else 0):
            return _err(f"--{name.replace('_', '-')} must be >= {1 if name in ('repeats', 'quality_batch') else 0}")
    if args.n_images is not None and 0 < args.n_images < MIN_QUALITY_N:
        return _err(f"--n-images {args.n_images}: quality needs at least {MIN_QUALITY_N} samples (precision/recall "
                    f"with k=3 neighbours, FID covariance); use --n-images 0 for speed only")
    if args.out is None:
        args.out = Path("runs") / "bench" / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    why = unwritable(args.out)
    if why:
        return _err(f"--out {args.out}: {why}")
    if any(b < 1 for b in args.batch_size or []):
        return _err("--batch-size must be >= 1")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        return _err(f"bad --device {args.device!r}: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        return _err("--device cuda requested but torch.cuda.is_available() is False")

    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else None)
    if threads is not None:
        if threads < 1:
            return _err("--threads must be >= 1")
        torch.set_num_threads(threads)
    if args.tiny and args.preset != "gpu":
        return _err("--tiny only applies to --preset gpu")
    if args.preset == "gpu":
        return _gpu_preset(args, device)
    reg = registry(args.plugin)
    for mod, err in reg.errors.items():
        print(f"accel bench: warning: could not import {mod}: {err}", file=sys.stderr)
    if args.list:
        for n, e in reg.entries.items():
            why = e.why_unavailable(e.models[0]) or reg.baseline_of(e).why_unavailable(e.models[0])
            print(f"{n:<28} family={e.family:<9} baseline={e.baseline or '-':<16} preset={'yes' if e.quick else 'no ':<4}"
                  f"models={','.join(e.models)}" + (f"  [unavailable: {why}]" if why else ""))
        return 0
    if not reg.entries:
        return _err("no benchmarkable methods are registered. The family baselines in accel/presets/baselines.py "
                    "need the bundled zoo (accel.zoo.load) and the families' generate functions; "
                    + (f"import errors: {'; '.join(f'{k}: {v}' for k, v in reg.errors.items())}" if reg.errors else ""))
    selected = _select(reg, args)
    if isinstance(selected, str):
        return _err(selected)
    plan, notes = selected
    for note in notes:
        print(f"accel bench: {note}", file=sys.stderr)

    reference = None
    if args.n_images is None or args.n_images > 0:
        try:
            reference = _load_reference(device)
        except (FileNotFoundError, ImportError, KeyError, AttributeError) as e:
            return _err(f"quality needs the zoo classifier: {e} (use --n-images 0 for speed only)")

    _init_distributed(args.device)
    rank = int(os.environ.get("RANK", "0"))
    cfg = RunConfig(batch_sizes=tuple(args.batch_size or PRESET["batch_sizes"]), repeats=args.repeats, warmup=args.warmup,
                    n_images=args.n_images or 0, quality_batch=args.quality_batch, seed=args.seed, device=args.device,
                    dtype=args.dtype, memory=not args.no_memory and args.memory != "none",
                    memory_all_batches=args.memory == "all",
                    samples_dir=args.out / "samples" if args.save_samples else None, compile=args.compile)
    command, run_id = current_command(), new_run_id()
    out_jsonl = args.out / "bench.jsonl"
    rows = []
    for base, entries, model in plan:
        print(f"== {model}: {base.name} vs {', '.join(e.name for e in entries if e is not base) or '(baseline only)'}",
              file=sys.stderr)
        n = args.n_images if args.n_images is not None else PRESET_N.get(base.family, DEFAULT_N)
        group_rows = run_group(reg, base, entries, model, replace(cfg, n_images=n), reference=reference, command=command, run_id=run_id,
                               progress=lambda msg: print(f"   {msg}", file=sys.stderr))
        if rank == 0:
            append_rows(out_jsonl, group_rows)  # each finished group is on disk even if a later one fails
        rows += group_rows
    if rank != 0:
        return 0
    plots = plot_all(read_rows(out_jsonl), args.out)
    (args.out / "summary.md").write_text(summary_markdown(rows, command=command, notes=notes,
                                                          plots=[str(p.relative_to(args.out)) for p in plots]))
    print(markdown_table(rows))
    print(f"\nwrote {out_jsonl}, {args.out / 'summary.md'} and {len(plots)} plot(s)", file=sys.stderr)
    return 0
