"""ScaleKV (arXiv 2505.19602) vs sliding window, StreamingLLM, SnapKV, PyramidKV on the zoo VAR.

Every policy at budgets {4, 10, 20}% (kept tokens / full history at the compressed scales); fidelity against
the full-cache output for the same noise (PSNR, SSIM, token agreement, FID[fmnist-cnn] vs full), exact
cache bytes, peak process memory (fresh subprocess, 10% budget), the on-paper memory table, a plot and a
README table. ``--quick``: fewer images. ``--random-init``: a small untrained VAR, only to exercise the code.

    python experiments/scalekv.py [--quick] [--random-init] [--out results/scalekv]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

from accel.cache.calibrate import calibrate_var
from accel.cache.budgets import choose_window
from accel.harness.cache_fidelity import fidelity_grid
from accel.cache.memory_table import markdown, memory_rows
from accel.cache.registry import POLICIES, build_policy
from accel.cache.report import fidelity_table, goal_check, peak_table, plot
from accel.harness.results import append_rows, current_command, environment, make_row

BUDGETS = (0.04, 0.1, 0.2)
CALIB_SEED = 10_000
MEMORY_NOTES = (
    "Budget = kept tokens / full history per layer at the compressed scales (uniform B_u(k) = floor(f H_k); "
    "ScaleKV/PyramidKV/SnapKV keep the same per-scale totals, hence the same bytes; the released-code split can keep less when a drafter's earlier scales were already compressed). MB = 10^6 bytes. "
    "'kept %' bounds what is stored between scales; the peak a decode needs also holds the current scale's "
    "fresh k/v, which no policy evicts before attending to it, so the peak falls far less than the budget "
    "(the last scale alone is 4096 of 10,521 tokens at 1024 px; cf. ScaleKV issue #5: 8.58 -> 3.65 GB measured). "
    "Infinity-like rows model only a self-attention stack of Infinity-2B/8B's width and depth on Infinity's "
    "1024 px schedule; the ScaleKV paper reports 38,550 / 84,328 MB full KV at batch 8 for Infinity-2B/8B, "
    "below this calculator's batch-8 full-cache peaks in the table (their exact accounting is not published).\n\n")  # calibration decodes never share noise with the evaluated ones


def load(args):
    if args.random_init:
        from accel.models.var import VARConfig, build_var
        from accel.models.var_vqvae import VQVAEConfig

        pn = (1, 2, 3, 4, 5, 6, 8)
        # the zoo VAR's shapes (accel/train/recipes/var.py), untrained
        vae, var = build_var(VARConfig(num_classes=10, depth=6, embed_dim=160, num_heads=5, patch_nums=pn),
                             VQVAEConfig(vocab_size=512, z_channels=16, ch=32, v_patch_nums=pn, ch_mult=(1, 2, 2),
                                         num_res_blocks=1))
        g = torch.Generator().manual_seed(0)
        var.init_weights(init_adaln_gamma=1.0, init_head=1.0, generator=g)  # so attention and logits matter untrained
        return "random-init-var-d6", var.eval(), vae.eval()
    from accel import zoo

    vae = args.vae or zoo.TOKENIZER.get(args.model)
    if vae is None:
        raise SystemExit(f"--vae is required for {args.model!r} (not a zoo generator)")
    return Path(args.model).stem, zoo.load(args.model), zoo.load(vae)


def peak_rss_child(spec: dict) -> None:
    """Child: build the model and one policy, decode one batch, print max RSS (bytes) before/after."""
    args = argparse.Namespace(**spec)
    _, var, vae = load(args)
    calib = json.loads(Path(spec["calib_path"]).read_text())
    pol = None if spec["policy"] == "full" else build_policy(spec["policy"], var.patch_nums, var.depth, 0.1,
                                                              window=spec["window"], calib=calib)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.no_grad():
        var.autoregressive_infer_cfg(vae, spec["batch_size"], torch.arange(spec["batch_size"]) % var.num_classes,
                                     generator=torch.Generator().manual_seed(0), cfg=spec["cfg"], policy=pol)
    print(json.dumps({"before": before, "after": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fmnist-var")
    p.add_argument("--vae", default=None, help="VQVAE of --model (default: its zoo tokenizer)")
    p.add_argument("--random-init", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n-images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--out", type=Path, default=Path("results/scalekv"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory-table-only", action="store_true", help="write results/.../memory_table.md and stop")
    p.add_argument("--peak-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)  # explicit: oversubscribed CPUs slow small matmuls ~30x
    if args.peak_child:
        peak_rss_child(json.loads(args.peak_child))
        return 0
    n = args.n_images or (160 if args.quick else 512)  # >= 129: FID needs N > feature dim (128)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory_table.md").write_text(
        "# KV memory on paper: full vs compressed caches (VAR calculator, fp16, CFG rows)\n\n"
        f"Generated by `python experiments/scalekv.py {' '.join(sys.argv[1:])}` "
        "(accel/cache/memory_table.py).\n\n" + MEMORY_NOTES + markdown(memory_rows()) + "\n")
    if args.memory_table_only:
        return 0
    name, var, vae = load(args)
    with torch.no_grad():
        calib = calibrate_var(var, vae, n_images=args.calib_images, batch_size=args.batch_size, seed=CALIB_SEED,
                              cfg=args.cfg, progress=True)
    calib_path = args.out / f"calibration_{name}.json"
    calib_path.write_text(json.dumps(calib, indent=1))
    try:
        from accel.presets.zoo_models import load_reference

        extract = load_reference().extract
    except Exception as e:  # noqa: BLE001 - stated in the output, FID then omitted
        extract = None
        print(f"no fmnist-cnn features ({type(e).__name__}: {e}); FID vs full omitted", file=sys.stderr)
    rows, env, cmd = [], environment("cpu"), current_command()
    grid, windows = {}, {f: choose_window(var.patch_nums, var.depth, f) for f in BUDGETS}
    for f in BUDGETS:  # one grid: the full-cache reference is decoded once per batch for all budgets
        for pn in POLICIES[1:]:
            grid[(pn, f)] = build_policy(pn, var.patch_nums, var.depth, f, window=windows[f], calib=calib)
    res = fidelity_grid(var, vae, grid, n_images=n, batch_size=args.batch_size, seed=args.seed, cfg=args.cfg,
                        extract=extract)
    for (pn, f), r in res.items():
        rows.append(make_row(experiment="scalekv", family="var", model=name, method=pn, baseline="full",
                             params={"budget": f, "window": windows[f], "cfg": args.cfg, "calib_images": args.calib_images},
                             batch_size=args.batch_size, n_images=n, seed=args.seed, kv_bytes=r["kv_peak_attended_bytes"],
                             kv_fraction=r["kv_kept_ratio"], psnr=r["psnr"], ssim=r["ssim"],
                             token_agreement=r["token_agreement"], fid=r.get("fid_vs_full"),
                             fid_feature=r.get("fid_feature"), env=env, command=cmd, detail=r))
    for pn in ("full", "snapkv", "scalekv"):
        spec = {"random_init": args.random_init, "model": args.model, "vae": args.vae, "calib_path": str(calib_path), "policy": pn,
                "window": windows[0.1], "batch_size": args.batch_size, "cfg": args.cfg}
        out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--peak-child", json.dumps(spec)],
                             capture_output=True, text=True)
        peak = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-500:]}
        rows.append(make_row(experiment="scalekv-peak-rss", family="var", model=name, method=pn, baseline="full",
                             params={"budget": 0.1}, batch_size=args.batch_size, peak_mem_bytes=peak.get("after"),
                             peak_mem_kind="cpu_subprocess_max_rss", detail=peak, env=env, command=cmd))
    append_rows(args.out / "scalekv.jsonl", rows)
    plot(rows, args.out / f"scalekv_{name}.png")
    note = ("**Random-init model: these numbers only exercise the code; they say nothing about the methods.**\n\n"
            if args.random_init else "")
    (args.out / f"README_{name}.md").write_text(
        f"# ScaleKV and baselines on {name}\n\n{note}Command: `{cmd}`\n\n{n} images, same labels and seeds for "
        f"every policy and the full cache; calibration: {args.calib_images} other images (seed {CALIB_SEED}).\n\n"
        f"{fidelity_table(rows)}\n\nGoal at 10% (ScaleKV, paper variant):\n\n{goal_check(rows)}\n\nPeak process memory (fresh subprocess, batch {args.batch_size}):\n\n"
        f"{peak_table(rows)}\n")
    print(fidelity_table(rows))
    print(goal_check(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
