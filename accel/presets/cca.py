"""CCA (guidance-free LlamaGen, arXiv 2410.09347) on the bench, timed against ``llamagen-ar`` (the base target
with CFG at its card scale, i.e. a doubled batch at every step).

- ``llamagen-cca``: the CCA fine-tune ``fmnist-llamagen-cca`` sampled guidance-free (cfg_scale 1.0: B rows).
- ``llamagen-nocfg``: the base ``fmnist-llamagen`` guidance-free (same cost as CCA; shows what the alignment,
  not the missing guidance, buys).
- ``llamagen-cfg{s}``: the base at other CFG scales (the CFG side of the paper's trade-off figure).
- ``sd-cca-draft``: composition: exact speculative decoding of the CCA target with the zoo draft, both
  guidance-free.
"""
from __future__ import annotations

from accel.api.techniques import exact, speculative
from accel.harness.registry import BuildContext, MethodEntry
from accel.presets.zoo_models import generator, missing_with, zoo_missing

BASE, CCA, DRAFT = "fmnist-llamagen", "fmnist-llamagen-cca", "fmnist-llamagen-draft"
CFG_SCALES = (1.5, 3.0)  # with 1.0 (nocfg) and the card's 2.0 (llamagen-ar): the base's CFG sweep


def cca(ctx: BuildContext):
    return generator(ctx, model=CCA, name="llamagen-cca")  # its card: cfg_scale 1.0


def base_at(scale: float, name: str):
    return lambda ctx: generator(ctx, name=name, cfg_scale=scale)


def sd_cca(ctx: BuildContext):
    target = generator(ctx, model=CCA, tokenizer_dtype=True)
    draft = generator(ctx, model=DRAFT, cfg_scale=1.0)
    return speculative(target, draft, rule=exact(), gamma=3, name="sd-cca-draft")


def _entry(name, build, quick, unavailable, **params):
    return MethodEntry(name, "llamagen", build, models=(BASE,), baseline="llamagen-ar", experiment="cca",
                       quick=quick, unavailable=unavailable, params=params)


ENTRIES = [
    _entry("llamagen-cca", cca, True, missing_with(CCA), model=CCA, cfg_scale=1.0),
    _entry("llamagen-nocfg", base_at(1.0, "llamagen-nocfg"), True, zoo_missing, model=BASE, cfg_scale=1.0),
    *[_entry(f"llamagen-cfg{s}", base_at(s, f"llamagen-cfg{s}"), False, zoo_missing, model=BASE, cfg_scale=s)
      for s in CFG_SCALES],
    _entry("sd-cca-draft", sd_cca, False, missing_with(CCA, DRAFT), model=CCA, drafter="draft", gamma=3,
           rule="exact", cfg_scale=1.0),
]
