"""Recipe ``toy``: a tiny MLP regression on synthetic data, for testing the loop (no dataset needed)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from accel.train.recipe import Recipe


@dataclass
class ToyRecipe(Recipe):
    name: str = "toy"
    kind: str = "toy"
    steps: int = 60
    batch_size: int = 16
    lr: float = 1e-2
    weight_decay: float = 0.01
    warmup: int = 5
    lr_schedule: str = "cosine"
    grad_clip: float = 1.0
    ema_decay: float = 0.9
    log_every: int = 10
    eval_every: int = 30
    ckpt_every: int = 10
    step_sleep: float = 0.0  # slows each step, so a test can kill the run mid-way

    def build(self) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, 1))

    def train_data(self, run_dir: Path, device) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 8, generator=g)
        y = (x[:, :1] * x[:, 1:2]).sin() + 0.1 * torch.randn(256, 1, generator=g)
        return x, y

    def loss(self, model, batch, generator, step):
        if self.step_sleep:
            import time

            time.sleep(self.step_sleep)
        x, y = batch
        noise = 0.01 * torch.randn(x.shape, generator=generator, device=x.device)
        return nn.functional.mse_loss(model(x + noise), y), {}

    def evaluate(self, model, run_dir: Path) -> dict:
        x, y = self.train_data(run_dir, "cpu")
        return {"mse": float(nn.functional.mse_loss(model(x), y))}
