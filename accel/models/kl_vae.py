"""MAR's KL-16 tokenizer: the LDM ``AutoencoderKL`` (Rombach et al., arXiv 2112.10752) as used by LTH14/mar.

Re-implemented from ``shared/research/cspd_mar_disa.md`` §1.4 and ``shared/fixtures/mar/README.md``; key
names equal the official ones, so ``kl16.ckpt["model"]`` loads strictly (its ``loss.*`` discriminator keys
are ignored with a logged count, nothing else). MAR scales latents by ``accel.models.mar.LATENT_SCALE``.

The official ``AutoencoderKL(embed_dim, ch_mult)`` hard-codes ch=128, num_res_blocks=2, resolution=256,
encoder attention at running resolution 16, none in decoder levels; here they are config fields so small
models (and the fixtures, built with overridden Encoder/Decoder defaults) use the same code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from accel.checkpoint import CheckpointMismatch, load_strict, read_state_dict
from accel.models import conv_blocks as blocks

LOGVAR_RANGE = (-30.0, 20.0)  # DiagonalGaussianDistribution clamps the log-variance to this range


@dataclass(frozen=True)
class KLVAEConfig:
    """Defaults = the real KL-16 (``AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4))``)."""

    embed_dim: int = 16
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    use_variational: bool = True
    ch: int = 128
    num_res_blocks: int = 2
    resolution: int = 256  # only decides where attention sits (levels whose running size is in attn_*)
    in_channels: int = 3
    out_ch: int = 3
    encoder_attn_resolutions: tuple[int, ...] = (16,)
    decoder_attn_resolutions: tuple[int, ...] = ()
    num_groups: int = 32
    norm_eps: float = 1e-6

    @classmethod
    def from_dict(cls, d: dict) -> "KLVAEConfig":
        """From a fixture's ``vae_*_config.json`` (official arguments + Encoder/Decoder overrides)."""
        enc = {**d.get("encoder_fixed_defaults", {}), **d.get("encoder_overrides", {})}
        dec = {**d.get("decoder_fixed_defaults", {}), **d.get("decoder_overrides", {})}
        kw = {"embed_dim": d["embed_dim"], "ch_mult": tuple(d["ch_mult"]), "use_variational": d.get("use_variational", True)}
        for name in ("ch", "num_res_blocks", "resolution", "in_channels", "out_ch"):
            vals = {enc[name], dec[name]} if name in enc and name in dec else {enc.get(name, dec.get(name))} - {None}
            if len(vals) > 1:
                raise ValueError(f"encoder/decoder differ in {name} ({enc[name]} vs {dec[name]}): not supported")
            if vals:
                kw[name] = vals.pop()
        for side, dd in (("encoder", enc), ("decoder", dec)):
            if "attn_resolutions" in dd:
                kw[f"{side}_attn_resolutions"] = tuple(dd["attn_resolutions"])
            if dd.get("z_channels", kw["embed_dim"]) != kw["embed_dim"]:
                raise ValueError("AutoencoderKL passes z_channels=embed_dim; the config disagrees")
            for flag, want in (("dropout", 0.0), ("resamp_with_conv", True), ("give_pre_end", False), ("double_z", True)):
                if flag in dd and dd[flag] != want:
                    raise ValueError(f"{side} {flag}={dd[flag]} is not supported (official KL-16 uses {want})")
        gn = d.get("groupnorm", {})
        if gn.get("affine", True) is not True:
            raise ValueError("only affine GroupNorm is supported")
        kw["num_groups"] = gn.get("num_groups", 32)
        kw["norm_eps"] = gn.get("eps", 1e-6)
        return cls(**kw)


def _norm(c: int, cfg: KLVAEConfig) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.num_groups, c, eps=cfg.norm_eps, affine=True)


def ResnetBlock(cin: int, cout: int, cfg: KLVAEConfig) -> nn.Module:
    return blocks.ResnetBlock(cin, cout, groups=cfg.num_groups, eps=cfg.norm_eps)


def AttnBlock(c: int, cfg: KLVAEConfig) -> nn.Module:
    return blocks.AttnBlock(c, groups=cfg.num_groups, eps=cfg.norm_eps)


Downsample, Upsample = blocks.Downsample, blocks.Upsample


def _mid(c: int, cfg: KLVAEConfig) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = ResnetBlock(c, c, cfg), AttnBlock(c, cfg), ResnetBlock(c, c, cfg)
    return mid


class Encoder(nn.Module):
    def __init__(self, cfg: KLVAEConfig):
        super().__init__()
        mult = (1,) + tuple(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        res, cin = cfg.resolution, cfg.ch
        for lvl, m in enumerate(cfg.ch_mult):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            cin, cout = cfg.ch * mult[lvl], cfg.ch * m
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(cin, cout, cfg))
                cin = cout
                if res in cfg.encoder_attn_resolutions:
                    level.attn.append(AttnBlock(cin, cfg))
            if lvl != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(cin)
                res //= 2
            self.down.append(level)
        self.mid = _mid(cin, cfg)
        self.norm_out = _norm(cin, cfg)
        self.conv_out = nn.Conv2d(cin, 2 * cfg.embed_dim, 3, padding=1)  # double_z: mean and logvar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: KLVAEConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        cin = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.embed_dim, cin, 3, padding=1)
        self.mid = _mid(cin, cfg)
        up = [None] * n
        for lvl in reversed(range(n)):
            level = nn.Module()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            cout = cfg.ch * cfg.ch_mult[lvl]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(cin, cout, cfg))
                cin = cout
                if res in cfg.decoder_attn_resolutions:
                    level.attn.append(AttnBlock(cin, cfg))
            if lvl != 0:
                level.upsample = Upsample(cin)
                res *= 2
            up[lvl] = level
        self.up = nn.ModuleList(up)  # indexed by level, run from the deepest
        self.norm_out = _norm(cin, cfg)
        self.conv_out = nn.Conv2d(cin, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass
class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) from ``moments`` (B, 2E, h, w); logvar clamped to LOGVAR_RANGE."""

    mean: torch.Tensor
    logvar: torch.Tensor

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> "DiagonalGaussian":
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return cls(mean, logvar.clamp(*LOGVAR_RANGE))

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
        """mean + std * eps, eps ~ N(0, I) from ``generator`` unless given."""
        if eps is None:
            if generator is None:
                raise ValueError("pass a torch.Generator or eps")
            eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: KLVAEConfig = KLVAEConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        mult = 2 if cfg.use_variational else 1
        self.quant_conv = nn.Conv2d(2 * cfg.embed_dim, mult * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 1)

    def moments(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior parameters (B, 2E, h, w) = [mean | logvar] before clamping (official ``.parameters``)."""
        moments = self.quant_conv(self.encoder(x))
        if not self.cfg.use_variational:
            moments = torch.cat([moments, torch.ones_like(moments)], 1)  # official: logvar := 1
        return moments

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images (B, 3, H, W) in [-1, 1] -> posterior over (B, E, H/f, W/f) latents."""
        return DiagonalGaussian.from_moments(self.moments(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))


def load_kl_vae(path: str | Path, cfg: KLVAEConfig = KLVAEConfig(), *, key: str | None = None, device=None) -> AutoencoderKL:
    """Load ``kl16.ckpt`` (weights under ``"model"``; ``loss.*`` keys ignored and counted in the log) or a
    raw / ``.safetensors`` state dict, strictly. A wrong file raises ``CheckpointMismatch``."""
    try:
        sd = read_state_dict(path, key=key)
    except KeyError as e:
        raise CheckpointMismatch(f"{path}: not a KL-VAE checkpoint with {key!r}: {e}") from e
    vae = AutoencoderKL(cfg)
    load_strict(vae, sd, ignore=("loss.",), what=f"KL-VAE checkpoint {Path(path).name}")
    return vae.to(device).eval()

