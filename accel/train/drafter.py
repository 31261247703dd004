"""Recipe ``fmnist-llamagen-eagle``: the EAGLE-style drafter of the zoo LlamaGen target.

EAGLE-1 recipe as LANTERN trains its drafters (research §3.4): the frozen target is run teacher-forced on real
token sequences (here the zoo data: Fashion-MNIST train codes and their flips, as the target was trained; the
LANTERN paper used 100k ImageNet code sequences for c2i) and its final-normed hidden states ``h_s`` are the
features. The drafter reads ``fc([embed(x_s), h_s + noise])`` and regresses ``h_{s+1}``:

    loss = SmoothL1(ĥ_{s+1}, h_{s+1}) + p_w · CE(softmax(head(h_{s+1})), log_softmax(head(ĥ_{s+1})))   p_w = 0.1

with uniform input noise ``(U - 0.5) · noise · 512 / seq_len`` (official formula; official noise = 0.2 at LlamaGen's
256 tokens gives ±0.2, which at the zoo's 64 tokens needs noise = 0.05), AdamW
betas (0.9, 0.95), 3 % linear warm-up, grad clip 0.5. Labels are dropped to the null class with the target's
``class_dropout_prob`` so the drafter also serves the unconditional half of the CFG batch.
The exported file holds only the drafter (``fc.*``, ``layer.*``); embedding and head stay the target's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from accel import zoo
from accel.checkpoint import load_strict
from accel.models.llamagen import GPTConfig
from accel.speculative.drafters import EagleHead
from accel.train.loop import fit, trained_model
from accel.train.recipe import Recipe
from accel.train.recipes.llamagen import TargetGPTRecipe
from accel.zoo.store import read_zoo_file, save_zoo_file, zoo_file

EAGLE_KIND = "llamagen-eagle"


class EagleTraining(nn.Module):
    """The drafter plus the frozen target whose features it learns (only ``head`` is trained/exported)."""

    def __init__(self, target: nn.Module):
        super().__init__()

        self.target = target.eval().requires_grad_(False)
        self.head = EagleHead(target.config)

    def train(self, mode: bool = True):
        super().train(mode)
        self.target.eval()  # no dropout in the teacher
        return self


@dataclass
class EagleRecipe(Recipe):
    name: str = "fmnist-llamagen-eagle"
    kind: str = EAGLE_KIND
    target: str = "fmnist-llamagen"  # zoo name or checkpoint of the frozen target
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3  # official 1e-4 at batch 4 on 100k sequences; a ~3M target at batch 32 trains faster
    betas: tuple[float, float] = (0.9, 0.95)
    warmup: int = 60  # 3 % of the steps
    lr_schedule: str = "cosine"
    grad_clip: float = 0.5
    ckpt_every: int = 200
    p_w: float = 0.1
    noise: float = 0.05  # same ±0.2 amplitude as the official 0.2 at 256 tokens (see module doc)
    codes_from: str = ""  # optional codes.pt of the target's run (same sequences), to skip re-encoding

    def _target(self):
        return zoo.load(self.target)

    def build(self) -> nn.Module:
        return EagleTraining(self._target())

    def model_config(self) -> dict:
        from dataclasses import asdict

        return asdict(self._target().config)

    def train_data(self, run_dir: Path, device):
        if self.codes_from:
            d = torch.load(self.codes_from, weights_only=True)
            return d["codes"], d["labels"]
        return TargetGPTRecipe().train_data(run_dir, device)  # codes of train + flips, labels

    def loss(self, model, batch, generator, step):
        codes, labels = batch
        target, head = model.target, model.head
        cfg = target.config
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < cfg.class_dropout_prob
        cond = torch.where(drop, torch.full_like(labels, cfg.num_classes), labels)
        T = codes.shape[1]
        with torch.no_grad():
            logits, h = target(codes[:, :-1], cond, input_pos=torch.arange(T, device=codes.device), return_hidden=True)
        u = torch.rand(h.shape, generator=generator, device=h.device)
        h_in = h + (u - 0.5) * self.noise * 512 / T
        pred = head.forward_train(target.tok_embeddings(codes).detach(), h_in)  # pred[:, s] ~ h[:, s+1]
        reg = F.smooth_l1_loss(pred[:, :-1], h[:, 1:])
        logp = F.log_softmax(target.output(pred[:, :-1]).float(), -1)
        ce = -(F.softmax(logits[:, 1:], -1) * logp).sum(-1).mean()
        with torch.no_grad():
            top1 = (logp.argmax(-1) == logits[:, 1:].argmax(-1)).float().mean()
        return reg + self.p_w * ce, {"smooth_l1": reg, "ce": ce, "top1": top1}

    def export(self, model, out_dir: Path, info: dict) -> list[Path]:
        return [save_zoo_file(zoo_file(out_dir, self.name), model.head.state_dict(), kind=self.kind,
                              config=self.model_config(), info={**info, "target": self.target})]


def load_eagle(path: str | Path, device=None, dtype=None):
    """The EAGLE head of a zoo file written by ``EagleRecipe.export``."""
    kind, cfg, info, tensors = read_zoo_file(path)
    if kind != EAGLE_KIND:
        raise ValueError(f"{path}: zoo kind {kind!r} is not an EAGLE drafter ({EAGLE_KIND!r})")
    head = load_strict(EagleHead(GPTConfig.from_dict(cfg)), tensors, what=str(path))
    return head.to(device=device, dtype=dtype).eval(), info


def train_eagle(run_dir: str | Path = "runs/fmnist-llamagen-eagle", *, steps: int | None = None, seed: int = 0,
                export_dir: str | Path | None = None, **overrides) -> dict:
    """Train (resumably) and export the EAGLE drafter; what ``accel train fmnist-llamagen-eagle`` will run once
    the recipe is registered in ``accel.train.recipes.RECIPES``."""
    recipe = EagleRecipe(**overrides)
    summary = fit(recipe, run_dir, steps=steps, seed=seed)
    if summary.get("finished"):
        model, info = trained_model(recipe, run_dir)
        summary["exported"] = [str(p) for p in recipe.export(model, Path(export_dir or zoo.WEIGHTS_DIR), info)]
    return summary


if __name__ == "__main__":  # python -m accel.train.drafter [RUN_DIR] [STEPS]
    import json
    import sys

    print(json.dumps(train_eagle(*(sys.argv[1:2] or []), steps=int(sys.argv[2]) if len(sys.argv) > 2 else None),
                     default=str))
