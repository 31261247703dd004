"""``accel bench --preset gpu``: the cost structure that decides each technique's speed-up, measured at
full-size shapes with random weights (no checkpoints, no quality).

For LlamaGen-B/L/XL, MAR-B/L and VAR-d16/d30 (``--tiny``: tiny configs of the same families, for CPU tests):

* ``ar``: plain decoding, tokens/s at batch 1 and 64 (LlamaGen's token loop, VAR's next-scale loop), with the
  roofline floor of ``accel.harness.floor`` and the fraction of it reached;
* ``ar-free``: the same loops without guidance (the conditional rows alone: a CCA model's setting, issue #21),
  timed interleaved with ``ar``, and ``vq-decode``: LlamaGen's image decode (VQ-16) at each batch, which both pay:
  ``cfg_over_free`` is the throughput a guidance-free model gains, ``cfg_over_free_with_decode`` end to end;
* ``verify``: a (γ+1)-token forward through the KV cache relative to a one-token forward, γ = 1..8, and the
  tree-sized forwards of ``accel.speculative.tree.TREES`` (size + 1 tokens under a tree mask), batch 1 with
  CFG rows: speculative decoding's speed-up is ``mean accepted length / (relative verify cost + draft cost)``
  (Leviathan et al. 2211.17192, §3.4), so this curve sets it;
* ``dd-forward``: one forward over the whole sequence (a DD1 student has the teacher's shape, arXiv
  2412.17153 §4; no CFG rows) against the AR loop of the same batch: the ceiling of one-step distillation;
* ``mar-pass`` / ``disa-head-step``: one MAR encoder+decoder pass and one diffusion-head step on the rows
  of one iteration (64 and 256 iterations), and the generation times they imply for MAR's default
  (256 iterations x 100 steps), 64 x 100 and DiSA's 50->5 linear schedule (64 iterations, 1681 head steps
  in all after the 950 clip; shared/research/cspd_mar_disa.md §3.2);
* ``cspd-verify``: CSpD's one-pass verification of a window of γ = 4, 8, 16 tokens (one pass, the head's S steps
  over every window token) relative to one-token MAR at the same batch (issue #20's GPU item);
* ``scalekv-kv``: VAR's peak attended KV bytes with a 10% uniform budget vs the full cache (analytic,
  ``accel.models.var_calc``; ScaleKV keeps the same per-scale totals).

On CUDA: LlamaGen weights in bf16 (its sampler casts the GPT), MAR/VAR fp32 weights under bf16 autocast
(their samplers' practice). Every row says ``weights: random``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from accel.cache.budgets import uniform
from accel.harness.device_peak import DevicePeak, device_peak
from accel.harness.floor import Work, llamagen_step, llamagen_work, mar_head_step, mar_pass, var_work
from accel.harness.results import environment, make_row
from accel.harness.timing import time_interleaved
from accel.models.llamagen import GPTConfig, Transformer, gpt_config
from accel.models.llamagen_generate import SamplingConfig, generate
from accel.models.llamagen_vq import VQConfig, VQModel
from accel.models.mar import MAR, MARConfig
from accel.models.mar import preset as mar_preset
from accel.models.var import VAR, VARConfig, var_config
from accel.models.var_calc import var_cost
from accel.models.var_vqvae import VQVAE, VQVAEConfig
from accel.speculative.tree import TREES

EXPERIMENT = "gpu-preset"
DISA_STEPS_64 = 1681  # Σ head steps of DiSA's 50->5 linear schedule over 64 iterations, after the 950 clip
KV_BUDGET = 0.1


@dataclass(frozen=True)
class Preset:
    llamagen: dict[str, GPTConfig]
    mar: dict[str, MARConfig]
    var: dict[str, tuple[VARConfig, VQVAEConfig]]
    batches: tuple[int, ...] = (1, 64)
    gammas: tuple[int, ...] = tuple(range(1, 9))
    repeats: int = 3
    warmup: int = 1
    inner: int = 10  # forwards per timed call for the single-forward measurements
    mar_iters: tuple[int, ...] = (64, 256)
    kv_budget: float = KV_BUDGET  # ScaleKV's 10 %; tiny schedules cache too few tokens for it (budgets refuse)
    kv_window: int | None = None  # observation window; None = min(16, last scale's tokens)
    llamagen_vq: VQConfig = VQConfig()  # the image decoder every LlamaGen row shares (VQ-16)
    cspd_gammas: tuple[int, ...] = (1, 4, 8, 16)  # CSpD window sizes verified in one target pass (1 = one token)
    extra: dict[str, Any] = field(default_factory=dict)


def full_preset() -> Preset:
    """The released shapes at 256 px: LlamaGen c2i (16384 codes, 256 tokens), MAR with its heads, VAR."""
    vq = VQVAEConfig()
    return Preset(llamagen={n: gpt_config(f"GPT-{n.split('-')[1]}") for n in ("LlamaGen-B", "LlamaGen-L", "LlamaGen-XL")},
                  mar={"MAR-B": mar_preset("mar_base"), "MAR-L": mar_preset("mar_large")},
                  var={"VAR-d16": (var_config("var-d16"), vq), "VAR-d30": (var_config("var-d30"), vq)})


def tiny_preset() -> Preset:
    """Tiny configs of the same families (seconds on one CPU thread): the preset's code path, not its figures."""
    pns = (1, 2, 3)
    vq = VQVAEConfig(vocab_size=32, z_channels=8, ch=32, ch_mult=(1, 1), num_res_blocks=1, v_patch_nums=pns,
                     using_sa=False, using_mid_sa=False)
    return Preset(llamagen={"LlamaGen-tiny": GPTConfig(dim=32, n_layer=2, n_head=2, multiple_of=16, vocab_size=64,
                                                        block_size=36, num_classes=10)},
                  llamagen_vq=VQConfig(codebook_size=64, encoder_ch_mult=(1, 1), decoder_ch_mult=(1, 1), z_channels=8,
                                       ch=32, num_res_blocks=1), cspd_gammas=(1, 2),
                  mar={"MAR-tiny": MARConfig(img_size=64, vae_stride=16, encoder_embed_dim=32, encoder_depth=1,
                                             encoder_num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                                             decoder_num_heads=2, diffloss_d=1, diffloss_w=32, buffer_size=4,
                                             class_num=10)},
                  var={"VAR-tiny": (VARConfig(num_classes=10, depth=2, embed_dim=32, num_heads=2, patch_nums=pns), vq)},
                  batches=(1, 4), gammas=(1, 2, 4), repeats=1, warmup=1, inner=2, mar_iters=(4, 16), kv_budget=0.5, kv_window=1)


# ------------------------------------------------------------------------------------------------- timing
def _median_s(fn: Callable[[], Any], device: torch.device, p: Preset, inner: int = 1) -> float:
    """Median seconds of one ``fn()`` (``inner`` calls per timed round; warm-up excluded; synchronised)."""
    def call():
        for _ in range(inner):
            out = fn()
        return out

    return _medians_s({"x": call}, device, p)["x"] / inner


def _medians_s(calls: dict[str, Callable[[], Any]], device: torch.device, p: Preset) -> dict[str, float]:
    """Median seconds of each call, timed interleaved in the same rounds (a same-run ratio; warm-up excluded)."""
    t = time_interleaved({k: (lambda r, fn=fn: fn()) for k, fn in calls.items()}, repeats=p.repeats, warmup=p.warmup,
                         device=device)
    return {k: v.median for k, v in t.items()}


@dataclass
class _Ctx:
    device: torch.device
    dtype: torch.dtype  # compute dtype (autocast on CUDA)
    peak: DevicePeak
    preset: Preset
    env: dict
    command: str

    @property
    def elt(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def amp(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def row(self, family: str, model: str, method: str, batch_size: int, latency_s: float | None,
            work: Work | float | None = None, **extra) -> dict:
        """A results row; ``work`` (a Work, or a floor in seconds) adds ``floor_s`` and ``frac_floor``."""
        floor = work.floor_s(self.peak) if isinstance(work, Work) else work
        return make_row(experiment=EXPERIMENT, family=family, model=model, method=method, batch_size=batch_size,
                        latency_s=latency_s, floor_s=floor,
                        frac_floor=floor / latency_s if floor is not None and latency_s else None,
                        weights="random", dtype=str(self.dtype).removeprefix("torch."), env=self.env,
                        command=self.command, **extra)


def _labels(batch: int, num_classes: int, device) -> torch.Tensor:
    return torch.arange(batch, device=device) % num_classes


# ----------------------------------------------------------------------------------------------- LlamaGen
def guidance_free_row(c: _Ctx, family: str, name: str, bs: int, t: dict[str, float], decode_s: float | None,
                      work: Work | float | None, **extra) -> dict:
    """``ar-free``: decoding without guidance (a CCA model's setting, arXiv 2410.09347: the conditional rows alone),
    timed interleaved with the CFG loop ``t["cfg"]``: ``cfg_over_free`` is the throughput a guidance-free model gains
    at this batch; with ``decode_s`` (the image decode both pay, when the loop excludes it) also end to end."""
    e2e = None if decode_s is None else (t["cfg"] + decode_s) / (t["free"] + decode_s)
    return c.row(family, name, "ar-free", bs, t["free"], work, images_per_s=bs / t["free"],
                 cfg_over_free=t["cfg"] / t["free"], decode_s=decode_s, cfg_over_free_with_decode=e2e, **extra)


def llamagen_decode_rows(vq_cfg: VQConfig, tokens: int, c: _Ctx) -> tuple[list[dict], dict[int, float]]:
    """``vq-decode``: the LlamaGen tokenizer's image decode of ``tokens`` codes per image, at each batch (shared by
    every LlamaGen size and by CFG and guidance-free decoding alike); returns the rows and {batch: seconds}."""
    side = math.isqrt(tokens)
    with torch.device(c.device):
        vq = VQModel(vq_cfg).eval()
    rows, out = [], {}
    with torch.inference_mode(), c.amp():
        for bs in c.preset.batches:
            idx = torch.zeros(bs, side * side, dtype=torch.long, device=c.device)
            out[bs] = _median_s(lambda: vq.decode_code(idx, (side, side)), c.device, c.preset)
            rows.append(c.row("llamagen", "VQ-16" if vq_cfg == VQConfig() else "VQ", "vq-decode", bs, out[bs],
                              images_per_s=bs / out[bs], params={"grid": [side, side]}))
    return rows, out


def llamagen_rows(name: str, cfg: GPTConfig, c: _Ctx, decode_s: dict[int, float] | None = None) -> list[dict]:
    dev, p = c.device, c.preset
    with torch.device(dev):
        model = Transformer(cfg).eval()
    if dev.type == "cuda":
        model = model.to(c.dtype)  # official LlamaGen sampling casts the GPT to the compute dtype
    decode_s = decode_s or {}
    sc, free, n = SamplingConfig(cfg_scale=4.0), SamplingConfig(cfg_scale=1.0), cfg.block_size
    rows, ar = [], {}
    with torch.inference_mode(), c.amp():
        for bs in p.batches:
            g = torch.Generator(dev).manual_seed(0)
            cond = _labels(bs, cfg.num_classes, dev)
            t = _medians_s({"cfg": lambda: generate(model, cond, sc=sc, generator=g),
                            "free": lambda: generate(model, cond, sc=free, generator=g)}, dev, p)
            ar[bs] = t["cfg"]
            work = llamagen_work(cfg, bs, cfg_guidance=True, bytes_per_element=c.elt)
            rows.append(c.row("llamagen", name, "ar", bs, t["cfg"], work, images_per_s=bs / t["cfg"],
                              tokens_per_s=bs * n / t["cfg"], params={"cfg_scale": 4.0, "tokens": n}))
            rows.append(guidance_free_row(c, "llamagen", name, bs, t, decode_s.get(bs),
                                          llamagen_work(cfg, bs, cfg_guidance=False, bytes_per_element=c.elt),
                                          tokens_per_s=bs * n / t["free"], params={"cfg_scale": 1.0, "tokens": n}))
        # verify cost curve at batch 1 (rows [cond; uncond]), the cache filled up to the middle of the image (or as
        # far as the largest forward still fits in the RoPE table)
        max_t = max(max(p.gammas) + 1, max(t.size + 1 for t in TREES.values()))
        P = min(cfg.cls_token_num + n // 2, cfg.cls_token_num + n - max_t)
        if P < cfg.cls_token_num + 1:
            raise ValueError(f"block_size={n} is too small for {max_t}-token verify forwards")
        cache = model.new_cache(2, cfg.cls_token_num + n + 32)
        labels = torch.tensor([0, cfg.null_class], device=dev)
        model(None, labels, input_pos=torch.arange(1, device=dev), cache=cache)
        model(torch.zeros(2, P - 1, dtype=torch.long, device=dev), input_pos=torch.arange(1, P, device=dev), cache=cache, kv_len=P)

        def fwd(T: int, mask=None):
            x, pos = torch.zeros(2, T, dtype=torch.long, device=dev), torch.arange(P, P + T, device=dev)
            return lambda: model(x, input_pos=pos, cache=cache, mask=mask, kv_len=P + T)

        one = _median_s(fwd(1), dev, p, p.inner)
        for T in (1, *[gm + 1 for gm in p.gammas]):
            t = one if T == 1 else _median_s(fwd(T), dev, p, p.inner)
            rows.append(c.row("llamagen", name, "verify", 1, t, llamagen_step(cfg, 2, T, P + T, c.elt).floor_s(c.peak),
                              relative_cost=t / one, params={"tokens": T, "gamma": T - 1, "kv_len": P + T}))
        for tree_name, tree in TREES.items():
            T = tree.size + 1
            base = torch.full((2,), P, device=dev)
            mask = tree.mask(base, torch.arange(T, device=dev), P + T)[:, None]  # (2, 1, T, P + T)
            t = _median_s(fwd(T, mask), dev, p, p.inner)
            rows.append(c.row("llamagen", name, "verify-tree", 1, t, llamagen_step(cfg, 2, T, P + T, c.elt).floor_s(c.peak),
                              relative_cost=t / one, params={"tree": tree_name, "tokens": T, "kv_len": P + T}))
        # DD1 student-sized forward: the whole sequence in one causal pass, one row per image
        for bs in p.batches:
            x = torch.zeros(bs, n - 1, dtype=torch.long, device=dev)
            cond = _labels(bs, cfg.num_classes, dev)
            pos = torch.arange(cfg.cls_token_num + n - 1, device=dev)
            t = _median_s(lambda: model(x, cond, input_pos=pos), dev, p, max(1, p.inner // 5))
            work = llamagen_step(cfg, bs, cfg.cls_token_num + n - 1, cfg.cls_token_num + n - 1, c.elt)
            rows.append(c.row("llamagen", name, "dd-forward", bs, t, work.floor_s(c.peak), images_per_s=bs / t,
                              ar_over_forward=ar[bs] / t, params={"tokens": n, "rows": "1 per image (no CFG)"}))
    return rows


# ---------------------------------------------------------------------------------------------------- MAR
def mar_rows(name: str, cfg: MARConfig, c: _Ctx) -> list[dict]:
    dev, p, L = c.device, c.preset, cfg.seq_len
    with torch.device(dev):
        model = MAR(cfg).eval()
    rows = []
    step_at = functools.cache(lambda head_rows: head_step_s(model, head_rows, c))  # CSpD's gamma 1 reuses a DiSA row's
    with torch.inference_mode(), c.amp():
        for bs in p.batches:
            R = 2 * bs  # [cond; uncond]
            tokens = torch.zeros(bs, L, cfg.token_embed_dim, device=dev)
            mask = torch.ones(bs, L, device=dev)
            mask[:, : L // 2] = 0.0  # half the tokens known: the mean encoder length over a generation
            labels = _labels(bs, cfg.class_num, dev)
            t_pass = _median_s(lambda: model.condition(tokens, mask, labels, cfg=True), dev, p)
            rows.append(c.row("mar", name, "mar-pass", bs, t_pass, mar_pass(cfg, R, L // 2, c.elt).floor_s(c.peak),
                              params={"known": L // 2, "rows": R}))
            per_step = {}
            for iters in p.mar_iters:
                hr = R * max(1, L // iters)
                per_step[iters] = step_at(hr)
                rows.append(c.row("mar", name, "disa-head-step", bs, per_step[iters],
                                  mar_head_step(cfg, hr, c.elt).floor_s(c.peak), params={"num_iter": iters, "head_rows": hr},
                                  head_share_100_steps=100 * per_step[iters] / (t_pass + 100 * per_step[iters])))
            hi_it, lo_it = max(p.mar_iters), min(p.mar_iters)
            est = {f"{hi_it}x100": hi_it * (t_pass + 100 * per_step[hi_it]),
                   f"{lo_it}x100": lo_it * (t_pass + 100 * per_step[lo_it]),
                   f"disa-{lo_it}": lo_it * t_pass + DISA_STEPS_64 * lo_it / 64 * per_step[lo_it]}
            rows.append(c.row("mar", name, "disa-estimate", bs, None, None, est_generation_s=est,
                              est_speedup_disa_vs_default=est[f"{hi_it}x100"] / est[f"disa-{lo_it}"],
                              est_speedup_disa_vs_same_iters=est[f"{lo_it}x100"] / est[f"disa-{lo_it}"],
                              params={"note": "num_iter x (pass + steps x head step); DiSA 50->5 linear"}))
            rows += cspd_verify_rows(name, cfg, bs, t_pass, step_at, c)
    return rows


def head_step_s(model: MAR, rows: int, c: _Ctx, lo: int = 5, hi: int = 25) -> float:
    """Seconds of one diffusion-head step (with CFG) on ``rows`` conditions: the difference of ``hi``- and ``lo``-step
    samples over ``hi - lo`` (the per-call set-up cancels)."""
    z = torch.zeros(rows, model.cfg.decoder_embed_dim, device=c.device)
    g = torch.Generator(c.device).manual_seed(0)
    t = {k: _median_s(lambda k=k: model.head.sample(z, steps=k, cfg=3.0, generator=g), c.device, c.preset) for k in (lo, hi)}
    return max(t[hi] - t[lo], 0.0) / (hi - lo)


def cspd_verify_rows(name: str, cfg: MARConfig, bs: int, t_pass: float, step_at: Callable[[int], float],
                     c: _Ctx) -> list[dict]:
    """``cspd-verify``: CSpD's one-pass window verification (arXiv 2411.11925 as released: the target judges a window of
    gamma draft tokens per image with one encoder/decoder pass and its head over all of them, every head step) against
    one-token MAR's step at the same batch (gamma = 1): ``relative_cost`` = t(gamma) / t(1) and ``per_token`` =
    relative_cost / gamma, the cost of one verified token in target tokens (a free draft accepted in full gives
    1 / per_token). t(gamma) = pass + S head steps on 2 * bs * gamma rows (``step_at(rows)``: one head step's
    seconds), S = the config's sampling steps."""
    S = int(cfg.num_sampling_steps)
    est = {gm: t_pass + S * step_at(2 * bs * gm) for gm in c.preset.cspd_gammas}
    one = est[min(est)]
    return [c.row("mar", name, "cspd-verify", bs, t, mar_pass(cfg, 2 * bs, cfg.seq_len // 2, c.elt).floor_s(c.peak)
                  + S * mar_head_step(cfg, 2 * bs * gm, c.elt).floor_s(c.peak),
                  relative_cost=t / one, per_token=t / one / gm,
                  params={"gamma": gm, "head_steps": S, "head_rows": 2 * bs * gm, "note": "pass + S x head step"})
            for gm, t in est.items()]


# ---------------------------------------------------------------------------------------------------- VAR
def var_rows(name: str, cfg: VARConfig, vq: VQVAEConfig, c: _Ctx) -> list[dict]:
    dev, p = c.device, c.preset
    with torch.device(dev):
        vae, model = VQVAE(vq).eval(), VAR(cfg, vq.vocab_size, vq.z_channels).eval()
    rows, ar = [], {}
    with torch.inference_mode(), c.amp():
        for bs in p.batches:
            g = torch.Generator(dev).manual_seed(0)
            cond = _labels(bs, cfg.num_classes, dev)
            top_k = min(900, vq.vocab_size)  # the official sampling settings
            t = _medians_s({k: (lambda s=s: model.autoregressive_infer_cfg(vae, bs, cond, generator=g, cfg=s, top_k=top_k,
                                                                            top_p=0.96)) for k, s in (("cfg", 1.5), ("free", 0.0))},
                           dev, p)
            ar[bs] = t["cfg"]
            rows.append(c.row("var", name, "ar", bs, t["cfg"], var_work(cfg, bs, vocab_size=vq.vocab_size, Cvae=vq.z_channels,
                                                                        bytes_per_element=c.elt),
                              images_per_s=bs / t["cfg"], tokens_per_s=bs * cfg.L / t["cfg"],
                              params={"cfg": 1.5, "scales": len(cfg.patch_nums), "note": "includes the VQVAE decode"}))
            rows.append(guidance_free_row(c, "var", name, bs, t, None, None, tokens_per_s=bs * cfg.L / t["free"],
                                          params={"cfg": 0.0, "note": "includes the VQVAE decode"}))
        for bs in p.batches:  # DD1 student-sized forward: all L tokens in one block-causal pass, no CFG rows
            x = torch.zeros(bs, cfg.L - cfg.first_l, vq.z_channels, device=dev)
            cond = _labels(bs, cfg.num_classes, dev)
            t = _median_s(lambda: model(cond, x), dev, p, max(1, p.inner // 5))
            one_row = var_cost(cfg, vq.vocab_size, vq.z_channels, bytes_per_element=c.elt, cfg_guidance=False)
            floor = max(one_row.flops * bs / c.peak.flops_per_s, 0.0)
            rows.append(c.row("var", name, "dd-forward", bs, t, floor, images_per_s=bs / t, ar_over_forward=ar[bs] / t,
                              params={"tokens": cfg.L, "rows": "1 per image (no CFG)", "floor": "FLOPs only"}))
    rows += scalekv_rows(name, cfg, vq, c)
    return rows


def scalekv_kept(cfg: VARConfig, fraction: float, window: int = 16) -> list[list[int]]:
    """Tokens kept per (scale, layer) by a uniform ``fraction`` budget (``accel.cache.budgets.uniform``)."""
    return uniform(cfg.patch_nums, cfg.depth, fraction, min_keep=window).kept_tokens()


def scalekv_rows(name: str, cfg: VARConfig, vq: VQVAEConfig, c: _Ctx) -> list[dict]:
    full = var_cost(cfg, vq.vocab_size, vq.z_channels, bytes_per_element=c.elt)
    comp = var_cost(cfg, vq.vocab_size, vq.z_channels, bytes_per_element=c.elt,
                    kept=scalekv_kept(cfg, c.preset.kv_budget, window=c.preset.kv_window or min(16, cfg.patch_nums[-1] ** 2)))
    return [c.row("var", name, "scalekv-kv", bs, None, None, kv_bytes=comp.kv_bytes_peak * bs,
                  kv_full_bytes=full.kv_bytes_peak * bs, kv_fraction=comp.kv_bytes_peak / full.kv_bytes_peak,
                  params={"budget": c.preset.kv_budget, "policy": "uniform budget (ScaleKV keeps the same totals)",
                          "analytic": True})
            for bs in c.preset.batches]


# ---------------------------------------------------------------------------------------------------- all
def run_preset(preset: Preset, device: torch.device | str = "cpu", dtype: torch.dtype | None = None, *,
               command: str = "", progress: Callable[[str], None] | None = None) -> list[dict]:
    """Every measurement of ``preset`` on ``device`` (compute dtype: bf16 on CUDA, fp32 elsewhere by default)."""
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    say = progress or (lambda msg: None)
    say(f"calibrating {device} ({dtype}) matmul peak and copy bandwidth")
    c = _Ctx(device, dtype, device_peak(device, dtype), preset, environment(device), command)
    rows, decode_s = [], {}
    if preset.llamagen:
        say("LlamaGen tokenizer: image decode")
        decode_rows, decode_s = llamagen_decode_rows(preset.llamagen_vq, next(iter(preset.llamagen.values())).block_size, c)
        rows += decode_rows
    for name, cfg in preset.llamagen.items():
        say(f"{name}: AR with and without guidance, verify curve, DD forward")
        rows += llamagen_rows(name, cfg, c, decode_s)
    for name, cfg in preset.mar.items():
        say(f"{name}: MAR pass, DiSA head steps")
        rows += mar_rows(name, cfg, c)
    for name, (cfg, vq) in preset.var.items():
        say(f"{name}: AR, DD forward, ScaleKV memory")
        rows += var_rows(name, cfg, vq, c)
    for r in rows:
        r["env"]["peak"] = c.peak.as_dict()
    return rows


def estimated_seconds(preset: Preset, flops_per_s: float = 989e12, bytes_per_s: float = 4.8e12,
                      efficiency: float = 0.4, launch_s: float = 10e-6, bytes_per_element: int = 2) -> float:
    """Rough wall time of ``run_preset`` on a device with these peaks (defaults: H200 dense bf16, HBM3e): every
    timed call costs its roofline floor / ``efficiency`` + ``launch_s`` per kernel (~25 per transformer layer
    per forward, ~12 per head block step), times warm-up + repeats."""
    peak = DevicePeak("model", "bfloat16", 0, flops_per_s * efficiency, bytes_per_s * efficiency, 0, 0)
    elt, rounds, total = bytes_per_element, preset.warmup + preset.repeats, 0.0
    for cfg in preset.llamagen.values():
        n, k = cfg.block_size, 25 * cfg.n_layer + 20
        for bs in preset.batches:
            total += rounds * sum(llamagen_work(cfg, bs, cfg_guidance=g, bytes_per_element=elt).floor_s(peak) + n * k * launch_s
                                  for g in (True, False))
            total += rounds * max(1, preset.inner // 5) * (llamagen_step(cfg, bs, n, n, elt).floor_s(peak) + k * launch_s)
        n_fwd = len(preset.gammas) + 1 + len(TREES)
        total += rounds * preset.inner * n_fwd * (llamagen_step(cfg, 2, 21, n, elt).floor_s(peak) + k * launch_s)
    for cfg in preset.mar.values():
        k = 25 * (cfg.encoder_depth + cfg.decoder_depth)
        for bs in preset.batches:
            total += rounds * (mar_pass(cfg, 2 * bs, cfg.seq_len, elt).floor_s(peak) + k * launch_s)
            head_rows = [2 * bs * max(1, cfg.seq_len // iters) for iters in preset.mar_iters]
            for rows in head_rows + [2 * bs * gm for gm in preset.cspd_gammas]:
                step = mar_head_step(cfg, rows, elt).floor_s(peak)
                total += rounds * 30 * (step + (12 * cfg.diffloss_d + 20) * launch_s)
    for cfg, vq in preset.var.values():
        k = 25 * cfg.depth + 30
        for bs in preset.batches:
            total += rounds * 1.5 * (var_work(cfg, bs, vocab_size=vq.vocab_size, Cvae=vq.z_channels, bytes_per_element=elt).floor_s(peak)
                                     + len(cfg.patch_nums) * k * launch_s + 0.05)  # + the VQVAE decode; + guidance-free
            total += rounds * max(1, preset.inner // 5) * (var_cost(cfg, vq.vocab_size, vq.z_channels, cfg_guidance=False).flops
                                                           * bs / peak.flops_per_s + k * launch_s)
    if preset.llamagen:  # the VQ decode at each batch: 253 GFLOP per 256 px image (VQ-16, counted)
        total += rounds * sum(0.253e12 * bs / peak.flops_per_s + 0.01 for bs in preset.batches)
    return total + 5.0 * math.ceil(len(preset.llamagen) + len(preset.mar) + len(preset.var))  # building the models


# ------------------------------------------------------------------------------------------------ summary
def _f(v, fmt="{:.3g}") -> str:
    return "–" if v is None else fmt.format(v)


def summary_markdown(rows: list[dict], *, command: str) -> str:
    """summary.md of the preset: one table per measurement (rows from ``run_preset``)."""
    env = rows[0]["env"] if rows else {}
    peak = env.get("peak", {})
    by = lambda m: [r for r in rows if r["method"] == m]  # noqa: E731
    out = ["# accel bench --preset gpu: cost structure at full-size shapes (weights: random, no quality)", "",
           f"Command: `{command}`", "",
           "Environment: " + ", ".join(f"{k}={v}" for k, v in env.items() if k != "peak"), "",
           f"Measured peak: {_f(peak.get('flops_per_s', 0) / 1e12)} TFLOP/s matmul ({peak.get('dtype')}), "
           f"{_f(peak.get('bytes_per_s', 0) / 1e9)} GB/s copy. Floor = sum over steps of max(FLOPs / peak, bytes / "
           "bandwidth) (accel/harness/README.md, \"Limit model\"); fraction of floor = floor / measured.", "",
           "## Plain decoding", "", "| model | batch | latency s | tokens/s | img/s | floor s | fraction of floor |",
           "|---|---|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r['batch_size']} | {_f(r['latency_s'])} | {_f(r['tokens_per_s'])} | {_f(r['images_per_s'])} | "
            f"{_f(r['floor_s'])} | {_f(r['frac_floor'])} |" for r in by("ar")]
    out += ["", "## Guidance-free decoding (CCA) vs CFG, timed interleaved", "",
            "| model | batch | CFG s | guidance-free s | CFG / free | with the image decode | decode s |",
            "|---|---|---|---|---|---|---|"]
    cfg_s = {(r["model"], r["batch_size"]): r["latency_s"] for r in by("ar")}
    out += [f"| {r['model']} | {r['batch_size']} | {_f(cfg_s.get((r['model'], r['batch_size'])))} | {_f(r['latency_s'])} | "
            f"{_f(r['cfg_over_free'], '{:.2f}x')} | "
            f"{_f(r['cfg_over_free_with_decode'], '{:.2f}x') if r['cfg_over_free_with_decode'] else 'in the loop'} | "
            f"{_f(r['decode_s'])} |" for r in by("ar-free")]
    out += ["", "## Verify cost: a T-token forward through the cache relative to one token (batch 1, CFG rows)", "",
            "| model | forward | tokens | latency ms | relative cost | fraction of floor |", "|---|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r['params'].get('tree') or 'chain, gamma=' + str(r['params'].get('gamma'))} | "
            f"{r['params']['tokens']} | {_f(r['latency_s'] * 1e3)} | {_f(r['relative_cost'], '{:.2f}')} | {_f(r['frac_floor'])} |"
            for r in by("verify") + by("verify-tree")]
    out += ["", "## DD1: one student-sized forward vs the AR loop", "",
            "| model | batch | forward s | AR loop s / forward s | fraction of floor |", "|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r['batch_size']} | {_f(r['latency_s'])} | {_f(r['ar_over_forward'])} | {_f(r['frac_floor'])} |"
            for r in by("dd-forward")]
    out += ["", "## MAR: encoder/decoder pass and diffusion-head step (DiSA)", "",
            "| model | batch | what | latency ms | fraction of floor | head share at 100 steps |", "|---|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r['batch_size']} | {r['method']} {r['params'].get('num_iter', '')} | "
            f"{_f(r['latency_s'] * 1e3)} | {_f(r['frac_floor'])} | {_f(r.get('head_share_100_steps'), '{:.2f}')} |"
            for r in by("mar-pass") + by("disa-head-step")]
    out += ["", "| model | batch | estimated generation s | DiSA vs default | DiSA vs same iterations |", "|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r['batch_size']} | {', '.join(f'{k}: {v:.3g}' for k, v in r['est_generation_s'].items())} | "
            f"{_f(r['est_speedup_disa_vs_default'], '{:.2f}x')} | {_f(r['est_speedup_disa_vs_same_iters'], '{:.2f}x')} |"
            for r in by("disa-estimate")]
    out += ["", "## CSpD: one-pass verification of a window of gamma tokens vs one-token MAR (pass + S head steps)", "",
            "| model | batch | gamma | latency s | relative cost | per verified token | fraction of floor |",
            "|---|---|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r['batch_size']} | {r['params']['gamma']} | {_f(r['latency_s'])} | "
            f"{_f(r['relative_cost'], '{:.2f}')} | {_f(r['per_token'], '{:.3f}')} | {_f(r['frac_floor'])} |"
            for r in by("cspd-verify")]
    out += ["", "## ScaleKV: peak attended KV bytes, 10% budget vs full (analytic)", "",
            "| model | batch | full MB | 10% budget MB | fraction |", "|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r['batch_size']} | {r['kv_full_bytes'] / 1e6:,.1f} | {r['kv_bytes'] / 1e6:,.1f} | "
            f"{r['kv_fraction']:.3f} |" for r in by("scalekv-kv")]
    return "\n".join(out) + "\n"
