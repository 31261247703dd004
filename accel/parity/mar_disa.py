"""DiSA parity (called by ``accel parity mar`` when present): ``disa_schedules.json`` and the annealed
head runs of ``disa_tiny_io.safetensors`` (official ``MAR_DiSA`` DiffLoss.sample, see the fixture README).

Every key of both files is either checked or appended to ``report.unknown``; nothing is skipped silently.
"""
from __future__ import annotations

import re
from pathlib import Path

from accel.annealing.schedules import DISA_RESPACING, MAR_RESPACING, Respacing, disa_schedule, steps_per_iteration
from accel.parity.report import Check, Report, Tracker, close, exact, load_json, load_tensors
from accel.models.mar import load_mar, MARConfig
from accel.models.mar_head import DDPMSchedule, HeadNoise

SCHEDULE_KEY = re.compile(r"^up(\d+)_lo(\d+)_([a-z-]+)_iter(\d+)$")
TOL_FWD = 1e-5  # x |want|.max(): schedules (README "Reproducibility and tolerances")
TOL_DDPM = 1e-4  # x |want|.max(): whole DDPM loops
METADATA_KEYS = {"disa_repo", "disa_commit", "which", "note", "notes"}


def check(dir: Path, report: Report) -> None:
    dir = Path(dir)
    sched_path, io_path = dir / "disa_schedules.json", dir / "disa_tiny_io.safetensors"
    if not sched_path.exists() and not io_path.exists():
        report.skipped.append("DiSA (no disa_schedules.json / disa_tiny_io.safetensors in this folder)")
        return
    meta = load_json(sched_path) if sched_path.exists() else {}
    if sched_path.exists():
        _check_schedules(meta, report)
    if io_path.exists():
        _check_tiny_io(io_path, meta.get("tiny_traj"), report)
    elif "tiny_traj" in meta:
        report.unknown.append("disa_schedules.json:tiny_traj (disa_tiny_io.safetensors missing)")


def _check_schedules(meta: dict, report: Report) -> None:
    for key in meta:
        if key not in METADATA_KEYS | {"schedules", "timestep_map_clip950", "tiny_traj",
                                       "timestep_map_default_sampler_clip1001",
                                       "train_diffusion_num_timesteps_clip950"}:
            report.unknown.append(f"disa_schedules.json:{key}")
    for key, want in meta.get("schedules", {}).items():
        m = SCHEDULE_KEY.match(key)
        if m is None:
            report.unknown.append(f"disa_schedules.json:schedules.{key}")
            continue
        upper, lower, strategy, num_iter = int(m[1]), int(m[2]), m[3], int(m[4])
        try:
            got = steps_per_iteration(disa_schedule(strategy, upper, lower), num_iter)
        except KeyError:
            report.unknown.append(f"disa_schedules.json:schedules.{key} (unknown strategy)")
            continue
        report.add(exact(f"disa.schedule.{key}", _t(got), _t(want), f"sum {sum(got)} vs {sum(want)}"))
    maps = [("timestep_map_clip950", DISA_RESPACING),
            ("timestep_map_default_sampler_clip1001", Respacing(clip=1001))]
    for name, respacing in maps:
        for steps, want in meta.get(name, {}).items():
            got = respacing.timesteps(int(steps))
            report.add(exact(f"disa.{name}.{steps}", _t(got), _t(want)))
            if respacing.clip is not None and respacing.clip >= 999:  # "default sampler" = MAR itself
                report.add(exact(f"disa.{name}.{steps}.equals_mar", _t(MAR_RESPACING.timesteps(int(steps))), _t(want)))
    if "train_diffusion_num_timesteps_clip950" in meta:
        got = len(DISA_RESPACING.timesteps(DISA_RESPACING.num_train_timesteps))
        want = int(meta["train_diffusion_num_timesteps_clip950"])
        report.add(Check("disa.train_diffusion_num_timesteps_clip950", float(abs(got - want)), 0.0, got == want,
                         f"{got} vs {want}"))


def _load_head(dir: Path):
    """The fixture's MAR head (``diffloss.*`` of ``mar_tiny_state_dict``), strictly loaded via accel's MAR."""
    cfg = MARConfig.from_dict(load_json(dir / "mar_tiny_config.json"))
    return load_mar(dir / "mar_tiny_state_dict.safetensors", cfg).head


def _check_tiny_io(path: Path, runs: list[dict] | None, report: Report) -> None:
    """Official ``MAR_DiSA`` ``DiffLoss.sample(z, temperature, cfg, step=k, ar_num_iter=N)`` after
    ``torch.manual_seed(seed)``: our schedule picks the timesteps, accel's MAR head runs them."""
    import torch


    tensors = Tracker(load_tensors(path), path.name)
    head = _load_head(path.parent) if runs else None
    for run in runs or []:
        k, n = int(run["step"]), int(run["ar_num_iter"])
        g = f"step{k}"
        # the fixture's DiffLoss settings; the README says 50 -> 5 linear, DiSA sampler (clip 950)
        schedule = disa_schedule(run.get("strategy", "linear"), int(run.get("upper", 50)), int(run.get("lower", 5)),
                                 clip=int(run.get("clip", 950)))
        timesteps = schedule.timesteps(k, n)
        report.add(exact(f"disa.tiny.{g}.timestep_map", _t(timesteps), tensors[f"{g}.timestep_map"]))
        want_n = int(run["num_diffusion_steps"])
        report.add(Check(f"disa.tiny.{g}.num_diffusion_steps", float(abs(len(timesteps) - want_n)), 0.0,
                         len(timesteps) == want_n, f"{len(timesteps)} vs {want_n}"))
        sched = DDPMSchedule.from_timesteps(timesteps)
        report.add(_rel(f"disa.tiny.{g}.betas", sched.betas.float(), tensors[f"{g}.betas"], TOL_FWD))
        z, cfg, temp = tensors[f"{g}.z"], float(run.get("cfg", 1.0)), float(run.get("temperature", 1.0))
        with torch.no_grad():
            # 1) the recorded draws, replayed: the annealed denoising loop itself
            noise = HeadNoise(tensors[f"{g}.x_T"], tensors[f"{g}.step_noise"])
            out = head.sample(z, schedule=sched, temperature=temp, cfg=cfg, noise=noise)
            report.add(_rel(f"disa.tiny.{g}.out", out, tensors[f"{g}.out"], TOL_DDPM))
            # 2) the official seeding: a CPU generator seeded like torch.manual_seed(seed) draws the same noise
            gen = torch.Generator().manual_seed(int(run["seed"]))
            traj = head.sample_trajectory(z, schedule=sched, temperature=temp, cfg=cfg, generator=gen)
        rows = len(tensors[f"{g}.x_T"])
        report.add(close(f"disa.tiny.{g}.x_T_seeded", traj.x_T[:rows], tensors[f"{g}.x_T"], 0.0))
        report.add(close(f"disa.tiny.{g}.step_noise_seeded", traj.noise[:, :rows], tensors[f"{g}.step_noise"], 0.0))
        report.add(_rel(f"disa.tiny.{g}.out_seeded", traj.sample, tensors[f"{g}.out"], TOL_DDPM))
    report.unknown.extend(tensors.unused())


def _rel(name: str, got, want, tol: float) -> Check:
    scale = max(float(want.abs().max()), 1e-30)
    return close(name, got, want, tol * scale, note=f"tol = {tol:g} x |want|.max()")


def _t(values):
    import torch

    return torch.tensor(list(values), dtype=torch.int64)
