"""DiSA (arXiv 2505.20297) on the zoo MAR: MAR default vs fewer iterations vs annealed head steps.

    python experiments/disa.py --quick             # 5 schedules, 100 images, batch 1 and 8: < 10 min on 2 CPU cores
    python experiments/disa.py                     # the table in results/disa/
    python experiments/disa.py --random --quick    # no zoo MAR: small RANDOM config, speed only

Baseline ``mar-it{L}-s100``: MAR's default, one token per iteration (num_iter = L), 100 head steps, timed
interleaved with every other method in the same run (accel.harness.runner). The paper's recipe is 64 of 256
iterations with 50->5 linear, i.e. num_iter = L/4 here. After the end-to-end rows, the head alone is timed
at FIXED iteration counts (accel.harness.mar_costs), so the two savings the paper's 5x mixes are separated.
"""
import argparse
import sys
from pathlib import Path

import torch

from accel.harness.mar_costs import head_time, mar_pass_time, record_conditions
from accel.annealing.disa import AdaptiveSchedule, AnnealedMAR, make_schedule
from accel.harness.registry import MethodEntry, Registry
from accel.harness.results import append_rows, current_command, make_row
from accel.harness.runner import RunConfig, run_group


def grid(L: int, quick: bool) -> list[tuple[str, int]]:
    """(schedule spec, num_iter); the first is the baseline."""
    q = max(1, L // 4)
    pts = [("constant:100", L), ("constant:100", q), ("linear:50:5", q), ("cosine:50:5", q), ("adaptive:50:5", q)]
    if not quick:
        pts += [("linear:50:5", L), ("constant:100", L // 2), ("constant:100", max(1, L // 8)), ("two-stage:50:5", q),
                ("linear:25:5", q), ("linear:100:5", q), ("linear:50:5:noclip", q), ("cosine:50:5", L),
                ("two-stage:50:5", L), ("linear:50:5", max(1, L // 8)), ("constant:5", q)]
    return pts


def load_models(args, device):
    if args.random:
        from accel.models.kl_vae import AutoencoderKL, KLVAEConfig
        from accel.models.mar import MAR, MARConfig

        torch.manual_seed(0)
        m = MAR(MARConfig(img_size=32, vae_stride=4, vae_embed_dim=16, class_num=10, buffer_size=8, encoder_embed_dim=128,
                          encoder_depth=2, encoder_num_heads=4, decoder_embed_dim=128, decoder_depth=2,
                          decoder_num_heads=4, diffloss_d=3, diffloss_w=128)).eval().to(device)
        vae = AutoencoderKL(KLVAEConfig(embed_dim=16, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1)).eval().to(device)
        return m, vae, {}
    from accel import zoo
    from accel.zoo.sample import DEFAULTS

    m, vae = zoo.load(args.model, device=device), zoo.load(args.vae or zoo.TOKENIZER[args.model], device=device)
    card = DEFAULTS.get(args.model, DEFAULTS.get("fmnist-mar", {}))  # a user file: the zoo MAR's card settings
    return m, vae, {k: v for k, v in card.items() if k in ("cfg", "cfg_schedule", "temperature")}


def goal_lines(rows: list[dict]) -> list[str]:
    """The issue's goal per batch size: >= 5x end-to-end with FID within 5% of the baseline's."""
    out = []
    for bs in sorted({r["batch_size"] for r in rows}):
        sub = [r for r in rows if r["batch_size"] == bs]
        base = next(r for r in sub if r["method"] == r["baseline"])
        if base.get("fid") is None:
            out.append(f"batch {bs}: no FID measured (speed only), goal not assessable")
            continue
        ok = [r for r in sub if r["speedup"] >= 5 and r["fid"] <= 1.05 * base["fid"]]
        best = max((r for r in sub if r["fid"] <= 1.05 * base["fid"]), key=lambda r: r["speedup"])
        out.append(f"batch {bs}: baseline FID {base['fid']:.2f}; goal (>=5x, FID <= {1.05 * base['fid']:.2f}) "
                   + (f"MET by {', '.join(r['method'] for r in ok)}" if ok else
                      f"MISSED: fastest within 5% FID is {best['method']} at {best['speedup']:.2f}x"))
    return out


def write_readme(out: Path, rows: list[dict], head_rows: list[dict]) -> None:
    from accel.harness.plots import plot_quality_vs_speed
    from accel.harness.summary import summary_markdown

    plots = [p.name for p in plot_quality_vs_speed(rows, out)] if any(r.get("fid") is not None for r in rows) else []
    text = summary_markdown(rows, command=current_command(), plots=plots)
    text += "\n## Goal\n\n" + "\n".join(f"- {g}" for g in goal_lines(rows)) + "\n"
    text += "\n## Head only, fixed iteration count (same conditions, interleaved)\n\n"
    text += "| iterations | method | batch | head s/gen | head-time reduction | head share of MAR+head |\n|---|---|---|---|---|---|\n"
    text += "".join(f"| {r['params']['num_iter']} | {r['method']} | {r['batch_size']} | {r['latency_s']:.3f} | "
                    f"{r['speedup']:.2f}x | {r['head_share']:.2f} |\n" for r in head_rows)
    (out / "README.md").write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--random", action="store_true", help="small random MAR + VAE (speed only, no quality)")
    ap.add_argument("--model", default="fmnist-mar", help="zoo name, or a zoo-format file / training run")
    ap.add_argument("--vae", default=None, help="tokenizer for a --model file (default: the zoo's)")
    ap.add_argument("--out", type=Path, default=Path("results/disa"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch-sizes", type=int, nargs="+")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--n-images", type=int)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, vae, settings = load_models(args, device)
    L, name = model.cfg.seq_len, "random-mar" if args.random else args.model
    reg, specs = Registry(), {}
    for i, (spec, it) in enumerate(grid(L, args.quick)):
        sched = make_schedule(spec)
        method = AnnealedMAR(model, vae, sched, num_iter=it, **settings)
        label = method.name if i else f"mar-it{L}-s100"
        specs[label] = (sched, it)
        reg.add(MethodEntry(label, "mar", lambda ctx, m=method: m, models=(name,), experiment="disa",
                            baseline=None if i == 0 else f"mar-it{L}-s100", params={"spec": spec, "num_iter": it}))
    n_images = args.n_images if args.n_images is not None else (0 if args.random else (100 if args.quick else 1000))
    cfg = RunConfig(batch_sizes=tuple(args.batch_sizes or ((1, 8) if args.quick else (1, 64))),
                    repeats=args.repeats or (2 if args.quick else 5), n_images=n_images, device=args.device, memory=False)
    ref = None
    if n_images:
        from accel.presets.zoo_models import load_reference

        ref = load_reference(args.device)
    entries = list(reg.entries.values())
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    rows = run_group(reg, entries[0], entries[1:], name, cfg, reference=ref, command=current_command(), progress=say)
    work = {}  # head net row-evaluations per image (probes included), from one batch-1 call per method
    for r in rows:
        if r["method"] not in work:
            s = reg.get(r["method"]).build(None).sample_tokens(torch.zeros(1, dtype=torch.long, device=device),
                                                                 generator=torch.Generator(device).manual_seed(0))
            work[r["method"]] = s.stats["head_rows"]
        r.update(head_rows_per_image=work[r["method"]], random_weights=bool(args.random))
    # the head alone at fixed iteration counts: MAR's 100 steps vs the annealed schedules, same conditions
    head_rows = []
    for it in sorted({it for _, it in specs.values()}):
        scheds = {k: s for k, (s, i) in specs.items() if i == it and not isinstance(s, AdaptiveSchedule)}
        if len(scheds) < 2:
            continue
        bs = max(cfg.batch_sizes)
        labels = torch.arange(bs, device=device) % model.cfg.class_num
        trace = record_conditions(model, labels, num_iter=it, generator=torch.Generator(device).manual_seed(1), **settings)
        t = head_time(model, trace, scheds, repeats=cfg.repeats, device=device)
        mar_t = mar_pass_time(model, labels, num_iter=it, cfg=settings.get("cfg", 1.0), repeats=cfg.repeats, device=device)
        base = next(k for k, (s, _) in specs.items() if s == make_schedule("constant:100") and specs[k][1] == it)
        for k in scheds:
            head_rows.append(make_row(experiment="disa-head", family="mar", model=name, method=k, batch_size=bs,
                                      params={"num_iter": it}, latency_s=t[k].median, latency_spread_s=t[k].spread,
                                      speedup=t[base].median / t[k].median, baseline=base, repeats=cfg.repeats,
                                      command=current_command(), mar_pass_s=mar_t.median,
                                      head_share=t[k].median / (t[k].median + mar_t.median)))
    path = append_rows(args.out / "disa.jsonl", rows + head_rows)
    write_readme(args.out, rows, head_rows)
    for r in rows:
        print(f"{r['method']:<32} bs={r['batch_size']:<3} speedup={r['speedup']:.2f}x head_steps={r['head_steps']} "
              f"fid={r.get('fid')}")
    for r in head_rows:
        print(f"HEAD ONLY it={r['params']['num_iter']:<3} {r['method']:<32} bs={r['batch_size']} head-time reduction="
              f"{r['speedup']:.2f}x head share={r['head_share']:.2f}")
    print(f"rows appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
