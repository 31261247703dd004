"""VAR's multi-scale residual VQVAE (Tian et al., arXiv 2404.02905, Sec. 3.2 / Algorithms 1-2).

Re-implemented from the facts in shared/research/dd_var_scalekv.md §1.5; state-dict keys and buffers
match the official ``VQVAE`` (``encoder.down.{i}...``, ``quantize.quant_resi.qresi_ls.{k}``, buffer
``quantize.ema_vocab_hit_SV``) so official checkpoints load strictly.

Notation: ``f`` = continuous latent (B, Cvae, pn_max, pn_max); ``f_hat`` = its quantised accumulation over
scales; ``phi_k`` = the conv residual applied to each upsampled scale; ``SN`` = number of scales.
Resampling is exact to the official code: ``area`` to go down to a scale, ``bicubic`` to go up to pn_max.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from accel.models.conv_blocks import Downsample, ResnetBlock, Upsample


@dataclass(frozen=True)
class VQVAEConfig:
    """Official ``VQVAE(...)`` arguments plus the encoder/decoder ``ddconfig`` that the official class
    hard-codes (``ch_mult=(1,1,2,2,4)``, ``num_res_blocks=2``); configurable here so small models load."""

    vocab_size: int = 4096
    z_channels: int = 32  # = Cvae, the codebook/latent width
    ch: int = 160  # the released vae_ch160v4096z32.pth
    dropout: float = 0.0
    beta: float = 0.25  # commitment weight (training only)
    using_znorm: bool = False  # cosine-similarity code lookup instead of L2
    quant_conv_ks: int = 3
    quant_resi: float = 0.5  # phi(h) = (1 - |r|) h + |r| conv(h); |r| <= 1e-6 means identity
    share_quant_resi: int = 4  # 0: one phi per scale, 1: one shared phi, K>1: K partially shared phis
    default_qresi_counts: int = 0  # number of phis when share_quant_resi == 0 (0 -> one per scale)
    v_patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    test_mode: bool = True
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    in_channels: int = 3
    using_sa: bool = True
    using_mid_sa: bool = True

    def __post_init__(self):
        object.__setattr__(self, "v_patch_nums", tuple(int(p) for p in self.v_patch_nums))
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        if len(self.v_patch_nums) < 2:
            raise ValueError(f"v_patch_nums needs at least 2 scales (the phi rule divides by SN-1): {self.v_patch_nums}")
        if self.ch % 32 or any((self.ch * m) % 32 for m in self.ch_mult):
            raise ValueError(f"GroupNorm(32) needs channel counts divisible by 32: ch={self.ch}, ch_mult={self.ch_mult}")

    @property
    def Cvae(self) -> int:
        return self.z_channels

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_dict(cls, d: dict) -> "VQVAEConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown VQVAEConfig fields {unknown}; valid: {sorted(names)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------------------
# Encoder / decoder (LDM-style, official key names)

def Normalize(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=c, eps=1e-6, affine=True)


Upsample2x, Downsample2x = Upsample, Downsample


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a fused 1x1 qkv conv."""

    def __init__(self, c: int):
        super().__init__()
        self.C = c
        self.norm = Normalize(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1, 1, 0)
        self.proj_out = nn.Conv2d(c, c, 1, 1, 0)
        self.w_ratio = int(c) ** (-0.5)

    def forward(self, x):
        qkv = self.qkv(self.norm(x))
        B, _, H, W = qkv.shape
        q, k, v = qkv.reshape(B, 3, self.C, H, W).unbind(1)
        q = q.reshape(B, self.C, H * W).permute(0, 2, 1)  # (B, HW, C)
        w = torch.bmm(q, k.reshape(B, self.C, H * W)).mul_(self.w_ratio).softmax(dim=2)  # (B, HW_q, HW_k)
        h = torch.bmm(v.reshape(B, self.C, H * W), w.permute(0, 2, 1))  # (B, C, HW_q)
        return x + self.proj_out(h.view(B, self.C, H, W))


def make_attn(c: int, using_sa: bool) -> nn.Module:
    return AttnBlock(c) if using_sa else nn.Identity()


class Encoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch, mult, nrb = cfg.ch, cfg.ch_mult, cfg.num_res_blocks
        self.num_resolutions, self.num_res_blocks = len(mult), nrb
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, 1, 1)
        in_mult = (1,) + mult
        self.down = nn.ModuleList()
        for i in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            c_in, c_out = ch * in_mult[i], ch * mult[i]
            for _ in range(nrb):
                block.append(ResnetBlock(c_in, c_out, cfg.dropout))
                c_in = c_out
                if i == self.num_resolutions - 1 and cfg.using_sa:
                    attn.append(make_attn(c_in, True))
            down = nn.Module()
            down.block, down.attn = block, attn
            if i != self.num_resolutions - 1:
                down.downsample = Downsample2x(c_in)
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(c_in, c_in, cfg.dropout)
        self.mid.attn_1 = make_attn(c_in, cfg.using_mid_sa)
        self.mid.block_2 = ResnetBlock(c_in, c_in, cfg.dropout)
        self.norm_out = Normalize(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.z_channels, 3, 1, 1)  # double_z=False

    def forward(self, x):
        h = self.conv_in(x)
        for i, down in enumerate(self.down):
            for j in range(self.num_res_blocks):
                h = down.block[j](h)
                if len(down.attn) > 0:
                    h = down.attn[j](h)
            if i != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        ch, mult, nrb = cfg.ch, cfg.ch_mult, cfg.num_res_blocks
        self.num_resolutions, self.num_res_blocks = len(mult), nrb
        c_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(c_in, c_in, cfg.dropout)
        self.mid.attn_1 = make_attn(c_in, cfg.using_mid_sa)
        self.mid.block_2 = ResnetBlock(c_in, c_in, cfg.dropout)
        ups = []
        for i in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            c_out = ch * mult[i]
            for _ in range(nrb + 1):
                block.append(ResnetBlock(c_in, c_out, cfg.dropout))
                c_in = c_out
                if i == self.num_resolutions - 1 and cfg.using_sa:
                    attn.append(make_attn(c_in, True))
            up = nn.Module()
            up.block, up.attn = block, attn
            if i != 0:
                up.upsample = Upsample2x(c_in)
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)  # up[i] is resolution level i (built from the deepest level down)
        self.norm_out = Normalize(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.in_channels, 3, 1, 1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for i in reversed(range(self.num_resolutions)):
            up = self.up[i]
            for j in range(self.num_res_blocks + 1):
                h = up.block[j](h)
                if len(up.attn) > 0:
                    h = up.attn[j](h)
            if i != 0:
                h = up.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------------------------------------------------
# Residual quantiser with the phi convolutions

class Phi(nn.Conv2d):
    """phi(h) = (1 - r) h + r conv3x3(h), r = |quant_resi| (paper Algorithm 1, line 'h = phi_k(...)')."""

    def __init__(self, c: int, quant_resi: float):
        super().__init__(c, c, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h):
        return h.mul(1 - self.resi_ratio) + super().forward(h).mul_(self.resi_ratio)


def phi_ticks(K: int) -> np.ndarray:
    """Positions in [0, 1] of K phi convs (official: linspace(1/(3K), 1-1/(3K), K) when K == 4, else 1/(2K))."""
    return np.linspace(1 / 3 / K, 1 - 1 / 3 / K, K) if K == 4 else np.linspace(1 / 2 / K, 1 - 1 / 2 / K, K)


def phi_index(si: int, SN: int, K: int) -> int:
    """The official rule: argmin_k |ticks[k] - si/(SN-1)| in numpy float64 (ties broken by float rounding,
    e.g. scales 2 and 7 of the 10-scale schedule; first minimum wins)."""
    return int(np.argmin(np.abs(phi_ticks(K) - si / (SN - 1))).item())


class PhiPartiallyShared(nn.Module):
    """K phi convs (keys ``qresi_ls.{k}``) shared by nearby scales."""

    def __init__(self, qresi_ls: nn.ModuleList):
        super().__init__()
        self.qresi_ls = qresi_ls

    def select(self, si: int, SN: int) -> nn.Module:
        return self.qresi_ls[phi_index(si, SN, len(self.qresi_ls))]


class PhiShared(nn.Module):
    """One phi conv for every scale (key ``qresi``)."""

    def __init__(self, qresi: nn.Module):
        super().__init__()
        self.qresi = qresi

    def select(self, si: int, SN: int) -> nn.Module:
        return self.qresi


class PhiNonShared(nn.ModuleList):
    """One phi per scale (keys ``{k}``); count = default_qresi_counts or SN, indexed by the tick rule."""

    def select(self, si: int, SN: int) -> nn.Module:
        return self[phi_index(si, SN, len(self))]


class VectorQuantizer2(nn.Module):
    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.vocab_size, self.Cvae, self.using_znorm = cfg.vocab_size, cfg.Cvae, cfg.using_znorm
        self.v_patch_nums, self.beta = cfg.v_patch_nums, cfg.beta
        r = cfg.quant_resi

        def one_phi():
            return Phi(self.Cvae, r) if abs(r) > 1e-6 else nn.Identity()

        if cfg.share_quant_resi == 0:
            self.quant_resi = PhiNonShared([one_phi() for _ in range(cfg.default_qresi_counts or len(self.v_patch_nums))])
        elif cfg.share_quant_resi == 1:
            self.quant_resi = PhiShared(one_phi())
        else:
            self.quant_resi = PhiPartiallyShared(nn.ModuleList([one_phi() for _ in range(cfg.share_quant_resi)]))
        # Codebook usage statistics (training only), kept because official checkpoints carry it.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.v_patch_nums), self.vocab_size))
        self.embedding = nn.Embedding(self.vocab_size, self.Cvae)

    def phi(self, si: int, h: Tensor) -> Tensor:
        return self.quant_resi.select(si, len(self.v_patch_nums))(h)

    def nearest(self, z_NC: Tensor) -> Tensor:
        """Code index of each row: argmin |z|^2 + |e|^2 - 2 z.e (or argmax cosine with ``using_znorm``)."""
        E = self.embedding.weight.data
        if self.using_znorm:
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(E.T, dim=0), dim=1)
        d = torch.sum(z_NC.square(), dim=1, keepdim=True) + torch.sum(E.square(), dim=1, keepdim=False)
        d.addmm_(z_NC, E.T, alpha=-2, beta=1)
        return torch.argmin(d, dim=1)

    def f_to_idxBl_or_fhat(self, f_BChw: Tensor, to_fhat: bool) -> list[Tensor]:
        """Algorithm 1 (multi-scale residual quantisation): per scale, area-downsample the residual, look up
        codes, bicubic-upsample + phi, add to f_hat and subtract from the residual."""
        B, C, H, W = f_BChw.shape
        pns = self.v_patch_nums
        SN = len(pns)
        if (pns[-1], pns[-1]) != (H, W):
            raise ValueError(f"latent is {H}x{W} but the last patch num is {pns[-1]}")
        f_rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        out = []
        for si, pn in enumerate(pns):
            z = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != SN - 1 else f_rest
            idx_N = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, C))
            h = self.embedding(idx_N.view(B, pn, pn)).permute(0, 3, 1, 2)  # (B, C, pn, pn)
            if si != SN - 1:
                h = F.interpolate(h, size=(H, W), mode="bicubic")
            h = self.phi(si, h.contiguous())
            f_hat.add_(h)
            f_rest.sub_(h)
            out.append(f_hat.clone() if to_fhat else idx_N.reshape(B, pn * pn))
        return out

    def idxBl_to_h(self, idx_Bl: Tensor) -> Tensor:
        """Codebook vectors of a (B, pn*pn) index map as (B, Cvae, pn, pn)."""
        B, l = idx_Bl.shape
        pn = round(l ** 0.5)
        if pn * pn != l:
            raise ValueError(f"index map of length {l} is not square")
        return self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.Cvae, pn, pn)

    def embed_to_fhat(self, ms_h_BChw: Sequence[Tensor], last_one: bool = False):
        """f_hat after each scale (all at pn_max), or only the final one."""
        B, SN, H = ms_h_BChw[0].shape[0], len(self.v_patch_nums), self.v_patch_nums[-1]
        f_hat = ms_h_BChw[0].new_zeros(B, self.Cvae, H, H, dtype=torch.float32)
        out = []
        for si, h in enumerate(ms_h_BChw):
            if si < SN - 1:
                h = F.interpolate(h, size=(H, H), mode="bicubic")
            f_hat.add_(self.phi(si, h))
            out.append(f_hat.clone())
        return out[-1] if last_one else out

    def idxBl_to_var_input(self, gt_ms_idx_Bl: Sequence[Tensor]) -> Tensor:
        """Teacher-forcing inputs: f_hat of scales 0..si area-downsampled to pn_{si+1}, flattened and joined,
        shape (B, L - first_l, Cvae)."""
        pns, SN, H = self.v_patch_nums, len(self.v_patch_nums), self.v_patch_nums[-1]
        B = gt_ms_idx_Bl[0].shape[0]
        f_hat = gt_ms_idx_Bl[0].new_zeros(B, self.Cvae, H, H, dtype=torch.float32)
        nxt = []
        for si in range(SN - 1):
            h = F.interpolate(self.idxBl_to_h(gt_ms_idx_Bl[si]), size=(H, H), mode="bicubic")
            f_hat.add_(self.phi(si, h))
            pn = pns[si + 1]
            nxt.append(F.interpolate(f_hat, size=(pn, pn), mode="area").view(B, self.Cvae, -1).transpose(1, 2))
        return torch.cat(nxt, dim=1)

    def get_next_autoregressive_input(self, si: int, f_hat: Tensor, h_BChw: Tensor) -> tuple[Tensor, Tensor]:
        """Add scale si's codes to f_hat (in place, bicubic up + phi) and return (f_hat, next scale's input map)."""
        pns, SN, H = self.v_patch_nums, len(self.v_patch_nums), self.v_patch_nums[-1]
        if si != SN - 1:
            f_hat.add_(self.phi(si, F.interpolate(h_BChw, size=(H, H), mode="bicubic")))
            return f_hat, F.interpolate(f_hat, size=(pns[si + 1], pns[si + 1]), mode="area")
        f_hat.add_(self.phi(si, h_BChw))
        return f_hat, f_hat


class VQVAE(nn.Module):
    """Encoder -> quant_conv -> multi-scale residual quantiser -> post_quant_conv -> decoder."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.Cvae, self.vocab_size, self.downsample = cfg.Cvae, cfg.vocab_size, cfg.downsample
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quantize = VectorQuantizer2(cfg)
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(self.Cvae, self.Cvae, ks, stride=1, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(self.Cvae, self.Cvae, ks, stride=1, padding=ks // 2)
        if cfg.test_mode:
            self.eval()
            self.requires_grad_(False)

    @property
    def v_patch_nums(self) -> tuple[int, ...]:
        return self.cfg.v_patch_nums

    def img_to_f(self, img_B3HW: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(img_B3HW))

    def img_to_idxBl(self, img_B3HW: Tensor) -> list[Tensor]:
        return self.quantize.f_to_idxBl_or_fhat(self.img_to_f(img_B3HW), to_fhat=False)

    def fhat_to_img(self, f_hat: Tensor) -> Tensor:
        """Decoded image in [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    def idxBl_to_img(self, ms_idx_Bl: Sequence[Tensor], last_one: bool = True):
        """Image from all scales (``last_one``) or the list of images using scales 0..si."""
        hs = [self.quantize.idxBl_to_h(idx) for idx in ms_idx_Bl]
        f = self.quantize.embed_to_fhat(hs, last_one=last_one)
        return self.fhat_to_img(f) if last_one else [self.fhat_to_img(x) for x in f]

    def img_to_reconstructed_img(self, img_B3HW: Tensor, last_one: bool = True):
        fs = self.quantize.f_to_idxBl_or_fhat(self.img_to_f(img_B3HW), to_fhat=True)
        return self.fhat_to_img(fs[-1]) if last_one else [self.fhat_to_img(f) for f in fs]
