"""CCA (arXiv 2410.09347): guidance-free LlamaGen after Condition Contrastive Alignment vs the base with CFG.

    python experiments/cca.py --quick       # < 10 minutes on 2 CPU cores
    python experiments/cca.py               # N = 1000, the base's CFG-scale sweep and CCA + speculative decoding
    python experiments/cca.py --score-runs runs/cca-l50 runs/cca-b0.05-l100 --n-images 200   # sweep runs

Rows (all timed interleaved with ``llamagen-ar``, the base at its card's CFG scale 2.0, in one run; batch 1
latency and batch 64 throughput; FID[fmnist-cnn] with bootstrap intervals at fixed N, same seeds and
balanced classes for every method): ``llamagen-cca`` (the CCA fine-tune, guidance-free), ``llamagen-nocfg``
(the base, guidance-free: same cost, shows what the alignment buys), and without ``--quick`` the base at CFG
scales 1.5 and 3.0 and ``sd-cca-draft`` (exact speculative decoding of the CCA target). Writes
``cca.jsonl``, ``summary.md`` and ``tradeoff.png`` (FID vs class consistency: the CFG sweep beside CCA).
"""
import argparse
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from accel.harness.plots import plot_all
from accel.harness.results import append_rows, current_command, read_rows
from accel.harness.runner import RunConfig, run_group
from accel.harness.summary import summary_markdown
from accel.presets import registry
from accel.presets.cca import BASE
from accel.presets.zoo_models import load_reference

QUICK = ("llamagen-cca", "llamagen-nocfg")
FULL = QUICK + ("llamagen-cfg1.5", "llamagen-cfg3.0", "sd-cca-draft")


def plot_tradeoff(jsonl: Path, out: Path) -> Path:
    """FID vs class consistency of the latest run's rows (one point per method, from the JSONL only)."""
    rows = read_rows(jsonl)
    run = rows[-1]["run_id"]
    pts = {r["method"]: r for r in rows if r.get("run_id") == run and r.get("fid") is not None}
    fig = Figure(figsize=(5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, r in pts.items():
        s = (r.get("params") or {}).get("cfg_scale", 2.0)
        is_cca = "cca" in name
        ax.scatter(r["class_acc"], r["fid"], marker="*" if is_cca else "o", s=120 if is_cca else 40,
                   color="C3" if is_cca else "C0")
        ax.annotate(f"{name} (cfg {s})", (r["class_acc"], r["fid"]), fontsize=7)
    ax.set_xlabel("class consistency (fmnist-cnn accuracy)")
    ax.set_ylabel("FID[fmnist-cnn]")
    ax.set_title("CCA guidance-free vs the base's CFG sweep")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def score_runs(run_dirs: list[str], n_images: int, out: Path) -> list[dict]:
    """Guidance-free quality of ``accel train fmnist-llamagen-cca`` run folders (e.g. other beta/lambda, made with
    ``--set lam=...``), N balanced over classes, seed 0: the CCA side of the trade-off sweep -> sweep.jsonl."""
    import json

    from accel.harness.quality import evaluate
    from accel.zoo.cards import feature_reference
    from accel.zoo.sample import ZooSampler, class_grid_labels

    ref, labels, rows = feature_reference(), class_grid_labels(n_images // 10), []
    for d in run_dirs:
        state = torch.load(Path(d) / "last.pt", map_location="cpu", weights_only=False)
        s = ZooSampler(d, tokenizer="fmnist-llamagen-vq", cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0)
        g = torch.Generator().manual_seed(0)
        feats, logits = zip(*(ref.extract(s(c, generator=g)) for c in labels.split(100)))
        q = evaluate(torch.cat(feats), torch.cat(logits), labels, ref, seed=0, n_boot=50)
        rows.append({"run": str(d), "step": state["step"], "beta": state["recipe"]["beta"],
                     "lam": state["recipe"]["lam"], "cfg_scale": 1.0, "n_images": len(labels),
                     **{k: q[k] for k in ("fid", "fid_ci", "class_acc", "precision", "recall")}})
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sweep.jsonl", "a") as f:
        f.writelines(json.dumps({**r, "command": current_command()}) + "\n" for r in rows)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("results/cca"))
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--n-images", type=int, default=None)
    ap.add_argument("--methods", default="", help="comma-separated subset (the baseline always runs)")
    ap.add_argument("--threads", type=int, default=1)  # the shared 2-core box is oversubscribed
    ap.add_argument("--score-runs", nargs="+", default=None, help="only score these CCA run folders guidance-free")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.score_runs:
        for r in score_runs(args.score_runs, args.n_images or 200, args.out):
            print(r)
        return
    reg = registry()
    names = args.methods.split(",") if args.methods else (QUICK if args.quick else FULL)
    entries = [reg.get(n) for n in names]
    skipped = [f"{e.name}: {w}" for e in entries if (w := e.why_unavailable(BASE))]
    entries = [e for e in entries if not e.why_unavailable(BASE)]
    cfg = RunConfig(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")), repeats=3 if args.quick else 5,
                    warmup=1, n_images=args.n_images if args.n_images is not None else (300 if args.quick else 1000),
                    quality_batch=100, memory=False)
    command = current_command()
    rows = run_group(reg, reg.get("llamagen-ar"), entries, BASE, cfg, reference=load_reference(), command=command,
                     progress=lambda m: print(m, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = append_rows(args.out / "cca.jsonl", rows)
    plots = [str(p) for p in plot_all(rows, args.out)] + [str(plot_tradeoff(jsonl, args.out / "tradeoff.png"))]
    text = summary_markdown(rows, command=command, plots=plots)
    if skipped:
        text += "\n## Not run\n\n" + "\n".join(f"- {s}" for s in skipped) + "\n"
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
