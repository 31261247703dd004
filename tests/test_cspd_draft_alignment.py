"""The draft-alignment losses of ``fmnist-mar-draft-aligned`` (accel.train.recipes.mar_draft_aligned) on tiny
random MARs: a draft equal to the target has zero loss, zero sigma gap and acceptance 1 under both rules; the
cauchy free loss is the squared one near 0 and bounded by it; a few optimiser steps on a perturbed copy lower
the free-running gap."""
import copy

import pytest
import torch

from accel.models.mar import MAR, MARConfig, head_schedule
from accel.train.recipes.mar_draft_aligned import AlignedDraftRecipe, aligned_losses

CFG = MARConfig(img_size=64, vae_stride=16, encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=4,
                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4, vae_embed_dim=4, class_num=10,
                buffer_size=2, diffloss_d=1, diffloss_w=32)  # L = 16 tokens of 4 channels
SCHED = head_schedule("ddim8", 0, 1, max_timestep=875)  # an untrained eps-net blows up at t = 999


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def models(scale=0.0, seed=0):
    torch.manual_seed(seed)
    p = MAR(CFG).eval()
    q = copy.deepcopy(p)
    with torch.no_grad():
        for prm in q.parameters():
            prm.mul_(1 + scale * torch.randn_like(prm))
    return p, q


def batch(seed=0, B=4):
    g = torch.Generator().manual_seed(seed)
    seq = 0.5 * torch.randn(B, CFG.seq_len, CFG.vae_embed_dim, generator=g)
    order = torch.argsort(torch.rand(B, CFG.seq_len, generator=g), dim=1)
    return seq, torch.arange(B) % 10, order


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_draft_equal_to_target_has_zero_loss_and_acceptance_one(cfg):
    p, q = models()
    seq, lab, order = batch()
    with torch.no_grad():
        out = aligned_losses(p, q, seq, lab, order, 5, 3, cfg, SCHED, torch.Generator().manual_seed(1))
    assert float(out["free"]) < 1e-6 and abs(float(out["path"])) < 1e-4 and float(out["gap_sigma"]) < 1e-3
    assert float(out["accept_T1"]) == pytest.approx(1.0) and float(out["accept_T42"]) == pytest.approx(1.0)
    assert float(out["accept_T42_released"]) == pytest.approx(1.0)  # equal paths: the std product is 1


def test_released_acceptance_carries_the_paths_std_product():
    """A draft whose head's variance output alone is moved (every sigma_i^q wider, the means the target's): the
    released rule's acceptance falls below the Gaussian ratio's (exp of a negative log std product)."""
    p, q = models()
    with torch.no_grad():
        q.head.net.final_layer.linear.bias[CFG.vae_embed_dim:] += 0.5
        seq, lab, order = batch()
        out = aligned_losses(p, q, seq, lab, order, 5, 3, 3.0, SCHED, torch.Generator().manual_seed(1))
    assert float(out["accept_T42_released"]) < float(out["accept_T42"]) - 0.05


def test_cauchy_free_loss_is_bounded_by_the_squared_one():
    p, q = models(scale=0.05)
    seq, lab, order = batch()
    kw = dict(k=4, P=3, cfg=3.0, schedule=SCHED)
    sq = aligned_losses(p, q, seq, lab, order, generator=torch.Generator().manual_seed(1), **kw)
    ca = aligned_losses(p, q, seq, lab, order, generator=torch.Generator().manual_seed(1), free_loss="cauchy", **kw)
    huge = aligned_losses(p, q, seq, lab, order, generator=torch.Generator().manual_seed(1), free_loss="cauchy",
                          scale=1e6, **kw)
    assert float(sq["free"]) > 0 and float(ca["free"]) < float(sq["free"])
    assert float(huge["free"]) == pytest.approx(float(sq["free"]), rel=1e-4)  # u << T^2: the squared loss
    assert float(ca["gap_sigma"]) == pytest.approx(float(sq["gap_sigma"]))  # same draws, same chains
    with pytest.raises(ValueError, match="free_loss must be one of"):
        aligned_losses(p, q, seq, lab, order, generator=torch.Generator(), free_loss="l1", **kw)


def test_a_few_steps_lower_the_free_running_gap():
    p, q = models(scale=0.05)
    p.requires_grad_(False)
    seq, lab, order = batch(B=8)
    opt = torch.optim.Adam(q.parameters(), lr=3e-4)  # the recipe's lr (1e-3 overshoots on these nets)

    def gap():
        with torch.no_grad():
            return float(aligned_losses(p, q, seq, lab, order, 4, 3, 3.0, SCHED, torch.Generator().manual_seed(9))
                         ["gap_sigma"])

    before = gap()
    for step in range(20):
        out = aligned_losses(p, q, seq, lab, order, 4, 3, 3.0, SCHED, torch.Generator().manual_seed(step))
        opt.zero_grad()
        (out["free"] + out["path"]).backward()
        opt.step()
    assert gap() < 0.6 * before  # measured: 124.7 -> 42.3 sigma


def test_recipe_defaults_and_continuation_fields():
    r = AlignedDraftRecipe()
    assert (r.init, r.heldout_chains, r.free_loss) == ("", 0, "squared") and r.evaluate(None, "unused") == {}
    d = AlignedDraftRecipe(init="fmnist-mar-draft-aligned", free_loss="cauchy").describe()
    assert d["init"] == "fmnist-mar-draft-aligned" and d["free_loss"] == "cauchy"  # a resumed run must match


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_chain_gaps_decompose_the_last_step_gap(cfg):
    """``chain_gaps``: a draft equal to the target is 0 everywhere; for a perturbed draft the hand-off at step 0
    is the free-running last-step gap and the hand-off at the last step the teacher-forced one, and a step-0
    hand-off from a different draft differs (the loop really runs the draft)."""
    from accel.models.mar_head import HeadNoise, HeadStats
    from accel.train.recipes.mar_draft_aligned import chain_gaps

    seq, lab, order = batch()
    mask = torch.ones(seq.shape[:2]).scatter_(1, order[:, :5], 0.0)
    pos, guided = order[:, 5:8], cfg != 1.0
    g = torch.Generator().manual_seed(3)
    n, S = 4 * 3, SCHED.num_steps
    noise = HeadNoise(torch.randn(n, CFG.vae_embed_dim, generator=g), torch.randn(S, n, CFG.vae_embed_dim, generator=g))
    at = (0, S // 2, S - 1)
    with torch.no_grad():
        p, q = models()
        z = p.head_condition(seq, mask, lab, pos, cfg=guided)
        same = chain_gaps(p.head, q.head, z, q.head_condition(seq, mask, lab, pos, cfg=guided), SCHED, cfg, noise, at)
        assert float(same["free"].abs().max()) < 1e-4 and float(same["forced"].abs().max()) < 1e-4
        assert float(same["handoff"].abs().max()) < 1e-4
        torch.testing.assert_close(same["lsum_q"], same["lsum_p"])
        _, q = models(scale=0.05)
        out = chain_gaps(p.head, q.head, z, q.head_condition(seq, mask, lab, pos, cfg=guided), SCHED, cfg, noise, at)
        assert out["free"].shape == out["forced"].shape == (S, n) and out["handoff"].shape == (3, n)
        assert float(out["free"][-1].mean()) > 1e-3
        torch.testing.assert_close(out["handoff"][0], out["free"][-1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["handoff"][-1], out["forced"][-1], rtol=1e-4, atol=1e-5)
        zq = q.head_condition(seq, mask, lab, pos, cfg=guided)
        for key, head, zz in (("lsum_p", p.head, z), ("lsum_q", q.head, zq)):  # the loop's log_std_sum of each path
            ref = HeadStats.of(head.sample_trajectory(zz, schedule=SCHED, cfg=cfg, noise=noise), n).log_std_sum
            torch.testing.assert_close(out[key], ref)
        assert not torch.allclose(out["lsum_q"], out["lsum_p"])
        _, q2 = models(scale=0.05, seed=1)
        other = chain_gaps(p.head, q2.head, z, q2.head_condition(seq, mask, lab, pos, cfg=guided), SCHED, cfg, noise, at)
        assert not torch.allclose(other["handoff"][0], out["handoff"][0])
