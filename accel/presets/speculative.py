"""Speculative decoding and LANTERN on the zoo LlamaGen, built through the public API and timed against
``llamagen-ar`` (same sampling settings: the target's model card).

γ = 3 by default: on the shared 2-core CPU a γ+1-token verify of the zoo target costs ~1.35 AR steps
(5 tokens: ~1.46) and an EAGLE draft step ~0.24, so longer chains only pay off at acceptance >~ 0.85, which the
CFG-trained head's stage 4 reaches (~0.87 per position): ``sd-eagle-cfg-auto`` measures γ on the device (5-7 at
batch 1, 3-4 at batch 8 on this CPU; results/lantern-s20).
"""
from __future__ import annotations

from accel import zoo
from accel.api.techniques import exact, lantern, snapkv, speculative
from accel.harness.registry import BuildContext, MethodEntry
from accel.presets.zoo_models import generator, zoo_missing

TARGET, DRAFT, EAGLE = "fmnist-llamagen", "fmnist-llamagen-draft", "fmnist-llamagen-eagle"
EAGLE_CFG = "fmnist-llamagen-eagle-cfg"  # EAGLE head trained on the target's own guided samples (drafter_cfg.py)
EAGLES = {"eagle": EAGLE, "eagle-cfg": EAGLE_CFG}


def load_drafter(kind: str, ctx: BuildContext):
    """``"draft"``: the zoo's small LlamaGen; ``"eagle"``: the EAGLE head trained on real codes with the
    unguided loss; ``"eagle-cfg"``: the EAGLE head trained on the target's guided samples (passed by zoo name:
    ``accel.speculative`` loads it onto the target's device and dtype)."""
    if kind == "draft":
        return generator(ctx, model=DRAFT)
    if kind in EAGLES:
        return EAGLES[kind]
    raise KeyError(f"unknown drafter {kind!r}; valid: {['draft', *EAGLES]}")


def build(ctx: BuildContext, name: str, drafter: str = "draft", delta: float | None = None, k: int = 1000,
          lam: float | None = None, gamma: int | str = 3, tree: str | None = None, residual: str = "official",
          drafts: str = "sampled", snapkv_budget: float | None = None, window: int = 4):
    """A method from its hyper-parameters: no ``delta``/``lam`` = exact speculative sampling; ``snapkv_budget``
    composes it with SnapKV on the target's cache (``window`` queries of each row chunk score the keys).
    ``drafts`` defaults to "sampled" here so the entries measured before the deterministic path keep their rule."""
    target = generator(ctx, tokenizer_dtype=True)
    rule = exact() if delta is None and lam is None else lantern(delta, k=k, lam=lam, residual=residual, drafts=drafts)
    policy = None if snapkv_budget is None else snapkv(snapkv_budget, window=window)
    m = speculative(target, load_drafter(drafter, ctx), rule=rule, gamma=gamma, tree=tree,
                    kv_policy=policy, name=name)
    m.params = dict(drafter=drafter, gamma=gamma, delta=delta, k=k, lam=lam, tree=tree, residual=residual,
                    drafts=None if delta is None and lam is None else drafts)
    if policy is not None:
        m.params.update(kv_policy="snapkv", budget=snapkv_budget, window=window, composition="lantern + snapkv")
    return m


def _missing(drafter: str):
    def check(model: str) -> str | None:
        why = zoo_missing(model, *([DRAFT] if drafter == "draft" else []))
        if drafter in EAGLES and not (EAGLES[drafter] in zoo.ZOO and zoo.weights_path(EAGLES[drafter]).is_file()):
            why = (why + ", " if why else "zoo weights not trained in this copy: ") + EAGLES[drafter]
        return why

    return check


def entry(name: str, quick: bool = False, **kw) -> MethodEntry:
    """A grid point as a harness entry timed against ``llamagen-ar``."""
    return MethodEntry(name, "llamagen", lambda ctx: build(ctx, name, **kw), models=(TARGET,), baseline="llamagen-ar",
                       experiment="lantern", params=dict(kw), quick=quick,
                       unavailable=_missing(kw.get("drafter", "draft")),
                       reference_fidelity=kw.get("delta") is not None or kw.get("lam") is not None)


ENTRIES = [
    entry("sd-draft", quick=True, drafter="draft"),
    entry("lantern-draft", quick=True, drafter="draft", delta=0.1),
    entry("sd-eagle", drafter="eagle"),
    entry("lantern-eagle", drafter="eagle", delta=0.1),
    # the released default LANTERN path: deterministic drafts, q = 1, one-step TV <= δ
    entry("lantern-det-draft", drafter="draft", delta=0.1, drafts="deterministic"),
    entry("lantern-det-eagle", drafter="eagle", delta=0.1, drafts="deterministic"),
    # issue 18: the head trained on the target's own CFG samples; deterministic LANTERN on the EAGLE-2 dynamic tree
    # whose node budget (8 of 8 + 3*64 candidates) the verify cost curve of the shared 2-core CPU picked
    # (experiments/lantern.py --grid dynamic; re-size it per device)
    entry("sd-eagle-cfg", quick=True, drafter="eagle-cfg"),
    # the same with the chain's γ measured on the device for each batch size (accel.size_gamma, issue 18 item 4)
    entry("sd-eagle-cfg-auto", quick=True, drafter="eagle-cfg", gamma="auto"),
    # the fastest deterministic LANTERN row within 10 % of AR's FID on the zoo (delta 0.4 on the gamma-5 argmax
    # chain, step TV <= delta; results/lantern-s17: 1.24x over AR at batch 1 on a quiet machine)
    entry("lantern-det-eagle-cfg", quick=True, drafter="eagle-cfg", delta=0.4, gamma=5, drafts="deterministic"),
    entry("lantern-det-eagle-cfg-dyn", drafter="eagle-cfg", delta=0.2, tree="dyn8-k8-d4", drafts="deterministic"),
    # the same with the node budget measured on the device for each batch size (accel.size_tree)
    entry("lantern-det-eagle-cfg-dynauto", drafter="eagle-cfg", delta=0.2, tree="dynauto-k8-d4",
          drafts="deterministic"),
    # composition: LANTERN on a SnapKV-compressed target cache (25 %, as llamagen-snapkv); a batch runs row by row
    entry("lantern-draft-snapkv", quick=True, drafter="draft", delta=0.1, snapkv_budget=0.25),
]
