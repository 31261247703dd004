"""Speculative decoding and LANTERN as harness Methods on the zoo LlamaGen (``Method.generate -> Sample``).

``SpeculativeLlamaGen(target, drafter, rule, tokenizer, sc, gamma)`` composes by wrapping: the decode loop
(``decoder.py``), a drafter (``drafters.py``) and an acceptance rule (``rules.py`` / ``lantern.py``).
Sampling settings are the target's zoo defaults (``accel.zoo.sample.DEFAULTS``), the same as the AR baseline
``llamagen-ar`` these entries are timed against.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from accel.cache.llamagen import raster_cache
from accel.harness.registry import BuildContext, MethodEntry
from accel.models.llamagen_generate import SamplingConfig
from accel.speculative.decoder import speculative_generate
from accel.speculative.drafters import EagleDrafter, ModelDrafter
from accel.speculative.lantern import LanternRule, neighbour_table
from accel.speculative.rules import ExactRule
from accel.types import Sample

TARGET, DRAFT, EAGLE = "fmnist-llamagen", "fmnist-llamagen-draft", "fmnist-llamagen-eagle"


class SpeculativeLlamaGen:
    """Chain (or static-tree, when ``tree`` is given) speculative decoding, images decoded with the VQ."""

    def __init__(self, name, target, drafter, rule, tokenizer, sc: SamplingConfig, gamma: int = 3, tree=None,
                 params: dict | None = None, policy=None, every: int | None = None):
        """``policy``: a raster KV-cache policy (``accel.cache.llamagen.build_raster_policy``) compressing the
        target's cache (chain, batch 1); ``stats['kv_bytes']`` is then the peak the target attended to."""
        if policy is not None and tree is not None:
            raise ValueError("a cache policy composes with chain speculative decoding only (tree=None)")
        self.name, self.target, self.drafter, self.rule = name, target, drafter, rule
        self.tokenizer, self.sc, self.gamma, self.tree = tokenizer, sc, gamma, tree
        self.policy, self.every = policy, every
        self.params = dict(params or {})

    @torch.no_grad()
    def generate(self, cond: torch.Tensor, *, generator: torch.Generator) -> Sample:
        if self.tree is not None:
            from accel.speculative.tree import tree_generate

            codes, st = tree_generate(self.target, self.drafter, self.rule, cond, self.sc, tree=self.tree,
                                      generator=generator)
        else:
            cache = None if self.policy is None else raster_cache(self.target, self.policy, every=self.every)
            codes, st = speculative_generate(self.target, self.drafter, self.rule, cond, self.sc, gamma=self.gamma,
                                             generator=generator, cache=cache)
        g = self.target.config.grid_size
        x = self.tokenizer.decode_code(codes, hw=(g, g))
        stats = {**st.as_dict(), "tokens": codes}
        if self.policy is not None:
            stats["kv_bytes"] = cache.peak_attended_bytes()
        return Sample(((x.float() + 1) / 2).clamp(0, 1), stats)


def load_drafter(kind: str, target, device, dtype):
    """``"draft"``: the zoo's small LlamaGen; ``"eagle"``: the EAGLE head trained on this target."""
    from accel import zoo

    if kind == "draft":
        return ModelDrafter(zoo.load(DRAFT, device=device, dtype=dtype), name="llamagen-draft")
    if kind == "eagle":
        from accel.train.drafter import load_eagle

        head, _ = load_eagle(zoo.weights_path(EAGLE), device=device, dtype=dtype)
        return EagleDrafter(head, target)
    raise KeyError(f"unknown drafter {kind!r}; valid: ['draft', 'eagle']")


def build(ctx: BuildContext, name: str, drafter: str = "draft", delta: float | None = None, k: int = 1000,
          lam: float | None = None, gamma: int = 3, tree: str | None = None, residual: str = "official"):
    """A method from its hyper-parameters: no ``delta``/``lam`` = exact speculative sampling.

    γ = 3 by default: on the shared 2-core CPU a γ+1-token verify of the zoo target costs ~1.35 AR steps
    (5 tokens: ~1.46) and an EAGLE draft step ~0.24, so longer chains only pay off at acceptance >~ 0.85.
    """
    from accel import zoo
    from accel.zoo.sample import DEFAULTS

    target = zoo.load(ctx.model, device=ctx.device, dtype=ctx.dtype)
    vq = zoo.load(zoo.TOKENIZER[ctx.model], device=ctx.device, dtype=ctx.dtype)
    sc = replace(SamplingConfig(), **DEFAULTS.get(ctx.model, {}))
    if delta is None and lam is None:
        rule = ExactRule()
    else:
        table = neighbour_table(vq.quantize.embedding.weight, k + 1).to(ctx.device)  # raw codebook (research §3.2)
        rule = LanternRule(table, k=k, delta=delta, lam=lam, residual_kind=residual)
    tree_spec = None
    if tree is not None:
        from accel.speculative.tree import TREES

        tree_spec = TREES[tree]
    params = dict(drafter=drafter, gamma=gamma, delta=delta, k=k, lam=lam, tree=tree, residual=residual)
    return SpeculativeLlamaGen(name, target, load_drafter(drafter, target, ctx.device, ctx.dtype), rule, vq, sc,
                               gamma, tree_spec, params)


def _missing(drafter: str):
    def check(model: str) -> str | None:
        from accel import zoo

        need = [model, zoo.TOKENIZER.get(model, "fmnist-llamagen-vq")] + ([DRAFT] if drafter == "draft" else [])
        gone = [n for n in need if not zoo.is_available(n)]
        if drafter == "eagle" and not zoo.weights_path(EAGLE).is_file():
            gone.append(EAGLE)
        return f"zoo weights not trained in this copy: {', '.join(gone)}" if gone else None

    return check


def entry(name: str, quick: bool = False, **kw) -> MethodEntry:
    """A grid point as a harness entry timed against ``llamagen-ar``."""
    return MethodEntry(name, "llamagen", lambda ctx: build(ctx, name, **kw), models=(TARGET,), baseline="llamagen-ar",
                       experiment="lantern", params=dict(kw), quick=quick,
                       unavailable=_missing(kw.get("drafter", "draft")),
                       reference_fidelity=kw.get("delta") is not None or kw.get("lam") is not None)


BENCH_METHODS = [
    entry("sd-draft", quick=True, drafter="draft"),
    entry("lantern-draft", quick=True, drafter="draft", delta=0.1),
    entry("sd-eagle", drafter="eagle"),
    entry("lantern-eagle", drafter="eagle", delta=0.1),
]
