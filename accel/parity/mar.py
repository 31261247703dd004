"""``accel parity mar DIR``: accel's MAR, diffusion head and KL-VAE against a folder in the format of
``shared/fixtures/mar/`` (official LTH14/mar outputs; every call, seed and tolerance is in its README).

Everything is read from the folder (configs, manifests, which schedules/trajectories exist), so another
config (token grid, widths, head depth, class count, step counts) is checked the same way. Every tensor of
the MAR/VAE files is checked or reported as unknown (a failure). Tolerances (README "Reproducibility and
tolerances"): |got - want|.max() <= 1e-5 x |want|.max() for forward passes and the VAE, <= 1e-4 x the
max for DDPM steps (per step, relative to that step's max), trajectories and ``sample_tokens``.

The CSpD and DiSA files belong to ``accel.parity.mar_cspd`` / ``accel.parity.mar_disa``
(``check(dir, report)``); while a module is absent its files are listed as skipped.
"""
from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import torch

from accel.checkpoint import CheckpointMismatch
from accel.models.kl_vae import DiagonalGaussian, KLVAEConfig, load_kl_vae
from accel.models.mar import MAR, MARConfig, load_mar
from accel.models.mar_head import DDPMSchedule, HeadNoise, timestep_embedding
from accel.parity.report import Check, Report, Tracker, close, exact, load_tensors

TOL_FWD = 1e-5  # x |want|.max(): forward passes, schedules, VAE
TOL_DDPM = 1e-4  # x |want|.max(): DDPM steps (per step), trajectories, sample_tokens
# Extensions: other engineers' checkers for the remaining files of the folder.
EXTENSIONS = {"accel.parity.mar_cspd": ("cspd_", "_manifest_cspd"), "accel.parity.mar_disa": ("disa_",)}


REQUIRED = ("mar_*_config.json", "mar_*_state_dict.safetensors", "mar_*_io.safetensors", "vae_*_config.json",
            "vae_*_state_dict.safetensors", "vae_*_io.safetensors")  # checked by `accel parity` before any work
def _rel(name: str, got, want, tol: float) -> Check:
    scale = max(float(torch.as_tensor(want).abs().max()), 1e-30) if torch.as_tensor(want).numel() else 1.0
    return close(name, got, want, tol * scale, note=f"tol = {tol:g} x |want|.max()")


def _rel_steps(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> Check:
    """Per-step relative error: max_k |got_k - want_k|.max() / |want_k|.max() (step k = leading dim)."""
    if tuple(got.shape) != tuple(want.shape):
        return Check(name, math.inf, tol, False, f"shape {tuple(got.shape)} vs fixture {tuple(want.shape)}")
    err = ((got.double() - want.double()).flatten(1).abs().amax(1) / want.double().flatten(1).abs().amax(1).clamp_min(1e-30))
    e = float(err.max())
    return Check(name, e, tol, e <= tol, "relative to each step's max")


def _one(d: Path, pattern: str) -> Path | None:
    hits = sorted(d.glob(pattern))
    return hits[0] if len(hits) == 1 else None


def _groups(io: Tracker) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k in io.keys():
        out.setdefault(k.split(".", 1)[0], []).append(k)
    return out


# ----------------------------------------------------------------------------------------------------
# MAR
# ----------------------------------------------------------------------------------------------------

def _check_mae(m: MAR, io: Tracker, g: str, report: Report) -> None:
    tok, mask = io[f"{g}.tokens"], io[f"{g}.mask"]
    ce_want = io[f"{g}.class_embedding"]
    if f"{g}.labels" in io:
        ce = m.class_embedding(io[f"{g}.labels"])
    else:  # unconditional: the CFG null class
        ce = m.class_embedding(None, tok.shape[0])
    report.add(_rel(f"{g}.class_embedding", ce, ce_want, TOL_FWD))
    enc = m.forward_mae_encoder(tok, mask, ce_want)
    report.add(_rel(f"{g}.encoder_out", enc, io[f"{g}.encoder_out"], TOL_FWD))
    report.add(_rel(f"{g}.z", m.forward_mae_decoder(io.tensors[f"{g}.encoder_out"], mask), io[f"{g}.z"], TOL_FWD))


def _check_net(m: MAR, io: Tracker, g: str, report: Report) -> None:
    x, t, c = io[f"{g}.x_t"], io[f"{g}.t"], io[f"{g}.c"]
    net = m.head.net
    if f"{g}.cfg_scale" in io:
        out = net.forward_with_cfg(x, t, c, io[f"{g}.cfg_scale"])
    else:
        out = net(x, t, c)
    report.add(_rel(f"{g}.out", out, io[f"{g}.out"], TOL_FWD))
    if f"{g}.timestep_freq_embedding" in io:
        # sin/cos of args t*f up to ~1e3: a 1-ulp difference of float32 exp() between CPUs moves the value by
        # ~|arg| * 2^-23; the check allows the README tolerance plus 2 ulps of each element's argument.
        emb = timestep_embedding(t, io.tensors[f"{g}.timestep_freq_embedding"].shape[1])
        want = io[f"{g}.timestep_freq_embedding"]
        half = emb.shape[1] // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        arg = (t[:, None].double() * freqs[None].double()).abs().repeat(1, 2)
        arg = torch.cat([arg, arg.new_zeros(arg.shape[0], emb.shape[1] - arg.shape[1])], 1)
        bound = TOL_FWD * float(want.abs().max()) + 2 * 2.0 ** -23 * arg
        ratio = float(((emb.double() - want.double()).abs() / bound).max())
        report.add(Check(f"{g}.timestep_freq_embedding", ratio, 1.0, ratio <= 1.0,
                         "err / (1e-5 x max + 2 ulp(arg)) per element"))


def _check_sched(io: Tracker, g: str, report: Report) -> None:
    s = DDPMSchedule.respaced(g[len("sched_"):])
    report.add(exact(f"{g}.timestep_map", torch.tensor(s.timesteps), io[f"{g}.timestep_map"]))
    for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2"):
        if f"{g}.{name}" in io:
            report.add(_rel(f"{g}.{name}", getattr(s, name).float(), io[f"{g}.{name}"], TOL_FWD))


def _check_traj(m: MAR, io: Tracker, g: str, spec: dict, report: Report) -> None:
    z, cfg, temp = io[f"{g}.c"], spec["cfg"], spec["temperature"]
    sched = DDPMSchedule.respaced(str(spec["timestep_respacing"]))
    gen = torch.Generator().manual_seed(int(spec["seed"]))
    tr = m.head.sample_trajectory(z, schedule=sched, temperature=temp, cfg=cfg, generator=gen)
    n = io.tensors[f"{g}.mean"].shape[1]  # rows kept per step (the cond half under CFG)
    report.add(_rel(f"{g}.x_T", tr.x_T[: io.tensors[f"{g}.x_T"].shape[0]], io[f"{g}.x_T"], TOL_FWD))
    report.add(_rel_steps(f"{g}.step_noise", tr.noise[:, :n], io[f"{g}.step_noise"], TOL_FWD))
    report.add(_rel_steps(f"{g}.samples", tr.samples[:, :n], io[f"{g}.samples"], TOL_DDPM))
    report.add(_rel(f"{g}.final", tr.sample, io[f"{g}.final"], TOL_DDPM))
    # Teacher-forced: p(x_{t-1} | x_t) at the fixture's own states (what CSpD evaluates along a draft path).
    want_samples = io.tensors[f"{g}.samples"]
    x_T = io.tensors[f"{g}.x_T"]
    stats = {"mean": [], "log_variance": [], "pred_xstart": []}
    for k in range(sched.num_steps):
        x = (x_T[:n] if k == 0 else want_samples[k - 1])
        x = torch.cat([x, x]) if float(cfg) != 1.0 else x  # uncond rows never influence the cond half
        st = m.head.step_stats(x, sched.num_steps - 1 - k, z, sched, cfg)
        for key in stats:
            stats[key].append(getattr(st, key)[:n])
    for key, vals in stats.items():
        report.add(_rel_steps(f"{g}.{key}", torch.stack(vals), io[f"{g}.{key}"], TOL_DDPM))
    # Replay of the recorded draws (HeadNoise) reproduces the conditional rows.
    rep = m.head.sample(z, schedule=sched, temperature=temp, cfg=cfg,
                        noise=HeadNoise(x_T[:n] if float(cfg) != 1.0 else x_T, io.tensors[f"{g}.step_noise"]))
    report.add(_rel(f"{g}.final[:{n}] (replayed noise)", rep[:n], io.tensors[f"{g}.final"][:n], TOL_DDPM))


def _check_sample_tokens(m: MAR, io: Tracker, spec: dict, report: Report) -> None:
    kw = spec["kwargs"]
    labels = io["sample_tokens.labels"] if "sample_tokens.labels" in io else torch.tensor(spec["labels"])
    if "labels" in spec:
        report.add(exact("sample_tokens.labels (manifest)", labels, torch.tensor(spec["labels"])))
    if labels.shape[0] != kw["bsz"]:
        report.add(Check("sample_tokens.bsz", math.inf, 0, False, f"labels {labels.shape[0]} vs bsz {kw['bsz']}"))
        return
    orders = io["sample_tokens.orders"]
    common = dict(num_iter=kw["num_iter"], cfg=kw["cfg"], cfg_schedule=kw["cfg_schedule"],
                  temperature=kw["temperature"], head_steps=str(spec["num_sampling_steps"]), orders=orders)
    gen = torch.Generator().manual_seed(int(spec["seed_torch"]))
    out = m.sample_tokens(labels, generator=gen, record=True, **common)
    report.add(_rel("sample_tokens.out", out.tokens, io["sample_tokens.out"], TOL_DDPM))
    iters = {it["iter"]: it for it in spec.get("iterations", [])}
    for k, tr in enumerate(out.trace):
        p = f"sample_tokens.iter{k}"
        for name, tol in (("z", TOL_DDPM), ("sampled", TOL_DDPM), ("x_T", TOL_FWD)):
            if f"{p}.{name}" in io:
                report.add(_rel(f"{p}.{name}", tr[name], io[f"{p}.{name}"], tol))
        if f"{p}.step_noise" in io:
            report.add(_rel_steps(f"{p}.step_noise", tr["step_noise"], io[f"{p}.step_noise"], TOL_FWD))
        if k in iters:
            report.add(close(f"{p}.cfg_iter (manifest)", torch.tensor(tr["cfg_iter"]),
                             torch.tensor(float(iters[k]["cfg_iter"])), 1e-6))
            report.add(exact(f"{p}.n_rows (manifest)", torch.tensor(len(tr["z"])), torch.tensor(iters[k]["n_rows"])))
    if all(f"sample_tokens.iter{k}.x_T" in io for k in range(len(out.trace))):
        noises = [HeadNoise(io.tensors[f"sample_tokens.iter{k}.x_T"], io.tensors[f"sample_tokens.iter{k}.step_noise"])
                  for k in range(len(out.trace))]
        rep = m.sample_tokens(labels, noises=noises, **common)
        report.add(_rel("sample_tokens.out (replayed noises)", rep.tokens, io.tensors["sample_tokens.out"], TOL_DDPM))


def _check_patchify(m: MAR, io: Tracker, report: Report) -> None:
    report.add(_rel("patchify.tokens", m.patchify(io["patchify.latent_image"]), io["patchify.tokens"], TOL_FWD))
    report.add(_rel("patchify.unpatchified", m.unpatchify(io.tensors["patchify.tokens"]),
                    io["patchify.unpatchified"], TOL_FWD))


def _guarded(group: str, fn, report: Report) -> None:
    """Run one group's checks; a fixture accel cannot even evaluate (wrong shapes, settings) is a failure."""
    try:
        with torch.no_grad():
            fn()
    except (ValueError, RuntimeError, KeyError, IndexError) as e:
        report.add(Check(f"{group} (could not be evaluated)", math.inf, 0, False, f"{type(e).__name__}: {e}"))


def check_mar(d: Path, report: Report) -> set[str]:
    cfg_path, sd_path, io_path = _one(d, "mar_*_config.json"), _one(d, "mar_*_state_dict.safetensors"), _one(d, "mar_*_io.safetensors")
    if not (cfg_path and sd_path and io_path):
        report.add(Check("mar files", math.inf, 0, False, "need exactly one mar_*_config.json, *_state_dict, *_io"))
        return set()
    man_path = d / "_manifest_mar.json"
    files = {cfg_path.name, sd_path.name, io_path.name, man_path.name}
    raw = json.loads(cfg_path.read_text())
    try:
        cfg = MARConfig.from_dict(raw)
        m = load_mar(sd_path, cfg)
    except (CheckpointMismatch, KeyError, ValueError, TypeError) as e:
        report.add(Check("mar.load", math.inf, 0, False, f"{type(e).__name__}: {e}"))
        return files
    man = json.loads(man_path.read_text()) if man_path.exists() else {}
    if "_n_params" in raw:
        report.add(exact("mar.n_params", torch.tensor(sum(p.numel() for p in m.parameters())), torch.tensor(raw["_n_params"])))
    for key, val in (("_seq_len", cfg.seq_len), ("_token_embed_dim", cfg.token_embed_dim), ("_seq_h", cfg.seq_h),
                     ("_seq_w", cfg.seq_w)):
        if key in raw:
            report.add(exact(f"mar.{key[1:]}", torch.tensor(val), torch.tensor(raw[key])))
    io = Tracker(load_tensors(io_path), io_path.stem)
    trajs = {f"traj{t['name']}": t for t in man.get("trajectories", [])}
    for g in sorted(_groups(io)):
        if g == "mae" or g.startswith("mae_"):
            fn = lambda g=g: _check_mae(m, io, g, report)  # noqa: E731
        elif g == "patchify":
            fn = lambda: _check_patchify(m, io, report)  # noqa: E731
        elif g in ("net", "net_cfg"):
            fn = lambda g=g: _check_net(m, io, g, report)  # noqa: E731
        elif g.startswith("sched_"):
            fn = lambda g=g: _check_sched(io, g, report)  # noqa: E731
        elif g in trajs:
            fn = lambda g=g: _check_traj(m, io, g, trajs[g], report)  # noqa: E731
        elif g == "sample_tokens" and "sample_tokens" in man:
            fn = lambda: _check_sample_tokens(m, io, man["sample_tokens"], report)  # noqa: E731
        else:
            continue  # its tensors stay unused: reported as unknown
        _guarded(g, fn, report)
    report.unknown += io.unused()
    return files


# ----------------------------------------------------------------------------------------------------
# KL-VAE
# ----------------------------------------------------------------------------------------------------

def check_vae(d: Path, report: Report, seed: int | None) -> set[str]:
    cfg_path, sd_path, io_path = _one(d, "vae_*_config.json"), _one(d, "vae_*_state_dict.safetensors"), _one(d, "vae_*_io.safetensors")
    if not (cfg_path and sd_path and io_path):
        report.add(Check("vae files", math.inf, 0, False, "need exactly one vae_*_config.json, *_state_dict, *_io"))
        return set()
    raw = json.loads(cfg_path.read_text())
    try:
        vae = load_kl_vae(sd_path, KLVAEConfig.from_dict(raw))
    except (CheckpointMismatch, KeyError, ValueError, TypeError) as e:
        report.add(Check("vae.load", math.inf, 0, False, f"{type(e).__name__}: {e}"))
        return {cfg_path.name, sd_path.name, io_path.name}
    if "_n_params" in raw:
        report.add(exact("vae.n_params", torch.tensor(sum(p.numel() for p in vae.parameters())), torch.tensor(raw["_n_params"])))
    io = Tracker(load_tensors(io_path), io_path.stem)
    _guarded("vae", lambda: _check_vae_io(vae, io, report, seed), report)
    report.unknown += io.unused()
    return {cfg_path.name, sd_path.name, io_path.name}


def _check_vae_io(vae, io: Tracker, report: Report, seed: int | None) -> None:
    x = io["vae.image"]
    report.add(_rel("vae.encoder_out", vae.encoder(x), io["vae.encoder_out"], TOL_FWD))
    moments = vae.moments(x)
    report.add(_rel("vae.moments", moments, io["vae.moments"], TOL_FWD))
    post = DiagonalGaussian.from_moments(moments)
    for name, val in (("posterior_mean", post.mean), ("posterior_logvar", post.logvar), ("posterior_std", post.std)):
        report.add(_rel(f"vae.{name}", val, io[f"vae.{name}"], TOL_FWD))
    if seed is not None and "vae.posterior_sample_eps" in io:
        eps = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(seed))
        report.add(_rel("vae.posterior_sample_eps", eps, io["vae.posterior_sample_eps"], TOL_FWD))
        report.add(_rel("vae.posterior_sample", post.sample(eps=eps), io["vae.posterior_sample"], TOL_FWD))
    report.add(_rel("vae.decoded", vae.decode(io["vae.latent"]), io["vae.decoded"], TOL_FWD))
    report.add(_rel("vae.decoded_from_mean", vae.decode(post.mean), io["vae.decoded_from_mean"], TOL_FWD))


# ----------------------------------------------------------------------------------------------------

def run(dir: Path) -> Report:
    d = Path(dir)
    report = Report()
    man_path = d / "_manifest_mar.json"
    man = json.loads(man_path.read_text()) if man_path.exists() else {}
    known = {"README.md"} | check_mar(d, report) | check_vae(d, report, man.get("vae_posterior_sample_seed"))
    for mod_name, prefixes in EXTENSIONS.items():
        files = sorted(p.name for p in d.iterdir() if p.name.startswith(prefixes))
        if not files:
            continue
        known |= set(files)
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name != mod_name:
                raise
            report.skipped += [f"{f} (no {mod_name})" for f in files]
            continue
        mod.check(d, report)
    report.unknown += [f"{p.name} (unknown file)" for p in sorted(d.iterdir()) if p.name not in known]
    return report
