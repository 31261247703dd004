"""The zoo's metric classifier: a small VGG-style CNN on 32x32 Fashion-MNIST.

Its penultimate features (global-average-pooled, ``FEATURE_DIM``-d) play the role InceptionV3 pool3 plays
for ImageNet FID: FID/KID/precision/recall named ``...[fmnist-cnn, N=...]`` are computed on them, and class
consistency is its accuracy on generated samples given the conditioning class.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ClassifierConfig:
    widths: tuple[int, ...] = (32, 64, 128)  # one stage per width, each halves the resolution (32->4)
    num_classes: int = 10
    dropout: float = 0.3  # before the last linear layer only; features are taken before it

    def to_dict(self) -> dict:
        return asdict(self)


FEATURE_DIM = ClassifierConfig().widths[-1]


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2))


class FashionCNN(nn.Module):
    """``forward(x)`` takes images in [-1, 1]; ``features_logits(images01)`` takes images in [0, 1]."""

    def __init__(self, cfg: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.cfg = cfg
        chans = (3,) + tuple(cfg.widths)
        self.stages = nn.Sequential(*[_stage(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.widths[-1], cfg.num_classes)

    @property
    def feature_dim(self) -> int:
        return self.cfg.widths[-1]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, D) penultimate features (global average pool)."""
        return self.stages(x).mean(dim=(2, 3))  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.embed(x)))  # (B, num_classes)

    @torch.no_grad()
    def features_logits(self, images01: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, D) and logits (B, C) of images in [0, 1], shape (B, 3, 32, 32), in eval mode.

        Raises on wrong shape or range, since a metric silently computed on [-1, 1] images would be wrong.
        """
        if images01.ndim != 4 or images01.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(images01.shape)}")
        lo, hi = float(images01.min()), float(images01.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"expected images in [0, 1], got range [{lo:.3f}, {hi:.3f}]")
        was_training = self.training
        self.eval()
        p = next(self.parameters())
        feats, logits = [], []
        for chunk in images01.split(batch_size):
            x = chunk.to(device=p.device, dtype=p.dtype) * 2 - 1
            f = self.embed(x)
            feats.append(f.float())
            logits.append(self.head(f).float())
        self.train(was_training)
        return torch.cat(feats), torch.cat(logits)
