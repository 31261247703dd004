"""Recipes ``fmnist-llamagen-vq``, ``fmnist-llamagen`` (target GPT) and ``fmnist-llamagen-draft``.

VQ (official ``vq_loss``/``commit_loss`` on l2-normalised latents and codes, research §2): loss =
``||x - D(z_q)||^2`` + ``||sg(z) - e||^2`` + beta ``||z - sg(e)||^2`` (beta = 0.25). The official recipe adds
LPIPS and a PatchGAN loss; their weights cannot be fetched here, so this zoo tokenizer is trained with the
pixel and codebook terms only (stated in its card). 32x32 -> 8x8 tokens, 512 codes of dimension 8.

GPT (official c2i recipe: next-token cross-entropy over ``[class, codes]`` teacher-forced, label dropout
0.1 to the null class for CFG, AdamW betas (0.9, 0.95), wd 0.05, grad clip 1.0). Training sequences are
the codes of the train split and of its horizontal flips (official ``--flip`` augmentation), computed once
with the zoo VQ and cached in the run folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from accel import data, zoo
from accel.train.recipe import Recipe
from accel.checkpoint import atomic_save
from accel.models.llamagen import GPTConfig, Transformer
from accel.models.llamagen_vq import VQConfig, VQModel
from accel.zoo import load
from accel.zoo.cards import generator_quality

VQ_ZOO = dict(codebook_size=512, codebook_embed_dim=8, codebook_l2_norm=True, codebook_show_usage=False,
              encoder_ch_mult=(1, 2, 2), decoder_ch_mult=(1, 2, 2), z_channels=64, ch=32, num_res_blocks=1)
# Sized for a shared 2-core CPU (the issue's ~3M guide, depth preferred): depth 8 at width 160 (2.70M params),
# head_dim 32 (divisible by 4 for 2D RoPE), FFN hidden find_multiple(int(8 * 160 / 3), 32) = 448.
# The draft is ~1/10 of it: width 64, 4 layers (0.28M).
GPT_TARGET = dict(dim=160, n_layer=8, n_head=5, vocab_size=512, block_size=64, num_classes=10,
                  multiple_of=32, class_dropout_prob=0.1, token_dropout_p=0.1, resid_dropout_p=0.1,
                  ffn_dropout_p=0.1)
GPT_DRAFT = dict(dim=64, n_layer=4, n_head=4, vocab_size=512, block_size=64, num_classes=10,
                 multiple_of=32, class_dropout_prob=0.1, token_dropout_p=0.1, resid_dropout_p=0.1,
                 ffn_dropout_p=0.1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [-1, 1] (peak-to-peak 2)."""
    mse = (x.clamp(-1, 1) - y).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


@dataclass
class VQRecipe(Recipe):
    name: str = "fmnist-llamagen-vq"
    kind: str = "llamagen-vq"
    steps: int = 1500
    batch_size: int = 32
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    warmup: int = 100
    lr_schedule: str = "cosine"
    grad_clip: float = 1.0
    eval_every: int = 500
    ckpt_every: int = 100
    model: dict = field(default_factory=lambda: dict(VQ_ZOO))

    commit_beta: float = 0.25

    def build(self):
        return VQTraining(VQModel(VQConfig(**self.model)))

    def train_data(self, run_dir: Path, device):
        return data.load_arrays("train")

    def loss(self, model, batch, generator, step):
        x, _ = batch
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)  # official --flip augmentation
        rec, zc, e, idx = model(x)
        rec_loss = F.mse_loss(rec, x)
        codebook = F.mse_loss(e, zc.detach())  # ||sg(z) - e||^2
        commit = self.commit_beta * F.mse_loss(zc, e.detach())  # beta ||z - sg(e)||^2
        used = idx.unique().numel() / e.new_tensor(float(self.model["codebook_size"]))
        return rec_loss + codebook + commit, {"rec": rec_loss, "vq": codebook, "commit": commit, "usage_batch": used}

    def deployable(self, model):
        return model.vq

    def card_quality(self, name: str) -> dict:
        q = vq_quality(zoo.load(name), data.load_arrays("test")[0])
        return {"reconstruction PSNR (dB, test set, shipped fp16 weights)": round(q["psnr"], 2),
                "codebook usage (fraction of 512 codes used on the test set)": round(q["usage"], 4),
                "code perplexity": round(q["perplexity"], 1), "n": q["n"]}

    def card_notes(self) -> str:
        return ("Official LlamaGen VQ training adds an LPIPS perceptual loss and a PatchGAN adversarial loss; "
                "their pretrained weights cannot be fetched here, so this tokenizer is trained with the pixel MSE "
                "and the official codebook/commitment terms only (reconstructions are blurrier than a GAN-trained "
                "tokenizer's).")

    def evaluate(self, model, run_dir: Path) -> dict:
        return vq_quality(model.vq, data.load_arrays("val")[0])


class VQTraining(torch.nn.Module):
    """The VQ wrapped so that one ``forward`` yields every training term (what DDP needs)."""

    def __init__(self, vq):
        super().__init__()
        self.vq = vq

    def forward(self, x):
        zq_st, idx, zc = self.vq.quantize(self.vq.encode_pre_quant(x))
        e = self.vq.quantize.lookup(idx)  # (B, C, h, w), with gradient into the codebook
        return self.vq.decode(zq_st), zc, e, idx


@torch.no_grad()
def vq_quality(model, x: torch.Tensor, batch_size: int = 250) -> dict:
    """Reconstruction PSNR (dB, mean over images) and codebook usage (fraction of codes used, perplexity)."""
    model.eval()
    p, counts = [], torch.zeros(model.quantize.embedding.num_embeddings)
    for chunk in x.split(batch_size):
        zq, idx = model.encode(chunk)
        p.append(psnr(model.decode(zq), chunk))
        counts += torch.bincount(idx.flatten(), minlength=counts.numel()).float()
    probs = counts / counts.sum()
    perplexity = torch.exp(-(probs[probs > 0] * probs[probs > 0].log()).sum())
    return {"psnr": float(torch.cat(p).mean()), "usage": float((counts > 0).float().mean()),
            "perplexity": float(perplexity), "n": int(x.shape[0])}


def zoo_vq(device="cpu"):
    """The shipped LlamaGen VQ (for tokenising the GPT training data)."""
    return load("fmnist-llamagen-vq", device=device)


@torch.no_grad()
def encode_dataset(vq, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    vq.eval()
    return torch.cat([vq.encode(c)[1].flatten(1) for c in x.split(batch_size)])  # (N, h*w) long


@dataclass
class GPTRecipe(Recipe):
    kind: str = "llamagen-gpt"
    batch_size: int = 32
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup: int = 100
    lr_schedule: str = "cosine"
    grad_clip: float = 1.0
    eval_every: int = 500
    ckpt_every: int = 100

    def build(self):
        return Transformer(GPTConfig(**self.model))

    def train_data(self, run_dir: Path, device):
        return _codes(run_dir, "train")

    def loss(self, model, batch, generator, step):
        codes, labels = batch
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < self.model["class_dropout_prob"]
        cond = torch.where(drop, torch.full_like(labels, self.model["num_classes"]), labels)
        T = codes.shape[1]
        logits = model(codes[:, :-1], cond, input_pos=torch.arange(T, device=codes.device))  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))
        return loss, {}

    def card_quality(self, name: str) -> dict:
        return generator_quality(name)

    def card_notes(self) -> str:
        return ("Learning rate 1e-3 with cosine decay (official: constant 1e-4 for hundreds of epochs) to fit a "
                "shared 2-core CPU budget; the issue's size guide (~3M target) was reduced for the same reason.")

    def evaluate(self, model, run_dir: Path) -> dict:
        codes, labels = _val_codes(run_dir)
        T = codes.shape[1]
        losses = []
        for c, y in zip(codes.split(500), labels.split(500)):
            logits = model(c[:, :-1], y, input_pos=torch.arange(T, device=c.device))
            losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), c.reshape(-1), reduction="none"))
        return {"val_nll": float(torch.cat(losses).mean())}


def _codes(run_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences (N, 64) and labels of a split, encoded once by the shipped zoo VQ and cached in
    ``runs/_cache`` under the VQ file's hash (shared by the target and draft runs). The train split also
    holds the codes of its horizontal flips."""
    import hashlib


    vq_file = zoo.weights_path("fmnist-llamagen-vq")
    digest = hashlib.sha256(zoo.resolve("fmnist-llamagen-vq").read_bytes()).hexdigest()[:12]
    cache = Path(run_dir).parent / "_cache" / f"{vq_file.stem}-{digest}-{split}.pt"
    if cache.is_file():
        d = torch.load(cache, weights_only=True)
        return d["codes"], d["labels"]
    x, y = data.load_arrays(split)
    vq = zoo_vq()
    codes, labels = encode_dataset(vq, x), y
    if split == "train":
        codes, labels = torch.cat([codes, encode_dataset(vq, x.flip(-1))]), torch.cat([y, y])
    cache.parent.mkdir(parents=True, exist_ok=True)

    atomic_save({"codes": codes, "labels": labels}, cache)
    return codes, labels


def _val_codes(run_dir: Path):
    return _codes(run_dir, "val")


@dataclass
class TargetGPTRecipe(GPTRecipe):
    name: str = "fmnist-llamagen"
    steps: int = 1500
    model: dict = field(default_factory=lambda: dict(GPT_TARGET))


@dataclass
class DraftGPTRecipe(GPTRecipe):
    name: str = "fmnist-llamagen-draft"
    steps: int = 1500
    model: dict = field(default_factory=lambda: dict(GPT_DRAFT))
