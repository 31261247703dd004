"""Distilled Decoding (DD1, arXiv 2412.17153): teacher vs DD 1-step / 2-step vs the failing baselines.

    python experiments/distill.py --quick           # batch 1, N=200: under 10 minutes on 2 CPU cores
    python experiments/distill.py                   # the table in results/distill/

LlamaGen rows (``llamagen-ar`` baseline): dd-1step, dd-2step, the teacher-involved dd-teacher-16-48, one-step
parallel sampling from per-token marginals and skip-16. VAR rows (``var-default`` baseline), when the zoo
student ``fmnist-var-dd`` is shipped: var-dd-1step/2step/teacher, onestep from marginals, skip-2, and
var-dd4-1step/2step when the smaller (depth-4) ``fmnist-var-dd4`` is shipped too. Every method is timed
interleaved with its baseline in one run (accel.harness.runner) and scored at fixed N. The VAR table of
issue #19 (results/distill-var/):

    python experiments/distill.py --families var --batch-sizes 1 --compile decoders --out results/distill-var \
        --var-methods var-dd-1step,var-dd-2step,var-dd4-1step,var-dd4-2step,var-onestep-marginal

After the table, the end-to-end time is split (same run, interleaved, medians): tokens only (teacher's AR
loop vs the student's passes) and the tokenizer decode that both pay, so the ceiling the decode puts on an
end-to-end speed-up is measured, not guessed. Last, the issue #19 goals are checked against this run's
figures (``goal_lines``). Two steps vs one is also checked on ``--steps-n`` images (default 5000; students only, so
cheap), where the FID intervals are about half as wide as at the table's N=1000, next to the ceiling of a second
step (the one-step prefix continued by the teacher map; ``steps_lines``). That check alone:

    python experiments/distill.py --steps-only --out results/distill/steps

``--compile decoders,all`` (issue #19 item 4, the shared fast decode): after the eager rows, speed-only batch-1
rows and time splits of the same methods with ``accel.compile(..., parts=P)`` applied to every method of the
group, baseline included (``RunConfig.compile_parts``): ``decoders`` compiles only the tokenizers' image
decoders (the decode teacher and student both pay), ``all`` also the networks (the teacher's Transformer as
much as the student's layers), ``networks`` the networks only. Compiled decoders give the eager images up to
float rounding (tests/test_compile.py), so these rows carry no FID of their own. ``--families llamagen``
runs one family.

    python experiments/distill.py --batch-sizes 1 --families llamagen --compile decoders,all
"""
import argparse
import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.profiler import profile

from accel import zoo
from accel.api.compile import PARTS
from accel.presets.zoo_models import load_reference
from accel.harness.plots import plot_all
from accel.presets import registry
from accel.presets.distill import STUDENT, STUDENT4
from accel.harness.results import append_rows, current_command
from accel.harness.runner import RunConfig, run_group
from accel.harness.summary import summary_markdown
from accel.harness.timing import time_interleaved

LLAMAGEN = ("dd-1step", "dd-2step", "dd4-1step", "dd4-2step", "llamagen-onestep-marginal")
LLAMAGEN_FULL = LLAMAGEN + ("dd-1step-split20", "dd-teacher-16-48", "llamagen-skip-16")
VAR = ("var-dd-1step", "var-dd-2step", "var-dd4-1step", "var-dd4-2step", "var-onestep-marginal")
VAR_FULL = VAR + ("var-dd-teacher", "var-skip-2")
# LlamaGen students by the prefix of their rows (dd-1step, dd4-1step, ...)
LLAMAGEN_STUDENTS = {"dd": STUDENT, "dd4": STUDENT4}
LLAMAGEN_WHO = {"dd": "LlamaGen (8-layer student)", "dd4": "LlamaGen (4-layer student)"}  # goal-line labels
QUALITY_BATCH = 64  # chunk of the quality pass (its seeds), shared by the table and the two-steps check


def llamagen_split(batch: int, repeats: int, parts: str | None = None) -> tuple[list[str], dict[str, float]]:
    """Tokens-only and decode-only medians for the teacher and every shipped DD student at one batch size: report
    lines and each student's one-step tokens-only speed-up (by row prefix, ``dd`` / ``dd4``). ``parts``:
    ``accel.compile`` those parts of copies of the teacher, students and VQ alike (compilation runs before timing)
    and time every compiled call interleaved with its eager original, so the compiled split and the compiled/eager
    ratio of each part come from the same rounds."""
    from accel.api.compile import compile as compile_parts, compiled_parts
    from accel.distill.student_llamagen import default_t2
    from accel.models.llamagen_generate import SamplingConfig, generate
    from accel.zoo.sample import DEFAULTS

    students = {tag: n for tag, n in LLAMAGEN_STUDENTS.items() if zoo.is_available(n)}
    eager = {n: zoo.load(n).eval() for n in ("fmnist-llamagen", "fmnist-llamagen-vq", *students.values())}
    sc = replace(SamplingConfig(), **DEFAULTS.get("fmnist-llamagen", {}))
    cond = torch.arange(batch) % 10
    teacher = eager["fmnist-llamagen"]
    n, g = teacher.config.block_size, teacher.config.grid_size
    ids = generate(teacher, cond, sc=sc, generator=torch.Generator().manual_seed(0))
    owner = {"teacher tokens": "fmnist-llamagen", "VQ decode": "fmnist-llamagen-vq"}
    owner.update({f"{tag}-{k}step tokens": name for tag, name in students.items() for k in (1, 2)})

    def noise(r, student):
        return torch.randn(batch, n, student.codes.size(1), generator=torch.Generator().manual_seed(r))

    def split_calls(m):
        calls = {"teacher tokens": lambda r: generate(m["fmnist-llamagen"], cond, sc=sc,
                                                      generator=torch.Generator().manual_seed(r))}
        for tag, name in students.items():
            for k, t_list in ((1, (0,)), (2, (0, default_t2(n)))):
                calls[f"{tag}-{k}step tokens"] = lambda r, st=m[name], tl=t_list: st.sample(cond, noise(r, st), tl)
        calls["VQ decode"] = lambda r: m["fmnist-llamagen-vq"].decode_code(ids, hw=(g, g))
        return calls

    calls = split_calls(eager)
    compiled = {}
    if parts:
        fast = {k: compile_parts(copy.deepcopy(m), parts=parts) if compiled_parts(m, parts) else m
                for k, m in eager.items()}
        fast_calls = split_calls(fast)
        compiled = {k + " compiled": fast_calls[k] for k in calls if fast[owner[k]] is not eager[owner[k]]}
        with torch.inference_mode():
            for c in compiled.values():  # compilation, before any timed round
                c(0)
    with torch.inference_mode():
        t = time_interleaved({**calls, **compiled}, repeats=repeats, warmup=1)
    med = {k: v.median for k, v in t.items()}
    lines = []
    if parts:
        ratios = ", ".join(f"{k} {med[k] / med[k + ' compiled']:.2f}x" for k in calls if k + " compiled" in med)
        lines.append(f"batch {batch}: compiled ({parts}) / eager, same rounds: {ratios}")
        med = {k: med.get(k + " compiled", med[k]) for k in calls}
    tok = {}
    for tag in students:
        sub = {k.replace(f"{tag}-", "dd-"): v for k, v in med.items()
               if k in ("teacher tokens", "VQ decode", f"{tag}-1step tokens", f"{tag}-2step tokens")}
        lines += [f"[{tag}] {line}" for line in _split_lines(batch, sub, "VQ decode")]
        tok[tag] = med["teacher tokens"] / med[f"{tag}-1step tokens"]
    return lines, tok


# op families of the profile (torch.profiler self times); everything else is counted as "other"
OP_GROUPS = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm"),
             "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",),
             "convolution": ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward"),
             "norm": ("aten::native_group_norm", "aten::native_layer_norm")}
FLOP_OPS = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm"), "convolution": ("aten::conv2d",)}  # counted by the profiler


def profile_lines(calls: int = 20) -> list[str]:
    """Where one batch-1 student pass (one step, snapped read-out) and one VQ decode spend their time: torch
    profiler self times per op family over ``calls`` calls (after a warm-up), the matmul/conv FLOP rate from the
    profiler's FLOP counts, and the number of op calls per pass (the per-op overhead both sides pay)."""
    student, vq = (zoo.load(n).eval() for n in ("fmnist-llamagen-dd", "fmnist-llamagen-vq"))
    n, d, g = student.config.block_size, student.codes.size(1), student.config.grid_size
    cond, noise = torch.tensor([3]), torch.randn(1, n, d, generator=torch.Generator().manual_seed(0))
    ids = student.sample(cond, noise, (0,))
    out = []
    for what, fn in (("dd-1step student pass", lambda: student.sample(cond, noise, (0,))),
                     ("VQ decode", lambda: vq.decode_code(ids, hw=(g, g)))):
        with torch.inference_mode():
            fn()
            with profile(with_flops=True) as prof:  # FLOP counts (recording shapes slows the ops: not timed)
                fn()
            flops = {e.key: e.flops for e in prof.key_averages()}
            with profile() as prof:
                for _ in range(calls):
                    fn()
        ev = [e for e in prof.key_averages() if e.key.startswith("aten::")]
        total = sum(e.self_cpu_time_total for e in ev)  # microseconds over all calls
        parts, grouped = [], 0.0
        for k, names in OP_GROUPS.items():
            t = sum(e.self_cpu_time_total for e in ev if e.key in names)
            fl = sum(flops.get(name, 0) for name in FLOP_OPS.get(k, ()))  # per call
            grouped += t
            if t:
                rate = f", {fl * calls / t / 1e3:.0f} GFLOP/s" if fl else ""
                parts.append(f"{k} {t / total:.0%} ({t / calls / 1e3:.2f} ms{rate})")
        rest = total - grouped
        out.append(f"{what}: {total / calls / 1e3:.2f} ms of aten self time per call (profiled, {calls} calls): "
                   + ", ".join(parts) + f", other ops {rest / total:.0%} ({rest / calls / 1e3:.2f} ms)")
    return out


def goal_lines(rows: list[dict], tok_speedup: dict[str, float]) -> list[str]:
    """The issue #19 'done when' figures from this run's batch-1 rows: met / missed, with the numbers.
    ``tok_speedup``: each LlamaGen student's one-step tokens-only speed-up by row prefix (``llamagen_split``)."""
    by = {r["method"]: r for r in rows if r["batch_size"] == 1 and r.get("compile") is None}
    out = []

    def fid(name):
        r = by.get(name)
        return (r["fid"], r["fid_ci"]) if r and r.get("fid") is not None else (None, None)

    def mark(ok):
        return "met" if ok else "MISSED"

    for tag, who in LLAMAGEN_WHO.items():
        if f"{tag}-1step" not in by:
            continue
        f_t, _ = fid("llamagen-ar")
        f1, ci1 = fid(f"{tag}-1step")
        f2, ci2 = fid(f"{tag}-2step")
        e2e = by[f"{tag}-1step"]["speedup"]
        if tag in tok_speedup:
            out.append(f"{who} one step, tokens only: {tok_speedup[tag]:.1f}x (goal >= 30x): "
                       f"{mark(tok_speedup[tag] >= 30)}")
        out.append(f"{who} one step, end to end, batch 1: {e2e:.1f}x (goal >= 20x): {mark(e2e >= 20)}")
        if f_t is not None and f1 is not None:
            out.append(f"{who} one-step FID {f1:.2f} {_ci(ci1)} vs teacher {f_t:.2f}: ratio {f1 / f_t:.2f} "
                       f"(goal <= 1.5): {mark(f1 <= 1.5 * f_t)}")
        if f1 is not None and f2 is not None:
            out.append(f"{who} two-step FID {f2:.2f} {_ci(ci2)} vs one-step {f1:.2f} {_ci(ci1)}: better beyond "
                       f"the intervals: {mark(ci2[1] < ci1[0])}")
    for method, who in (("var-dd-1step", "VAR (depth-6 student)"), ("var-dd4-1step", "VAR (depth-4 student)")):
        if method not in by:
            continue
        f_t, _ = fid("var-default")
        f1, ci1 = fid(method)
        fn, cin = fid("var-onestep-marginal")
        e2e = by[method]["speedup"]
        out.append(f"{who} one step, end to end, batch 1: {e2e:.2f}x (goal >= 3x): {mark(e2e >= 3)}")
        if f_t is not None and f1 is not None:
            out.append(f"{who} one-step FID {f1:.2f} {_ci(ci1)} vs teacher {f_t:.2f}: ratio {f1 / f_t:.2f} (goal <= 1.5): "
                       f"{mark(f1 <= 1.5 * f_t)}")
        if f_t is not None and f1 is not None and fn is not None:
            gap = cin[0] - ci1[1]
            out.append(f"{who} one-step vs naive one-step FID {fn:.2f} {_ci(cin)}: intervals {gap:.2f} apart (goal > "
                       f"half the teacher-naive gap, {(fn - f_t) / 2:.2f}): {mark(gap > (fn - f_t) / 2)}")
    return out


class PrefixTeacherMap:
    """The ceiling of a second student step (a diagnostic, not a method to ship): the student's one-step tokens
    before ``t2`` kept, the rest the teacher's DD1 map continued from them with the same noise
    (``llamagen_noise_map(prefix=...)``), i.e. what a second step that reproduced the teacher map exactly would
    give. Noise is drawn as ``DistilledLlamaGen`` draws it, so on the same seeds the prefix is the one-step row's."""

    def __init__(self, method, teacher, sc, flow_steps: int = 16):
        from accel.distill.flow import FlowSolver

        self.m, self.teacher, self.sc, self.solver = method, teacher, sc, FlowSolver(flow_steps, "heun")
        self.name = f"{method.name}-prefix-teacher-map"

    @torch.inference_mode()
    def generate(self, cond, *, generator):
        from accel.distill.sequence import llamagen_noise_map

        s = self.m.student
        noise = torch.randn(cond.size(0), s.config.block_size, s.codes.size(1), generator=generator)
        prefix = s.sample(cond, noise, (0,))[:, :self.m.t2]
        ids = llamagen_noise_map(self.teacher, s.codes, cond, noise, self.sc, self.solver, prefix=prefix)
        return self.m._images(ids, {"tokens": ids})


def steps_lines(reg, ref, n_images: int, chunk: int, seed: int = 0, students=tuple(LLAMAGEN_WHO),
                ceiling: bool = True) -> list[str]:
    """Two steps vs one at a larger N than the table's (issue #19: "two steps better than one step in FID beyond
    the intervals"): each shipped LlamaGen student's one- and two-step rows scored on ``n_images`` images by the
    harness's quality pass (same seeds, chunks and bootstrap as the table, so its first images are the table's;
    the intervals narrow as 1/sqrt(N)), the paired bootstrap interval of their difference (row i of both rows
    comes from the same seed and the same first-step noise), and, with ``ceiling``, the ceiling of the second
    step (``PrefixTeacherMap``, the slow part: the teacher's flow map per token)."""
    from accel.harness.distributed import generate_indexed
    from accel.harness.metrics import paired_difference_interval
    from accel.harness.quality import evaluate, fid_statistic
    from accel.harness.registry import BuildContext
    from accel.models.llamagen_generate import SamplingConfig
    from accel.zoo.sample import DEFAULTS

    ctx = BuildContext(model="fmnist-llamagen", device=torch.device("cpu"), dtype=torch.float32)
    teacher = zoo.load("fmnist-llamagen").eval()
    sc = replace(SamplingConfig(), **DEFAULTS.get("fmnist-llamagen", {}))
    out = []
    for tag in students:
        if reg.get(f"{tag}-1step").why_unavailable("fmnist-llamagen"):
            continue
        methods = {k: reg.get(f"{tag}-{k}step").build(ctx) for k in (1, 2)}
        if ceiling:
            methods["ceiling"] = PrefixTeacherMap(methods[2], teacher, sc)
        fid, feats = {}, {}
        for k, m in methods.items():
            s = generate_indexed(m, n_images, chunk=chunk, seed=seed, num_classes=10, extract=ref.extract)
            r = evaluate(s.feats, s.logits, s.cond, ref, seed=seed)
            fid[k], feats[k] = (f"{r['fid']:.2f} {_ci(r['fid_ci'])}", r["fid_ci"]), s.feats.double().numpy()
        d, lo, hi = paired_difference_interval(fid_statistic(ref), feats[2], feats[1],
                                               rng=np.random.default_rng(seed), n_boot=100)
        line = (f"{LLAMAGEN_WHO[tag]} at N={n_images}: two-step FID {fid[2][0]} vs one-step {fid[1][0]}: better "
                f"beyond the intervals: {'met' if fid[2][1][1] < fid[1][1][0] else 'MISSED'}; paired difference "
                f"(two - one, same seeds) {d:+.3f} {_ci((lo, hi))}")
        if ceiling:
            line += (f"; a second step that reproduced the teacher map after the one-step prefix "
                     f"(t2 = {methods[2].t2}) would give {fid['ceiling'][0]}")
        out.append(line)
    return out


def _ci(ci) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _split_lines(batch: int, med: dict[str, float], dec_key: str) -> list[str]:
    """Report lines from medians: ``teacher tokens``, ``{dd-1step,dd-2step} tokens`` and the shared decode
    ``dec_key`` (both sides pay it)."""
    dec = med[dec_key]
    out = [f"batch {batch}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in med.items())]
    for s in ("dd-1step", "dd-2step"):
        tok = med["teacher tokens"] / med[f"{s} tokens"]
        e2e = (med["teacher tokens"] + dec) / (med[f"{s} tokens"] + dec)
        out.append(f"batch {batch}: {s}: tokens-only speed-up {tok:.1f}x; with the shared {dec_key} {e2e:.1f}x; "
                   f"ceiling if the student cost nothing {(med['teacher tokens'] + dec) / dec:.1f}x")
    return out


def var_split(batch: int, repeats: int, parts: str | None = None) -> list[str]:
    """The same split for VAR. The teacher's loop builds f_hat scale by scale as it samples, so its
    'tokens' time is its full sampling minus the image decoder (``fhat_to_img``, timed alone); a student's
    is its passes plus the f_hat build from its vectors (``embed_to_fhat``, which the teacher does inside its
    loop). The shared decode is ``fhat_to_img``. Every shipped student (depth 6 ``dd``, depth 4 ``dd4``) is
    split in the same rounds. ``parts``: also time the decode of an ``accel.compile(parts=...)`` copy of the
    VQVAE (interleaved with the eager one) and give the split with it."""
    from accel import zoo
    from accel.api.compile import compile as compile_parts, compiled_parts
    from accel.presets.distill import VAR_STUDENT, VAR_STUDENT4
    from accel.distill.student_var import vectors_to_fhat
    from accel.train.recipes import get_recipe

    teacher, vae = (zoo.load(n).eval() for n in ("fmnist-var", "fmnist-var-vqvae"))
    students = {tag: zoo.load(n).eval() for tag, n in (("dd", VAR_STUDENT), ("dd4", VAR_STUDENT4))
                if zoo.is_available(n)}
    settings = get_recipe(VAR_STUDENT).sampling()
    cond = torch.arange(batch) % 10
    f_hat = teacher.autoregressive_infer_cfg(vae, batch, cond, generator=torch.Generator().manual_seed(0),
                                             **settings).f_hat

    def student_tokens(student, r, t_list, read):
        noise = torch.randn(batch, student.L_out, student.Cvae, generator=torch.Generator().manual_seed(r))
        vec, _ = student.sample(cond, noise, t_list, split=read)
        return vectors_to_fhat(vae, vec, student.tpns)

    calls = {"teacher full": lambda r: teacher.autoregressive_infer_cfg(
        vae, batch, cond, generator=torch.Generator().manual_seed(r), **settings)}
    for tag, st in students.items():
        t2, read = get_recipe({"dd": VAR_STUDENT, "dd4": VAR_STUDENT4}[tag]).timesteps(st)
        for steps, tl in (("1step", (0,)), ("2step", (0, t2))):
            calls[f"{tag}-{steps} tokens"] = lambda r, st=st, tl=tl, read=read: student_tokens(st, r, tl, read)
    calls["image decode"] = lambda r: vae.fhat_to_img(f_hat)
    fast = compile_parts(copy.deepcopy(vae), parts=parts) if parts and compiled_parts(vae, parts) else None
    with torch.inference_mode():
        if fast is not None:
            calls["image decode compiled"] = lambda r: fast.fhat_to_img(f_hat)
            calls["image decode compiled"](0)  # compilation, before any timed round
        t = time_interleaved(calls, repeats=repeats, warmup=1)
    med = {k: v.median for k, v in t.items()}
    med = {"teacher tokens": med.pop("teacher full") - med["image decode"], **med}
    lines = []
    for dec in ("image decode",) + (("image decode compiled",) if fast is not None else ()):
        for tag in students:
            sub = {k: med[k] for k in ("teacher tokens", f"{tag}-1step tokens", f"{tag}-2step tokens", dec)}
            sub = {k.replace(f"{tag}-", "dd-"): v for k, v in sub.items()}
            lines += [f"[{tag}, {dec}] {line}" for line in _split_lines(batch, sub, dec)]
    return lines


def compiled_part(reg, cfg: RunConfig, groups, parts: str, command: str) -> tuple[list[dict], list[str]]:
    """Speed-only batch-1 rows with ``parts`` compiled in every method of a group (baseline included), and the
    LlamaGen time split compiled alike; returns (rows, report lines)."""
    ccfg = replace(cfg, batch_sizes=(1,), n_images=0, compile="default", compile_parts=parts)
    rows = []
    for model, base, names in groups:
        rows += run_group(reg, reg.get(base), [reg.get(n) for n in names], model, ccfg, command=command,
                          progress=lambda m: print(m, flush=True))
    lines = [f"{r['method']}: {r['latency_s'] * 1e3:.1f} ms, {r['speedup']:.2f}x vs {r['baseline']} "
             f"(first call incl. compile {r['compile_s']:.0f} s)" for r in rows]
    if any(model == "fmnist-llamagen" for model, _, _ in groups):
        lines += llamagen_split(1, cfg.repeats, parts)[0]
    if any(model == "fmnist-var" for model, _, _ in groups):
        lines += var_split(1, cfg.repeats, parts)
    return rows, lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("results/distill"))
    ap.add_argument("--batch-sizes", default=None, help="default: 1 with --quick (the goals' batch), else 1,64")
    ap.add_argument("--n-images", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per method (default: 3 quick, else 7)")
    ap.add_argument("--var-methods", default=None, help="comma list of VAR methods to run instead of the default set")
    ap.add_argument("--families", default="llamagen,var", help="comma list of llamagen, var")
    ap.add_argument("--profile", action="store_true", help="only the profile of the student pass and the VQ decode")
    ap.add_argument("--steps-n", type=int, default=None, help="N of the two-steps-vs-one check of the LlamaGen "
                    "students (default: 0 = none with --quick, else 5000)")
    ap.add_argument("--steps-only", action="store_true", help="only the two-steps-vs-one check (--steps-n images, "
                    "default 5000), into OUT/summary.md")
    ap.add_argument("--steps-students", default=",".join(LLAMAGEN_WHO),
                    help=f"comma list of the students in the two-steps check (default: all: {','.join(LLAMAGEN_WHO)})")
    ap.add_argument("--no-steps-ceiling", action="store_true", help="skip the ceiling row of the two-steps check "
                    "(the teacher's flow map per token: most of its time)")
    ap.add_argument("--compile", default="", help="comma list of accel.compile parts (decoders, networks, all): "
                    "speed-only batch-1 rows and splits with them compiled, baselines alike, after the eager rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    families = [f for f in args.families.split(",") if f]
    compile_parts = [c for c in args.compile.split(",") if c]
    if bad := sorted(set(families) - {"llamagen", "var"}):
        raise SystemExit(f"--families: unknown {bad}; valid: llamagen, var")
    if bad := sorted(set(compile_parts) - set(PARTS)):
        raise SystemExit(f"--compile: unknown {bad}; valid: {', '.join(PARTS)}")
    steps_kw = {"students": tuple(t for t in args.steps_students.split(",") if t),
                "ceiling": not args.no_steps_ceiling}
    if bad := sorted(set(steps_kw["students"]) - set(LLAMAGEN_WHO)):  # checked before any long run starts
        raise SystemExit(f"--steps-students: unknown {bad}; valid: {', '.join(LLAMAGEN_WHO)}")
    if args.profile:
        print("\n".join(profile_lines()))
        return
    reg = registry()
    if args.steps_only:
        text = ("# Two steps vs one (issue #19), LlamaGen students\n\n" + f"`{current_command()}`\n\n" + "\n".join(
            f"- {g}" for g in steps_lines(reg, load_reference(), args.steps_n or 5000, QUALITY_BATCH, **steps_kw))
            + "\n")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.md").write_text(text)
        print(text)
        return
    sizes = args.batch_sizes or ("1" if args.quick else "1,64")
    cfg = RunConfig(batch_sizes=tuple(int(b) for b in sizes.split(",")),
                    repeats=args.repeats or (3 if args.quick else 7),
                    warmup=1, n_images=args.n_images if args.n_images is not None else (200 if args.quick else 1000),
                    quality_batch=QUALITY_BATCH, memory=False)
    command, ref, rows, skipped, groups = current_command(), load_reference(), [], [], []
    for family, model, base, names in (
            ("llamagen", "fmnist-llamagen", "llamagen-ar", LLAMAGEN if args.quick else LLAMAGEN_FULL),
            ("var", "fmnist-var", "var-default", VAR if args.quick else VAR_FULL)):
        if family not in families:
            continue
        if family == "var" and args.var_methods:
            names = tuple(n for n in args.var_methods.split(",") if n)
        # a smaller student not shipped in this checkout (fmnist-var-dd4, fmnist-llamagen-dd4) drops its rows
        # instead of the family's
        names = tuple(n for n in names
                      if not (n.startswith(("var-dd4-", "dd4-")) and reg.get(n).why_unavailable(model)))
        entries = [reg.get(n) for n in names]
        why = [w for e in [reg.get(base)] + entries if (w := e.why_unavailable(model))]
        if why:
            skipped.append(f"{model}: {why[0]}")
            continue
        groups.append((model, base, tuple(n for n in (LLAMAGEN if family == "llamagen" else VAR) if n in names)))
        rows += run_group(reg, reg.get(base), entries, model, cfg, reference=ref, command=command,
                          progress=lambda m: print(m, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    append_rows(args.out / "distill.jsonl", rows)
    plots = [str(p) for p in plot_all(rows, args.out)]
    text = summary_markdown(rows, command=command, plots=plots)
    if skipped:
        text += "\n## Not run\n\n" + "\n".join(f"- {s}" for s in skipped) + "\n"
    tok_speedup = {}
    if "llamagen" in families and not reg.get("dd-1step").why_unavailable("fmnist-llamagen"):
        split = []
        for b in cfg.batch_sizes:
            lines, tok = llamagen_split(b, cfg.repeats)
            split += lines
            tok_speedup = tok if b == 1 else tok_speedup
        text += "\n## LlamaGen time split (tokens vs VQ decode, interleaved, medians)\n\n"
        text += "\n".join(f"- {s}" for s in split + profile_lines()) + "\n"
    if "var" in families and not reg.get("var-dd-1step").why_unavailable("fmnist-var"):
        split = [line for b in cfg.batch_sizes for line in var_split(b, cfg.repeats)]
        text += "\n## VAR time split (tokens vs image decode, interleaved, medians)\n\n"
        text += ("Teacher tokens = its full sampling minus the image decoder timed alone; student tokens include "
                 "the f_hat build.\n\n")
        text += "\n".join(f"- {s}" for s in split) + "\n"
    goals = goal_lines(rows, tok_speedup)
    steps_n = args.steps_n if args.steps_n is not None else (0 if args.quick else 5000)
    if steps_n and "llamagen" in families:
        goals += steps_lines(reg, ref, steps_n, cfg.quality_batch, cfg.seed, **steps_kw)
    text += "\n## Issue #19 goals (this run, batch 1, eager)\n\n" + "\n".join(f"- {g}" for g in goals)
    text += "\n"
    (args.out / "summary.md").write_text(text)  # written again below when compiled rows follow
    for parts in compile_parts:
        crows, lines = compiled_part(reg, cfg, groups, parts, command)
        append_rows(args.out / "distill.jsonl", crows)
        text += (f"\n## Compiled: accel.compile(parts={parts!r}) in every method, baseline included (batch 1, speed "
                 "only; same process, after the eager rows)\n\n" + "\n".join(f"- {s}" for s in lines) + "\n")
        (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
