"""Recipe ``fmnist-var-dd``: DD1 student for the zoo VAR, trained on (noise, tokens) pairs of the teacher's
DD1 map (accel.distill.var_map, generated in resumable shards by accel.distill.data).

The official DD1 training code and loss are unreleased (research/dd_var_scalekv.md §2.1). accel's loss,
shaped by what the released sampler reads out of the two heads (``get_final_sequence``):

* timestep per row, uniform over {0, t2} (scale indices; trains the 1-step and the 2-step jump):
  input X_t = the teacher-map codes of scales < t, the pair's own noise from scale t on (``perturb_data``);
* loss only at noise slots (data slots pass through at sampling time);
* slots of scales < ``split`` (read from the logits at sampling time): cross-entropy against the
  teacher-map token ids;
* slots of scales >= ``split`` (read from the continuous head): mean squared error against the code
  vectors, averaged over Cvae dims;
* ``ce_weight * CE + mse_weight * MSE``, each averaged over its own slots.

``split`` is one knob for loss and read-out. Default: every scale from the logits (``split = -2`` -> SN),
chosen by measurement (experiments/distill_var_loss.py; random-weight stand-in teacher with the zoo VAR's
scale list shape (1,2,3,4,6), V=32, 3584 train / 512 held-out pairs, 800 steps x 32): CE everywhere gives
1-step/2-step token agreement 0.53/0.55 with the teacher map and teacher NLL 2.10/1.73 nats/token, while
the released split (CE below scale 2, MSE after) and MSE everywhere collapse the continuous outputs to the
conditional mean (agreement 0.09, NLL 8.9 / 8.6; teacher samples 0.96, one-step-from-marginals 2.13).
``split = -1`` selects the released rule: the largest scale index whose earlier scales hold <= 10 % of the
tokens (VAR-d16: 5 = 55 of 680 tokens); ``t2`` (-1) defaults to that rule as well.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from accel.distill.data import CARD_DATA as PAIRS_CARD_DATA, generate_pairs, load_pairs
from accel.distill.decode import default_split
from accel.distill.flow import FlowSolver
from accel.distill.depth import teacher_blocks
from accel.distill.student_var import DDVAR
from accel.distill.var_map import tokens_before, var_pair_map, var_pair_spec
from accel.models.var import VARConfig
from accel.train.recipe import Recipe
from accel import zoo
from accel.zoo.store import bf16_rounded, save_zoo_file, zoo_file
from accel.zoo.sample import DEFAULTS


def dd_var_loss(student: DDVAR, noise: Tensor, tokens: Tensor, labels: Tensor, t_B: Tensor, split: int,
                ce_weight: float = 1.0, mse_weight: float = 1.0, net: nn.Module | None = None) -> tuple[Tensor, dict]:
    """accel's DD1 loss for VAR (module docstring). noise (B, L, Cvae), tokens (B, L), t_B (B,) scales.
    ``net``: the (possibly distributed-wrapped) student whose forward is called; default ``student``."""
    B, L = tokens.shape
    x_data = student.codes[tokens]  # (B, L, Cvae)
    pos = torch.arange(L, device=tokens.device)
    is_noise = pos[None] >= student.n_data(t_B, B)[:, None]  # (B, L)
    logits, conti = (net or student)(torch.where(is_noise[..., None], noise, x_data), labels, t_B)
    n_split = tokens_before(student.tpns, split)
    ce_m, mse_m = is_noise & (pos[None] < n_split), is_noise & (pos[None] >= n_split)
    zero = logits.new_zeros(())
    ce = F.cross_entropy(logits[ce_m], tokens[ce_m]) if ce_m.any() else zero
    mse = (conti - x_data).pow(2).mean(-1)[mse_m].mean() if mse_m.any() else zero
    return ce_weight * ce + mse_weight * mse, {"ce": ce.detach(), "mse": mse.detach()}


@dataclass
class VARDistillRecipe(Recipe):
    name: str = "fmnist-var-dd"
    kind: str = "var-dd"
    teacher: str = "fmnist-var"  # zoo name or path (accel.zoo.load)
    tokenizer: str = "fmnist-var-vqvae"
    pairs: str = "runs/fmnist-var-dd-pairs"  # folder of pair shards (make_pairs)
    # teacher sampling that the map follows (None: the zoo's documented default for ``teacher``, else 1.5/0/0)
    cfg: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    # per-token flow ODE: Heun steps (the last one an exact-landing Euler step). 16: on 2,048 zoo-LlamaGen
    # token distributions, 16 / 32 steps give the same token as 128 steps for 99.0 / 99.8 % of tokens, at half
    # the cost of 32 (the shipped student's pairs used 32).
    solver_steps: int = 16
    t2: int = -1  # second timestep (scale index); -1: default_split
    split: int = -2  # scales < split from the logits head; -2: all scales (measured), -1: released rule
    ce_weight: float = 1.0
    mse_weight: float = 1.0
    holdout: int = 256  # last pairs kept out of training, for evaluate()
    depth: int | None = None  # student blocks (None: the teacher's; fewer: DDVAR.from_teacher's block choice)
    init_from: str | None = None  # zoo name / file of a student of the same shape to warm-start from
    steps: int = 6000
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup: int = 200
    lr_schedule: str = "cosine"
    grad_clip: float | None = 2.0
    ema_decay: float | None = 0.999
    log_every: int = 50
    eval_every: int = 1000
    ckpt_every: int = 200

    # -- teacher and data ----------------------------------------------------------------------------
    def load_teacher(self):
        """(VQVAE, VAR) teacher, eval mode."""
        return zoo.load(self.tokenizer), zoo.load(self.teacher)

    def sampling(self) -> dict:

        d = dict(DEFAULTS.get(self.teacher, {}))
        if d.pop("more_smooth", False):
            raise ValueError("more_smooth changes only the visuals, not the token distribution; the map cannot use it")
        unknown = sorted(set(d) - {"cfg", "top_k", "top_p"})
        if unknown:
            raise ValueError(f"zoo sampling defaults of {self.teacher} have settings the VAR map does not know: {unknown}")
        out = {"cfg": d.get("cfg", 1.5), "top_k": d.get("top_k", 0), "top_p": d.get("top_p", 0.0)}
        for k in out:
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out

    def pair_meta(self) -> dict:
        return {"teacher": self.teacher, "tokenizer": self.tokenizer, **self.sampling(),
                "solver": {"steps": self.solver_steps, "method": "heun"}}

    def make_pairs(self, n_pairs: int, shard_size: int = 256, *, seed: int = 0, rank: int = 0, world: int = 1,
                   batch_size: int = 64, device="cpu", progress: bool = True) -> list[Path]:
        """Write this process's missing pair shards into ``self.pairs`` (resumable; see accel.distill.data)."""
        vae, var = (m.to(device) for m in self.load_teacher())
        s = self.sampling()
        noise_map = var_pair_map(var, vae, cfg=s["cfg"], top_k=s["top_k"], top_p=s["top_p"],
                                 solver=FlowSolver(self.solver_steps, "heun"))
        return generate_pairs(noise_map, var_pair_spec(var, n_pairs, shard_size, seed), self.pairs, rank=rank,
                              world=world, batch_size=batch_size, meta=self.pair_meta(), progress=progress)

    def _pairs(self) -> dict[str, Tensor]:
        info = json.loads((Path(self.pairs) / "spec.json").read_text())
        if info["meta"] != json.loads(json.dumps(self.pair_meta())):
            raise ValueError(f"{self.pairs} was made with {info['meta']}, this recipe needs {self.pair_meta()}")
        d = load_pairs(self.pairs)
        if len(d["index"]) <= self.holdout:
            raise ValueError(f"{len(d['index'])} pairs, holdout {self.holdout}: nothing left to train on")
        return d

    # -- Recipe interface ----------------------------------------------------------------------------
    def timesteps(self, student: DDVAR) -> tuple[int, int]:
        pns = student.tpns
        t2 = default_split(pns) if self.t2 < 0 else self.t2
        split = {-2: len(pns), -1: default_split(pns)}.get(self.split, self.split)
        if not (0 < t2 < len(pns) and 0 <= split <= len(pns)):
            raise ValueError(f"t2={t2} / split={split} outside the {len(pns)} scales")
        return t2, split

    def build(self) -> nn.Module:
        vae, var = self.load_teacher()
        student = DDVAR.from_teacher(var, vae, self.depth)
        if self.init_from is not None:
            src = zoo.load(self.init_from)
            if src.depth == student.depth:
                student.load_state_dict(src.state_dict())
            else:  # a deeper trained student: evenly spaced blocks of it (DDVAR.init_with_student)
                student.init_with_student(src)
        return student

    def train_data(self, run_dir: Path, device) -> tuple[Tensor, ...]:
        d = self._pairs()
        n = len(d["index"]) - self.holdout
        return d["noise"][:n].float(), d["tokens"][:n].long(), d["labels"][:n].long()

    def loss(self, model, batch, generator, step):
        noise, tokens, labels = batch
        student = model.module if hasattr(model, "module") else model
        t2, split = self.timesteps(student)
        t_list = torch.tensor([0, t2], device=tokens.device)
        t_B = t_list[torch.randint(0, 2, (tokens.shape[0],), generator=generator, device=tokens.device)]
        return dd_var_loss(student, noise, tokens, labels, t_B, split, self.ce_weight, self.mse_weight, net=model)

    @torch.no_grad()
    def evaluate(self, model, run_dir: Path) -> dict:
        """On the held-out pairs: token agreement of 1-step / 2-step samples with the teacher map's tokens
        (overall and on the logits / continuous parts) and the continuous part's MSE."""
        d = self._pairs()
        dev = model.pos_1LC.device
        sl = slice(len(d["index"]) - self.holdout, None)
        noise, tokens, labels = d["noise"][sl].to(dev), d["tokens"][sl].long().to(dev), d["labels"][sl].to(dev)
        t2, split = self.timesteps(model)
        n = tokens_before(model.tpns, split)
        out = {}
        for tag, tl in (("1step", (0,)), ("2step", (0, t2))):
            vec, ids = model.sample(labels, noise, tl, split)
            out[f"agree_{tag}"] = float((ids == tokens).float().mean())
            out[f"agree_logits_{tag}"] = float((ids[:, :n] == tokens[:, :n]).float().mean()) if n else None
            out[f"mse_conti_{tag}"] = (float((vec[:, n:] - model.codes[tokens[:, n:]]).pow(2).mean())
                                       if n < tokens.shape[1] else None)
        return out

    def card_quality(self, name: str) -> dict:
        """Held-out agreement of the *shipped* student with the teacher map (needs the pair folder)."""
        if not (Path(self.pairs) / "spec.json").is_file():
            return {"note": f"pair folder {self.pairs} absent: make it with `accel train distill-data --family var`"}
        out = self.evaluate(zoo.load(name), Path(self.pairs))
        return {f"held-out {k} ({self.holdout} pairs)": round(v, 4) for k, v in out.items() if v is not None}

    def card_data(self) -> str:
        return PAIRS_CARD_DATA

    def card_notes(self) -> str:
        pns = self.load_teacher()[1].patch_nums
        t2 = default_split(pns) if self.t2 < 0 else self.t2
        read = {-2: "every scale from the logits head", -1: "the released split rule"}.get(
            self.split, f"split {self.split}")
        n_pairs = PAIRS_MADE["n_pairs"]
        start = (f"warm start from `{self.init_from}`" if self.init_from else "initialised from the teacher")
        sets = "".join(f" --set {k}={json.dumps(getattr(self, k))}" for k in ("lr", "warmup") if getattr(self, k) !=
                       getattr(type(self), k))
        init = f" --set 'init_from=\"{self.init_from}\"'" if self.init_from else ""
        return ("Data: not Fashion-MNIST images but (noise, token-sequence) pairs of the teacher's DD1 map (teacher "
                f"{self.teacher} at its card settings, {self.solver_steps} Heun steps per token): {n_pairs:,} pairs "
                f"made by `{PAIRS_MADE['command']}` ({PAIRS_MADE['note']}); the last {self.holdout} are held out "
                f"(the card's agreement figures), {n_pairs - self.holdout:,} train. Student: depth "
                f"{self.depth or 'of the teacher'}, {start}{self.init_note()}; "
                f"`{self.run_command(init, sets)}`. Raw weights are shipped: the recipe's EMA "
                "(0.999, no warm-up) lags a short run (the first student's held-out agreement: EMA 0.44 vs raw "
                "0.49 at 1,500 steps). "
                f"{TEACHER_CHOICE} "
                f"Loss and read-out: the module docstring of accel/train/recipes/dd_var.py ({read}; the 2-step "
                f"jump re-noises from scale t2 = {t2} of {len(pns)}). "
                "Speed and FID against the teacher and the naive one-step baseline: results/distill-var/summary.md.")

    def run_command(self, init: str, sets: str) -> str:
        """The command of the shipped student's last training run (the card's notes)."""
        return f"accel train {self.name} --steps {self.steps} --threads 1 --weights raw{init}{sets}"

    def init_note(self) -> str:
        return (" (the previous zoo student, same name: 2,700 steps on 7,936 pairs of 32 Heun steps, held-out "
                "agreement 0.50 / 0.51; replaced in place)" if self.init_from == self.name else "")

    def model_config(self) -> dict:
        vae, var = self.load_teacher()
        return {"var": json.loads(json.dumps(asdict(var.cfg))), "vocab_size": var.V, "Cvae": var.Cvae}

    def export(self, model: nn.Module, out_dir: Path, info: dict) -> list[Path]:
        return [save_zoo_file(zoo_file(out_dir, self.name), model.state_dict(), kind=self.kind,
                              config=student_config(model), info=info)]


# The pair set the shipped students were trained on (session 8; runs/ is not kept, so the card states it).
PAIRS_MADE = {"n_pairs": 30720,
              "command": "accel train distill-data --family var --n-pairs 30720 --flow-steps 16 --batch-size 64 "
                         "--threads 1",
              "note": "120 shards of 256; one CPU thread, ~11 pairs/s under the session's shared load, 22-29 alone"}


# Why the students distil the CFG base teacher and not the guidance-free CCA one (session 8 measurements).
TEACHER_CHOICE = (
    "Teacher: the CFG base fmnist-var, not the guidance-free fmnist-var-cca. CCA pairs are cheaper (30-31 vs 22 "
    "pairs/s, 256 pairs, same run: the map skips the doubled CFG batch at cfg 0), but the CCA teacher itself samples "
    "faster at batch 1 (75 vs 92 ms, same run), and a speed-up counts against the teacher a student distils: "
    "measured split at batch 1 (eager, same rounds), one step end to end, depth 6: 2.72x over the base, 2.22x over "
    "CCA; depth 4: 3.46x / 2.83x (decoders compiled: 3.62x / 2.95x). Only a depth-4 student of the base teacher "
    "can clear the issue's 3x.")


@dataclass
class VARDistill4Recipe(VARDistillRecipe):
    """``fmnist-var-dd4``: the smaller (depth-4) DD1 student of the same teacher and pairs (issue #19 item 3).
    Its blocks start from evenly spaced blocks of a trained depth-6 student (``init_from``, through
    ``DDVAR.init_with_student``) or, without one, of the teacher. Exported with weights rounded to bf16 precision
    (the zoo's size budget; cca.py does the same), the codebook buffer exact."""

    name: str = "fmnist-var-dd4"
    depth: int | None = 4

    def init_note(self) -> str:
        if not self.init_from:
            return ""
        if self.init_from == self.name:
            return (" (the previous zoo depth-4 student, same name: blocks 0, 2, 3, 5 of the depth-6 fmnist-var-dd, "
                    "DDVAR.init_with_student, then 450 steps on these pairs, held-out agreement 0.502 / 0.509; "
                    "continued in session 9 for 1,200 steps (held-out agreement 0.519 / 0.530, one-step FID 9.80) "
                    "and in session 10 for 2,000 more (38.5 min with 2 threads, 1.0 s/step on a quiet machine; "
                    "agreement 0.537 / 0.552, one-step FID 8.74 [8.18, 9.30], two steps 7.63, teacher 6.27); each "
                    "continuation restarts the cosine schedule at lr 2e-4 from the zoo file and replaces it in place)")
        deep = zoo.load(self.init_from)
        return (f" (its blocks {', '.join(map(str, teacher_blocks(deep.depth, self.depth)))} of {deep.depth} and their "
                "noise/data maps, DDVAR.init_with_student; fmnist-var-dd as shipped before session 8: 2,700 steps on "
                "7,936 pairs)")

    def run_command(self, init: str, sets: str) -> str:
        return (f"accel train {self.name} --run-dir runs/dd4-s10 --steps 2000 --threads 2 --weights raw{init}{sets} "
                "--set 'pairs=\"<the pair folder>\"' --set eval_every=500 --set ckpt_every=100")

    def export(self, model: nn.Module, out_dir: Path, info: dict) -> list[Path]:
        state, precision = bf16_rounded(model.state_dict(), exact=("codes",))
        return [save_zoo_file(zoo_file(out_dir, self.name), state, kind=self.kind, config=student_config(model),
                              info={**info, "precision": precision})]


def student_config(model: DDVAR) -> dict:
    return {"var": json.loads(json.dumps(asdict(model.teacher_cfg))), "vocab_size": model.V, "Cvae": model.Cvae}


def build_student(cfg: dict) -> DDVAR:
    """The student of a ``student_config`` (what the zoo's ``var-dd`` builder makes; codes come with the
    state dict)."""
    return DDVAR(VARConfig.from_dict(cfg["var"]), cfg["vocab_size"], cfg["Cvae"])
