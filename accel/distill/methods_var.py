"""Distilled Decoding for VAR on the bench: the zoo student ``fmnist-var-dd`` and the baselines that fail.

- ``var-dd-1step`` / ``var-dd-2step``: ``DDVAR.sample`` with ``t_list = (0,)`` / ``(0, t2)`` and the read-out
  ``split`` of the student's recipe; noise ``(B, L, Cvae)`` from the harness generator; the vectors are
  decoded scale by scale into ``f_hat`` (``decode_vectors``), so the image cost is the same as the teacher's.
- ``var-dd-teacher``: the released ``combine_sample`` (DD step, the teacher samples scales
  ``teacher_start..t2-1``, DD step from X_t2).
- ``var-onestep-marginal`` (paper "onestep*"): every token from its class-conditional marginal, estimated at
  build time from ``MARGINAL_SAMPLES`` teacher samples (seeded), so no pair file is needed.
- ``var-skip-k``: ``baselines_var.skip_sample`` (the last k scales in the teacher's final pass).

Timed against ``var-default`` (the teacher's own scale-by-scale sampling with the model card's settings).
"""
from __future__ import annotations

import torch

from accel.harness.registry import BuildContext, MethodEntry
from accel.types import Sample

STUDENT = "fmnist-var-dd"
MARGINAL_SAMPLES = 2000


def _missing(model: str) -> str | None:
    from accel.harness.baselines import zoo_missing

    return zoo_missing(model, STUDENT)


class _VARBase:
    def __init__(self, ctx: BuildContext):
        from accel import zoo
        from accel.train.recipes import get_recipe

        self.teacher = zoo.load(ctx.model, device=ctx.device).eval()
        self.vae = zoo.load(zoo.TOKENIZER[ctx.model], device=ctx.device).eval()
        self.recipe = get_recipe(STUDENT)
        self.settings = self.recipe.sampling()  # cfg / top_k / top_p the student was distilled with

    def _images(self, ids: torch.Tensor, stats: dict) -> Sample:
        x = self.vae.idxBl_to_img(_split(ids, self.teacher.patch_nums), last_one=True)  # [-1, 1]
        return Sample(((x.float() + 1) / 2).clamp(0, 1), {**stats, "tokens": ids})


def _split(ids: torch.Tensor, pns) -> list[torch.Tensor]:
    out, a = [], 0
    for pn in pns:
        out.append(ids[:, a:a + pn * pn])
        a += pn * pn
    return out


class VARStudent(_VARBase):
    def __init__(self, ctx: BuildContext, mode: str):
        from accel import zoo

        super().__init__(ctx)
        self.student = zoo.load(STUDENT, device=ctx.device).eval()
        self.t2, self.split = self.recipe.timesteps(self.student)
        self.mode, self.name = mode, f"var-dd-{mode}"

    @torch.no_grad()
    def generate(self, cond, *, generator):
        from accel.distill.student_var import decode_vectors

        s = self.student
        noise = torch.randn(cond.size(0), s.L_out, s.Cvae, generator=generator, device=cond.device)
        if self.mode == "teacher":
            vec, ids, passes = s.sample_teacher_involved(self.teacher, self.vae, cond, noise, t_mid=self.t2,
                                                         teacher_start=1, generator=generator, split=self.split,
                                                         **self.settings)
            stats = {"nfe_target": passes["teacher_passes"], "nfe_student": passes["student_passes"]}
        else:
            t_list = (0,) if self.mode == "1step" else (0, self.t2)
            vec, ids = s.sample(cond, noise, t_list, split=self.split)
            stats = {"nfe_target": 0, "nfe_student": len(t_list)}
        x = decode_vectors(self.vae, vec, s.tpns)  # [0, 1]
        return Sample(x.float().clamp(0, 1), {**stats, "tokens": ids})


class VAROneStepMarginal(_VARBase):
    name = "var-onestep-marginal"

    def __init__(self, ctx: BuildContext):
        from accel.distill.baselines_var import teacher_sample, token_marginals

        super().__init__(ctx)
        g = torch.Generator(device=ctx.device).manual_seed(12345)
        labels = torch.arange(MARGINAL_SAMPLES, device=ctx.device) % self.teacher.num_classes
        toks = torch.cat([teacher_sample(self.teacher, self.vae, lb, generator=g, **self.settings)
                          for lb in labels.split(250)])
        self.marginals = token_marginals(toks.cpu(), labels.cpu(), self.teacher.num_classes, self.teacher.V)

    @torch.no_grad()
    def generate(self, cond, *, generator):
        from accel.distill.baselines_var import onestep_sample

        ids = onestep_sample(self.marginals, cond, generator).to(cond.device)
        return self._images(ids, {"nfe_target": 0})


class VARSkip(_VARBase):
    def __init__(self, ctx: BuildContext, k: int):
        super().__init__(ctx)
        self.k, self.name = k, f"var-skip-{k}"

    @torch.no_grad()
    def generate(self, cond, *, generator):
        from accel.distill.baselines_var import skip_sample

        ids, st = skip_sample(self.teacher, self.vae, cond, self.k, generator=generator, **self.settings)
        return self._images(ids, {"nfe_target": st["teacher_passes"]})


_common = dict(family="var", models=("fmnist-var",), baseline="var-default", experiment="distill", unavailable=_missing)
BENCH_METHODS = [
    MethodEntry("var-dd-1step", build=lambda ctx: VARStudent(ctx, "1step"), params={"t_list": [0]}, **_common),
    MethodEntry("var-dd-2step", build=lambda ctx: VARStudent(ctx, "2step"), params={"t_list": [0, "t2"]}, **_common),
    MethodEntry("var-dd-teacher", build=lambda ctx: VARStudent(ctx, "teacher"), quick=False,
                params={"teacher_start": 1, "t_mid": "t2"}, **_common),
    MethodEntry("var-onestep-marginal", build=VAROneStepMarginal, quick=False,
                params={"marginals": f"{MARGINAL_SAMPLES} teacher samples"}, **_common),
    MethodEntry("var-skip-2", build=lambda ctx: VARSkip(ctx, 2), quick=False, params={"k": 2}, **_common),
]
