"""The bundled zoo as the bench sees it: which models exist here, how a preset loads a generator from a
``BuildContext``, and the metric classifier's reference statistics."""
from __future__ import annotations

import torch

from accel import zoo
from accel.api.load import wrap
from accel.harness.quality import FeatureReference
from accel.harness.registry import BuildContext
from accel.zoo.sample import DEFAULTS

CLASSIFIER = "fmnist-cnn"


def load_reference(device: torch.device | str = "cpu") -> FeatureReference:
    """The zoo classifier's features and the shipped real test-set statistics (never the dataset itself)."""
    clf = zoo.classifier(device=device)
    ref = zoo.reference_stats(CLASSIFIER)

    def extract(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return clf.features_logits(images.float().clamp(0, 1))

    stats = (ref["ref_mean"].double().numpy(), ref["ref_cov"].double().numpy())
    return FeatureReference(CLASSIFIER, extract, stats, ref["ref_bank"].double().numpy())


def defaults(model: str) -> dict:
    """The model card's sampling settings (the family's own names)."""
    return dict(DEFAULTS.get(model, {}))


def zoo_missing(model: str, *extra: str) -> str | None:
    """Why ``model`` cannot run from the zoo here (its weights, its tokenizer's, or ``extra`` zoo names are not
    trained in this copy), or None. Every preset's ``unavailable`` builds on this."""
    try:
        need = [model, zoo.TOKENIZER[model], *extra]
        missing = [n for n in need if not zoo.is_available(n)]
    except KeyError as e:
        return f"the zoo cannot provide {model!r} (KeyError: {e})"
    return f"zoo weights not trained in this copy: {', '.join(missing)} (see `accel train`)" if missing else None


def missing_with(*extra: str):
    """``unavailable`` for entries that need ``extra`` zoo models besides the generator."""
    return lambda model: zoo_missing(model, *extra)


def generator(ctx: BuildContext, *, name: str | None = None, cast: bool = True, tokenizer_dtype: bool = False,
              model: str | None = None, **settings):
    """``ctx.model`` (or ``model``) as a public-API generator with its card's settings. ``cast``: the network in
    ``ctx.dtype`` (LlamaGen's official sampling casts the GPT; MAR and VAR keep fp32 under the harness's
    autocast); ``tokenizer_dtype``: the tokenizer too."""
    m = model or ctx.model
    net = zoo.load(m, device=ctx.device, dtype=ctx.dtype if cast else None)
    tok = zoo.load(zoo.TOKENIZER[m], device=ctx.device, dtype=ctx.dtype if tokenizer_dtype else None)
    return wrap(net, tok, card=defaults(m), defaults_from=f"model card accel/zoo/cards/{m}.md",
                **({"name": name} if name else {}), **settings)
