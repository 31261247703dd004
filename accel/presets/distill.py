"""Distilled Decoding on the bench: the zoo DD students (through ``accel.distilled``) and the baselines the
paper shows failing.

LlamaGen (timed against ``llamagen-ar``):
- ``dd-1step`` / ``dd-2step``: ``fmnist-llamagen-dd``, noise from the harness generator, the zoo VQ decodes
  (every slot snapped to its arg-max code); ``dd-1step-split20``: the released read-out (slots >= 20 = 0.3125 n
  decoded from the continuous head's vectors, unsnapped); ``dd4-1step`` / ``dd4-2step``: the smaller student
  ``fmnist-llamagen-dd4`` (4 of the 8 layers) alike.
- ``llamagen-onestep-marginal`` (paper: "onestep*"): every token drawn in ONE parallel step from its
  per-class, per-position marginal (the teacher samples' frequencies shipped with the student).
- ``dd-teacher-16-48``: the released ``combine_sample`` (teacher-involved; ``distilled(..., teacher_involved)``).
- ``llamagen-skip-16`` (paper: "skip"): the teacher decodes the first n-k tokens, the last k are drawn in one
  parallel step from their marginals (accel's reading of skip-k for a raster model; stated in the rows).

VAR (timed against ``var-default``):
- ``var-dd-1step`` / ``var-dd-2step`` / ``var-dd-teacher``: ``fmnist-var-dd`` with the ``t2`` and read-out
  ``split`` of its recipe; ``var-dd4-1step`` / ``var-dd4-2step``: the smaller (depth-4) ``fmnist-var-dd4`` alike.
- ``var-onestep-marginal``: every token from its class-conditional marginal, estimated at build time from
  ``MARGINAL_SAMPLES`` teacher samples (seeded), so no pair file is needed.
- ``var-skip-2``: ``baselines_var.skip_sample`` (the last k scales in the teacher's final pass).
"""
from __future__ import annotations

import torch

from accel import zoo
from accel.api.techniques import distilled
from accel.distill.baselines_var import onestep_sample, skip_sample, teacher_sample, token_marginals
from accel.harness.registry import BuildContext, MethodEntry
from accel.models.llamagen_generate import generate
from accel.presets.zoo_models import generator, missing_with
from accel.train.recipes import get_recipe
from accel.types import Sample

STUDENT, STUDENT4 = "fmnist-llamagen-dd", "fmnist-llamagen-dd4"
VAR_STUDENT, VAR_STUDENT4 = "fmnist-var-dd", "fmnist-var-dd4"
MARGINAL_SAMPLES = 2000


# ------------------------------------------------------------------------------------------------ LlamaGen
def _llamagen(ctx: BuildContext, student: str = STUDENT):
    return generator(ctx, tokenizer_dtype=True), zoo.load(student, device=ctx.device, dtype=ctx.dtype)


def dd_llamagen(steps: int = 1, teacher_involved: tuple[int, int] | None = None, split: int | None = None,
                name: str | None = None, student: str = STUDENT):
    return lambda ctx: distilled(*_llamagen(ctx, student), steps=steps, teacher_involved=teacher_involved,
                                 split=split, name=name)


class MarginalOneStep:
    """Every token in one parallel step from the student's shipped per-class, per-position marginals."""

    name = "llamagen-onestep-marginal"

    def __init__(self, ctx: BuildContext):
        self.teacher, self.student = _llamagen(ctx)

    @torch.inference_mode()
    def generate(self, cond, *, generator):
        probs = self.student.marginals[cond]  # (B, n, V)
        ids = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(probs.shape[:2])
        return Sample(self.teacher.decode(ids), {"nfe_target": 0, "tokens": ids})


class SkipK(MarginalOneStep):
    """The teacher decodes the first n-k tokens, the last k come from the marginals in one parallel step."""

    def __init__(self, ctx: BuildContext, k: int):
        super().__init__(ctx)
        self.name, self.k = f"llamagen-skip-{k}", k

    @torch.inference_mode()
    def generate(self, cond, *, generator):
        n = self.student.config.block_size
        head = generate(self.teacher.model, cond, n - self.k, self.teacher.config, generator=generator)
        probs = self.student.marginals[cond][:, n - self.k:]  # (B, k, V)
        tail = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(probs.shape[:2])
        ids = torch.cat([head, tail], 1)
        return Sample(self.teacher.decode(ids), {"nfe_target": n - self.k + 1, "tokens": ids})


# ----------------------------------------------------------------------------------------------------- VAR
def dd_var(steps: int = 1, teacher_involved: bool = False, student_name: str = VAR_STUDENT, name: str | None = None):
    def build(ctx: BuildContext):
        teacher = generator(ctx, cast=False)
        student = zoo.load(student_name, device=ctx.device).eval()
        t2, split = get_recipe(student_name).timesteps(student)
        return distilled(teacher, student, steps=steps, t2=t2, split=split, teacher_involved=teacher_involved,
                         name=name)

    return build


class VAROneStepMarginal:
    name = "var-onestep-marginal"

    def __init__(self, ctx: BuildContext):
        self.teacher = generator(ctx, cast=False)
        var, vae, s = self.teacher.model, self.teacher.tokenizer, self.teacher.kwargs
        g = torch.Generator(device=ctx.device).manual_seed(12345)
        labels = torch.arange(MARGINAL_SAMPLES, device=ctx.device) % var.num_classes
        toks = torch.cat([teacher_sample(var, vae, lb, generator=g, cfg=s["cfg"], top_k=s["top_k"], top_p=s["top_p"])
                          for lb in labels.split(250)])
        self.marginals = token_marginals(toks.cpu(), labels.cpu(), var.num_classes, var.V)

    @torch.inference_mode()
    def generate(self, cond, *, generator):
        ids = onestep_sample(self.marginals, cond, generator).to(cond.device)
        return Sample(self.teacher.decode(ids), {"nfe_target": 0, "tokens": ids})


class VARSkip:
    def __init__(self, ctx: BuildContext, k: int):
        self.teacher, self.k, self.name = generator(ctx, cast=False), k, f"var-skip-{k}"

    @torch.inference_mode()
    def generate(self, cond, *, generator):
        s = self.teacher.kwargs
        ids, st = skip_sample(self.teacher.model, self.teacher.tokenizer, cond, self.k, generator=generator,
                              cfg=s["cfg"], top_k=s["top_k"], top_p=s["top_p"])
        return Sample(self.teacher.decode(ids), {"nfe_target": st["teacher_passes"], "tokens": ids})


_llg = dict(family="llamagen", models=("fmnist-llamagen",), baseline="llamagen-ar", experiment="distill",
            unavailable=missing_with(STUDENT))
_llg4 = {**_llg, "unavailable": missing_with(STUDENT4)}
_var = dict(family="var", models=("fmnist-var",), baseline="var-default", experiment="distill",
            unavailable=missing_with(VAR_STUDENT))
_var4 = {**_var, "unavailable": missing_with(VAR_STUDENT4)}
ENTRIES = [
    MethodEntry("dd-1step", build=dd_llamagen(1), params={"t_list": [0]}, **_llg),
    MethodEntry("dd-2step", build=dd_llamagen(2), params={"t_list": [0, "0.3125n"]}, **_llg),
    MethodEntry("dd4-1step", build=dd_llamagen(1, name="dd4-1step", student=STUDENT4),
                params={"t_list": [0], "student": STUDENT4}, **_llg4),
    MethodEntry("dd4-2step", build=dd_llamagen(2, name="dd4-2step", student=STUDENT4),
                params={"t_list": [0, "0.3125n"], "student": STUDENT4}, **_llg4),
    MethodEntry("dd-1step-split20", build=dd_llamagen(1, split=20, name="dd-1step-split20"), quick=False,
                params={"t_list": [0], "split": 20}, **_llg),
    MethodEntry("llamagen-onestep-marginal", build=MarginalOneStep, params={"marginals": "teacher samples"}, **_llg),
    MethodEntry("dd-teacher-16-48", build=dd_llamagen(teacher_involved=(16, 48)), quick=False,
                params={"teacher_start": 16, "t_mid": 48}, **_llg),
    MethodEntry("llamagen-skip-16", build=lambda ctx: SkipK(ctx, 16), quick=False,
                params={"k": 16, "skip": "last k tokens in one parallel step from marginals"}, **_llg),
    MethodEntry("var-dd-1step", build=dd_var(1), params={"t_list": [0]}, **_var),
    MethodEntry("var-dd-2step", build=dd_var(2), params={"t_list": [0, "t2"]}, **_var),
    MethodEntry("var-dd4-1step", build=dd_var(1, student_name=VAR_STUDENT4, name="var-dd4-1step"),
                params={"t_list": [0], "student": VAR_STUDENT4}, **_var4),
    MethodEntry("var-dd4-2step", build=dd_var(2, student_name=VAR_STUDENT4, name="var-dd4-2step"),
                params={"t_list": [0, "t2"], "student": VAR_STUDENT4}, **_var4),
    MethodEntry("var-dd-teacher", build=dd_var(teacher_involved=True), quick=False,
                params={"teacher_start": 1, "t_mid": "t2"}, **_var),
    MethodEntry("var-onestep-marginal", build=VAROneStepMarginal, quick=False,
                params={"marginals": f"{MARGINAL_SAMPLES} teacher samples"}, **_var),
    MethodEntry("var-skip-2", build=lambda ctx: VARSkip(ctx, 2), quick=False, params={"k": 2}, **_var),
]
