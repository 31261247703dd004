"""One constructor per technique. Each takes family generators (``accel.load(...)``) or networks, never a
zoo context, and returns a Method: ``generate(cond, *, generator) -> Sample`` with images in [0, 1], the
work counters in ``stats`` and the tokens in ``stats["tokens"]``.

Sampling settings are the wrapped generator's (``accel.Sampling``): the baseline and the accelerated method
sample the same distribution unless the technique is lossy by design (LANTERN, DiSA, DD, cache compression).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from accel import zoo
from accel.annealing.disa import AdaptiveSchedule, AnnealedMAR
from accel.annealing.schedules import ConstantSchedule, Respacing, disa_schedule
from accel.api.generators import LlamaGenGenerator, MARGenerator, VARGenerator
from accel.api.load import check_eval
from accel.cache.calibrate import calibrate_var
from accel.cache.llamagen import CompressedLlamaGen, build_raster_policy
from accel.cache.method import CompressedVAR
from accel.cache.registry import build_policy
from accel.cache.budgets import choose_window
from accel.distill.decode import DistilledLlamaGen, DistilledVAR
from accel.distill.student_llamagen import DDLlamaGen
from accel.distill.student_var import DDVAR
from accel.models.llamagen import Transformer
from accel.models.mar import MAR
from accel.speculative.chain_sizing import ChainSizing
from accel.speculative.cspd import CSpDConfig
from accel.speculative.cspd_method import CSpDMAR
from accel.speculative.drafters import EagleDrafter, EagleHead, ModelDrafter
from accel.speculative.dynamic_tree import DynamicTree
from accel.speculative.lantern import LanternRule, neighbour_table
from accel.speculative.lantern_deterministic import DeterministicLanternRule
from accel.speculative.methods import SpeculativeLlamaGen
from accel.speculative.rules import ExactRule
from accel.speculative.tree import TREES, Tree
from accel.speculative.tree_sizing import TreeSizing
from accel.validate import check_speculative_setup


# ------------------------------------------------------------------------------------ speculative decoding
def exact() -> ExactRule:
    """Exact speculative sampling (Leviathan et al. 2023, Alg. 1): accept x ~ q with min(1, p(x)/q(x)),
    resample from norm(max(0, p - q)); the output law is the target's."""
    return ExactRule()


@dataclass(frozen=True)
class Lantern:
    """LANTERN relaxed acceptance (arXiv 2410.03355, Eq. 5-7): p̃ moves up to ``delta`` of total variation from
    the ``k`` latent neighbours of the draft token onto it; ``lam`` instead gives LANTERN++'s static bound.
    ``drafts="deterministic"`` (the released default path): top-m drafts, q = 1, the step keeps TV <= δ
    (``lantern_deterministic.py``); ``"sampled"``: sampled drafts with min(1, p̃/q) (LANTERN++ static tree)."""

    delta: float | None = 0.1
    k: int = 1000
    lam: float | None = None
    residual: str = "official"
    drafts: str = "deterministic"

    def rule(self, codebook: torch.Tensor) -> LanternRule | DeterministicLanternRule:
        table = neighbour_table(codebook, self.k + 1).to(codebook.device)  # raw codebook (research §3.2), capped at V-1
        if self.drafts == "deterministic":
            return DeterministicLanternRule(table, k=self.k, delta=self.delta)
        return LanternRule(table, k=self.k, delta=self.delta, lam=self.lam, residual_kind=self.residual)


def lantern(delta: float | None = 0.1, *, k: int = 1000, lam: float | None = None,
            residual: str = "official", drafts: str = "deterministic") -> Lantern:
    """LANTERN's rule; the neighbour table is built from the target tokenizer's codebook by ``speculative``.
    ``k`` neighbours (paper default 1000 of 16,384 codes) are capped at the codebook size - 1. ``drafts``:
    ``"deterministic"`` (default, the released code's δ path: argmax/top-m drafts accepted against p̃ with
    q = 1, one-step TV <= δ) or ``"sampled"`` (drafts sampled from q, accepted with min(1, p̃/q): the LANTERN++
    static-tree rule; ``lam`` and ``residual`` apply to it only)."""
    if drafts not in ("deterministic", "sampled"):
        raise ValueError(f"drafts={drafts!r}: must be 'deterministic' or 'sampled'")
    if lam is not None:
        if drafts == "deterministic":
            raise ValueError(f"lam={lam}: the LANTERN++ bound is the sampled static-tree rule; pass drafts='sampled'")
        delta = None
    if drafts == "deterministic" and delta is None:
        raise ValueError("delta=None: the deterministic path needs a delta in [0, 1]")
    if delta is not None and not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta={delta}: must be in [0, 1]")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}: must be an int >= 1")
    return Lantern(delta, k, lam, residual, drafts)


def speculative(target: LlamaGenGenerator, draft, *, rule=None, gamma: int | str = 3,
                tree: str | Tree | DynamicTree | None = None, kv_policy: "CachePolicySpec | None" = None,
                name: str | None = None) -> SpeculativeLlamaGen:
    """Speculative decoding of a LlamaGen ``target``.

    ``draft``: a smaller LlamaGen generator or network (same tokenizer), an EAGLE head (``EagleHead``) trained on
    this target, a drafter object, or a zoo name / zoo file of either (``"fmnist-llamagen-eagle-cfg"``, loaded onto
    the target's device and dtype). ``rule``: ``accel.exact()`` (default) or ``accel.lantern(...)``. ``gamma``:
    drafts per round (chain), or ``"auto"``: measured on the target's device for each batch size at its first call
    (``size_gamma``: the verify cost curve, the drafter's acceptance and step cost; a few seconds on the zoo).
    ``tree``: a static tree (``Tree`` or one of ``TREES``) instead of a chain, or an EAGLE-2 dynamic tree
    (LANTERN's released path: an EAGLE head and ``lantern(delta, drafts="deterministic")``; ``delta=0`` is exact):
    ``"dyn<N>-k<K>-d<D>"`` verifies the N best of K + (D-1)K² candidates drafted in D head forwards (LANTERN's
    code: N 58, K 10, D 4), ``"dynauto-k<K>-d<D>"`` measures N on the device for each batch size at its first
    call (``size_tree``), or a ``DynamicTree``.
    ``kv_policy``: compress the target's KV cache with a raster policy (``accel.snapkv(0.25)``, ...; chain,
    batch 1): every committed token attends to the keys the plain raster decode with that policy keeps.
    """
    if not isinstance(target, LlamaGenGenerator):
        raise TypeError(f"target: speculative decoding runs on a LlamaGen generator (accel.load(...)), got "
                        f"{type(target).__name__}")
    if gamma != "auto" and (isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1):
        raise ValueError(f"gamma={gamma!r}: must be an int >= 1 or 'auto'")
    tcfg = target.model.config
    draft = _zoo_network(draft, target.model)
    if isinstance(draft, LlamaGenGenerator):
        draft = draft.model
    if isinstance(draft, Transformer):
        drafter = ModelDrafter(draft)
    elif isinstance(draft, EagleHead):
        if draft.config.dim != tcfg.dim:  # the vocabulary is checked with every drafter's, below
            raise ValueError(f"draft: EAGLE head of dim {draft.config.dim} does not fit the target (dim {tcfg.dim}): "
                             "it reads the target's hidden states")
        drafter = EagleDrafter(draft, target.model)
    elif hasattr(draft, "propose") and hasattr(draft, "begin"):
        drafter = draft
    else:
        raise TypeError(f"draft: expected a LlamaGen generator or network, an EagleHead or a drafter, got "
                        f"{type(draft).__name__}")
    rule = exact() if rule is None else rule
    if isinstance(rule, Lantern):
        rule = rule.rule(target.tokenizer.quantize.embedding.weight)
    check_speculative_setup(target.model, drafter, rule)  # the decode loops' own check, here before any work
    spec = _tree_spec(tree)
    params = {"rule": getattr(rule, "name", type(rule).__name__), "gamma": gamma,
              "tree": tree if isinstance(tree, str) else getattr(spec, "name", None),
              "drafter": getattr(drafter, "name", type(drafter).__name__)}
    for k in ("delta", "k", "lam", "drafts"):
        if hasattr(rule, k):
            params[k] = getattr(rule, k)
    policy = None
    if kv_policy is not None:
        if not isinstance(kv_policy, CachePolicySpec):
            raise TypeError(f"kv_policy: expected accel.snapkv(...)/streamingllm(...)/..., got {type(kv_policy).__name__}")
        if spec is not None:
            raise ValueError("kv_policy composes with chain speculative decoding only (tree=None)")
        policy = _raster_policy(target, kv_policy)[0]
        params.update(kv_policy=kv_policy.name, budget=kv_policy.budget)
    return SpeculativeLlamaGen(name or f"speculative-{params['rule']}", target.model, drafter, rule, target.tokenizer,
                               target.config, gamma, spec, params, policy=policy)


def _tree_spec(tree) -> Tree | DynamicTree | None:
    """``speculative``'s ``tree`` argument as a tree object."""
    if tree is None or isinstance(tree, (Tree, DynamicTree)):
        return tree
    if not isinstance(tree, str):
        raise TypeError(f"tree: expected a name, a Tree or a DynamicTree, got {type(tree).__name__}")
    if tree.startswith("dyn"):
        return DynamicTree.from_name(tree)
    if tree not in TREES:
        raise KeyError(f"tree={tree!r}; valid: {sorted(TREES)} or 'dyn<N>-k<K>-d<D>' / 'dynauto-k<K>-d<D>'")
    return TREES[tree]


def size_tree(method: SpeculativeLlamaGen, batch_size: int = 1, *, budget_max: int = 40) -> TreeSizing:
    """The node budget of the method's EAGLE-2 dynamic tree with the most tokens per second on its device at
    ``batch_size``, measured (``accel.speculative.tree_sizing``: the verify cost curve, the expected accepted
    length of every budget from one calibration run, draft and loop costs), and set: the method decodes that
    batch size with it from now on (``method.sizings[batch_size]`` keeps the report). ``tree="dynauto-..."`` does
    this at the first call of each batch size. Tokens depend on the budget; the rule's per-step law does not."""
    if not isinstance(method, SpeculativeLlamaGen):
        raise TypeError(f"method: expected accel.speculative(...), got {type(method).__name__}")
    if not isinstance(method.tree, DynamicTree):
        raise ValueError("size_tree sizes a dynamic tree (accel.speculative(..., tree='dynauto-k8-d4')); a chain is "
                         "sized by size_gamma, a static tree has a fixed shape")
    return method.size(batch_size, budget_max=budget_max)


def size_gamma(method: SpeculativeLlamaGen, batch_size: int = 1, *, gamma_max: int = 8) -> ChainSizing:
    """The chain γ with the most tokens per second on the method's device at ``batch_size``, measured
    (``accel.speculative.chain_sizing``: the verify cost curve, the acceptance profile, draft and loop costs), and
    set: the method decodes that batch size with it from now on (``method.sizings[batch_size]`` keeps the report;
    other batch sizes keep the method's fixed γ, or are sized at their first call with ``gamma="auto"``).
    ``gamma="auto"`` does this at the first call of each batch size; calling it first keeps the measurement (a
    few seconds on the zoo) out of that call. Tokens depend on γ; the exact rule's law does not."""
    if not isinstance(method, SpeculativeLlamaGen):
        raise TypeError(f"method: expected accel.speculative(...), got {type(method).__name__}")
    if method.tree is not None:
        raise ValueError("size_gamma sizes a chain; a dynamic tree is sized by size_tree, a static tree has a fixed "
                         "shape")
    return method.size(batch_size, gamma_max=gamma_max)


# ------------------------------------------------------------------------------------------------- CSpD
def cspd(target: MARGenerator, draft: MARGenerator | MAR | str | Path | None, *, gamma: int = 32,
         verify: str = "left_to_right", prefill: float = 0.05, align: bool = True, schedule=None, relaxed: bool = False,
         conditioning: str = "released", name: str | None = None) -> CSpDMAR:
    """Continuous speculative decoding of a MAR ``target`` with a smaller MAR ``draft`` (arXiv 2411.11925):
    accept with min(1, p(x)/q(x)) on the diffusion heads' last-step densities (Eq. 3-5), residual by rejection
    sampling. ``verify``: ``"left_to_right"`` or the released code's ``"independent"``; ``schedule``: a DiSA
    step schedule for both heads (``accel.linear(50, 5)``; composition with DiSA); ``relaxed=True``: the released
    code's inner temperature 42 and reciprocal std product (not distribution-preserving). ``draft=None`` is the
    draft-free control (the target decodes each window from one pass). ``conditioning``: ``"released"`` (the
    target judges every draft of a window on the window-start context, one pass: paper and released code) or
    ``"textbook"`` (draft j judged given drafts 1..j-1, the window's prefixes batched in one padded call; with
    ``verify="left_to_right"`` and the exact rule the output has the law of the target alone, one token per
    AR step). ``draft`` may also be a MAR network or a zoo name / zoo file (``"fmnist-mar-draft-aligned"``),
    loaded onto the target's device and dtype."""
    if conditioning not in ("released", "textbook"):
        raise ValueError(f"conditioning must be 'released' or 'textbook', got {conditioning!r}")
    if not isinstance(target, MARGenerator):
        raise TypeError(f"target: CSpD needs a MAR generator (accel.load(...)), got {type(target).__name__}")
    draft = _zoo_network(draft, target.model)
    draft = draft.model if isinstance(draft, MARGenerator) else draft
    if draft is not None and not isinstance(draft, MAR):
        raise TypeError(f"draft: CSpD needs a MAR generator or network, got {type(draft).__name__}")
    if draft is not None and draft.cfg.token_embed_dim != target.model.cfg.token_embed_dim:
        raise ValueError("draft: its token size differs from the target's; CSpD needs the same tokenizer")
    kw = dict(gamma=gamma, verify=verify, prefill=prefill, align=align, schedule=schedule, conditioning=conditioning,
              head_steps=target.kwargs.get("head_steps", target.model.cfg.num_sampling_steps),
              temperature=target.sampling.temperature, cfg=target.sampling.cfg_scale,
              cfg_schedule=target.cfg_schedule)
    config = CSpDConfig.official(**kw) if relaxed else CSpDConfig(**kw)
    return CSpDMAR(target.model, draft, target.tokenizer, config,
                   name=name or "cspd")


# ------------------------------------------------------------------------------------------------- DiSA
def linear(upper: int = 50, lower: int = 5, *, clip: int | None = 950):
    """DiSA's linear annealing of the head's diffusion steps over AR steps, ``upper`` -> ``lower``
    (arXiv 2505.20297, Eq. 6), timesteps clipped at ``clip`` as the released code does (None: unclipped)."""
    return disa_schedule("linear", upper, lower, clip=clip)


def cosine(upper: int = 50, lower: int = 5, *, clip: int | None = 950):
    """DiSA's cosine annealing ``upper`` -> ``lower``."""
    return disa_schedule("cosine", upper, lower, clip=clip)


def two_stage(upper: int = 50, lower: int = 5, *, clip: int | None = 950):
    """DiSA's two-stage schedule: ``upper`` steps early, ``lower`` late."""
    return disa_schedule("two-stage", upper, lower, clip=clip)


def constant(steps: int = 100):
    """Plain MAR: ``steps`` head steps at every AR step (MAR's respacing, no clip)."""
    return ConstantSchedule(steps)


def adaptive(upper: int = 50, lower: int = 5, *, clip: int | None = 950):
    """Adaptive DiSA: the steps follow the spread of the head's x0 predictions at each AR step."""
    return AdaptiveSchedule(upper, lower, respacing=Respacing(clip=clip))


def disa(mar: MARGenerator, schedule, *, name: str | None = None) -> AnnealedMAR:
    """Diffusion step annealing of a MAR generator's head (``schedule``: ``accel.linear(50, 5)`` ...), at the
    generator's iterations and sampling settings."""
    if not isinstance(mar, MARGenerator):
        raise TypeError(f"mar: DiSA runs on a MAR generator (accel.load(...)), got {type(mar).__name__}")
    return AnnealedMAR(mar.model, mar.tokenizer, schedule, num_iter=mar.num_iter, cfg=mar.sampling.cfg_scale,
                       cfg_schedule=mar.cfg_schedule, temperature=mar.sampling.temperature, name=name)


# -------------------------------------------------------------------------------------- Distilled Decoding
def distilled(teacher: LlamaGenGenerator | VARGenerator, student: nn.Module | str, *, steps: int = 1,
              t2: int | None = None, split: int | None = None, teacher_involved: tuple[int, int] | bool | None = None,
              name: str | None = None):
    """Distilled Decoding (DD1, arXiv 2412.17153): a student that maps noise to the teacher's tokens in one
    (``steps=1``) or two (``steps=2``, second jump at ``t2``) passes, Eq. 9-10. ``student``: the network, or a
    zoo name / student file (``"fmnist-llamagen-dd"``).

    LlamaGen: ``t2`` defaults to 0.3125 n (80/256); ``split`` (None: every slot snapped to a code) reads slots before it
    from the logits and decodes the continuous head's vectors after it unsnapped (the released read-out);
    ``teacher_involved=(a, b)`` keeps the student's first ``a`` tokens,
    lets the teacher sample tokens ``a..b-1`` and finishes with one student jump from ``b`` (released
    ``combine_sample``). VAR: ``t2`` and the read-out ``split`` are scale indices (defaults: the released
    10 %-of-tokens rule for ``t2``, every scale from the logits for ``split``); ``teacher_involved=True``
    lets the teacher sample scales 1..t2-1.
    """
    if steps not in (1, 2):
        raise ValueError(f"steps={steps!r}: must be 1 or 2")
    student = _zoo_network(student, teacher.model, "student")
    if isinstance(teacher, LlamaGenGenerator):
        if not isinstance(student, DDLlamaGen):
            raise TypeError(f"student: a LlamaGen teacher needs a DDLlamaGen student, got {type(student).__name__}")
        return DistilledLlamaGen(student, teacher.tokenizer, steps=steps, t2=t2, teacher=teacher.model,
                                 sc=teacher.config, teacher_involved=teacher_involved or None, split=split,
                                 name=name)
    if isinstance(teacher, VARGenerator):
        if not isinstance(student, DDVAR):
            raise TypeError(f"student: a VAR teacher needs a DDVAR student, got {type(student).__name__}")
        return DistilledVAR(student, teacher.model, teacher.tokenizer, steps=steps, t2=t2, split=split,
                            teacher_involved=bool(teacher_involved), settings=teacher.kwargs, name=name)
    raise TypeError(f"teacher: Distilled Decoding runs on LlamaGen or VAR generators, got {type(teacher).__name__}")


def _zoo_network(source, like: nn.Module, what: str = "draft"):
    """``source`` as is (refused in training mode), or the network of a zoo name / zoo file, on ``like``'s device
    and dtype."""
    if not isinstance(source, (str, Path)):
        check_eval(source, what)
        return source
    p = next(like.parameters())
    return zoo.load(source, device=p.device, dtype=p.dtype)


# ----------------------------------------------------------------------------------------------- KV cache
@dataclass(frozen=True)
class CachePolicySpec:
    """A cache policy by name and budget, made concrete for a model by ``kv_compress``."""

    name: str
    budget: float
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"budget={self.budget}: must be in (0, 1] (fraction of the full cache)")


def scalekv(budget: float = 0.1, *, variant: str = "paper", calibration_images: int = 16, seed: int = 10_000,
            window: int | None = None) -> CachePolicySpec:
    """ScaleKV (arXiv 2505.19602): drafter/refiner layers from the Attention Selectivity Index, calibrated on
    ``calibration_images`` full-cache decodes (seeded) when ``kv_compress`` builds it. ``variant``: ``"paper"``
    or the released code's ``"code"``. VAR only."""
    if variant not in ("paper", "code"):
        raise ValueError(f"variant={variant!r}: must be 'paper' or 'code'")
    return CachePolicySpec("scalekv" if variant == "paper" else "scalekv-code", budget,
                           {"calibration_images": calibration_images, "seed": seed, "window": window})


def snapkv(budget: float = 0.1, *, window: int | None = None) -> CachePolicySpec:
    """SnapKV: keep the keys the last ``window`` queries attend to most."""
    return CachePolicySpec("snapkv", budget, {"window": window})


def pyramidkv(budget: float = 0.1, *, window: int | None = None) -> CachePolicySpec:
    """PyramidKV: SnapKV scoring with budgets decreasing with depth."""
    return CachePolicySpec("pyramidkv", budget, {"window": window})


def streamingllm(budget: float = 0.1, *, sinks: int = 4) -> CachePolicySpec:
    """StreamingLLM: ``sinks`` first positions plus the most recent ones."""
    return CachePolicySpec("streamingllm", budget, {"sinks": sinks})


def sliding(budget: float = 0.1) -> CachePolicySpec:
    """A sliding window over the most recent positions."""
    return CachePolicySpec("sliding", budget)


def kv_compress(model: VARGenerator | LlamaGenGenerator, policy: CachePolicySpec, *, name: str | None = None):
    """Decode ``model`` with its KV cache compressed by ``policy`` (``accel.scalekv(budget=0.1)`` ...).
    ``Sample.stats["kv_bytes"]`` is the peak cache the attention held."""
    if not isinstance(policy, CachePolicySpec):
        raise TypeError(f"policy: expected accel.scalekv(...)/snapkv(...)/..., got {type(policy).__name__}")
    o = policy.options
    if isinstance(model, VARGenerator):
        var, vae, s = model.model, model.tokenizer, model.kwargs
        w = o.get("window") or choose_window(var.patch_nums, var.depth, policy.budget)
        calib = None
        if policy.name.startswith("scalekv"):
            n = o["calibration_images"]
            calib = calibrate_var(var, vae, n_images=n, batch_size=n, seed=o["seed"], cfg=s["cfg"], top_k=s["top_k"],
                                  top_p=s["top_p"])
        extra = {"sinks": o["sinks"]} if "sinks" in o else {}
        pol = build_policy(policy.name, var.patch_nums, var.depth, policy.budget, window=w, calib=calib, **extra)
        m = CompressedVAR(var, vae, pol, name=name or f"var-{policy.name}", cfg=s["cfg"], top_k=s["top_k"],
                          top_p=s["top_p"])
        m.params = {"budget": policy.budget, "window": w, "policy": policy.name}
        return m
    if isinstance(model, LlamaGenGenerator):
        pol, kw = _raster_policy(model, policy)
        m = CompressedLlamaGen(model.model, model.tokenizer, pol, sc=model.config, name=name or f"llamagen-{policy.name}")
        m.params = {"budget": policy.budget, "policy": policy.name, **kw}
        return m
    raise TypeError(f"model: KV compression runs on VAR or LlamaGen generators, got {type(model).__name__}")


def _raster_policy(model: LlamaGenGenerator, policy: CachePolicySpec):
    """``policy`` for LlamaGen's raster decode (chunks of one token-grid row), and the options it was given."""
    kw = {k: v for k, v in policy.options.items() if k in ("window", "sinks") and v is not None}
    return build_raster_policy(policy.name, model.model, policy.budget, **kw), kw
