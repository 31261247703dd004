"""Zoo recipes by zoo name. Each entry is ``"module:Class"``, imported only when used."""
from __future__ import annotations

import importlib

from accel.train.recipe import Recipe

RECIPES = {
    "fmnist-cnn": "accel.train.recipes.classifier:ClassifierRecipe",
    "fmnist-llamagen-vq": "accel.train.recipes.llamagen:VQRecipe",
    "fmnist-llamagen": "accel.train.recipes.llamagen:TargetGPTRecipe",
    "fmnist-llamagen-draft": "accel.train.recipes.llamagen:DraftGPTRecipe",
    "fmnist-mar-vae": "accel.train.recipes.mar:VAERecipe",
    "fmnist-mar": "accel.train.recipes.mar:TargetMARRecipe",
    "fmnist-mar-draft": "accel.train.recipes.mar:DraftMARRecipe",
    "fmnist-var-vqvae": "accel.train.recipes.var:VQVAERecipe",
    "fmnist-var": "accel.train.recipes.var:VARRecipe",
    # the technique-specific students and drafters
    "fmnist-llamagen-eagle": "accel.train.drafter:EagleRecipe",
    "fmnist-llamagen-eagle-cfg": "accel.train.drafter_cfg:EagleCFGRecipe",
    "fmnist-llamagen-dd": "accel.train.recipes.dd_llamagen:LlamaGenDistillRecipe",
    "fmnist-llamagen-dd4": "accel.train.recipes.dd_llamagen:LlamaGenDistill4Recipe",
    "fmnist-var-dd": "accel.train.recipes.dd_var:VARDistillRecipe",
    "fmnist-var-dd4": "accel.train.recipes.dd_var:VARDistill4Recipe",
    "fmnist-llamagen-cca": "accel.train.recipes.cca:LlamaGenCCARecipe",
    "fmnist-mar-draft-aligned": "accel.train.recipes.mar_draft_aligned:AlignedDraftRecipe",
    "fmnist-var-cca": "accel.train.recipes.cca:VARCCARecipe",
    "toy": "accel.train.recipes.toy:ToyRecipe",
}
ALIASES = {"classifier": "fmnist-cnn"}


def get_recipe(name: str, **overrides) -> Recipe:
    name = ALIASES.get(name, name)
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; valid: {sorted(RECIPES) + sorted(ALIASES)}")
    mod, cls = RECIPES[name].split(":")
    return getattr(importlib.import_module(mod), cls)(**overrides)
