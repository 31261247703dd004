"""Distilled Decoding as Methods over models (``generate(cond, *, generator) -> Sample``).

- ``DistilledLlamaGen``: the DD1 student of a LlamaGen teacher; one step predicts every token from pure noise
  X_1, two steps re-predict from X_t2 = (q_<t2, eps_>=t2) with the same noise (arXiv 2412.17153, Eq. 9-10 and
  Alg. 3); ``t2`` defaults to the released 80 of 256 tokens (``default_t2``: 20 of 64). ``teacher_involved=(a, b)``: the released ``combine_sample``: a student step from noise, its first
  ``a`` tokens kept, the teacher samples tokens ``a..b-1`` (KV-cached, the prefix pre-filled), then a student
  step from X_b.
- ``DistilledVAR``: the DD1 student of a VAR teacher over the multi-scale token sequence; ``t2`` / ``split``
  are scale indices (second-step time; scales < split read from the logits head, the rest from the continuous
  head); images are decoded from the vectors scale by scale (``decode_vectors``).

Noise is drawn from the caller's generator, so one seed gives one image.
"""
from __future__ import annotations

import torch
from torch import Tensor

from accel.distill.student_llamagen import DDLlamaGen, default_t2
from accel.distill.student_var import DDVAR, decode_vectors
from accel.distill.var_map import tokens_before
from accel.models.llamagen_generate import SamplingConfig, generate
from accel.types import Sample


def default_split(patch_nums, frac: float = 0.1) -> int:
    """The released rule for VAR's split and t2: the largest scale index whose earlier scales hold at most
    ``frac`` of the tokens (VAR-d16: 5 = 55 of 680 tokens)."""
    L = sum(pn * pn for pn in patch_nums)
    return max([s for s in range(1, len(patch_nums)) if tokens_before(patch_nums, s) <= frac * L] or [1])


class DistilledLlamaGen:
    def __init__(self, student: DDLlamaGen, tokenizer, *, steps: int = 1, t2: int | None = None, teacher=None,
                 sc: SamplingConfig = SamplingConfig(), teacher_involved: tuple[int, int] | None = None,
                 split: int | None = None, name: str | None = None):
        """``split``: the released read-out (None = every slot snapped to its code, accel's earlier read-out): slots
        before ``split`` from the logits' arg-max, the rest the continuous head's vectors, decoded unsnapped."""
        n = student.config.block_size
        self.student, self.tokenizer, self.teacher, self.sc = student.eval(), tokenizer, teacher, sc
        if split is not None and not 0 <= split <= n:
            raise ValueError(f"split={split}: must be in [0, {n}] tokens")
        self.split = split
        self.t2 = default_t2(n) if t2 is None else t2  # released 80 of 256 tokens
        if not 0 < self.t2 < n:
            raise ValueError(f"t2={self.t2}: must be in (0, {n}) tokens")
        self.t_list = (0, self.t2)[:steps]
        self.involved = teacher_involved
        if teacher_involved is not None:
            a, b = teacher_involved
            if teacher is None:
                raise ValueError("teacher_involved needs the teacher model")
            if not 0 <= a < b < n:
                raise ValueError(f"teacher_involved=({a}, {b}): need 0 <= a < b < {n}")
            self.name = name or f"dd-teacher-{a}-{b}"
            self.params = {"teacher_start": a, "t_mid": b}
        else:
            self.name = name or f"dd-{steps}step"
            self.params = {"t_list": list(self.t_list), "split": split}

    def _images(self, ids: Tensor, stats: dict) -> Sample:
        g = self.student.config.grid_size
        x = self.tokenizer.decode_code(ids, hw=(g, g))
        return Sample(((x.float() + 1) / 2).clamp(0, 1), {**stats, "tokens": ids})

    @torch.inference_mode()
    def generate(self, cond: Tensor, *, generator: torch.Generator) -> Sample:
        s = self.student
        n, d = s.config.block_size, s.codes.size(1)
        noise = torch.randn(cond.size(0), n, d, generator=generator, device=cond.device)
        if self.involved is None and self.split is not None:
            vec, ids = s.sample_vectors(cond, noise, self.t_list, self.split)
            g = s.config.grid_size
            x = self.tokenizer.decode_vectors(vec, (g, g))
            return Sample(((x.float() + 1) / 2).clamp(0, 1), {"nfe_target": 0, "nfe_student": len(self.t_list),
                                                              "tokens": ids})
        if self.involved is None:
            ids = s.sample(cond, noise, self.t_list)
            return self._images(ids, {"nfe_target": 0, "nfe_student": len(self.t_list)})
        a, b = self.involved
        prefix = s.sample(cond, noise, (0,))[:, :a] if a else None
        head = generate(self.teacher, cond, b, self.sc, generator=generator, prefix=prefix)
        x = torch.cat([s.codes[head], noise[:, b:]], 1)
        logits, conti = s.predict(x, cond, b)
        ids = torch.cat([head, s.tokens_from(logits, conti, n)[:, b:]], 1)
        return self._images(ids, {"nfe_target": b - a + 1, "nfe_student": 1 + (a > 0)})


class DistilledVAR:
    def __init__(self, student: DDVAR, teacher, vae, *, steps: int = 1, t2: int | None = None,
                 split: int | None = None, teacher_involved: bool = False, settings: dict | None = None,
                 name: str | None = None):
        pns = student.tpns
        self.student, self.teacher, self.vae = student.eval(), teacher, vae
        self.t2 = default_split(pns) if t2 is None else t2
        self.split = len(pns) if split is None else split
        if not (0 < self.t2 < len(pns) and 0 <= self.split <= len(pns)):
            raise ValueError(f"t2={self.t2} / split={self.split}: outside the {len(pns)} scales")
        self.steps, self.involved = steps, teacher_involved
        s = dict(settings or {})
        self.settings = {k: s[k] for k in ("cfg", "top_k", "top_p") if k in s}
        self.name = name or ("var-dd-teacher" if teacher_involved else f"var-dd-{steps}step")
        self.params = ({"teacher_start": 1, "t_mid": self.t2} if teacher_involved
                       else {"t_list": [0, self.t2][:steps]})

    @torch.inference_mode()
    def generate(self, cond: Tensor, *, generator: torch.Generator) -> Sample:
        s = self.student
        noise = torch.randn(cond.size(0), s.L_out, s.Cvae, generator=generator, device=cond.device)
        if self.involved:
            vec, ids, passes = s.sample_teacher_involved(self.teacher, self.vae, cond, noise, t_mid=self.t2,
                                                         teacher_start=1, generator=generator, split=self.split,
                                                         **self.settings)
            stats = {"nfe_target": passes["teacher_passes"], "nfe_student": passes["student_passes"]}
        else:
            t_list = (0, self.t2)[:self.steps]
            vec, ids = s.sample(cond, noise, t_list, split=self.split)
            stats = {"nfe_target": 0, "nfe_student": len(t_list)}
        x = decode_vectors(self.vae, vec, s.tpns)  # [0, 1]
        return Sample(x.float().clamp(0, 1), {**stats, "tokens": ids})
