"""CCA (arXiv 2410.09347): guidance-free LlamaGen and VAR after Condition Contrastive Alignment vs the base with CFG.

    python experiments/cca.py --quick       # < 10 minutes on 2 CPU cores (253 s measured under shared load)
    python experiments/cca.py               # N = 1000, plus the base's CFG scales 1.5/3.0 and CCA + SD / LANTERN
    python experiments/cca.py --cfg-scales 1,1.5,2,3 --score-zoo fmnist-llamagen-cca --score-runs runs/cca-sweep-l1 \
        --n-images 500                      # trade-off sweep points -> sweep.jsonl, tradeoff.png
    python experiments/cca.py --family var --cfg-scales 0,1.5,3 --score-zoo fmnist-var-cca --score-runs runs/... \
        --sample-set top_k=112 --sample-set top_p=0.96 --n-images 300   # VAR points -> sweep_var.jsonl, tradeoff_var.png
    python experiments/cca.py --cost-split --batch-sizes 64   # where a generate call's time goes -> cost_split.jsonl
    python experiments/cca.py --dd-pairs --batch-sizes 512 --quick --n-images 500   # CCA as the DD teacher -> dd_pairs.jsonl

Rows, per family, all timed interleaved with the family's baseline (``llamagen-ar``: CFG 2.0; ``var-default``: VAR
cfg 1.5; a doubled batch at every step) in one run; batch 1 latency and batch 64 throughput; FID[fmnist-cnn]
with bootstrap intervals at fixed N, same seeds and balanced classes for every method: ``llamagen-cca`` /
``var-cca`` (the CCA fine-tunes, guidance-free), ``llamagen-nocfg`` / ``var-nocfg`` (the bases guidance-free:
same cost, shows what the alignment buys), and without ``--quick`` the LlamaGen base at CFG 1.5 and 3.0,
``sd-cca-draft`` and ``lantern-cca-draft`` (exact / LANTERN speculative decoding of the CCA target with the
guidance-free zoo draft). Writes ``cca.jsonl``, ``summary.md`` and the speed/quality plots.
"""
import argparse
import json
import time
from pathlib import Path

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from accel import zoo
from accel.api.compile import compile as compile_method
from accel.distill.data import PairSpec, pair_noise
from accel.distill.flow import FlowSolver
from accel.distill.sequence import llamagen_pair_map
from accel.harness.plots import plot_all
from accel.harness.quality import evaluate
from accel.harness.registry import BuildContext
from accel.harness.results import append_rows, current_command, read_rows
from accel.harness.runner import RunConfig, new_run_id, run_group
from accel.harness.summary import summary_markdown
from accel.presets import registry
from accel.presets.cca import BASE, CCA as CCA_MODEL, VAR_BASE
from accel.models.llamagen_generate import SamplingConfig
from accel.presets.zoo_models import generator, load_reference
from accel.sampling import cfg_combine, logits_to_probs, sample_from
from accel.zoo.cards import feature_reference
from accel.zoo.sample import DEFAULTS, ZooSampler, class_grid_labels

# family -> (baseline entry, base model, --quick entries, full entries)
GROUPS = {
    "llamagen": ("llamagen-ar", BASE, ("llamagen-cca", "llamagen-nocfg"),
                 ("llamagen-cca", "llamagen-nocfg", "llamagen-cfg1.5", "llamagen-cfg3.0", "sd-cca-draft",
                  "lantern-cca-draft")),
    "var": ("var-default", VAR_BASE, ("var-cca", "var-nocfg"), ("var-cca", "var-nocfg")),
}


def tradeoff_series(rows: list[dict], n_images: int | None = None, min_steps: int = 0,
                    sampling: dict | None = None) -> tuple[list[dict], list[dict]]:
    """The two sides of the trade-off figure from sweep rows at one sample count (default: the last row's) and one
    set of sampling overrides (``sampling``, default none; rows without the field have none): the base's CFG sweep
    (rows with ``kind`` "cfg", by scale; the latest row per scale) and the CCA fine-tunes sampled guidance-free
    (``kind`` "cca", or older rows that carry ``lam``; the latest row per run), sorted by lambda; fine-tunes with
    fewer than ``min_steps`` training steps (unconverged probes) are left out."""
    n = n_images if n_images is not None else rows[-1]["n_images"]
    want = sampling or {}
    cfg, cca = {}, {}
    for r in rows:
        if r.get("n_images") != n or r.get("fid") is None or (r.get("sampling") or {}) != want:
            continue
        if r.get("kind", "cca" if "lam" in r else "cfg") == "cfg":
            cfg[float(r["cfg_scale"])] = r
        elif r.get("step") is None or r["step"] >= min_steps:
            cca[r.get("run", r.get("model"))] = r
    return [cfg[k] for k in sorted(cfg)], sorted(cca.values(), key=lambda r: (r["lam"], r["beta"]))


def plot_tradeoff(jsonl: Path, out: Path, n_images: int | None = None, min_steps: int = 0,
                  sampling: dict | None = None) -> Path:
    """FID vs class consistency (the paper's Fig. 4 trade-off): the base's CFG-scale sweep as a line, each CCA
    fine-tune (beta, lambda) guidance-free as a star; from one sweep JSONL only, one sample count and sampling."""
    cfg, cca = tradeoff_series(read_rows(jsonl), n_images, min_steps, sampling)
    var = any(r.get("family") == "var" for r in cfg + cca)
    fig = Figure(figsize=(5.5, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if cfg:
        ax.plot([r["class_acc"] for r in cfg], [r["fid"] for r in cfg], "o-", color="C0", label="base, CFG sweep")
        for r in cfg:
            ax.annotate(f"{'cfg' if var else 's'}={r['cfg_scale']:g}", (r["class_acc"], r["fid"]), fontsize=7)
    for i, r in enumerate(cca):
        ax.scatter(r["class_acc"], r["fid"], marker="*", s=120, color="C3", label="CCA, guidance-free" if i == 0 else None)
        ax.annotate(f"λ={r['lam']:g}, β={r['beta']:g}" + (", ramp" if r.get("scale_weights") == "ramp" else "")
                    + (f" ({r['step']} st)" if r.get("step") else ""),
                    (r["class_acc"], r["fid"]), fontsize=7)
    n = (cfg or cca)[0]["n_images"] if (cfg or cca) else n_images
    ax.set_xlabel("class consistency (fmnist-cnn accuracy)")
    ax.set_ylabel(f"FID[fmnist-cnn, N={n}]")
    extra = ", ".join(f"{k} {v}" for k, v in (sampling or {}).items())
    ax.set_title(f"{'VAR' if var else 'LlamaGen'}: CCA (λ, β) vs the base's CFG sweep" + (f" ({extra})" if extra else ""),
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


# family -> (base zoo model, the sampler's guidance setting, its guidance-free value, the sweep's JSONL / figure)
SWEEP = {"llamagen": (BASE, "cfg_scale", 1.0, "sweep.jsonl", "tradeoff.png"),
         "var": (VAR_BASE, "cfg", 0.0, "sweep_var.jsonl", "tradeoff_var.png")}


def sweep(family: str, cfg_scales: list[float], run_dirs: list[str], zoo_models: list[str], n_images: int,
          out: Path, sampling: dict | None = None) -> list[dict]:
    """Quality points of the trade-off figure, all at N balanced over classes and seed 0 (same labels and seed for
    every point): the family's base at each CFG scale (VAR: its ramped ``cfg``), CCA run folders (``accel train
    fmnist-{llamagen,var}-cca --set lam=...``) and zoo CCA models sampled guidance-free, all with the same
    ``sampling`` overrides (e.g. VAR's top_k / top_p) -> one row per point appended to the family's sweep JSONL."""
    base, key, free, jsonl, _ = SWEEP[family]
    sampling = dict(sampling or {})
    tag = {"family": family, **({"sampling": sampling} if sampling else {})}
    free_settings = {**({"temperature": 1.0, "top_k": 0, "top_p": 1.0} if family == "llamagen" else
                        {"top_k": 0, "top_p": 0.0}), **sampling, key: free}
    points = [({"kind": "cfg", "model": base, "cfg_scale": s}, lambda s=s: ZooSampler(base, **{**sampling, key: s}))
              for s in cfg_scales]
    for d in run_dirs:
        r = torch.load(Path(d) / "last.pt", map_location="cpu", weights_only=False)
        meta = {"kind": "cca", "run": str(d), "step": r["step"], "beta": r["recipe"]["beta"], "lam": r["recipe"]["lam"]}
        meta.update({k: r["recipe"][k] for k in ("scale_weights",) if k in r["recipe"]})
        points.append(({**meta, "cfg_scale": free},
                       lambda d=d: ZooSampler(d, tokenizer=zoo.TOKENIZER[base], **free_settings)))
    for m in zoo_models:
        info = zoo.load_with_info(m)[1]
        meta = {"kind": "cca", "model": m, "beta": info["recipe"]["beta"], "lam": info["recipe"]["lam"],
                "step": info["step"]}
        points.append(({**meta, "cfg_scale": free}, lambda m=m: ZooSampler(m, **free_settings)))
    ref, labels, rows = feature_reference(), class_grid_labels(n_images // 10), []
    out.mkdir(parents=True, exist_ok=True)
    for meta, make in points:
        sampler, g = make(), torch.Generator().manual_seed(0)
        feats, logits = zip(*(ref.extract(sampler(c, generator=g)) for c in labels.split(100)))
        q = evaluate(torch.cat(feats), torch.cat(logits), labels, ref, seed=0, n_boot=50)
        row = {**meta, **tag, "n_images": len(labels),
               **{k: q[k] for k in ("fid", "fid_ci", "class_acc", "precision", "recall")}}
        with open(out / jsonl, "a") as f:  # one line per point: a long sweep keeps what it finished
            f.write(json.dumps({**row, "command": current_command()}) + "\n")
        rows.append(row)
    return rows


@torch.no_grad()
def cost_split(batch: int, repeats: int, out: Path, compile_parts: str | None = None) -> list[dict]:
    """Where a generate call's time goes, for the base with CFG at its card scale (2B rows) and guidance-free
    (B rows), per family: ``tokens`` (the AR/next-scale loop) and ``decode`` (tokens -> images, shared by both);
    for LlamaGen also ``sample`` (probabilities + draw on (B, V) logits, 64 times, what the loop does besides
    the forwards; CFG adds one combine) and ``forward_step_s`` (one decode-step forward at B and at 2B rows:
    the batch scaling of the network itself). Medians of ``repeats`` interleaved calls, warm-up excluded ->
    cost_split.jsonl. ``compile_parts`` (``networks``, ``decoders``, ``all``): ``accel.compile`` both generators
    alike (compilation in the warm-up round; ``forward_step_s`` then times the compiled network). The speed-up a
    halved batch can give is (tokens_cfg + decode) / (tokens_free + decode)."""
    def clock(fn):
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    rows = []
    for family, base in (("llamagen", BASE), ("var", "fmnist-var")):
        ctx = BuildContext(model=base, device=torch.device("cpu"), dtype=torch.float32)
        gens = {"cfg": generator(ctx, cast=family == "llamagen"),
                "free": generator(ctx, cast=family == "llamagen", cfg_scale=1.0)}
        if compile_parts:
            for gen in gens.values():
                compile_method(gen, True, parts=compile_parts)
        cond = torch.arange(batch) % 10
        toks = gens["cfg"].tokens(cond, generator=torch.Generator().manual_seed(0))
        times = {k: {"tokens": [], "decode": []} for k in gens}
        logits, g = torch.randn(batch, 512), torch.Generator().manual_seed(0)
        samp = {"free": [], "cfg": []}
        for r in range(repeats + 1):  # the first round is warm-up
            for k, gen in gens.items():
                t_tok = clock(lambda: gen.tokens(cond, generator=torch.Generator().manual_seed(r)))
                t_dec = clock(lambda: gen.decode(toks))
                if family == "llamagen":
                    t_s = clock(lambda: [sample_from(logits_to_probs(cfg_combine(logits, logits, 2.0) if k == "cfg"
                                                                     else logits), g) for _ in range(toks.size(1))])
                    if r:
                        samp[k].append(t_s)
                if r:
                    times[k]["tokens"].append(t_tok)
                    times[k]["decode"].append(t_dec)
        med = {k: {c: float(torch.tensor(v).median()) for c, v in d.items()} for k, d in times.items()}
        for k in gens:
            row = {"family": family, "model": base, "guidance": k, "batch_size": batch, "repeats": repeats,
                   "tokens_s": med[k]["tokens"], "decode_s": med[k]["decode"],
                   "sample_s": float(torch.tensor(samp[k]).median()) if samp[k] else None,
                   "cfg_scale": gens[k].sampling.cfg_scale, "threads": torch.get_num_threads()}
            rows.append({**row, "compile": compile_parts} if compile_parts else row)
        if family == "llamagen":  # one decode-step forward (token 32 of 64) at B rows and at 2B rows
            net = gens["free"].model
            step = {}
            for r in range(repeats + 1):
                for R in (batch, 2 * batch):
                    cache = net.new_cache(R, 72)
                    x = torch.zeros(R, 1, dtype=torch.long)
                    net(None, torch.zeros(R, dtype=torch.long), input_pos=torch.arange(1), cache=cache, kv_len=1)
                    t = clock(lambda: [net(x, input_pos=torch.tensor([32]), cache=cache, kv_len=33) for _ in range(8)])
                    if r:
                        step.setdefault(R, []).append(t / 8)
            for k, R in (("free", batch), ("cfg", 2 * batch)):
                next(r for r in rows[-2:] if r["guidance"] == k)["forward_step_s"] = float(torch.tensor(step[R]).median())
        c, f = med["cfg"], med["free"]
        rows[-1]["speedup_total"] = (c["tokens"] + c["decode"]) / (f["tokens"] + f["decode"])
        rows[-1]["speedup_tokens"] = c["tokens"] / f["tokens"]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "cost_split.jsonl", "a") as fh:
        fh.writelines(json.dumps({**r, "command": current_command()}) + "\n" for r in rows)
    return rows


@torch.no_grad()
def dd_pair_rate(batch: int, flow_steps: int, repeats: int, n_fid: int, out: Path) -> list[dict]:
    """CCA as the Distilled Decoding teacher (issue item 4): the DD1 (noise -> tokens) pair map
    (``accel.distill.sequence.llamagen_pair_map``, as ``accel train distill-data`` runs it) with the guidance-free
    CCA LlamaGen against the base with CFG at its card scale (2B rows per step), same noise and labels, timed
    interleaved (medians of ``repeats`` calls after one warm-up) -> pairs/s and their ratio; then, when ``n_fid``,
    the FID of each teacher's own flow-mapped images (the DD1 map is the teacher's sampler with deterministic
    noise, so this is the quality the pairs carry) at N balanced over classes -> dd_pairs.jsonl."""
    vq, solver = zoo.load(zoo.TOKENIZER[BASE]).eval(), FlowSolver(flow_steps, "heun")
    maps = {}
    for name in (BASE, CCA_MODEL):
        sc = SamplingConfig(**DEFAULTS[name])
        maps[name] = (llamagen_pair_map(zoo.load(name).eval(), vq, sc, solver)[0], sc.cfg_scale)
    spec = PairSpec(max(batch, n_fid), batch, 64, vq.quantize.codebook().size(1), 10, 0)
    labels = torch.arange(batch) % 10
    noise = pair_noise(spec, torch.arange(batch))
    times = {k: [] for k in maps}
    for r in range(repeats + 1):  # the first round is warm-up
        for k, (fn, _) in maps.items():
            t = time.perf_counter()
            fn(noise, labels)
            if r:
                times[k].append(time.perf_counter() - t)
    med = {k: float(torch.tensor(v).median()) for k, v in times.items()}
    rows = [{"teacher": k, "cfg_scale": maps[k][1], "batch_size": batch, "flow_steps": flow_steps, "repeats": repeats,
             "seconds": med[k], "pairs_per_s": batch / med[k], "threads": torch.get_num_threads()} for k in maps]
    rows[-1]["rate_ratio"] = med[BASE] / med[CCA_MODEL]
    if n_fid:
        ref, fid_labels = feature_reference(), class_grid_labels(n_fid // 10)
        fid_noise = pair_noise(spec, torch.arange(len(fid_labels)))
        for row, (fn, _) in zip(rows, maps.values()):
            feats, logits = [], []
            for i in range(0, len(fid_labels), 100):
                codes = fn(fid_noise[i:i + 100], fid_labels[i:i + 100])
                g = int(codes.size(1) ** 0.5)  # square token grid
                img = ((vq.decode_code(codes, hw=(g, g)).float() + 1) / 2).clamp(0, 1)
                f, lg = ref.extract(img)
                feats.append(f)
                logits.append(lg)
            q = evaluate(torch.cat(feats), torch.cat(logits), fid_labels, ref, seed=0, n_boot=50)
            row.update(n_images=len(fid_labels), **{k: q[k] for k in ("fid", "fid_ci", "class_acc", "precision", "recall")})
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "dd_pairs.jsonl", "a") as fh:
        fh.writelines(json.dumps({**r, "command": current_command()}) + "\n" for r in rows)
    return rows


def _setting(kv: str) -> tuple[str, object]:
    key, _, value = kv.partition("=")
    if not key or not value:
        raise SystemExit(f"--sample-set {kv!r}: expected KEY=JSON, e.g. --sample-set top_p=0.96")
    return key, json.loads(value)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("results/cca"))
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--n-images", type=int, default=None)
    ap.add_argument("--family", choices=("all", *GROUPS), default="all")
    ap.add_argument("--methods", default="", help="comma-separated subset (the baseline always runs)")
    ap.add_argument("--threads", type=int, default=1)  # the shared 2-core box is oversubscribed
    ap.add_argument("--score-runs", nargs="+", default=[], help="sweep: CCA run folders, scored guidance-free")
    ap.add_argument("--score-zoo", nargs="+", default=[], help="sweep: zoo CCA models, scored guidance-free")
    ap.add_argument("--cfg-scales", default="", help="sweep: the base's CFG scales, e.g. 1,1.5,2,3 (VAR: its cfg)")
    ap.add_argument("--sample-set", action="append", default=[], metavar="KEY=JSON",
                    help="sweep: a sampling override for every point, e.g. --sample-set top_k=112 (VAR)")
    ap.add_argument("--min-steps", type=int, default=100,
                    help="sweep figure: leave out CCA runs trained fewer steps (unconverged probes)")
    ap.add_argument("--cost-split", action="store_true", help="only split a generate call's time (batch: the largest)")
    ap.add_argument("--compile", default="", choices=("", "networks", "decoders", "all"),
                    help="--cost-split: accel.compile these parts of both generators alike")
    ap.add_argument("--dd-pairs", action="store_true",
                    help="only: DD1 pair-generation rate, CCA vs CFG teacher (batch: the largest), and with "
                         "--n-images each teacher's flow-mapped FID")
    ap.add_argument("--flow-steps", type=int, default=16, help="--dd-pairs: Heun steps per token (shipped DD: 16)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.cost_split:
        for r in cost_split(max(int(b) for b in args.batch_sizes.split(",")), 3 if args.quick else 5, args.out,
                            args.compile or None):
            print(r)
        return
    if args.dd_pairs:
        for r in dd_pair_rate(max(int(b) for b in args.batch_sizes.split(",")), args.flow_steps,
                              3 if args.quick else 5, args.n_images or 0, args.out):
            print(r, flush=True)
        return
    if args.score_runs or args.score_zoo or args.cfg_scales:
        family = "llamagen" if args.family == "all" else args.family
        scales = [float(x) for x in args.cfg_scales.split(",")] if args.cfg_scales else []
        sampling = dict(_setting(kv) for kv in args.sample_set)
        for r in sweep(family, scales, args.score_runs, args.score_zoo, args.n_images or 200, args.out, sampling):
            print(r, flush=True)
        _, _, _, jsonl, png = SWEEP[family]
        print(plot_tradeoff(args.out / jsonl, args.out / png, args.n_images or 200, args.min_steps))
        return
    reg = registry()
    cfg = RunConfig(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")), repeats=3 if args.quick else 5,
                    warmup=1, n_images=args.n_images if args.n_images is not None else (300 if args.quick else 1000),
                    quality_batch=100, memory=False)
    command, run_id, ref = current_command(), new_run_id(), load_reference()
    rows, skipped = [], []
    for family in (GROUPS if args.family == "all" else [args.family]):
        baseline, base, quick, full = GROUPS[family]
        names = [n for n in args.methods.split(",") if reg.get(n).family == family] if args.methods else \
            (quick if args.quick else full)
        if not names:
            continue
        entries = [reg.get(n) for n in names]
        skipped += [f"{e.name}: {w}" for e in entries if (w := e.why_unavailable(base))]
        entries = [e for e in entries if not e.why_unavailable(base)]
        rows += run_group(reg, reg.get(baseline), entries, base, cfg, reference=ref, command=command, run_id=run_id,
                          progress=lambda m: print(m, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    append_rows(args.out / "cca.jsonl", rows)
    plots = [str(p) for p in plot_all(rows, args.out)]
    text = summary_markdown(rows, command=command, plots=plots)
    if skipped:
        text += "\n## Not run\n\n" + "\n".join(f"- {s}" for s in skipped) + "\n"
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
