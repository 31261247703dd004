"""Recipe ``fmnist-cnn``: the metric classifier (test accuracy target >= 90%).

AdamW + cosine schedule, label smoothing 0.1, augmentation = random horizontal flip and random
translation by up to 2 pixels (drawn from the loop's per-step generator, so resumes are exact).
Export ships the fp16 weights plus reference statistics of the Fashion-MNIST *test* set features
(mean, covariance, a feature bank with labels) so quality metrics never need the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from accel import data, zoo
from accel.models.classifier import ClassifierConfig, FashionCNN
from accel.train.recipe import Recipe
from accel.zoo.store import save_zoo_file, zoo_file


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random horizontal flip and integer translation (background fill -1) of images in [-1, 1]."""
    B = x.shape[0]
    flip = torch.rand(B, generator=generator, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    s = max_shift
    padded = F.pad(x, (s, s, s, s), value=-1.0)  # (B, C, H+2s, W+2s)
    dx = torch.randint(0, 2 * s + 1, (B,), generator=generator, device=x.device)
    dy = torch.randint(0, 2 * s + 1, (B,), generator=generator, device=x.device)
    H, W = x.shape[-2:]
    rows = (dy[:, None] + torch.arange(H, device=x.device))[:, None, :, None].expand(B, x.shape[1], H, W + 2 * s)
    x = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, None, :].expand(B, x.shape[1], H, W)
    return x.gather(3, cols)


@dataclass
class ClassifierRecipe(Recipe):
    name: str = "fmnist-cnn"
    kind: str = "fmnist-cnn"
    steps: int = 1500  # ~3.5 epochs; the 2-core machine is shared
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup: int = 100
    lr_schedule: str = "cosine"
    label_smoothing: float = 0.1
    eval_every: int = 500
    ckpt_every: int = 100
    model: dict = field(default_factory=lambda: ClassifierConfig().to_dict())

    def cfg(self) -> ClassifierConfig:
        return ClassifierConfig(**{**self.model, "widths": tuple(self.model["widths"])})

    def build(self) -> FashionCNN:
        return FashionCNN(self.cfg())

    def train_data(self, run_dir: Path, device) -> tuple[torch.Tensor, ...]:
        return data.load_arrays("train")

    def loss(self, model, batch, generator, step):
        x, y = batch
        logits = model(augment(x, generator))
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return loss, {"acc": (logits.argmax(-1) == y).float().mean()}

    def evaluate(self, model, run_dir: Path) -> dict:
        x, y = data.load_arrays("val")
        _, logits = model.features_logits((x + 1) / 2)
        return {"val_acc": float((logits.argmax(-1) == y).float().mean())}

    def card_quality(self, name: str) -> dict:
        model = zoo.load(name)
        x, y = data.load_arrays("test")
        _, logits = model.features_logits((x + 1) / 2)
        ref = zoo.reference_stats(name)
        return {"test accuracy (10,000 images, shipped fp16 weights)": round(float((logits.argmax(-1) == y).float().mean()), 4),
                "feature dim": int(ref["ref_mean"].numel()),
                "reference statistics": f"{name}-ref.safetensors.xz: mean, covariance, {ref['ref_bank'].shape[0]}-row "
                                        "feature bank + labels of the test set"}

    def card_notes(self) -> str:
        return ("Features are the global-average-pooled output of the last conv stage (before dropout and the "
                "linear classifier), computed by `features_logits(images01)` on images in [0, 1].")

    def export(self, model: FashionCNN, out_dir: Path, info: dict) -> list[Path]:
        """Weights in fp16, plus ``fmnist-cnn-ref.safetensors.xz``: test-set feature statistics computed with the
        *fp16-rounded* weights that ship (so metrics at load time see exactly these features)."""
        paths = Recipe.export(self, model, out_dir, info)
        shipped = FashionCNN(self.cfg())
        shipped.load_state_dict({k: (v.half().float() if v.is_floating_point() else v)
                                 for k, v in model.state_dict().items()})
        ref = reference_stats(shipped)
        acc = float(ref.pop("accuracy"))
        tensors = {"ref_mean": ref["ref_mean"], "ref_cov": ref["ref_cov"], "ref_bank": ref["ref_bank"].half(),
                   "ref_labels": ref["ref_labels"]}
        paths.append(save_zoo_file(zoo_file(out_dir, f"{self.name}-ref"), tensors, kind="feature-stats",
                                   config={"split": "test", "n": int(ref["ref_labels"].numel()),
                                           "feature_dim": int(ref["ref_mean"].numel())},
                                   info={**info, "test_accuracy": acc}, dtype=None))
        return paths


@torch.no_grad()
def reference_stats(model: FashionCNN, split: str = "test") -> dict[str, torch.Tensor]:
    """Feature statistics of a real split: ``ref_mean`` (D,), ``ref_cov`` (D, D) (float64 estimate,
    unbiased), ``ref_bank`` (N, D) features and ``ref_labels`` (N,), plus the split's accuracy."""
    x, y = data.load_arrays(split)
    feats, logits = model.features_logits((x + 1) / 2)
    f64 = feats.double()
    mean = f64.mean(0)
    cov = torch.cov(f64.T)
    return {"ref_mean": mean.float(), "ref_cov": cov.float(), "ref_bank": feats, "ref_labels": y,
            "ref_logits": logits, "accuracy": (logits.argmax(-1) == y).float().mean()}
