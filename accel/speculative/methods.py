"""Speculative decoding and LANTERN as a Method over LlamaGen models (``Method.generate -> Sample``).

``SpeculativeLlamaGen(target, drafter, rule, tokenizer, sc, gamma)`` composes by wrapping: the decode loop
(``decoder.py`` or ``tree.py``), a drafter (``drafters.py``) and an acceptance rule (``rules.py`` /
``lantern.py``). ``accel.speculative(...)`` builds it from generators; the zoo wiring is ``accel/presets``.
"""
from __future__ import annotations

import torch

from accel.models.llamagen_generate import SamplingConfig
from accel.speculative.decoder import speculative_generate
from accel.speculative.tree import tree_generate
from accel.types import Sample


class SpeculativeLlamaGen:
    """Chain (or static-tree, when ``tree`` is given) speculative decoding, images decoded with the VQ."""

    def __init__(self, name, target, drafter, rule, tokenizer, sc: SamplingConfig, gamma: int = 3, tree=None,
                 params: dict | None = None):
        self.name, self.target, self.drafter, self.rule = name, target, drafter, rule
        self.tokenizer, self.sc, self.gamma, self.tree = tokenizer, sc, gamma, tree
        self.params = dict(params or {})

    @torch.no_grad()
    def generate(self, cond: torch.Tensor, *, generator: torch.Generator) -> Sample:
        if self.tree is not None:
            codes, st = tree_generate(self.target, self.drafter, self.rule, cond, self.sc, tree=self.tree,
                                      generator=generator)
        else:
            codes, st = speculative_generate(self.target, self.drafter, self.rule, cond, self.sc, gamma=self.gamma,
                                             generator=generator)
        g = self.target.config.grid_size
        x = self.tokenizer.decode_code(codes, hw=(g, g))
        return Sample(((x.float() + 1) / 2).clamp(0, 1), {**st.as_dict(), "tokens": codes})
