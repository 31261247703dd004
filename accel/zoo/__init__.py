"""The bundled model zoo: small models trained by accel on Fashion-MNIST (DESIGN.md §2).

``load(name_or_path)`` resolves, in this order: a zoo name (``fmnist-llamagen``, ...; the fp16 file under
``accel/zoo/weights/``, xz-compressed), a path to a zoo ``.safetensors[.xz]`` file, or a training run (its
folder or its ``last.pt``; EMA weights when the recipe keeps an EMA). Each zoo file names the builder (``kind``) and its
config, so loading needs nothing else. Missing weights raise with the command that trains them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from accel.checkpoint import load_strict, read_checkpoint
from accel.distill.student_llamagen import DDLlamaGen
from accel.distill.student_var import DDVAR
from accel.models.classifier import ClassifierConfig, FashionCNN
from accel.models.kl_vae import AutoencoderKL, KLVAEConfig
from accel.models.llamagen import GPTConfig, Transformer
from accel.models.llamagen_vq import VQConfig, VQModel
from accel.models.mar import MAR, MARConfig
from accel.models.var import VAR, VARConfig
from accel.models.var_vqvae import VQVAE, VQVAEConfig
from accel.speculative.drafters import EagleHead
from accel.train.loop import trained_model
from accel.train.recipes import get_recipe
from accel.zoo.store import is_zoo_path, read_zoo_file, zoo_file

WEIGHTS_DIR = Path(__file__).parent / "weights"
CARDS_DIR = Path(__file__).parent / "cards"

# zoo name -> (family, role, what it is)
ZOO = {
    "fmnist-cnn": ("metric", "classifier", "metric classifier CNN; its features define FID/KID/PR, class consistency"),
    "fmnist-llamagen-vq": ("llamagen", "tokenizer", "LlamaGen VQ tokenizer, 32x32 -> 8x8 tokens, 512 codes"),
    "fmnist-llamagen": ("llamagen", "target", "LlamaGen c2i GPT target"),
    "fmnist-llamagen-draft": ("llamagen", "draft", "LlamaGen c2i GPT draft (same tokenizer)"),
    "fmnist-mar-vae": ("mar", "tokenizer", "MAR KL-VAE, 32x32 -> 8x8 latents"),
    "fmnist-mar": ("mar", "target", "MAR target with diffusion head"),
    "fmnist-mar-draft": ("mar", "draft", "MAR draft with diffusion head"),
    "fmnist-mar-draft-aligned": ("mar", "draft", "fmnist-mar-draft distilled onto fmnist-mar for CSpD"),
    "fmnist-var-vqvae": ("var", "tokenizer", "VAR multi-scale VQVAE, scales ending at 8x8"),
    "fmnist-var": ("var", "target", "VAR target"),
    "fmnist-llamagen-dd": ("llamagen", "distilled", "DD1 one/two-step student of fmnist-llamagen"),
    "fmnist-llamagen-dd4": ("llamagen", "distilled", "DD1 one/two-step student of fmnist-llamagen, smaller: 4 of the "
                            "teacher's 8 layers"),
    "fmnist-var-dd": ("var", "distilled", "DD1 one/two-step student of fmnist-var"),
    "fmnist-var-dd4": ("var", "distilled", "DD1 one/two-step student of fmnist-var, smaller: depth 4 of the teacher's 6"),
    "fmnist-llamagen-eagle": ("llamagen", "drafter", "EAGLE drafter head of fmnist-llamagen (accel/train/drafter.py)"),
    "fmnist-llamagen-eagle-cfg": ("llamagen", "drafter", "EAGLE drafter head of fmnist-llamagen trained on its own "
                                  "CFG samples with a guided loss (accel/train/drafter_cfg.py)"),
    "fmnist-llamagen-cca": ("llamagen", "target", "CCA fine-tune of fmnist-llamagen, sampled guidance-free"),
    "fmnist-var-cca": ("var", "target", "CCA fine-tune of fmnist-var, sampled guidance-free"),
}
# Which tokenizer decodes each generator's output.
TOKENIZER = {"fmnist-llamagen": "fmnist-llamagen-vq", "fmnist-llamagen-draft": "fmnist-llamagen-vq",
             "fmnist-llamagen-cca": "fmnist-llamagen-vq",
             "fmnist-mar": "fmnist-mar-vae", "fmnist-mar-draft": "fmnist-mar-vae",
             "fmnist-mar-draft-aligned": "fmnist-mar-vae", "fmnist-var": "fmnist-var-vqvae",
             "fmnist-var-cca": "fmnist-var-vqvae"}


def _cnn(cfg: dict) -> nn.Module:
    return FashionCNN(ClassifierConfig(**{**cfg, "widths": tuple(cfg["widths"])}))


def _llamagen_vq(cfg: dict) -> nn.Module:
    return VQModel(VQConfig.from_dict(cfg))


def _llamagen_gpt(cfg: dict) -> nn.Module:
    return Transformer(GPTConfig.from_dict(cfg))


def _mar_vae(cfg: dict) -> nn.Module:
    return AutoencoderKL(KLVAEConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()}))


def _mar(cfg: dict) -> nn.Module:
    return MAR(MARConfig.from_dict(cfg))


def _var_vqvae(cfg: dict) -> nn.Module:
    return VQVAE(VQVAEConfig.from_dict({k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()}))


def _var(cfg: dict) -> nn.Module:
    cfg = dict(cfg)
    V, C = cfg.pop("_vocab_size"), cfg.pop("_Cvae")
    return VAR(VARConfig.from_dict({k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()}), V, C)


def _eagle(cfg: dict) -> nn.Module:
    return EagleHead(GPTConfig.from_dict(cfg))


def _dd_llamagen(cfg: dict) -> nn.Module:
    gpt = GPTConfig.from_dict(cfg["gpt"])
    # codes come from the file; files without the flag hold the first student (continuous head after the norm)
    return DDLlamaGen(gpt, torch.zeros(gpt.vocab_size, cfg["code_dim"]), conti_prenorm=cfg.get("conti_prenorm", False))


def _dd_var(cfg: dict) -> nn.Module:
    return DDVAR(VARConfig.from_dict(cfg["var"]), cfg["vocab_size"], cfg["Cvae"])  # codes come from the file


BUILDERS: dict[str, Callable[[dict], nn.Module]] = {
    "dd-llamagen": _dd_llamagen,
    "var-dd": _dd_var,
    "fmnist-cnn": _cnn,
    "llamagen-vq": _llamagen_vq,
    "llamagen-gpt": _llamagen_gpt,
    "mar-vae": _mar_vae,
    "mar": _mar,
    "var-vqvae": _var_vqvae,
    "var": _var,
    "llamagen-eagle": _eagle,
}


def names() -> list[str]:
    return sorted(ZOO)


def weights_path(name: str) -> Path:
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; valid: {names()}")

    return zoo_file(WEIGHTS_DIR, name)


def is_available(name: str | Path) -> bool:
    """Whether ``name`` can be loaded here: a zoo name whose weights are in this copy, or the path of an existing
    zoo-format file (``NAME.safetensors[.xz]``, which ``load`` takes too). Any other name raises ``KeyError``."""
    if str(name) not in ZOO and is_zoo_path(name):
        return Path(name).is_file()
    return weights_path(str(name)).is_file()


def available() -> list[str]:
    return [n for n in names() if is_available(n)]


def resolve(name_or_path: str | Path) -> Path:
    """The file behind a zoo name or a user path (zoo file, run folder or ``last.pt``)."""
    s = str(name_or_path)
    if s in ZOO:
        p = weights_path(s)
        if not p.is_file():
            raise FileNotFoundError(f"zoo model {s!r} is not trained in this copy of accel ({p} missing); "
                                    f"train it with `accel train {s}` (see accel/zoo/cards/{s}.md)")
        return p
    p = Path(s)
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(f"{s!r} is neither a zoo name ({', '.join(names())}) nor an existing file or run folder")
    return p


def load(name_or_path: str | Path, *, device: torch.device | str | None = None,
         dtype: torch.dtype | None = None) -> nn.Module:
    """The model (eval mode) for a zoo name or a user checkpoint, strictly loaded."""
    return load_with_info(name_or_path, device=device, dtype=dtype)[0]


def load_with_info(name_or_path: str | Path, *, device=None, dtype=None) -> tuple[nn.Module, dict]:
    path = resolve(name_or_path)
    if is_zoo_path(path):
        kind, cfg, info, tensors = read_zoo_file(path)
        if kind not in BUILDERS:
            raise KeyError(f"{path}: unknown zoo kind {kind!r}; valid: {sorted(BUILDERS)}")
        model = load_strict(BUILDERS[kind](cfg), tensors, what=str(path))
        info = {**info, "kind": kind, "config": cfg, "path": str(path)}
    else:
        model, info = _from_run(path)
    return model.to(device=device, dtype=dtype).eval(), info


def _from_run(path: Path) -> tuple[nn.Module, dict]:
    """A training checkpoint: rebuild the recipe it records and take its (EMA) weights."""
    state = read_checkpoint(path)  # weights_only: a pickle that would run code is refused, naming the file
    rec = state.get("recipe")
    if not isinstance(rec, dict) or "name" not in rec:
        raise ValueError(f"{path}: not an accel training checkpoint (no recipe); official checkpoints load "
                         "through the family loaders (accel.models.*.load_*)")
    recipe = get_recipe(rec["name"], **{k: v for k, v in rec.items() if k != "name"})
    model, info = trained_model(recipe, path.parent)
    return recipe.deployable(model), {**info, "kind": recipe.kind, "config": recipe.model_config(), "path": str(path)}


def classifier(device=None) -> nn.Module:
    """The metric classifier ``fmnist-cnn`` (``features_logits(images01)`` gives features and logits)."""
    return load("fmnist-cnn", device=device)


def reference_stats(name: str = "fmnist-cnn") -> dict[str, torch.Tensor]:
    """Real test-set feature statistics shipped with the classifier: ``ref_mean`` (D,), ``ref_cov`` (D, D),
    ``ref_bank`` (N, D) and ``ref_labels`` (N,), float32/long."""
    p = zoo_file(WEIGHTS_DIR, f"{name}-ref")
    if not p.is_file():
        raise FileNotFoundError(f"{p} missing; it is written by `accel train {name}` when training finishes")
    _, _, _, tensors = read_zoo_file(p)
    return tensors
