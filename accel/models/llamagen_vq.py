"""LlamaGen VQ tokenizer (``VQModel``), official key names (research/lantern_llamagen.md §2).

Encoder/decoder widths (``ch``, ``ch_mult``, ``num_res_blocks``) are configurable here; the official
``VQModel`` hard-codes ``ch=128``. The quantizer looks up l2-normalised codes (latent and codebook both
normalised, distance ``|z|^2 + |e|^2 - 2 z.e``, argmin), the decoder's block 0 is the lowest resolution.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from accel.models.conv_blocks import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm
from accel.checkpoint import load_strict, read_state_dict


@dataclass(frozen=True)
class VQConfig:
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True  # registers the training-time buffer quantize.codebook_used
    commit_loss_beta: float = 0.25
    entropy_loss_ratio: float = 0.0
    encoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    dropout_p: float = 0.0
    ch: int = 128  # not exposed by the official VQModel (class default of Encoder/Decoder)
    num_res_blocks: int = 2
    norm_type: str = "group"
    resamp_with_conv: bool = True
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self):
        object.__setattr__(self, "encoder_ch_mult", tuple(self.encoder_ch_mult))
        object.__setattr__(self, "decoder_ch_mult", tuple(self.decoder_ch_mult))
        if self.norm_type != "group":
            raise NotImplementedError(f"norm_type={self.norm_type!r}: only 'group' (GroupNorm) is supported")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)

    @classmethod
    def from_dict(cls, d: dict) -> "VQConfig":
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown VQ config fields: {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | Path) -> "VQConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


VQ_PRESETS = {"VQ-16": dict(), "VQ-8": dict(encoder_ch_mult=(1, 2, 2, 4), decoder_ch_mult=(1, 2, 2, 4))}


def vq_config(name: str, **overrides) -> VQConfig:
    if name not in VQ_PRESETS:
        raise KeyError(f"unknown VQ preset {name!r}; valid: {sorted(VQ_PRESETS)}")
    return VQConfig(**{**VQ_PRESETS[name], **overrides})


def Normalize(c: int) -> nn.GroupNorm:
    return group_norm(c)


def _level(res: list, attn: list, resample: nn.Module | None) -> nn.Module:
    m = nn.Module()
    m.res, m.attn = nn.ModuleList(res), nn.ModuleList(attn)
    if resample is not None:
        setattr(m, "downsample" if isinstance(resample, Downsample) else "upsample", resample)
    return m


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult, n = cfg.ch, cfg.encoder_ch_mult, len(cfg.encoder_ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, 1, 1)
        blocks, cin = [], ch
        for i, m in enumerate(mult):
            res, attn = [], []
            for _ in range(cfg.num_res_blocks):
                res.append(ResnetBlock(cin, ch * m, cfg.dropout_p))
                cin = ch * m
                if i == n - 1:
                    attn.append(AttnBlock(cin))
            blocks.append(_level(res, attn, Downsample(cin, cfg.resamp_with_conv) if i != n - 1 else None))
        self.conv_blocks = nn.ModuleList(blocks)
        self.mid = nn.ModuleList([ResnetBlock(cin, cin, cfg.dropout_p), AttnBlock(cin),
                                  ResnetBlock(cin, cin, cfg.dropout_p)])
        self.norm_out = Normalize(cin)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.conv_blocks:
            for j, res in enumerate(block.res):
                h = res(h)
                if len(block.attn):
                    h = block.attn[j](h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        ch, mult, n = cfg.ch, cfg.decoder_ch_mult, len(cfg.decoder_ch_mult)
        cin = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, 1, 1)
        self.mid = nn.ModuleList([ResnetBlock(cin, cin, cfg.dropout_p), AttnBlock(cin),
                                  ResnetBlock(cin, cin, cfg.dropout_p)])
        blocks = []
        for i in range(n):  # block 0 = lowest resolution
            res, attn = [], []
            for _ in range(cfg.num_res_blocks + 1):
                res.append(ResnetBlock(cin, ch * mult[n - 1 - i], cfg.dropout_p))
                cin = ch * mult[n - 1 - i]
                if i == 0:
                    attn.append(AttnBlock(cin))
            blocks.append(_level(res, attn, Upsample(cin, cfg.resamp_with_conv) if i != n - 1 else None))
        self.conv_blocks = nn.ModuleList(blocks)
        self.norm_out = Normalize(cin)
        self.conv_out = nn.Conv2d(cin, cfg.out_channels, 3, 1, 1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for block in self.conv_blocks:
            for j, res in enumerate(block.res):
                h = res(h)
                if len(block.attn):
                    h = block.attn[j](h)
            if hasattr(block, "upsample"):
                h = block.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.l2_norm = cfg.codebook_l2_norm
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.codebook_embed_dim)
        if cfg.codebook_show_usage:
            self.register_buffer("codebook_used", torch.zeros(65536))  # training-time statistic only

    def codebook(self) -> Tensor:
        """The codebook the lookup uses (l2-normalised rows when ``codebook_l2_norm``)."""
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z (B, C, H, W) -> (z_q straight-through (B, C, H, W), indices (B, H, W), z used for lookup)."""
        zc = z.permute(0, 2, 3, 1)  # (B, H, W, C)
        if self.l2_norm:
            zc = F.normalize(zc, p=2, dim=-1)
        flat = zc.reshape(-1, zc.size(-1))
        e = self.codebook()
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        idx = d.argmin(1)
        zq = e[idx].view(zc.shape)
        zq = zc + (zq - zc).detach()
        return zq.permute(0, 3, 1, 2), idx.view(zc.shape[:-1]), zc.permute(0, 3, 1, 2)

    def lookup(self, idx: Tensor) -> Tensor:
        """indices (B, H, W) -> codes (B, C, H, W)."""
        return self.codebook()[idx].permute(0, 3, 1, 2)


class VQModel(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)

    def encode_pre_quant(self, x: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(x))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images (B, 3, H, W) in [-1, 1] -> (z_q (B, C, h, w), indices (B, h, w))."""
        zq, idx, _ = self.quantize(self.encode_pre_quant(x))
        return zq, idx

    def decode(self, zq: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(zq))

    def decode_vectors(self, vec: Tensor, hw: tuple[int, int]) -> Tensor:
        """Continuous code-space vectors (B, h*w, C) (e.g. a DD student's unsnapped outputs) -> images; equals
        ``decode_code`` when the vectors are codebook entries (``codebook()``, l2-normalised when configured)."""
        B, n, C = vec.shape
        return self.decode(vec.view(B, *hw, C).permute(0, 3, 1, 2))  # (B, C, h, w)

    def decode_code(self, idx: Tensor, hw: tuple[int, int] | None = None) -> Tensor:
        """Token indices (B, h, w), or (B, h*w) with ``hw``, -> images (B, 3, H, W), roughly [-1, 1]."""
        if idx.dim() == 2:
            if hw is None:
                raise ValueError("flat indices need hw=(h, w)")
            idx = idx.view(idx.size(0), *hw)
        return self.decode(self.quantize.lookup(idx))


def load_vq(path: str | Path, cfg: VQConfig, *, key: str | None = None, device=None, dtype=None) -> VQModel:
    """Load an official VQ file; whether ``quantize.codebook_used`` is present decides the buffer."""
    sd = read_state_dict(path, key)
    cfg = dataclasses.replace(cfg, codebook_show_usage="quantize.codebook_used" in sd)
    model = VQModel(cfg)
    load_strict(model, sd, what=str(path))
    return model.to(device=device, dtype=dtype).eval()
