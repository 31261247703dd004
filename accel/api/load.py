"""``accel.load``: a family generator from a zoo name, a zoo file or training run, official checkpoint files,
or modules already in memory.

Sampling defaults come from the model card when the model has one (``generator.defaults_from`` says which);
keyword settings override them (``cfg_scale``, ``temperature``, ``top_k``, ``top_p``, ``greedy`` and the
family extras: LlamaGen ``cfg_interval``; MAR ``num_iter``, ``head_steps``, ``cfg_schedule``; VAR ``more_smooth``).
"""
from __future__ import annotations

from dataclasses import fields

import torch
from torch import nn

from accel import zoo
from accel.api.compile import compile as compile_method
from accel.api.generators import GENERATORS, LlamaGenGenerator, MARGenerator, VARGenerator
from accel.api.sampling import Sampling, from_family
from accel.models.kl_vae import AutoencoderKL, KLVAEConfig, load_kl_vae
from accel.models.llamagen import GPTConfig, Transformer, gpt_config, load_gpt
from accel.models.llamagen_vq import VQConfig, VQModel, load_vq, vq_config
from accel.models.mar import MAR, MARConfig, load_mar, preset as mar_preset
from accel.models.var import VAR, VARConfig, build_var, load_var_checkpoints, vae_config, var_config
from accel.models.var_vqvae import VQVAE, VQVAEConfig
from accel.zoo.sample import DEFAULTS

SAMPLING_KEYS = {f.name for f in fields(Sampling)}
EXTRAS = {"llamagen": ("cfg_interval",), "mar": ("num_iter", "head_steps", "cfg_schedule"), "var": ("more_smooth",)}
ZOO_KINDS = {"llamagen-gpt": "llamagen", "mar": "mar", "var": "var"}


def family_of(model: nn.Module) -> str:
    """The family of a generator network (LlamaGen ``Transformer``, ``MAR`` or ``VAR``)."""
    for cls, fam in ((Transformer, "llamagen"), (MAR, "mar"), (VAR, "var")):
        if isinstance(model, cls):
            return fam
    raise TypeError(f"{type(model).__name__} is not a LlamaGen Transformer, MAR or VAR network")


def check_eval(module, what: str) -> None:
    """Refuse a module in training mode: dropout (LlamaGen's released configs train with 0.1) would be active while
    sampling, silently."""
    if isinstance(module, nn.Module) and any(m.training for m in module.modules()):
        raise ValueError(f"{what}: {type(module).__name__} is in training mode (dropout and the like would be active "
                         "while sampling); call .eval() on it first")


def wrap(model: nn.Module, tokenizer: nn.Module, *, family: str | None = None, name: str | None = None,
         card: dict | None = None, defaults_from: str = "accel defaults", compile: bool | str | None = None,
         **settings):
    """A generator around modules already built (``card``: the family's own default settings, overridden by
    ``settings``; ``compile``: as in :func:`load`)."""
    family = family or family_of(model)
    if family not in GENERATORS:
        raise ValueError(f"family={family!r}; valid: {sorted(GENERATORS)}")
    want = {"llamagen": VQModel, "mar": AutoencoderKL, "var": VQVAE}[family]
    if not isinstance(tokenizer, want):
        raise TypeError(f"tokenizer: a {family} generator needs a {want.__name__}, got {type(tokenizer).__name__}")
    check_eval(model, "network")
    check_eval(tokenizer, "tokenizer")
    unknown = sorted(set(settings) - SAMPLING_KEYS - set(EXTRAS[family]))
    if unknown:
        raise ValueError(f"unknown settings {unknown} for a {family} generator; valid: "
                         f"{sorted(SAMPLING_KEYS | set(EXTRAS[family]))}")
    base, extras = from_family(family, card or {})
    sampling = base.replace(**{k: v for k, v in settings.items() if k in SAMPLING_KEYS})
    extras = {**{k: v for k, v in extras.items() if k in EXTRAS[family]},
              **{k: v for k, v in settings.items() if k in EXTRAS[family]}}
    kw = dict(sampling=sampling, defaults_from=defaults_from, **extras)
    if name:
        kw["name"] = name
    return compile_method(GENERATORS[family](model.eval(), tokenizer.eval(), **kw), compile)


def load(source, *, tokenizer=None, family: str | None = None, config=None, tokenizer_config=None,
         device: torch.device | str | None = None, dtype: torch.dtype | None = None, key: str | None = None,
         compile: bool | str | None = None, **settings) -> LlamaGenGenerator | MARGenerator | VARGenerator:
    """A family generator (``generate(cond, *, generator) -> Sample``).

    ``source`` is one of:

    - a zoo name (``"fmnist-llamagen"``, ``"fmnist-mar"``, ``"fmnist-var"``, their drafts); the tokenizer and
      the card's sampling defaults come with it;
    - a zoo ``.safetensors[.xz]`` file or an ``accel train`` run folder; ``tokenizer`` names a zoo tokenizer,
      a file, or a module;
    - an official checkpoint file with ``family`` and ``config`` (a preset name such as ``"GPT-XL"``,
      ``"mar_base"``, ``"d16"``, or a config object), ``tokenizer`` its tokenizer's file and
      ``tokenizer_config`` (default: the family's released tokenizer config);
    - a network module already built, with ``tokenizer`` its tokenizer module.

    ``compile``: ``True`` or a ``torch.compile`` mode (``"reduce-overhead"``, ``"max-autotune"``) compiles the
    network in place (``accel.compile``; compilation happens at the first call); default eager.
    """
    settings = {**settings, "compile": compile}
    if isinstance(source, nn.Module):
        if not isinstance(tokenizer, nn.Module):
            raise TypeError("tokenizer: pass the tokenizer module that decodes this network's tokens")
        return wrap(source.to(device=device, dtype=dtype), tokenizer.to(device=device, dtype=dtype),
                    family=family, **settings)
    if family is not None and config is not None:
        return _official(source, family, config, tokenizer, tokenizer_config, device, dtype, key, settings)
    name = str(source)
    if name in zoo.ZOO and zoo.ZOO[name][1] not in ("target", "draft"):
        raise ValueError(f"{name!r} is a zoo {zoo.ZOO[name][1]}, not a generator; generators: {sorted(zoo.TOKENIZER)}")
    model, info = zoo.load_with_info(name, device=device, dtype=dtype)
    fam = ZOO_KINDS.get(info["kind"])
    if fam is None:
        raise ValueError(f"{name}: a {info['kind']!r} model is not a generator; pass a LlamaGen, MAR or VAR model")
    if tokenizer is None:
        if name not in zoo.TOKENIZER:
            raise ValueError(f"{name}: say which tokenizer decodes it (tokenizer=<zoo name, file or module>)")
        tokenizer = zoo.TOKENIZER[name]
    tok = tokenizer if isinstance(tokenizer, nn.Module) else zoo.load(tokenizer, device=device, dtype=dtype)
    card = DEFAULTS.get(name)
    src = f"model card accel/zoo/cards/{name}.md" if card is not None else "accel defaults"
    return wrap(model, tok.to(device=device, dtype=dtype), family=fam, card=card, defaults_from=src, **settings)


def _official(path, family, config, tokenizer, tokenizer_config, device, dtype, key, settings):
    if tokenizer is None:
        raise ValueError("tokenizer: pass the path of the tokenizer checkpoint released with the model")
    if family == "llamagen":
        cfg = gpt_config(config) if isinstance(config, str) else _typed(config, GPTConfig, "config")
        vq_cfg = tokenizer_config or "VQ-16"
        vq_cfg = vq_config(vq_cfg) if isinstance(vq_cfg, str) else _typed(vq_cfg, VQConfig, "tokenizer_config")
        model = load_gpt(path, cfg, key=key, device=device, dtype=dtype)
        tok = load_vq(tokenizer, vq_cfg, device=device, dtype=dtype)
    elif family == "mar":
        cfg = mar_preset(config) if isinstance(config, str) else _typed(config, MARConfig, "config")
        vae_cfg = _typed(tokenizer_config or KLVAEConfig(), KLVAEConfig, "tokenizer_config")
        model = load_mar(path, cfg, key=key, device=device).to(dtype=dtype)
        tok = load_kl_vae(tokenizer, vae_cfg, device=device).to(dtype=dtype)
    elif family == "var":
        cfg = var_config(config) if isinstance(config, str) else _typed(config, VARConfig, "config")
        vae_cfg = vae_config(tokenizer_config) if isinstance(tokenizer_config, str) else _typed(
            tokenizer_config or vae_config(), VQVAEConfig, "tokenizer_config")
        tok, model = load_var_checkpoints(*build_var(cfg, vae_cfg), tokenizer, path, key=key)
        model, tok = model.to(device=device, dtype=dtype), tok.to(device=device, dtype=dtype)
    else:
        raise ValueError(f"family={family!r}; valid: {sorted(GENERATORS)}")
    return wrap(model, tok, family=family, **settings)


def _typed(value, cls, what: str):
    if isinstance(value, (cls, str)):
        return value
    raise TypeError(f"{what}: expected a preset name or a {cls.__name__}, got {type(value).__name__}")
