"""DiSA's motivation (arXiv 2505.20297, Sec. 3.1), measured on a MAR: per AR step, for fixed head conditions,

1. the variance of head samples (M samples per token from the same condition z, S DDPM steps);
2. the straightness of the denoising paths: |x_0 - x_T| / sum_k |x_{k+1} - x_k| (1 = a straight line);
3. the one-step predictability: RMS distance between the head's first x0 prediction (at the noisiest step)
   and the final sample, relative to the RMS of the sample;
4. the adaptive schedule's probe signal (``accel.annealing.disa.x0_spread``), to see whether it tracks (1).

    python experiments/disa_motivation.py                       # zoo fmnist-mar, results/disa/
    python experiments/disa_motivation.py --random --quick      # small RANDOM MAR: exercises the code only

The conditions come from real generations (``sample_tokens(record=True)``, one token per iteration by default,
as MAR's default), so step k's z is what the head saw at AR step k. Writes ``motivation.json`` and
``motivation.png`` (plots read the JSON only).
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from accel.annealing.disa import x0_spread
from accel.models.mar import sample_tokens


def load(args):
    if args.random:
        from accel.models.mar import MAR, MARConfig

        torch.manual_seed(0)
        cfg = MARConfig(img_size=32, vae_stride=4, vae_embed_dim=16, class_num=10, buffer_size=8, encoder_embed_dim=64,
                        encoder_depth=2, encoder_num_heads=4, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4,
                        diffloss_d=2, diffloss_w=64)
        return MAR(cfg).eval(), {}
    from accel import zoo
    from accel.zoo.sample import DEFAULTS

    return zoo.load(args.model), dict(DEFAULTS.get(args.model, DEFAULTS.get("fmnist-mar", {})))


@torch.no_grad()
def measure(model, z_rows, cfg_iter, use_cfg, samples, steps, gen):
    """Stats over ``samples`` head runs per conditional row of one AR step (rows [cond; uncond] under CFG)."""
    cond = z_rows[: len(z_rows) // 2] if use_cfg else z_rows
    n = len(cond)
    z_rep = torch.cat([cond.repeat(samples, 1), z_rows[n:].repeat(samples, 1)]) if use_cfg else cond.repeat(samples, 1)
    tr = model.head.sample_trajectory(z_rep, steps=steps, cfg=cfg_iter, generator=gen)
    keep = samples * n  # conditional half
    x = tr.samples[:, :keep]  # (S, M*n, C)
    x_T, final = tr.x_T[:keep], tr.sample[:keep]
    path = torch.cat([x_T[None], x])  # (S+1, M*n, C)
    arc = (path[1:] - path[:-1]).norm(dim=-1).sum(0)
    straight = ((final - x_T).norm(dim=-1) / arc.clamp_min(1e-12)).mean()
    first_x0 = tr.pred_xstart[0, :keep]
    one_step = ((first_x0 - final).pow(2).mean() / final.pow(2).mean().clamp_min(1e-12)).sqrt()
    var = final.reshape(samples, n, -1).var(0).mean()
    return float(var), float(straight), float(one_step)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fmnist-mar")
    ap.add_argument("--random", action="store_true", help="small random MAR (code exercise, not a measurement)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n-images", type=int, default=None)
    ap.add_argument("--samples", type=int, default=None, help="head samples per token and AR step")
    ap.add_argument("--steps", type=int, default=100, help="DDPM steps of the measuring head runs")
    ap.add_argument("--num-iter", type=int, default=None, help="AR iterations (default: one token per iteration)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("results/disa"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, defaults = load(args)
    L = model.cfg.seq_len
    num_iter = args.num_iter or L
    n_images = args.n_images or (4 if args.quick else 20)
    samples = args.samples or (16 if args.quick else 100)
    cfg, temperature = float(defaults.get("cfg", 1.0)), float(defaults.get("temperature", 1.0))
    gen = torch.Generator().manual_seed(args.seed)
    labels = torch.arange(n_images) % model.cfg.class_num
    run = sample_tokens(model, labels, generator=gen, num_iter=num_iter, cfg=cfg, temperature=temperature,
                        cfg_schedule=defaults.get("cfg_schedule", "linear"), record=True, progress=True)
    per_step = []
    use_cfg = cfg != 1.0
    for k, tr in enumerate(tqdm(run.trace, desc="measuring")):
        var, straight, one_step = measure(model, tr["z"], tr["cfg_iter"], use_cfg, samples, args.steps, gen)
        cond = tr["z"][: len(tr["z"]) // 2] if use_cfg else tr["z"]
        probe = float(x0_spread(model.head, cond, 950, 16, gen).mean())
        per_step.append(dict(step=k, tokens=run.stats["tokens_per_iter"][k], variance=var, straightness=straight,
                             one_step_rel_err=one_step, probe_signal=probe))
    meta = dict(model="random-mar (RANDOM weights: code exercise only)" if args.random else args.model,
                n_images=n_images, samples_per_token=samples, head_steps=args.steps, num_iter=num_iter, cfg=cfg,
                temperature=temperature, seed=args.seed, command=" ".join(["python", *sys.argv]))
    from scipy.stats import spearmanr

    rho = spearmanr([r["variance"] for r in per_step], [r["probe_signal"] for r in per_step])
    meta["spearman_variance_vs_probe"] = float(rho.statistic)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / ("motivation_random.json" if args.random else "motivation.json")
    path.write_text(json.dumps({"meta": meta, "per_step": per_step}, indent=1))
    png = plot(path)
    first, last = per_step[0], per_step[-1]
    print(f"variance {first['variance']:.4g} -> {last['variance']:.4g}; straightness {first['straightness']:.3f} -> "
          f"{last['straightness']:.3f}; one-step err {first['one_step_rel_err']:.3f} -> {last['one_step_rel_err']:.3f}")
    print(f"Spearman rank correlation of the probe signal with the variance: {meta['spearman_variance_vs_probe']:.3f}")
    print(f"wrote {path} and {png}")
    return 0


def plot(json_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(json_path).read_text())
    rows, meta = data["per_step"], data["meta"]
    k = [r["step"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for key, style, label in (("variance", "-", "variance of head samples"), ("probe_signal", "--", "adaptive probe signal")):
        ax[0].semilogy(k, [r[key] / rows[0][key] for r in rows], style, label=label)
    ax[0].set_title("variance for a fixed condition (/ step 0)")
    ax[0].legend(fontsize=8)
    ax[1].plot(k, [r["straightness"] for r in rows])
    ax[1].set_title("path straightness |x0-xT| / path length")
    ax[2].plot(k, [r["one_step_rel_err"] for r in rows])
    ax[2].set_title("one-step x0 prediction error (relative)")
    for a in ax:
        a.set_xlabel("AR step")
    fig.suptitle(f"{meta['model']}: {meta['n_images']} images x {meta['samples_per_token']} samples, "
                 f"{meta['head_steps']} DDPM steps, cfg {meta['cfg']}", fontsize=9)
    fig.tight_layout()
    out = Path(json_path).with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
