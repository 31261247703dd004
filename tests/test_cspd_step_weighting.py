"""experiments/cspd_step_weighting.py: the folded draft computes what its two parts compute; a training arm resumes
from its checkpoint."""
from __future__ import annotations

import types

import pytest
import torch
from experiment_script import load_experiment

from accel.models.mar import MAR, MARConfig


def _mar(width: int, head_width: int, img_size: int = 64) -> MAR:
    return MAR(MARConfig(img_size=img_size, vae_stride=16, encoder_embed_dim=width, encoder_depth=1, encoder_num_heads=2,
                         decoder_embed_dim=width, decoder_depth=1, decoder_num_heads=2, diffloss_d=1,
                         diffloss_w=head_width, buffer_size=4, class_num=5)).eval()


def test_folded_draft_equals_backbone_maps_and_small_head():
    sw = load_experiment("cspd_step_weighting")
    torch.manual_seed(0)
    target, draft, small = _mar(48, 40), _mar(32, 24), _mar(32, 24)
    z_draft = sw.TargetHeadDraft(draft, target).eval()
    q = sw.SmallHeadDraft(z_draft, small.head, 48, 32).eval()
    folded = sw.folded_draft(z_draft, q)
    B, L = 3, target.cfg.seq_len
    tokens, mask = torch.randn(B, L, target.cfg.token_embed_dim), (torch.rand(B, L) > 0.5).float()
    labels, pos = torch.tensor([0, 3, 4]), torch.argsort(torch.rand(B, L), dim=1)[:, :5]
    with torch.no_grad():
        want = q.head.net.cond_embed(q.head_condition(tokens, mask, labels, pos, cfg=True))
        got = folded.head.net.cond_embed(folded.head_condition(tokens, mask, labels, pos, cfg=True))
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
        t = torch.randint(0, 1000, (2 * B * 5,))
        x = torch.randn(2 * B * 5, target.cfg.token_embed_dim)
        z_f = folded.head_condition(tokens, mask, labels, pos, cfg=True)
        z_q = q.head_condition(tokens, mask, labels, pos, cfg=True)
        # the rest of the head is q's own: the whole net agrees on the folded condition
        assert torch.allclose(folded.head.net(x, t, z_f), q.head.net(x, t, z_q), atol=1e-5)
    assert not any(p is r for p in folded.parameters() for r in draft.parameters())  # a copy: the parts are unchanged


def test_fit_resumes_where_an_interrupted_run_stopped(tmp_path):
    """An arm stopped after its step-3 checkpoint and rerun ends with the parameters of an uninterrupted run; a
    checkpoint of another run is refused rather than resumed."""
    sw = load_experiment("cspd_step_weighting")
    data = (torch.randn(10, 4, 2), torch.arange(10))

    def run(out, stop_at=None, lr=0.05):
        w = torch.nn.Parameter(torch.ones(3))
        calls = []

        def loss_fn(seq, labels, order, g):
            calls.append(1)
            if stop_at is not None and len(calls) == stop_at:
                raise KeyboardInterrupt
            return ((w - torch.randn(3, generator=g)) ** 2).sum() + seq.mean() * order.float().mean() * w.sum()

        args = types.SimpleNamespace(batch=3, positions=2, seed=1, ckpt_dir=out, ckpt_every=3, init="x", n_chains=10)
        sw.fit([w], loss_fn, data, steps=7, lr=lr, warmup=2, args=args, log=lambda m: None, tag="t (a)",
               log_every=100)
        return w.detach()

    (tmp_path / "a").mkdir()
    want = run(tmp_path / "a")
    (tmp_path / "b").mkdir()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_at=5)
    assert torch.equal(run(tmp_path / "b"), want)
    assert not torch.equal(want, torch.ones(3))  # it trained
    with pytest.raises(SystemExit, match="another run"):
        run(tmp_path / "b", lr=0.1)


def test_sigma0std_adds_the_released_rules_squared_log_std_product():
    """``sigma0std`` = ``sigma0`` + (sum of the path's log sigma^p - log sigma^q)^2: nothing for the target as its
    own draft, the extra for a draft whose variances alone differ (its head's variance output moved), where the
    mean term stays 0; the held-out acceptance of the target as its own draft is 1 with and without the std
    product, and the released rule's acceptance falls for the variance-moved draft."""
    from accel.models.mar_loop import head_schedule

    sw = load_experiment("cspd_step_weighting")
    torch.manual_seed(0)
    p = _mar(32, 24, img_size=128)  # 64 tokens: evaluate's contexts know up to 60
    q = _mar(32, 24, img_size=128)
    q.load_state_dict(p.state_dict())
    sched = head_schedule(sw.HEAD_STEPS, 0, 1, max_timestep=950)  # evaluate's hand-off steps need its 48
    C = p.cfg.token_embed_dim
    seq, labels = torch.randn(4, p.cfg.seq_len, C), torch.tensor([0, 1, 2, 3])
    order = torch.argsort(torch.rand(4, p.cfg.seq_len), dim=1)

    def loss(model, weight):
        return float(sw.forced_loss(p, model, seq, labels, order, 3, 2, sched, torch.Generator().manual_seed(5),
                                    weight, 0).detach())

    assert loss(q, "sigma0std") == loss(q, "sigma0") == 0.0
    same = sw.evaluate(p, q, seq, labels, sched)
    assert same["accept_T42"] == same["accept_T42_released"] == 1.0
    with torch.no_grad():
        q.head.net.final_layer.linear.bias[C:] += 0.5  # the learned-variance output v only: every sigma_i^q grows
    base, extra = loss(q, "sigma0"), loss(q, "sigma0std") - loss(q, "sigma0")
    assert base == loss(q, "kl") > 0  # the means are the target's: sigma0's mean term is 0, the KL the variances'
    assert extra > 10 * base  # the std product sums 47 steps x C channels before it is squared
    moved = sw.evaluate(p, q, seq, labels, sched)
    assert moved["accept_T42_released"] < moved["accept_T42"]  # log prod sigma^p / sigma^q < 0 lowers the ratio
