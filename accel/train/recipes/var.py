"""Recipes ``fmnist-var-vqvae`` (multi-scale residual VQVAE, scales (1,2,3,4,5,6,8)) and ``fmnist-var``.

VQVAE (VAR paper §3.2, Algorithm 1; the official quantiser's training loss): per scale k the residual is
area-downsampled, quantised, bicubic-upsampled and passed through phi_k, accumulated into f_hat; the loss
per scale is ``beta ||sg(f_hat_k) - f||^2 + ||f_hat_k - sg(f)||^2`` (mean over scales), the decoder sees
f_hat with a straight-through gradient to f, plus pixel MSE. (VAR's tokenizer recipe adds LPIPS and a GAN
loss; unavailable offline, stated in the card.)

VAR (paper Eq. 6): teacher-forced cross-entropy over all L = sum pn^2 tokens under the block-causal mask,
label dropout 0.1 to the null class, AdamW betas (0.9, 0.95), wd 0.05, grad clip 2 (official defaults).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from accel import data, zoo
from accel.train.recipe import Recipe
from accel.models.var import VAR, VARConfig
from accel.models.var_vqvae import VQVAE, VQVAEConfig
from accel.train.recipes.llamagen import psnr
from accel.zoo.cards import generator_quality

PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8)
VQVAE_ZOO = dict(vocab_size=512, z_channels=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                 v_patch_nums=PATCH_NUMS, share_quant_resi=4, quant_resi=0.5, test_mode=False)
VAR_ZOO = dict(num_classes=10, depth=6, embed_dim=160, num_heads=5, patch_nums=PATCH_NUMS, drop_path_rate=0.0)


def _vqvae(cfg: dict):
    return VQVAE(VQVAEConfig.from_dict({k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()}))


class VQVAETraining(torch.nn.Module):
    """Algorithm 1 with gradients: returns (reconstruction, mean VQ loss over scales, indices per scale)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x):
        q = self.vae.quantize
        f = self.vae.img_to_f(x)  # (B, C, H, W)
        B, C, H, W = f.shape
        pns, SN = q.v_patch_nums, len(q.v_patch_nums)
        f_rest, f_hat = f.detach().clone(), torch.zeros_like(f)
        vq_loss, idxs = 0.0, []
        for si, pn in enumerate(pns):
            z = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != SN - 1 else f_rest
            idx = q.nearest(z.permute(0, 2, 3, 1).reshape(-1, C))
            h = q.embedding(idx.view(B, pn, pn)).permute(0, 3, 1, 2)  # gradient into the codebook
            if si != SN - 1:
                h = F.interpolate(h, size=(H, W), mode="bicubic")
            h = q.phi(si, h.contiguous())
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            vq_loss = vq_loss + q.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f.detach())
            idxs.append(idx.view(B, pn * pn))
        f_st = f + (f_hat - f).detach()  # straight-through, as the official quantiser
        rec = self.vae.decoder(self.vae.post_quant_conv(f_st))
        return rec, vq_loss / SN, idxs


@dataclass
class VQVAERecipe(Recipe):
    name: str = "fmnist-var-vqvae"
    kind: str = "var-vqvae"
    steps: int = 1500
    batch_size: int = 32
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.95)
    warmup: int = 100
    lr_schedule: str = "cosine"
    grad_clip: float = 1.0
    eval_every: int = 500
    ckpt_every: int = 100
    model: dict = field(default_factory=lambda: dict(VQVAE_ZOO))

    def build(self):
        return VQVAETraining(_vqvae(self.model))

    def train_data(self, run_dir: Path, device):
        return data.load_arrays("train")

    def loss(self, model, batch, generator, step):
        x, _ = batch
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        rec, vq, idxs = model(x)
        rec_loss = F.mse_loss(rec, x)
        return rec_loss + vq, {"rec": rec_loss, "vq": vq}

    @torch.no_grad()
    def evaluate(self, model, run_dir: Path) -> dict:
        return vqvae_quality(model.vae, data.load_arrays("val")[0])

    def card_quality(self, name: str) -> dict:
        q = vqvae_quality(zoo.load(name), data.load_arrays("test")[0])
        return {"reconstruction PSNR (dB, test set)": round(q["psnr"], 2),
                "codebook usage (test set, all scales)": round(q["usage"], 3), "n": 10000}

    def model_config(self) -> dict:
        return {**self.model, "test_mode": True}  # the shipped tokenizer loads frozen, in eval mode

    def deployable(self, model):
        return model.vae


@torch.no_grad()
def vqvae_quality(vae, x: torch.Tensor) -> dict:
    """Reconstruction PSNR and the fraction of codes used over every scale's indices of ``x``."""
    vae.eval()
    p = torch.cat([psnr(vae.img_to_reconstructed_img(c), c) for c in x.split(250)])
    used = torch.zeros(vae.vocab_size, dtype=torch.bool)
    for c in x.split(250):
        for idx in vae.img_to_idxBl(c):
            used[idx.flatten()] = True
    return {"psnr": float(p.mean()), "usage": float(used.float().mean())}


@dataclass
class VARRecipe(Recipe):
    name: str = "fmnist-var"
    kind: str = "var"
    steps: int = 3000
    batch_size: int = 32
    lr: float = 8e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup: int = 100
    lr_schedule: str = "cosine"
    grad_clip: float = 2.0
    eval_every: int = 0
    ckpt_every: int = 100
    model: dict = field(default_factory=lambda: dict(VAR_ZOO))

    def build(self):
        cfg = VARConfig.from_dict({k: (tuple(v) if isinstance(v, list) else v) for k, v in self.model.items()})
        var = VAR(cfg, VQVAE_ZOO["vocab_size"], VQVAE_ZOO["z_channels"])
        var.init_weights(generator=torch.Generator().manual_seed(0))
        return var

    def train_data(self, run_dir: Path, device):
        """Per-scale indices of the train split and its flips, from the shipped VQVAE, cached."""
        cache = Path(run_dir) / "codes.pt"
        if cache.is_file():
            d = torch.load(cache, weights_only=True)
            return d["codes"], d["inputs"], d["labels"]

        vae = zoo.load("fmnist-var-vqvae")
        x, y = data.load_arrays("train")
        codes, inputs = [], []
        with torch.no_grad():
            for xx in (x, x.flip(-1)):
                for c in xx.split(500):
                    idx = vae.img_to_idxBl(c)
                    codes.append(torch.cat(idx, dim=1))  # (b, L)
                    inputs.append(vae.quantize.idxBl_to_var_input(idx).half())  # (b, L - 1, Cvae)
        out = {"codes": torch.cat(codes), "inputs": torch.cat(inputs), "labels": torch.cat([y, y])}
        torch.save(out, cache)
        return out["codes"], out["inputs"], out["labels"]

    def loss(self, model, batch, generator, step):
        codes, inputs, labels = batch
        logits = model(labels, inputs.float(), cond_drop_rate=self.cond_drop_rate, generator=generator)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1)), {}

    cond_drop_rate: float = 0.1

    def model_config(self) -> dict:
        return {**self.model, "_vocab_size": VQVAE_ZOO["vocab_size"], "_Cvae": VQVAE_ZOO["z_channels"]}

    def card_quality(self, name: str) -> dict:
        return generator_quality(name)
