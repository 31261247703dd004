"""Distilled Decoding (DD1, arXiv 2412.17153): teacher vs DD 1-step / 2-step vs the failing baselines.

    python experiments/distill.py --quick           # a few minutes on 2 CPU cores
    python experiments/distill.py                   # the table in results/distill/

LlamaGen rows (``llamagen-ar`` baseline): dd-1step, dd-2step, the teacher-involved dd-teacher-16-48, one-step
parallel sampling from per-token marginals and skip-16. VAR rows (``var-default`` baseline), when the zoo
student ``fmnist-var-dd`` is shipped: var-dd-1step/2step/teacher, onestep from marginals, skip-2. Every
method is timed interleaved with its baseline in one run (accel.harness.runner) and scored at fixed N.

After the table, the end-to-end time is split (same run, interleaved, medians): tokens only (teacher's AR
loop vs the student's passes) and the tokenizer decode that both pay, so the ceiling the decode puts on an
end-to-end speed-up is measured, not guessed.
"""
import argparse
from pathlib import Path

import torch

from accel.presets.zoo_models import load_reference
from accel.harness.plots import plot_all
from accel.presets import registry
from accel.harness.results import append_rows, current_command
from accel.harness.runner import RunConfig, run_group
from accel.harness.summary import summary_markdown
from accel.harness.timing import time_interleaved

LLAMAGEN = ("dd-1step", "dd-2step", "llamagen-onestep-marginal")
LLAMAGEN_FULL = LLAMAGEN + ("dd-teacher-16-48", "llamagen-skip-16")
VAR = ("var-dd-1step", "var-dd-2step", "var-onestep-marginal")
VAR_FULL = VAR + ("var-dd-teacher", "var-skip-2")


def llamagen_split(batch: int, repeats: int) -> list[str]:
    """Tokens-only and decode-only medians for the teacher and the DD student at one batch size."""
    from dataclasses import replace

    from accel import zoo
    from accel.distill.student_llamagen import default_t2
    from accel.models.llamagen_generate import SamplingConfig, generate
    from accel.zoo.sample import DEFAULTS

    teacher, vq, student = (zoo.load(n).eval() for n in ("fmnist-llamagen", "fmnist-llamagen-vq", "fmnist-llamagen-dd"))
    sc = replace(SamplingConfig(), **DEFAULTS.get("fmnist-llamagen", {}))
    cond = torch.arange(batch) % 10
    n, d, g = student.config.block_size, student.codes.size(1), student.config.grid_size
    ids = generate(teacher, cond, sc=sc, generator=torch.Generator().manual_seed(0))

    def noise(r):
        return torch.randn(batch, n, d, generator=torch.Generator().manual_seed(r))

    with torch.no_grad():
        t = time_interleaved({
            "teacher tokens": lambda r: generate(teacher, cond, sc=sc, generator=torch.Generator().manual_seed(r)),
            "dd-1step tokens": lambda r: student.sample(cond, noise(r), (0,)),
            "dd-2step tokens": lambda r: student.sample(cond, noise(r), (0, default_t2(n))),
            "VQ decode": lambda r: vq.decode_code(ids, hw=(g, g)),
        }, repeats=repeats, warmup=1)
    return _split_lines(batch, {k: v.median for k, v in t.items()}, "VQ decode")


def _split_lines(batch: int, med: dict[str, float], dec_key: str) -> list[str]:
    """Report lines from medians: ``teacher tokens``, ``{dd-1step,dd-2step} tokens`` and the shared decode."""
    dec = med[dec_key]
    out = [f"batch {batch}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in med.items())]
    for s in ("dd-1step", "dd-2step"):
        tok = med["teacher tokens"] / med[f"{s} tokens"]
        e2e = (med["teacher tokens"] + dec) / (med[f"{s} tokens"] + dec)
        out.append(f"batch {batch}: {s}: tokens-only speed-up {tok:.1f}x; with the shared decode {e2e:.1f}x; "
                   f"ceiling if the student cost nothing {(med['teacher tokens'] + dec) / dec:.1f}x")
    return out


def var_split(batch: int, repeats: int) -> list[str]:
    """The same split for VAR. The teacher's loop builds f_hat scale by scale as it samples, so its
    'tokens' time is its full sampling minus the image decoder (``fhat_to_img``, timed alone); the student's
    is its passes plus the f_hat build from its vectors (``embed_to_fhat``, which the teacher does inside its
    loop). The shared decode is ``fhat_to_img``."""
    from accel import zoo
    from accel.presets.distill import VAR_STUDENT as STUDENT
    from accel.distill.student_var import vectors_to_fhat
    from accel.train.recipes import get_recipe

    teacher, vae, student = (zoo.load(n).eval() for n in ("fmnist-var", "fmnist-var-vqvae", STUDENT))
    recipe = get_recipe(STUDENT)
    settings, (t2, read) = recipe.sampling(), recipe.timesteps(student)
    cond = torch.arange(batch) % 10
    f_hat = teacher.autoregressive_infer_cfg(vae, batch, cond, generator=torch.Generator().manual_seed(0),
                                             **settings).f_hat

    def noise(r):
        return torch.randn(batch, student.L_out, student.Cvae, generator=torch.Generator().manual_seed(r))

    def student_tokens(r, t_list):
        vec, _ = student.sample(cond, noise(r), t_list, split=read)
        return vectors_to_fhat(vae, vec, student.tpns)

    with torch.no_grad():
        t = time_interleaved({
            "teacher full": lambda r: teacher.autoregressive_infer_cfg(
                vae, batch, cond, generator=torch.Generator().manual_seed(r), **settings),
            "dd-1step tokens": lambda r: student_tokens(r, (0,)),
            "dd-2step tokens": lambda r: student_tokens(r, (0, t2)),
            "image decode": lambda r: vae.fhat_to_img(f_hat),
        }, repeats=repeats, warmup=1)
    med = {k: v.median for k, v in t.items()}
    med = {"teacher tokens": med.pop("teacher full") - med["image decode"], **med}
    return _split_lines(batch, med, "image decode")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("results/distill"))
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--n-images", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reg = registry()
    cfg = RunConfig(batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")), repeats=3 if args.quick else 7,
                    warmup=1, n_images=args.n_images if args.n_images is not None else (200 if args.quick else 1000),
                    quality_batch=64, memory=False)
    command, ref, rows, skipped = current_command(), load_reference(), [], []
    for model, base, names in (("fmnist-llamagen", "llamagen-ar", LLAMAGEN if args.quick else LLAMAGEN_FULL),
                               ("fmnist-var", "var-default", VAR if args.quick else VAR_FULL)):
        entries = [reg.get(n) for n in names]
        why = [w for e in [reg.get(base)] + entries if (w := e.why_unavailable(model))]
        if why:
            skipped.append(f"{model}: {why[0]}")
            continue
        rows += run_group(reg, reg.get(base), entries, model, cfg, reference=ref, command=command,
                          progress=lambda m: print(m, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    append_rows(args.out / "distill.jsonl", rows)
    plots = [str(p) for p in plot_all(rows, args.out)]
    text = summary_markdown(rows, command=command, plots=plots)
    if skipped:
        text += "\n## Not run\n\n" + "\n".join(f"- {s}" for s in skipped) + "\n"
    if not reg.get("dd-1step").why_unavailable("fmnist-llamagen"):
        split = [line for b in cfg.batch_sizes for line in llamagen_split(b, cfg.repeats)]
        text += "\n## LlamaGen time split (tokens vs VQ decode, interleaved, medians)\n\n"
        text += "\n".join(f"- {s}" for s in split) + "\n"
    if not reg.get("var-dd-1step").why_unavailable("fmnist-var"):
        split = [line for b in cfg.batch_sizes for line in var_split(b, cfg.repeats)]
        text += "\n## VAR time split (tokens vs image decode, interleaved, medians)\n\n"
        text += ("Teacher tokens = its full sampling minus the image decoder timed alone; student tokens include "
                 "the f_hat build.\n\n")
        text += "\n".join(f"- {s}" for s in split) + "\n"
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
