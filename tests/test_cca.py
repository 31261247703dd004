"""CCA (accel.align.cca): the loss on hand-computed values, its known values at Delta = 0, the negatives as the
released code builds them, the gradient's direction, and a fine-tuning run that resumes after SIGKILL."""
from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import pytest
import torch

from accel.align.cca import (cca_loss, contrastive_conditions, llamagen_sequence_logp, reward_stats,
                             var_sequence_logp)
from accel.models.llamagen import GPTConfig, Transformer
from accel.models.var import VARConfig, build_var
from accel.models.var_vqvae import VQVAEConfig
from accel.train.loop import CKPT, fit
from accel.train.recipes.cca import CCATraining, LlamaGenCCARecipe, VARCCARecipe

TINY = GPTConfig(dim=32, n_layer=2, n_head=2, vocab_size=16, block_size=16, num_classes=10, multiple_of=32)


def softplus(z: float) -> float:  # -log sigma(-z)
    return math.log1p(math.exp(z))


def test_loss_matches_a_hand_computed_case():
    beta, lam = 0.5, 2.0
    d_pos = torch.tensor([1.0, -2.0])
    d_neg = torch.tensor([3.0, 0.5])
    neg_pos = torch.tensor([False, True])  # row 1 is a collision: a positive with weight 1
    # -log sigma(z) = softplus(-z)
    pos = (softplus(-0.5) + softplus(1.0)) / 2
    neg = (lam * softplus(1.5) + softplus(-0.25)) / 2
    got = cca_loss(d_pos, d_neg, neg_pos, beta, lam)
    assert got.item() == pytest.approx(pos + neg, rel=1e-6)


@pytest.mark.parametrize("lam", [0.0, 1.0, 100.0])
def test_zero_log_ratio_gives_log2_times_the_weights(lam):
    B = 8
    neg_pos = torch.tensor([False] * 5 + [True] * 3)
    got = cca_loss(torch.zeros(B), torch.zeros(B), neg_pos, 0.05, lam)
    # every term is -log sigma(0) = log 2; weights: 1 per positive, lambda per true negative, 1 per collision
    assert got.item() == pytest.approx(math.log(2) * (1 + (lam * 5 + 3) / B), rel=1e-6)


def test_lambda_zero_is_the_positive_term_only_when_all_negatives_are_real():
    d_pos, d_neg = torch.randn(6, generator=torch.Generator().manual_seed(0)), torch.randn(6) * 50
    got = cca_loss(d_pos, d_neg, torch.zeros(6, dtype=torch.bool), 0.1, 0.0)
    assert got.item() == pytest.approx(float(-torch.nn.functional.logsigmoid(0.1 * d_pos).mean()), rel=1e-6)


def test_identical_policy_and_reference_give_the_known_value():
    torch.manual_seed(0)
    policy = Transformer(TINY)
    model = CCATraining(policy, copy.deepcopy(policy), policy_dropout=False)
    recipe = LlamaGenCCARecipe(beta=0.05, lam=100.0, uncond_ratio=0.1)
    labels = torch.tensor([0, 1, 1, 2, 3, 3, 3, 9])
    codes = torch.randint(0, TINY.vocab_size, (8, TINY.block_size), generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    loss, logs = recipe.loss(model.train(), (codes, labels), gen, 0)
    _, _, neg_pos = contrastive_conditions(labels, TINY.num_classes, 0.1, torch.Generator().manual_seed(2))
    n_pos = int(neg_pos.sum())
    expected = math.log(2) * (1 + (100.0 * (8 - n_pos) + n_pos) / 8) / 100.0  # recipe divides by max(lambda, 1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert logs["delta_pos"] == 0.0 and logs["reward_margin"] == 0.0


def test_var_identical_models_give_the_known_value_and_logp_is_over_all_scales():
    torch.manual_seed(0)
    vae, var = build_var(VARConfig(num_classes=5, depth=2, embed_dim=32, num_heads=2, patch_nums=(1, 2, 3),
                                   drop_path_rate=0.0),
                         VQVAEConfig(vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 1), num_res_blocks=1,
                                     v_patch_nums=(1, 2, 3)))
    var.eval()
    idx = [torch.randint(0, 16, (6, pn * pn), generator=torch.Generator().manual_seed(pn)) for pn in (1, 2, 3)]
    labels = torch.tensor([0, 1, 2, 3, 4, 4])
    inputs = vae.quantize.idxBl_to_var_input(idx)
    codes = torch.cat(idx, dim=1)  # (B, L = 1 + 4 + 9)
    recipe = VARCCARecipe(beta=0.02, lam=50.0, uncond_ratio=0.0)
    logp = recipe.seq_logp(var, (codes, inputs), labels)
    assert torch.allclose(logp, var_sequence_logp(var, vae, idx, labels))
    assert logp.shape == (6,) and (logp < 0).all()
    model = CCATraining(var, copy.deepcopy(var), policy_dropout=False)
    loss, _ = recipe.loss(model, (codes, inputs, labels), torch.Generator().manual_seed(0), 0)
    # one collision (4, 4) at uncond_ratio 0: 5 true negatives of weight 50 and one positive of weight 1
    assert loss.item() == pytest.approx(math.log(2) * (1 + (50 * 5 + 1) / 6) / 50, rel=1e-5)


def test_negatives_are_the_rolled_labels_with_collisions_and_null_rows_positive():
    labels = torch.tensor([3, 3, 5, 7, 2])
    cond, neg, neg_pos = contrastive_conditions(labels, 10, 0.0)
    assert torch.equal(cond, labels)
    assert neg.tolist() == [3, 5, 7, 2, 3]  # c^-_i = c_{i+1}, wrapping around
    assert neg_pos.tolist() == [True, False, False, False, False]  # the collision (3, 3)
    cond, neg, neg_pos = contrastive_conditions(labels, 10, 1.0)
    assert (cond == 10).all() and (neg == 10).all() and neg_pos.all()


def test_null_rows_follow_uncond_ratio_and_are_shared_by_both_conditions():
    labels = torch.arange(20000) % 10
    cond, neg, neg_pos = contrastive_conditions(labels, 10, 0.1, torch.Generator().manual_seed(0))
    null = cond == 10
    assert torch.equal(null, neg == 10)
    assert abs(null.float().mean().item() - 0.1) < 0.01  # ~6 sigma at n = 20000
    assert torch.equal(neg[~null], labels.roll(-1)[~null])
    assert torch.equal(neg_pos, null)  # consecutive labels differ here, so only null rows are positives


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="uncond_ratio"):
        contrastive_conditions(torch.zeros(3, dtype=torch.long), 10, 1.5)
    with pytest.raises(ValueError, match="beta"):
        cca_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2, dtype=torch.bool), 0.0, 1.0)
    with pytest.raises(ValueError, match="lam"):
        cca_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2, dtype=torch.bool), 0.1, -1.0)


def test_gradient_raises_positive_and_lowers_negative_log_ratios():
    d_pos = torch.randn(6, generator=torch.Generator().manual_seed(0)).requires_grad_()
    d_neg = torch.randn(6, generator=torch.Generator().manual_seed(1)).requires_grad_()
    neg_pos = torch.tensor([False, False, False, False, True, True])
    cca_loss(d_pos, d_neg, neg_pos, 0.1, 50.0).backward()
    assert (d_pos.grad < 0).all()  # descent increases Delta(x, c)
    assert (d_neg.grad[~neg_pos] > 0).all()  # ... decreases Delta(x, c^-) for true negatives
    assert (d_neg.grad[neg_pos] < 0).all()  # ... and treats collisions / null rows as positives


def test_a_few_steps_on_a_model_separate_matched_from_mismatched_pairs():
    torch.manual_seed(0)
    policy = Transformer(TINY)
    model = CCATraining(policy, copy.deepcopy(policy), policy_dropout=False)
    recipe = LlamaGenCCARecipe(beta=0.1, lam=10.0, uncond_ratio=0.0, lr=3e-3)
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(32) % 10
    codes = (labels[:, None] + torch.randint(0, 3, (32, TINY.block_size), generator=g)) % TINY.vocab_size
    opt = recipe.optimizer(model)
    assert sum(p.numel() for grp in opt.param_groups for p in grp["params"]) == policy.num_params()
    for step in range(10):
        loss, _ = recipe.loss(model, (codes, labels), torch.Generator().manual_seed(step), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        d_pos = llamagen_sequence_logp(policy, codes, labels) - llamagen_sequence_logp(model.reference, codes, labels)
        neg = labels.roll(-1)
        d_neg = llamagen_sequence_logp(policy, codes, neg) - llamagen_sequence_logp(model.reference, codes, neg)
    stats = reward_stats(d_pos, d_neg, torch.zeros(32, dtype=torch.bool), recipe.beta)
    assert stats["reward_acc"] > 0.9 and stats["reward_margin"] > 0
    assert not any(p.grad is not None for p in model.reference.parameters())  # the reference stays frozen


# A CCA recipe on a tiny random base and synthetic codes, so a run takes seconds (the zoo recipe differs
# only in ``_base`` and ``train_data``).
@dataclass
class TinyCCARecipe(LlamaGenCCARecipe):
    name: str = "tiny-cca"
    steps: int = 40
    batch_size: int = 8
    ckpt_every: int = 5
    step_sleep: float = 0.0

    def _base(self):
        torch.manual_seed(0)
        return Transformer(TINY).eval()

    def train_data(self, run_dir, device):
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, TINY.vocab_size, (64, TINY.block_size), generator=g), torch.arange(64) % 10

    def loss(self, model, batch, generator, step):
        time.sleep(self.step_sleep)
        return super().loss(model, batch, generator, step)


SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from test_cca import TinyCCARecipe
    from accel.train.loop import fit
    fit(TinyCCARecipe(step_sleep=float(sys.argv[2])), sys.argv[1], cpu=True, progress=False)
""")


def test_sigkilled_cca_run_resumes_to_the_uninterrupted_state(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=os.path.dirname(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([sys.executable, str(script), str(ref), "0"], check=True, env=env, capture_output=True, timeout=300)
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "0.1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / CKPT).exists():
        time.sleep(0.05)
    time.sleep(0.7)  # land between checkpoints (every 5 steps of >= 100 ms)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    mid = torch.load(killed / CKPT, map_location="cpu", weights_only=False)
    assert 0 < mid["step"] < 40
    subprocess.run([sys.executable, str(script), str(killed), "0"], check=True, env=env, capture_output=True, timeout=300)
    a, b = (torch.load(d / CKPT, map_location="cpu", weights_only=False) for d in (ref, killed))
    assert a["step"] == b["step"] == 40
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # the reference never moved: it is still the base
    base = TinyCCARecipe()._base().state_dict()
    assert all(torch.equal(b["model"][f"reference.{k}"], v) for k, v in base.items())


def test_stop_and_resume_in_process_matches_uninterrupted(tmp_path):
    torch.set_num_threads(1)
    full = fit(TinyCCARecipe(steps=12), tmp_path / "a", progress=False)
    part = fit(TinyCCARecipe(steps=12), tmp_path / "b", stop_at=7, progress=False)
    assert part["step"] == 7 and not part["finished"]
    rest = fit(TinyCCARecipe(steps=12), tmp_path / "b", progress=False)
    assert rest["resumed_from"] == 7 and rest["finished"] and rest["last"] == full["last"]
