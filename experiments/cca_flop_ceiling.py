"""How much can removing CFG's doubled batch speed up a whole generation? FLOP counts (issue #21).

A CCA model (arXiv 2410.09347) decodes with the conditional rows alone: half the token loop's work. The image
decode (tokens -> pixels) is the same with and without guidance. On a device that runs both at the same FLOP
efficiency (compute-bound: this CPU, a GPU at a large batch) the end-to-end speed-up per image is at most

    ceiling = (F_loop_cfg + F_decode) / (F_loop_free + F_decode)

For each model this counts both terms with ``torch.utils.flop_counter.FlopCounterMode`` on one image (matmuls,
attention, convolutions): the zoo models as shipped (their loops run for real), and the released full-size shapes
with random weights, whose loops are counted analytically (``accel.harness.floor.llamagen_work``,
``accel.models.var_calc.var_cost``; the script prints counted / analytic for the zoo loops, and
tests/test_floor.py checks the formulas against counted matmuls) and whose decoders are counted (VQ-16 for every
LlamaGen size, VAR's VQVAE). VAR's per-scale residual quantiser convs (``f_hat`` updates) are shared work that is
not counted, so VAR's ceilings are upper bounds. Rows -> OUT/flop_ceiling.jsonl.

    python experiments/cca_flop_ceiling.py --out results/cca          # ~1 min on one CPU thread
    python experiments/cca_flop_ceiling.py --quick --out /tmp/ceil     # the zoo only, seconds
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import accel
from accel.harness.floor import llamagen_work
from accel.harness.results import append_rows, current_command
from accel.models.llamagen import gpt_config
from accel.models.llamagen_vq import VQConfig, VQModel
from accel.models.var import var_config
from accel.models.var_calc import var_cost
from accel.models.var_vqvae import VQVAE, VQVAEConfig

FULL_LLAMAGEN = ("GPT-B", "GPT-L", "GPT-XL", "GPT-XXL")
FULL_VAR = ("var-d16", "var-d20", "var-d24", "var-d30")


def counted(fn) -> float:
    """FLOPs that ``fn()`` runs, counted by torch (no grad)."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def llamagen_loop_flops(cfg, guided: bool) -> float:
    """Analytic FLOPs of one image's token loop (CFG: 2 rows per image)."""
    return llamagen_work(cfg, 1, cfg_guidance=guided).flops


def row(model: str, loop_cfg: float, loop_free: float, decode: float, **extra) -> dict:
    return {"model": model, "loop_cfg_gflop": loop_cfg / 1e9, "loop_free_gflop": loop_free / 1e9,
            "decode_gflop": decode / 1e9, "decode_share_free": decode / (loop_free + decode),
            "ceiling_loop": loop_cfg / loop_free, "ceiling_end_to_end": (loop_cfg + decode) / (loop_free + decode),
            **extra}


def zoo_rows() -> list[dict]:
    """The zoo bases: loops and decodes counted on real calls (batch 1, the card's sampling otherwise)."""
    out, cond, g = [], torch.tensor([3]), lambda: torch.Generator().manual_seed(0)
    lg = accel.load("fmnist-llamagen")
    free = accel.load("fmnist-llamagen", cfg_scale=1.0)
    toks = lg.tokens(cond, generator=g())
    loop = {k: counted(lambda m=m: m.tokens(cond, generator=g())) for k, m in (("cfg", lg), ("free", free))}
    analytic = llamagen_loop_flops(lg.model.config, True)
    out.append(row("fmnist-llamagen (zoo)", loop["cfg"], loop["free"], counted(lambda: lg.decode(toks)),
                   cfg_scale=lg.sampling.cfg_scale, counted_over_analytic_loop=loop["cfg"] / analytic, weights="zoo"))
    var = accel.load("fmnist-var")
    vae, net = var.tokenizer, var.model
    f_hat = torch.zeros(1, vae.cfg.z_channels, vae.cfg.v_patch_nums[-1], vae.cfg.v_patch_nums[-1])
    decode = counted(lambda: vae.fhat_to_img(f_hat))
    loop = {k: counted(lambda s=s: net.autoregressive_infer_cfg(vae, 1, cond, generator=g(), cfg=s)) - decode
            for k, s in (("cfg", 1.5), ("free", 0.0))}
    analytic = var_cost(net.cfg, vae.cfg.vocab_size, vae.cfg.z_channels).flops
    out.append(row("fmnist-var (zoo)", loop["cfg"], loop["free"], decode, cfg=1.5,
                   counted_over_analytic_loop=loop["cfg"] / analytic, weights="zoo"))
    return out


def full_rows() -> list[dict]:
    """Released shapes at 256 px, random weights: loops analytic, decoders counted."""
    side = 16  # 256 tokens: the 16 x 16 grid of VQ-16 and VAR's last scale
    dec_lg = counted(lambda: VQModel(VQConfig()).eval().decode_code(torch.zeros(1, side * side, dtype=torch.long),
                                                                    (side, side)))
    out = [row(f"LlamaGen-{n.split('-')[1]}", llamagen_loop_flops(gpt_config(n), True),
               llamagen_loop_flops(gpt_config(n), False), dec_lg, weights="random", decoder="VQ-16")
           for n in FULL_LLAMAGEN]
    vcfg = VQVAEConfig()
    vae = VQVAE(vcfg).eval()
    dec_var = counted(lambda: vae.fhat_to_img(torch.zeros(1, vcfg.z_channels, side, side)))
    for n in FULL_VAR:
        c = var_config(n)
        loop = {g: var_cost(c, vcfg.vocab_size, vcfg.z_channels, cfg_guidance=g).flops for g in (True, False)}
        out.append(row(f"VAR-{n.split('-')[1]}", loop[True], loop[False], dec_var, weights="random",
                       decoder="VAR VQVAE", note="f_hat updates not counted: an upper bound"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("results/cca"))
    ap.add_argument("--quick", action="store_true", help="the zoo models only")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = zoo_rows() + ([] if args.quick else full_rows())
    command = current_command()
    args.out.mkdir(parents=True, exist_ok=True)
    append_rows(args.out / "flop_ceiling.jsonl", [{**r, "command": command} for r in rows])
    print("| model | loop GFLOP CFG / free | decode GFLOP | decode share (free) | ceiling: loop / end to end |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['loop_cfg_gflop']:.4g} / {r['loop_free_gflop']:.4g} | {r['decode_gflop']:.4g} | "
              f"{r['decode_share_free']:.2f} | {r['ceiling_loop']:.2f}x / {r['ceiling_end_to_end']:.2f}x |"
              + (f" (counted / analytic loop {r['counted_over_analytic_loop']:.3f})"
                 if "counted_over_analytic_loop" in r else ""))


if __name__ == "__main__":
    main()
