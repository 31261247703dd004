"""What a zoo recipe provides to the training loop (``accel.train.loop.fit``).

A recipe is a dataclass of hyper-parameters plus five methods: ``build`` (the model, official
architecture), ``train_data`` (tensors indexed by the loop), ``loss``, ``evaluate`` and ``export`` (the fp16
zoo file). ``describe()`` is stored in every checkpoint so a run cannot resume under a different recipe.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from accel.zoo.store import IMAGE_DATA, save_zoo_file, zoo_file


# May differ between the sessions of one run: cadence fields do not change what it computes; a changed
# ``steps`` (the schedule's horizon) is allowed but recorded in the run log by the loop.
VOLATILE = ("log_every", "eval_every", "ckpt_every", "step_sleep", "steps")


@dataclass
class Recipe:
    name: str = "recipe"
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 0
    lr_schedule: str = "constant"  # or "cosine"
    grad_clip: float | None = None
    ema_decay: float | None = None
    log_every: int = 50
    eval_every: int = 0  # 0: only at the end
    ckpt_every: int = 200

    def describe(self) -> dict:
        """Everything that defines the run's result (hyper-parameters and model config), JSON-serialisable;
        fields that only change logging/checkpoint cadence or speed (``VOLATILE``) are left out."""
        d = {k: v for k, v in asdict(self).items() if k not in VOLATILE}
        return json.loads(json.dumps(d, default=str))

    def build(self) -> nn.Module:
        raise NotImplementedError

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """AdamW; no weight decay on biases, norms and embeddings' 1-d params (as the official recipes)."""
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.lr, betas=tuple(self.betas))

    def train_data(self, run_dir: Path, device) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...], generator: torch.Generator,
             step: int) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, run_dir: Path) -> dict:
        return {}

    kind: str = ""  # the zoo builder that rebuilds the exported module (accel.zoo.BUILDERS)

    def model_config(self) -> dict:
        return dict(getattr(self, "model", {}))

    def deployable(self, model: nn.Module) -> nn.Module:
        """The inference module inside the trained one (what is exported and what ``zoo.load`` of a run
        gives); recipes that wrap their model for training (``MARTraining``, ``VQTraining``) unwrap it."""
        return model

    def card_quality(self, name: str) -> dict | None:
        """Quality measured for the model card from the *shipped* zoo file (None: nothing to measure)."""
        return None

    def card_notes(self) -> str:
        """Deviations from the official recipe and other facts the card must state."""
        return ""

    def card_data(self) -> str:
        """The card's data line: what the model was trained on (default: the Fashion-MNIST images)."""
        return IMAGE_DATA

    def export(self, model: nn.Module, out_dir: Path, info: dict) -> list[Path]:
        """Write the shipped fp16 zoo file(s) for the trained ``model`` (EMA weights when kept)."""
        model = self.deployable(model)
        return [save_zoo_file(zoo_file(out_dir, self.name), model.state_dict(), kind=self.kind,
                              config=self.model_config(), info=info)]
