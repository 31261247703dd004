"""One resumable training loop for every zoo recipe, on ``accelerate`` (1 CPU, 1 GPU or many GPUs).

Resumability contract: ``run_dir/last.pt`` holds model, optimizer, scheduler, EMA, step, RNG states and the
recipe config. It is written atomically (temp file in the same folder, fsync, ``os.replace``), every
``ckpt_every`` steps, at the end, and when SIGTERM/SIGINT arrive (the signal only sets a flag; the loop
stops *between* steps, so a checkpoint never holds a half-applied optimizer step; a second signal aborts).
A SIGKILL at any moment leaves either the previous or the new ``last.pt``, never a torn one.

Batches and per-step randomness are pure functions of ``(seed, step)``, so a resumed run continues
exactly where an uninterrupted one would be (bitwise on a deterministic single-thread CPU run).
"""
from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from accel.checkpoint import atomic_save, read_checkpoint
from accel.train.ema import EMA
from accel.train.recipe import VOLATILE, Recipe
from accelerate import Accelerator

CKPT = "last.pt"
# What ``fit`` saves and needs back to resume: tensors, numbers, strings, lists and dicts only, so the file
# loads with ``torch.load(weights_only=True)`` (accel.checkpoint.read_file) and never unpickles code.
RESUME_KEYS = ("model", "optimizer", "scheduler", "ema", "step", "rng", "recipe")


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**63 - 1)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the global batch at ``step``: epoch-wise seeded permutations, drop-last."""
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch size {batch_size} larger than the dataset ({n})")
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, -1 - epoch)))
    return perm[i * batch_size:(i + 1) * batch_size]


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * t))
    raise ValueError(f"unknown lr schedule {schedule!r}; valid: constant, cosine")


@dataclass
class _Stop:
    requested: bool = False
    signals: list[int] = field(default_factory=list)

    def __call__(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt(f"second signal {signum}: aborting without checkpoint")
        self.requested = True
        self.signals.append(signum)


def fit(recipe: Recipe, run_dir: str | Path, *, steps: int | None = None, seed: int = 0,
        cpu: bool = False, mixed_precision: str = "no", progress: bool = True,
        stop_at: int | None = None) -> dict:
    """Train ``recipe`` in ``run_dir`` (resuming from ``run_dir/last.pt`` if present) up to ``steps``.

    ``stop_at`` stops (with a checkpoint) at that step without finishing, as a preemption would.
    Returns a summary dict (step reached, whether finished, last logged losses/eval). A run that fails
    before writing anything (e.g. the dataset is missing) leaves no empty run folder behind.
    """
    run_dir = Path(run_dir)
    new_dirs = [d for d in (run_dir, *run_dir.parents) if not d.exists()]
    try:
        return _fit(recipe, run_dir, steps=steps, seed=seed, cpu=cpu, mixed_precision=mixed_precision,
                    progress=progress, stop_at=stop_at)
    except BaseException:
        for d in new_dirs:  # innermost first; only folders this call created and left empty
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise


def _fit(recipe: Recipe, run_dir: Path, *, steps, seed, cpu, mixed_precision, progress, stop_at) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    total = int(steps if steps is not None else recipe.steps)
    acc = Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    torch.manual_seed(seed)
    model = recipe.build()
    optimizer = recipe.optimizer(model)
    ema = EMA(model, recipe.ema_decay) if recipe.ema_decay else None
    step = 0
    ckpt_path = run_dir / CKPT
    for stale in run_dir.glob(f".{CKPT}.tmp*"):
        stale.unlink()  # a save interrupted by SIGKILL; last.pt itself is intact
    if ckpt_path.is_file():
        state = read_checkpoint(ckpt_path, required=RESUME_KEYS)
        saved = {k: v for k, v in state["recipe"].items() if k not in VOLATILE}
        if saved != recipe.describe():
            raise ValueError(f"{ckpt_path} was written by a different recipe config:\n{state['recipe']}\n"
                             f"vs now\n{recipe.describe()}\n(use another --run-dir)")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, recipe.warmup, total, recipe.lr_schedule), last_epoch=step - 1)
    if step and ckpt_path.is_file():
        sched.load_state_dict(state["scheduler"])
    if ema is not None:
        ema.to(acc.device)
    model, optimizer = acc.prepare(model, optimizer)
    data = recipe.train_data(run_dir, acc.device)
    n = len(data[0])
    stop = _Stop()
    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    log_f = open(run_dir / "log.jsonl", "a")
    summary: dict[str, Any] = {"resumed_from": step}
    t0, last_logs = time.time(), {}
    if step and state.get("total_steps", total) != total:
        log_f.write(json.dumps({"step": step, "time": 0.0, "note": f"total steps changed from "
                                f"{state.get('total_steps')} to {total} (lr schedule horizon)"}) + "\n")

    def save():
        if acc.is_main_process:
            raw = acc.unwrap_model(model)
            atomic_save({"model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": sched.state_dict(), "ema": ema.state_dict() if ema else None,
                         "step": step, "rng": {"torch": torch.get_rng_state()},
                         "recipe": recipe.describe(), "seed": seed, "total_steps": total}, ckpt_path)
        acc.wait_for_everyone()

    def log(rec: dict):
        if acc.is_main_process:
            log_f.write(json.dumps({"step": step, "time": round(time.time() - t0, 2), **rec}) + "\n")
            log_f.flush()

    try:
        bar = tqdm(total=total, initial=step, desc=recipe.name, disable=not (progress and acc.is_main_process),
                   mininterval=5.0)
        model.train()
        while step < total and not stop.requested and (stop_at is None or step < stop_at):
            idx = batch_indices(n, recipe.batch_size * acc.num_processes, step, seed)
            idx = idx.chunk(acc.num_processes)[acc.process_index]
            batch = tuple(t[idx].to(acc.device, non_blocking=True) for t in data)
            gen = torch.Generator(device=acc.device).manual_seed(step_seed(seed, step) + acc.process_index)
            torch.manual_seed(step_seed(seed, step) + 1 + acc.process_index)  # dropout etc. inside models
            with acc.autocast():
                loss, logs = recipe.loss(model, batch, gen, step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{recipe.name}: non-finite loss {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            acc.backward(loss)
            if recipe.grad_clip:
                logs["grad_norm"] = float(acc.clip_grad_norm_(model.parameters(), recipe.grad_clip))
            optimizer.step()
            sched.step()
            if ema is not None:
                ema.update(acc.unwrap_model(model))
            step += 1
            bar.update(1)
            last_logs = {"loss": float(loss.detach()), **{k: float(v.detach() if torch.is_tensor(v) else v) for k, v in logs.items()}}
            if step % recipe.log_every == 0 or step == total:
                log({"lr": sched.get_last_lr()[0], **last_logs})
                bar.set_postfix(loss=f"{last_logs['loss']:.4f}")
            if recipe.eval_every and (step % recipe.eval_every == 0 or step == total):
                ev = evaluate(recipe, acc.unwrap_model(model), ema, run_dir)
                log({"eval": ev})
                summary["eval"] = ev
                model.train()
            if step % recipe.ckpt_every == 0 and step < total:
                save()
        bar.close()
        save()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        log_f.close()
    summary.update(step=step, finished=step >= total, interrupted=bool(stop.signals), last=last_logs)
    return summary


@torch.no_grad()
def evaluate(recipe: Recipe, model: torch.nn.Module, ema: EMA | None, run_dir: Path) -> dict:
    """The recipe's evaluation on the EMA weights when the recipe keeps an EMA, else the raw weights."""
    if ema is None:
        model.eval()
        return recipe.evaluate(model, run_dir)
    with ema.swapped(model):
        model.eval()
        return recipe.evaluate(model, run_dir)


def trained_model(recipe: Recipe, run_dir: str | Path, weights: str = "ema") -> tuple[torch.nn.Module, dict]:
    """The model of ``run_dir/last.pt`` plus info. ``weights="ema"``: the EMA weights when the recipe keeps an
    EMA (else the raw ones); ``"raw"``: the optimised weights even when an EMA exists."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    ckpt_path = Path(run_dir) / CKPT
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"no checkpoint {ckpt_path}; train first with `accel train {recipe.name}`")
    state = read_checkpoint(ckpt_path, required=("model", "step", "recipe"))
    model = recipe.build()
    model.load_state_dict(state["model"])
    use_ema = weights == "ema" and state.get("ema") is not None
    if use_ema:
        ema = EMA(model, state["ema"]["decay"])
        ema.load_state_dict(state["ema"])
        ema.copy_to(model)
    model.eval()
    return model, {"step": int(state["step"]), "weights": "ema" if use_ema else "raw",
                   "recipe": state["recipe"]}
