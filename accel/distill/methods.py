"""Distilled Decoding on the bench: DD 1-step / 2-step students and the baselines the paper shows failing.

- ``dd-1step`` / ``dd-2step``: the zoo student ``fmnist-llamagen-dd`` (``student_llamagen``), noise drawn
  from the harness generator, tokens decoded by the zoo VQ. Timed against ``llamagen-ar``.
- ``llamagen-onestep-marginal`` (paper: "onestep*"): every token drawn in ONE parallel step from its
  per-class, per-position marginal (the teacher samples' frequencies shipped with the student), i.e.
  token dependencies ignored.
- ``dd-teacher-a-b`` (the released ``combine_sample``, "teacher-involved"): a DD step from pure noise, its
  first a tokens kept, the teacher samples tokens a..b-1 (its own settings, KV-cached, prefix pre-filled),
  then a DD step from X_b (the teacher's tokens, the original noise for positions >= b).
- ``llamagen-skip-k`` (paper: "skip"): the teacher decodes the first n-k tokens, the last k are drawn in one
  parallel step from their marginals (accel's reading of skip-k for a raster model; stated in the rows).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from accel.harness.registry import BuildContext, MethodEntry
from accel.types import Sample

STUDENT = "fmnist-llamagen-dd"


def _missing(model: str) -> str | None:
    from accel.harness.baselines import zoo_missing

    return zoo_missing(model, STUDENT)


class _Base:
    def __init__(self, ctx: BuildContext):
        from accel import zoo

        self.student = zoo.load(STUDENT, device=ctx.device, dtype=ctx.dtype).eval()
        self.vq = zoo.load(zoo.TOKENIZER[ctx.model], device=ctx.device, dtype=ctx.dtype).eval()
        self.cfg = self.student.config

    def _images(self, ids: torch.Tensor, stats: dict) -> Sample:
        g = self.cfg.grid_size
        x = self.vq.decode_code(ids, hw=(g, g))
        return Sample(((x.float() + 1) / 2).clamp(0, 1), {**stats, "tokens": ids})


class DDStudent(_Base):
    def __init__(self, ctx: BuildContext, steps: int):
        super().__init__(ctx)
        self.name, self.steps = f"dd-{steps}step", steps
        t2 = self.cfg.block_size // 2
        self.t_list = (0, t2)[:steps]

    @torch.no_grad()
    def generate(self, cond, *, generator):
        n, d = self.cfg.block_size, self.student.codes.size(1)
        noise = torch.randn(cond.size(0), n, d, generator=generator, device=cond.device)
        ids = self.student.sample(cond, noise, self.t_list)
        return self._images(ids, {"nfe_target": 0, "nfe_student": len(self.t_list)})


class DDTeacherInvolved(_Base):
    def __init__(self, ctx: BuildContext, start: int, end: int):
        from accel import zoo
        from accel.models.llamagen_generate import SamplingConfig
        from accel.zoo.sample import DEFAULTS

        super().__init__(ctx)
        if not 0 <= start < end < self.cfg.block_size:
            raise ValueError(f"need 0 <= start < end < {self.cfg.block_size}; got {start}, {end}")
        self.name, self.start, self.end = f"dd-teacher-{start}-{end}", start, end
        self.teacher = zoo.load(ctx.model, device=ctx.device, dtype=ctx.dtype).eval()
        self.sc = replace(SamplingConfig(), **DEFAULTS.get(ctx.model, {}))

    @torch.no_grad()
    def generate(self, cond, *, generator):
        from accel.models.llamagen_generate import generate

        n, d = self.cfg.block_size, self.student.codes.size(1)
        noise = torch.randn(cond.size(0), n, d, generator=generator, device=cond.device)
        prefix = self.student.sample(cond, noise, (0,))[:, :self.start] if self.start else None
        head = generate(self.teacher, cond, self.end, self.sc, generator=generator, prefix=prefix)
        x = torch.cat([self.student.codes[head], noise[:, self.end:]], 1)
        logits, conti = self.student.predict(x, cond, self.end)
        ids = torch.cat([head, self.student.tokens_from(logits, conti, n)[:, self.end:]], 1)
        return self._images(ids, {"nfe_target": self.end - self.start + 1, "nfe_student": 1 + (self.start > 0)})


class MarginalOneStep(_Base):
    name = "llamagen-onestep-marginal"

    @torch.no_grad()
    def generate(self, cond, *, generator):
        probs = self.student.marginals[cond]  # (B, n, V)
        ids = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(probs.shape[:2])
        return self._images(ids, {"nfe_target": 0})


class SkipK(_Base):
    def __init__(self, ctx: BuildContext, k: int):
        from accel import zoo
        from accel.models.llamagen_generate import SamplingConfig
        from accel.zoo.sample import DEFAULTS

        super().__init__(ctx)
        self.name, self.k = f"llamagen-skip-{k}", k
        self.teacher = zoo.load(ctx.model, device=ctx.device, dtype=ctx.dtype).eval()
        self.sc = replace(SamplingConfig(), **DEFAULTS.get(ctx.model, {}))

    @torch.no_grad()
    def generate(self, cond, *, generator):
        from accel.models.llamagen_generate import generate

        n = self.cfg.block_size
        head = generate(self.teacher, cond, n - self.k, self.sc, generator=generator)
        probs = self.student.marginals[cond][:, n - self.k:]  # (B, k, V)
        tail = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(probs.shape[:2])
        return self._images(torch.cat([head, tail], 1), {"nfe_target": n - self.k + 1})


_common = dict(family="llamagen", models=("fmnist-llamagen",), baseline="llamagen-ar", experiment="distill",
               unavailable=_missing)
BENCH_METHODS = [
    MethodEntry("dd-1step", build=lambda ctx: DDStudent(ctx, 1), params={"t_list": [0]}, **_common),
    MethodEntry("dd-2step", build=lambda ctx: DDStudent(ctx, 2), params={"t_list": [0, "n/2"]}, **_common),
    MethodEntry("llamagen-onestep-marginal", build=MarginalOneStep, params={"marginals": "teacher samples"},
                **_common),
    MethodEntry("dd-teacher-16-48", build=lambda ctx: DDTeacherInvolved(ctx, 16, 48), quick=False,
                params={"teacher_start": 16, "t_mid": 48}, **_common),
    MethodEntry("llamagen-skip-16", build=lambda ctx: SkipK(ctx, 16), quick=False,
                params={"k": 16, "skip": "last k tokens in one parallel step from marginals"}, **_common),
]
