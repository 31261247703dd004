"""CCA (guidance-free LlamaGen and VAR, arXiv 2410.09347) on the bench, timed against ``llamagen-ar`` /
``var-default`` (the base target with CFG at its card scale, i.e. a doubled batch at every step / scale).

- ``llamagen-cca``: the CCA fine-tune ``fmnist-llamagen-cca`` sampled guidance-free (cfg_scale 1.0: B rows).
- ``llamagen-nocfg``: the base ``fmnist-llamagen`` guidance-free (same cost as CCA; shows what the alignment,
  not the missing guidance, buys).
- ``llamagen-cfg{s}``: the base at other CFG scales (the CFG side of the paper's trade-off figure).
- ``sd-cca-draft``: composition: exact speculative decoding of the CCA target with the zoo draft, both
  guidance-free; ``lantern-cca-draft``: the same with LANTERN's relaxed acceptance (delta 0.1, k 1000).
- ``var-cca``: the CCA fine-tune ``fmnist-var-cca`` guidance-free (VAR ``cfg`` 0, i.e. ``cfg_scale`` 1.0: the
  conditional rows alone; the official VAR sampler would still run the null rows, research trap 8), with the
  paper's VAR sampling filter (top-k 900/4096 -> 112/512, top-p 0.96; its card).
- ``var-nocfg``: the base ``fmnist-var`` guidance-free with the same filter (same cost and settings as ``var-cca``).
"""
from __future__ import annotations

from accel.api.techniques import exact, lantern, speculative
from accel.harness.registry import BuildContext, MethodEntry
from accel.presets.zoo_models import generator, missing_with, zoo_missing
from accel.zoo.sample import DEFAULTS

BASE, CCA, DRAFT = "fmnist-llamagen", "fmnist-llamagen-cca", "fmnist-llamagen-draft"
VAR_BASE, VAR_CCA = "fmnist-var", "fmnist-var-cca"
CFG_SCALES = (1.5, 3.0)  # with 1.0 (nocfg) and the card's 2.0 (llamagen-ar): the base's CFG sweep


def cca(ctx: BuildContext):
    return generator(ctx, model=CCA, name="llamagen-cca")  # its card: cfg_scale 1.0


def base_at(scale: float, name: str):
    return lambda ctx: generator(ctx, name=name, cfg_scale=scale)


def sd_cca(ctx: BuildContext, delta: float | None = None):
    """The CCA target (guidance-free) verified against the zoo draft, also guidance-free (one row per image in
    both models): exact speculative sampling, or LANTERN's relaxed acceptance at ``delta`` (k = 1000, sampled
    drafts, as the ``lantern-draft`` entry)."""
    target = generator(ctx, model=CCA, tokenizer_dtype=True)
    draft = generator(ctx, model=DRAFT, cfg_scale=1.0)
    rule = exact() if delta is None else lantern(delta, k=1000, drafts="sampled")
    name = "sd-cca-draft" if delta is None else "lantern-cca-draft"
    return speculative(target, draft, rule=rule, gamma=3, name=name)


def var_cca(ctx: BuildContext):
    return generator(ctx, model=VAR_CCA, name="var-cca", cast=False)  # its card: cfg 0 (guidance-free)


# the CCA card's (the paper's) guidance-free VAR sampling filter, read from the card defaults (one source)
VAR_FREE = {k: DEFAULTS[VAR_CCA][k] for k in ("top_k", "top_p")}


def var_nocfg(ctx: BuildContext):
    return generator(ctx, name="var-nocfg", cast=False, cfg_scale=1.0, **VAR_FREE)  # same settings as var-cca


def _entry(name, build, quick, unavailable, **params):
    return MethodEntry(name, "llamagen", build, models=(BASE,), baseline="llamagen-ar", experiment="cca",
                       quick=quick, unavailable=unavailable, params=params)


def _var_entry(name, build, unavailable, **params):
    return MethodEntry(name, "var", build, models=(VAR_BASE,), baseline="var-default", experiment="cca",
                       quick=True, unavailable=unavailable, params=params)


ENTRIES = [
    _entry("llamagen-cca", cca, True, missing_with(CCA), model=CCA, cfg_scale=1.0),
    _entry("llamagen-nocfg", base_at(1.0, "llamagen-nocfg"), True, zoo_missing, model=BASE, cfg_scale=1.0),
    *[_entry(f"llamagen-cfg{s}", base_at(s, f"llamagen-cfg{s}"), False, zoo_missing, model=BASE, cfg_scale=s)
      for s in CFG_SCALES],
    _entry("sd-cca-draft", sd_cca, False, missing_with(CCA, DRAFT), model=CCA, drafter="draft", gamma=3,
           rule="exact", cfg_scale=1.0),
    _entry("lantern-cca-draft", lambda ctx: sd_cca(ctx, delta=0.1), False, missing_with(CCA, DRAFT), model=CCA,
           drafter="draft", gamma=3, rule="lantern", delta=0.1, k=1000, drafts="sampled", cfg_scale=1.0),
    _var_entry("var-cca", var_cca, missing_with(VAR_CCA), model=VAR_CCA, cfg_scale=1.0, **VAR_FREE),
    _var_entry("var-nocfg", var_nocfg, zoo_missing, model=VAR_BASE, cfg_scale=1.0, **VAR_FREE),
]
