"""Plain (unaccelerated) sampling of zoo generators with their documented default settings.

``sample(name, labels, generator=...)`` returns images in [0, 1], (B, 3, 32, 32). The defaults per model
(``DEFAULTS``) are the settings its model card reports quality for; pass keyword overrides to change them.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from accel import zoo
from accel.models.llamagen_generate import generate, SamplingConfig
from accel.models.mar import decode_tokens, sample_tokens
from accel.validate import check_mar_sampling, check_var_sampling

# Documented default sampling settings per zoo generator (see each model card).
DEFAULTS: dict[str, dict] = {
    "fmnist-llamagen": dict(cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0),
    "fmnist-llamagen-draft": dict(cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0),
    "fmnist-mar": dict(num_iter=16, cfg=5.0, cfg_schedule="constant", temperature=1.0, head_steps=50),
    "fmnist-mar-draft": dict(num_iter=16, cfg=5.0, cfg_schedule="constant", temperature=1.0, head_steps=50),
    "fmnist-llamagen-cca": dict(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0),  # CCA: guidance-free
    "fmnist-var": dict(cfg=1.5, top_k=0, top_p=0.0, more_smooth=False),
    # CCA: guidance-free, with the paper's VAR sampling filter (top-k 900 of 4096 = 22% -> 112 of 512, top-p 0.96)
    "fmnist-var-cca": dict(cfg=0.0, top_k=112, top_p=0.96, more_smooth=False),
}


# Settings each family's sampler takes (keys of ``--set``); MAR's ``cfg`` is the same guidance scale as
# LlamaGen's ``cfg_scale`` (uncond + s (cond - uncond)), so that name is accepted for it too. VAR's ``cfg`` is
# its own ramped convention (t = cfg * si / (S-1), (1 + t) cond - t uncond) and keeps its own name.
SETTINGS = {"llamagen": ("cfg_scale", "cfg_interval", "temperature", "top_k", "top_p", "sample_logits"),
            "mar": ("num_iter", "cfg", "cfg_schedule", "temperature", "head_steps"),
            "var": ("cfg", "top_k", "top_p", "more_smooth")}
ALIASES = {"mar": {"cfg_scale": "cfg"}}


def check_overrides(family: str, name: str, overrides: dict) -> dict:
    """``overrides`` with aliases resolved; an unknown key raises ``KeyError`` listing the valid ones."""
    if family not in SETTINGS:
        return dict(overrides)
    out = {}
    for k, v in overrides.items():
        k2 = ALIASES.get(family, {}).get(k, k)
        if k2 not in SETTINGS[family]:
            hint = " (VAR's guidance is `cfg`, ramped over scales)" if (family, k) == ("var", "cfg_scale") else ""
            raise KeyError(f"unknown sampling setting {k!r} for {name} ({family}){hint}; "
                           f"valid: {', '.join(SETTINGS[family])}")
        out[k2] = v
    return out


def check_settings(family: str, settings: dict) -> None:
    """Range checks of a family's sampling settings (the samplers repeat them; this fails before any work)."""
    if family == "llamagen":
        replace(SamplingConfig(), **settings)  # validated in SamplingConfig.__post_init__
    elif family == "mar":
        check_mar_sampling(cfg=settings.get("cfg", 1.0), temperature=settings.get("temperature", 1.0))
    elif family == "var":
        check_var_sampling(cfg=settings.get("cfg", 1.5), top_k=settings.get("top_k", 0),
                           top_p=settings.get("top_p", 0.0))


class ZooSampler:
    """A zoo generator plus its tokenizer, loaded once; ``__call__(labels, generator)`` -> images in [0, 1]."""

    def __init__(self, name: str, device="cpu", *, tokenizer: str | None = None, **overrides):
        """``name``: a zoo generator, or a user file/run (then ``tokenizer`` names its tokenizer)."""
        if name not in zoo.TOKENIZER and tokenizer is None:
            raise KeyError(f"{name!r} is not a zoo generator (valid: {sorted(zoo.TOKENIZER)}); "
                           "for a user checkpoint pass tokenizer=<zoo name or path>")
        self.name, self.device = str(name), torch.device(device)
        self.model, info = zoo.load_with_info(name, device=device)
        self.family = info["kind"].split("-")[0]
        self.settings = {**DEFAULTS.get(self.name, {}), **check_overrides(self.family, self.name, overrides)}
        check_settings(self.family, self.settings)  # out-of-range values fail here, before any sampling
        self.tokenizer = zoo.load(tokenizer or zoo.TOKENIZER[self.name], device=device)

    @torch.no_grad()
    def __call__(self, labels: Tensor, *, generator: torch.Generator) -> Tensor:
        labels = labels.to(self.device)
        if self.family == "llamagen":
            sc = replace(SamplingConfig(), **self.settings)
            codes = generate(self.model, labels, sc=sc, generator=generator)  # (B, h*w)
            g = self.model.config.grid_size
            x = self.tokenizer.decode_code(codes, hw=(g, g))
        elif self.family == "mar":
            toks = sample_tokens(self.model, labels, generator=generator, **self.settings).tokens
            return decode_tokens(self.tokenizer, toks).float()  # already in [0, 1]
        elif self.family == "var":
            return self.model.autoregressive_infer_cfg(self.tokenizer, labels.shape[0], labels, generator=generator,
                                                       **self.settings).images.float().clamp(0, 1)
        else:
            raise NotImplementedError(f"sampling for family {self.family!r} has not landed in the zoo yet")
        return ((x.float() + 1) / 2).clamp(0, 1)


def sample(name: str, labels: Tensor, *, generator: torch.Generator, device="cpu", **overrides) -> Tensor:
    return ZooSampler(name, device, **overrides)(labels, generator=generator)


def class_grid_labels(per_class: int, num_classes: int = 10) -> Tensor:
    """Labels for a grid with one row per class: [0]*per_class + [1]*per_class + ..."""
    return torch.arange(num_classes).repeat_interleave(per_class)


def to_grid(images: Tensor, ncol: int, pad: int = 2) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> one (3, rows*(H+pad)+pad, ncol*(W+pad)+pad) image, white padding."""
    B, C, H, W = images.shape
    rows = math.ceil(B / ncol)
    grid = torch.ones(C, rows * (H + pad) + pad, ncol * (W + pad) + pad)
    for i in range(B):
        r, c = divmod(i, ncol)
        grid[:, pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = images[i]
    return grid


def save_png(img: Tensor, path) -> None:
    """Write a (3, H, W) [0, 1] image as PNG (matplotlib, no extra dependency)."""
    import matplotlib.image

    matplotlib.image.imsave(str(path), img.detach().permute(1, 2, 0).clamp(0, 1).cpu().numpy())
