"""Speculative decoding and LANTERN as a Method over LlamaGen models (``Method.generate -> Sample``).

``SpeculativeLlamaGen(target, drafter, rule, tokenizer, sc, gamma)`` composes by wrapping: the decode loop
(``decoder.py`` or ``tree.py``), a drafter (``drafters.py``) and an acceptance rule (``rules.py`` /
``lantern.py``). ``accel.speculative(...)`` builds it from generators; the zoo wiring is ``accel/presets``.
"""
from __future__ import annotations

import torch

from accel.cache.llamagen import raster_cache
from accel.models.llamagen_generate import SamplingConfig
from accel.speculative.chain_sizing import ChainSizing, size_chain
from accel.speculative.decoder import SpecStats, speculative_generate
from accel.speculative.drafters import EagleDrafter
from accel.speculative.dynamic_tree import DynamicTree, dynamic_tree_generate
from accel.speculative.tree import tree_generate
from accel.speculative.tree_sizing import TreeSizing, size_tree
from accel.types import Sample


class SpeculativeLlamaGen:
    """Chain, static-tree (``tree`` a ``Tree``) or EAGLE-2 dynamic-tree (``tree`` a ``DynamicTree``: deterministic
    drafts, EAGLE drafter) speculative decoding, images decoded with the VQ."""

    def __init__(self, name, target, drafter, rule, tokenizer, sc: SamplingConfig, gamma: int | str = 3, tree=None,
                 params: dict | None = None, policy=None, every: int | None = None):
        """``policy``: a raster KV-cache policy (``accel.cache.llamagen.build_raster_policy``) compressing the
        target's cache (chain, batch 1); ``stats['kv_bytes']`` is then the peak the target attended to.
        ``gamma="auto"``: the chain's γ is measured on the device for each batch size at its first call
        (``chain_sizing.size_chain``; ``sizings[batch]`` keeps the measurements, ``stats['gamma']`` the γ used);
        a dynamic tree with ``budget="auto"`` likewise has its node budget measured (``tree_sizing.size_tree``,
        ``stats['tree_budget']``)."""
        if policy is not None and tree is not None:
            raise ValueError("a cache policy composes with chain speculative decoding only (tree=None)")
        if gamma == "auto" and (tree is not None or policy is not None):
            raise ValueError("gamma='auto' sizes a plain chain; with a cache policy pass an int gamma, a dynamic "
                             "tree is sized with tree='dynauto-k<K>-d<D>' (static trees have a fixed shape)")
        self.auto = gamma == "auto" or (isinstance(tree, DynamicTree) and tree.budget == "auto")
        self.name, self.target, self.drafter, self.rule = name, target, drafter, rule
        self.tokenizer, self.sc, self.gamma, self.tree = tokenizer, sc, None if gamma == "auto" else gamma, tree
        self.sizings: dict[int, ChainSizing | TreeSizing] = {}
        self.policy, self.every = policy, every
        if isinstance(tree, DynamicTree):
            if getattr(rule, "drafts", "sampled") != "deterministic":
                raise ValueError(f"tree={tree.name}: the dynamic tree drafts deterministically; rule "
                                 f"{getattr(rule, 'name', rule)!r} samples its drafts (use lantern(delta), "
                                 "drafts='deterministic', delta=0 for exact)")
            if not isinstance(drafter, EagleDrafter):
                raise ValueError(f"tree={tree.name}: the dynamic tree needs an EAGLE drafter, got "
                                 f"{getattr(drafter, 'name', type(drafter).__name__)}")
        self.params = dict(params or {})
        self.timings: dict | None = None  # a dict: dynamic-tree calls add their draft/verify/loop seconds to it

    def size(self, batch_size: int, **limit) -> ChainSizing | TreeSizing:
        """Measure on this device the best chain γ (``chain_sizing.size_chain``; ``gamma_max=``) or, with a dynamic
        tree, the best node budget (``tree_sizing.size_tree``; ``budget_max=``) at ``batch_size``, and decode that
        batch size with it from now on (``sizings[batch_size]``)."""
        sizer = size_tree if isinstance(self.tree, DynamicTree) else size_chain
        self.sizings[batch_size] = sizing = sizer(self, batch_size, **limit)
        return sizing

    def gamma_for(self, batch_size: int) -> int:
        """The sized γ of this batch size, else the fixed one (``gamma="auto"``: sized now)."""
        if batch_size in self.sizings:
            return self.sizings[batch_size].gamma
        return self.size(batch_size).gamma if self.auto else self.gamma

    def tree_for(self, batch_size: int) -> DynamicTree:
        """The dynamic tree of this batch size: its sized budget, else the fixed one (``budget="auto"``: sized now)."""
        if batch_size in self.sizings:
            return self.sizings[batch_size].tree
        return self.size(batch_size).tree if self.auto else self.tree

    @torch.inference_mode()
    def generate(self, cond: torch.Tensor, *, generator: torch.Generator) -> Sample:
        extra = {}
        if isinstance(self.tree, DynamicTree):
            spec = self.tree_for(cond.size(0))
            codes, st = dynamic_tree_generate(self.target, self.drafter, self.rule, cond, self.sc, spec=spec,
                                              generator=generator, timings=self.timings)
            extra["tree_budget"] = spec.budget
        elif self.tree is not None:
            codes, st = tree_generate(self.target, self.drafter, self.rule, cond, self.sc, tree=self.tree,
                                      generator=generator)
        elif self.policy is None:
            codes, st = speculative_generate(self.target, self.drafter, self.rule, cond, self.sc,
                                             gamma=self.gamma_for(cond.size(0)), generator=generator)
        else:  # the compressed cache composes at batch 1: a larger batch is decoded row after row
            parts, caches = [], []
            for row in cond.split(1):
                caches.append(raster_cache(self.target, self.policy, every=self.every))
                parts.append(speculative_generate(self.target, self.drafter, self.rule, row, self.sc, gamma=self.gamma,
                                                  generator=generator, cache=caches[-1]))
            codes, st = torch.cat([c for c, _ in parts]), merge_stats([s for _, s in parts])
        g = self.target.config.grid_size
        x = self.tokenizer.decode_code(codes, hw=(g, g))
        stats = {**st.as_dict(), **extra, "tokens": codes}
        if self.policy is not None:
            stats["kv_bytes"] = max(c.peak_attended_bytes() for c in caches)
            stats["rows_decoded_serially"] = len(caches)
        return Sample(((x.float() + 1) / 2).clamp(0, 1), stats)


def merge_stats(parts: list[SpecStats]) -> SpecStats:
    """Counters of several calls added up (rows decoded one after another)."""
    out = SpecStats(parts[0].gamma, reached=[0] * parts[0].gamma, accepted_at=[0] * parts[0].gamma)
    for p in parts:
        for k in ("verify_steps", "accepted", "drafted", "nfe_target", "nfe_draft"):
            setattr(out, k, getattr(out, k) + getattr(p, k))
        out.reached = [a + b for a, b in zip(out.reached, p.reached)]
        out.accepted_at = [a + b for a, b in zip(out.accepted_at, p.accepted_at)]
    return out
