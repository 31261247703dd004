"""Parity of CSpD against ``cspd_tiny_io.safetensors`` (official MarkXCloud/CSpD outputs, README "CSpD").

Checked: (1) the aligned head statistics (``final_mean``, ``final_std``, ``log_std_sum``, ``sample``) of draft
and target runs that share ``x_T`` / ``inter_noise``, with and without CFG, through accel's MAR head;
(2) the official acceptance quantities at inner temperature 42 and 1 from the fixture's own statistics
(``fixed_term``, ``judge_accept``, residual ratio), computed with accel's log-space math in the official
orientation (``std_product="official"``); (3) the seeded ``speculative_sample`` output, replayed with the
official draw order and its quirks (all 100 residual tries always run, the LAST accepted proposal wins,
rows never accepted stay 0). That replay lives here only: accel's sampler keeps the first acceptance and
counts fallbacks instead of returning zeros.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from accel.parity.report import Check, Report, Tracker, close, load_tensors
from accel.speculative import cspd_math as M
from accel.checkpoint import load_strict, read_state_dict
from accel.models.mar_head import DDPMSchedule, DiffLoss
from accel.speculative.cspd import aligned_head_stats

FILE = "cspd_tiny_io.safetensors"
OFFICIAL_TRIES = 100  # official sample_distribution loop count
STAT_TOL = 1e-4  # x |fixture|.max(): DDPM loops (README "Reproducibility and tolerances")
ACC_TOL = 1e-4  # acceptance quantities are O(1) ratios computed from float32 fixture inputs


def _one(dir: Path, pattern: str) -> Path:
    found = sorted(dir.glob(pattern))
    if len(found) != 1:
        raise FileNotFoundError(f"{dir}: need exactly one {pattern} for the CSpD head, found {[p.name for p in found]}")
    return found[0]


def cspd_steps(dir: Path, t: Tracker) -> str:
    """The diffusion step count of the CSpD run, from the folder's own record: ``_manifest_cspd.json``
    (``num_sampling_steps``), else the recorded noise (``inter_noise`` is [S, N, C]). Never from the MAR
    config, whose step count belongs to the MAR fixtures and may differ."""
    man_path = dir / "_manifest_cspd.json"
    man = json.loads(man_path.read_text()) if man_path.exists() else {}
    recorded = int(t.tensors["inter_noise"].shape[0]) if "inter_noise" in t else None
    steps = man.get("num_sampling_steps")
    if steps is None:
        if recorded is None:
            raise ValueError(f"{dir}: the CSpD step count is recorded neither in _manifest_cspd.json "
                             "(num_sampling_steps) nor by an inter_noise tensor")
        return str(recorded)
    if recorded is not None and str(steps).isdigit() and int(steps) != recorded:
        raise ValueError(f"_manifest_cspd.json says num_sampling_steps={steps} but inter_noise records "
                         f"{recorded} steps")
    return str(steps)


def _head(dir: Path, t: Tracker):
    cfg = json.loads(_one(dir, "mar_*_config.json").read_text())
    head = DiffLoss(cfg["vae_embed_dim"] * cfg["patch_size"] ** 2, cfg["decoder_embed_dim"],
                    cfg["diffloss_d"], cfg["diffloss_w"])
    sd = read_state_dict(_one(dir, "mar_*_state_dict.safetensors"))
    load_strict(head, {k[len("diffloss."):]: v for k, v in sd.items() if k.startswith("diffloss.")},
                what="mar diffloss (CSpD head)")
    return head.eval(), cspd_steps(dir, t)


def _rel(name, got, want, tol):
    return close(name, got, want, tol * max(float(want.abs().max()), 1e-30), note=f"tol = {tol:g} x |want|.max()")


def _check_head_stats(dir: Path, t: Tracker, report: Report) -> None:
    head, steps = _head(dir, t)
    sched = DDPMSchedule.respaced(steps)
    x_T, inter = t["x_T"], t["inter_noise"]
    runs = [("draft", t["z_draft"], 1.0), ("target", t["z_target"], 1.0)]
    if "cfg2.z" in t:
        runs.append(("cfg2", t["cfg2.z"], 2.0))
    with torch.no_grad():
        for name, z, cfg in runs:
            st = aligned_head_stats(head, z, sched, x_T, inter, temperature=1.0, cfg=cfg)
            for field in ("final_mean", "final_std", "log_std_sum", "sample"):
                report.add(_rel(f"cspd {name}.{field}", getattr(st, field), t[f"{name}.{field}"], STAT_TOL))


def _official_speculative_sample(d, p, log_sigma, T, generator):
    """Replay of the official ``speculative_sample`` (quirks included) for the seeded fixture output."""
    x = d["mean"]
    judge = M.log_acceptance_ratio(x, p["mean"], p["std"], d["mean"], d["std"], log_sigma, T).exp()
    u = torch.rand(judge.shape, generator=generator)
    accepted = judge > u
    residual = torch.zeros_like(x)
    for _ in range(OFFICIAL_TRIES):
        prop = torch.randn(x.shape, generator=generator) * p["std"] + p["mean"]
        ratio = M.residual_accept_prob(prop, p["mean"], p["std"], d["mean"], d["std"], log_sigma)
        ok = torch.rand(ratio.shape, generator=generator).double() < ratio
        residual[ok] = prop[ok]  # official: every accepted try overwrites, rows never accepted stay 0
    return torch.where(accepted[:, None], x, residual), u


def _check_acceptance(dir: Path, t: Tracker, report: Report) -> None:
    man = json.loads((dir / "_manifest_cspd.json").read_text()) if (dir / "_manifest_cspd.json").exists() else {}
    d = {"mean": t["draft.final_mean"], "std": t["draft.final_std"], "lsum": t["draft.log_std_sum"]}
    p = {"mean": t["target.final_mean"], "std": t["target.final_std"], "lsum": t["target.log_std_sum"]}
    x = t["draft.sample"]
    temps = sorted({float(k.split(".")[0][1:]) for k in t.keys() if k.startswith("T") and "." in k})
    for T in temps:
        key = f"T{T:g}"
        log_sigma = M.log_std_product(p["lsum"], d["lsum"], "official")
        report.add(_rel(f"cspd {key}.fixed_term", log_sigma.exp(), t[f"{key}.fixed_term"], ACC_TOL))
        judge = M.log_acceptance_ratio(x, p["mean"], p["std"], d["mean"], d["std"], log_sigma, T).exp()
        report.add(close(f"cspd {key}.judge_accept", judge, t[f"{key}.judge_accept"], ACC_TOL))
        ratio = M.residual_accept_prob(t[f"{key}.proposals"], p["mean"], p["std"], d["mean"], d["std"], log_sigma)
        report.add(close(f"cspd {key}.subtracted_ratio", ratio, t[f"{key}.subtracted_ratio"], ACC_TOL))
        seed = man.get("speculative_sample_seed", {}).get(key, int(man.get("seed", 100) + T))
        g = torch.Generator().manual_seed(int(seed))
        out, u = _official_speculative_sample(d, p, log_sigma, T, g)
        report.add(close(f"cspd {key}.speculative_uniform", u, t[f"{key}.speculative_uniform"], 0.0))
        report.add(_rel(f"cspd {key}.speculative_sample_out", out, t[f"{key}.speculative_sample_out"], 1e-6))


def check(dir: Path, report: Report) -> None:
    """Add one line per CSpD check to ``report``; fixture tensors nobody checked go to ``report.unknown``."""
    dir = Path(dir)
    path = dir / FILE
    if not path.exists():
        report.skipped.append(f"{FILE} (absent)")
        return
    t = Tracker(load_tensors(path), FILE)
    try:
        _check_acceptance(dir, t, report)
    except Exception as e:  # a crash is a failed check with its reason, never a silent pass
        report.add(Check("cspd acceptance quantities", float("inf"), 0.0, False, f"{type(e).__name__}: {e}"))
    try:
        _check_head_stats(dir, t, report)
    except Exception as e:
        report.add(Check("cspd aligned head statistics", float("inf"), 0.0, False, f"{type(e).__name__}: {e}"))
    report.unknown.extend(t.unused())


def run(dir: Path) -> Report:
    """Standalone: ``python -c 'from accel.parity.mar_cspd import run; ...'`` (``accel parity mar`` calls check)."""
    report = Report()
    check(dir, report)
    return report
