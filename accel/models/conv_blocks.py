"""Convolutional building blocks shared by the tokenizers (LlamaGen VQ, MAR KL-VAE, VAR VQVAE).

All three descend from the same LDM/taming encoder-decoder, so their blocks have the same maths and the
same state-dict names (``norm1``, ``conv1``, ``norm2``, ``conv2``, ``nin_shortcut``; ``norm``, ``q``, ``k``,
``v``, ``proj_out``; ``conv``). GroupNorm defaults: 32 groups, eps 1e-6, affine.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(c: int, groups: int = 32, eps: float = 1e-6) -> nn.GroupNorm:
    return nn.GroupNorm(groups, c, eps=eps, affine=True)


class ResnetBlock(nn.Module):
    """GN -> SiLU -> conv3 -> GN -> SiLU -> dropout -> conv3, plus a 1x1 shortcut when channels change."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.0, groups: int = 32, eps: float = 1e-6):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin, groups, eps), nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = group_norm(cout, groups, eps), nn.Conv2d(cout, cout, 3, 1, 1)
        self.dropout = nn.Dropout(dropout)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with separate 1x1-conv q, k, v, scale c^-1/2, residual."""

    def __init__(self, c: int, groups: int = 32, eps: float = 1e-6):
        super().__init__()
        self.norm = group_norm(c, groups, eps)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        B, C, H, W = x.shape
        q = self.q(h).reshape(B, C, H * W).transpose(1, 2)  # (B, HW, C)
        k = self.k(h).reshape(B, C, H * W)  # (B, C, HW)
        v = self.v(h).reshape(B, C, H * W)
        w = torch.softmax(torch.bmm(q, k) * C ** -0.5, dim=2)  # (B, HWq, HWk)
        return x + self.proj_out(torch.bmm(v, w.transpose(1, 2)).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Halve the resolution: right/bottom zero pad then a stride-2 conv3 (or 2x2 average pooling)."""

    def __init__(self, c: int, with_conv: bool = True):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "conv"):
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2, 2)


class Upsample(nn.Module):
    """Double the resolution: nearest neighbour (computed in float32) then a conv3."""

    def __init__(self, c: int, with_conv: bool = True):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(x.dtype)
        return self.conv(x) if hasattr(self, "conv") else x
