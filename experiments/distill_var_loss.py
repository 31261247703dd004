"""DD1 for VAR: which loss / read-out split? (the official loss is unreleased). Trains the student three ways on
the same pairs of a random-weight stand-in teacher (runs without the zoo) and scores students and baselines:

* ``agree``: token agreement with the teacher map on held-out noise (the distillation target);
* ``nll``: the teacher's NLL (nats/token, its sampling distribution) of the sampled tokens — joint plausibility;
* ``marg_tv``: mean over positions of the TV distance between the sampled tokens' marginals and the held-out
  teacher-map tokens' — collapse shows here (teacher-vs-teacher gives the sampling-noise floor).

    python experiments/distill_var_loss.py --out runs/dd-var-loss --steps 800 --batch-size 32   # ~25 min, 2 CPUs
Writes OUT/results.jsonl (one row per method). Finished runs and pair shards are reused (resumable).
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from accel.distill.baselines_var import onestep_sample, skip_sample, teacher_nll, token_marginals
from accel.distill.data import load_pairs
from accel.train.recipes.dd_var import VARDistillRecipe
from accel.models.var import VARConfig, build_var
from accel.models.var_vqvae import VQVAEConfig
from accel.train.loop import fit, trained_model

PNS = (1, 2, 3, 4, 6)
KW = dict(cfg=1.5, top_k=0, top_p=0.0)


def teacher():
    vae, var = build_var(VARConfig(num_classes=10, depth=3, embed_dim=64, num_heads=4, patch_nums=PNS,
                                   drop_path_rate=0.0),
                         VQVAEConfig(vocab_size=32, z_channels=8, ch=32, ch_mult=(1, 1), num_res_blocks=1, v_patch_nums=PNS))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in (vae, var):
            for n, p in m.named_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "scale_mul" in n else 0.25))
                if "scale_mul" in n:
                    p.add_(math.log(4.0))
    return vae.eval(), var.eval()


@dataclass
class StandIn(VARDistillRecipe):
    name: str = "ablate-var-dd"
    teacher: str = "random-var"
    tokenizer: str = "random-var"
    cfg: float = 1.5
    top_k: int = 0
    top_p: float = 0.0
    solver_steps: int = 24
    holdout: int = 512
    warmup: int = 100
    eval_every: int = 0
    log_every: int = 100
    ckpt_every: int = 500

    def load_teacher(self):
        return teacher()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/dd-var-loss")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    StandIn(pairs=str(out / "pairs")).make_pairs(4096, shard_size=512, batch_size=256, progress=False)
    vae, var = teacher()
    d = load_pairs(out / "pairs")
    n = len(d["index"]) - StandIn.holdout
    lab, eps, toks = d["labels"][n:], d["noise"][n:], d["tokens"][n:].long()
    ref = F.one_hot(toks, var.V).float().mean(0)

    def stats(ids):
        m = F.one_hot(ids, var.V).float().mean(0)
        return {"nll": float(teacher_nll(var, vae, lab, ids, **KW).mean()),
                "marg_tv": float(0.5 * (m - ref).abs().sum(-1).mean())}

    g = torch.Generator().manual_seed(321)
    rows = {"teacher_map(heldout)": stats(toks), "teacher_sample": stats(skip_sample(var, vae, lab, 0, generator=g, **KW)[0])}
    marg = token_marginals(d["tokens"][:n], d["labels"][:n], 10, var.V)
    rows["onestep_marginal"] = stats(onestep_sample(marg, lab, g))
    for k in (1, 2, 4):
        rows[f"skip{k}_teacher"] = stats(skip_sample(var, vae, lab, k, generator=g, **KW)[0])
        rows[f"skip{k}_marginal"] = stats(skip_sample(var, vae, lab, k, generator=g, marginals=marg, **KW)[0])
    for tag, split in (("split", -1), ("ce_all", len(PNS)), ("mse_all", 0)):
        r = StandIn(pairs=str(out / "pairs"), steps=a.steps, batch_size=a.batch_size, split=split)
        run = out / f"{tag}-{a.steps}-{a.batch_size}"
        fit(r, run, seed=0, cpu=True, progress=False)
        m, _ = trained_model(r, run)
        t2, sp = r.timesteps(m)
        for nm, tl in (("1step", (0,)), ("2step", (0, t2))):
            ids = m.sample(lab, eps, tl, sp)[1]
            rows[f"dd-{tag}/{nm}"] = {**stats(ids), "agree": float((ids == toks).float().mean()), "split": sp, "t2": t2}
    with open(out / "results.jsonl", "w") as f:
        for k, v in rows.items():
            f.write(json.dumps({"experiment": "distill_var_loss", "method": k, "steps": a.steps,
                                "batch_size": a.batch_size, **v}) + "\n")
            print(json.dumps({"method": k, **{x: round(y, 4) if isinstance(y, float) else y for x, y in v.items()}}))


if __name__ == "__main__":
    main()
