"""The one MAR loop and its plans: MaskedPlan is the keyword interface, custom plans drive the same loop,
predict() groups per-column schedules exactly, and every sampler's plan satisfies the Plan protocol."""
import pytest
import torch

from accel.annealing.disa import AdaptivePlan, AdaptiveSchedule
from accel.annealing.disa import plan as disa_plan
from accel.annealing.schedules import LinearSchedule
from accel.models.mar import (MAR, HeadCall, HeadNoise, Iteration, MARConfig, MaskedPlan, Plan, head_schedule, predict,
                              sample_tokens)
from accel.models.mar_head import DDPMSchedule
from accel.speculative.cspd import WindowPlan

CFG = MARConfig(img_size=64, vae_stride=16, encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=4,
                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4, vae_embed_dim=4, class_num=10,
                buffer_size=2, diffloss_d=1, diffloss_w=32, num_sampling_steps="ddim8")  # L = 16
L, LABELS = CFG.seq_len, torch.tensor([1, 2, 3])


@pytest.fixture(scope="module")
def mar():
    torch.manual_seed(0)
    return MAR(CFG).eval()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_masked_plan_is_the_keyword_interface(mar):
    kw = dict(num_iter=5, cfg=2.0, cfg_schedule="linear", temperature=0.9, head_steps="ddim6")
    a = sample_tokens(mar, LABELS, generator=gen(), **kw)
    b = sample_tokens(mar, LABELS, generator=gen(), plan=MaskedPlan(**kw))
    assert torch.equal(a.tokens, b.tokens) and a.stats == b.stats
    assert sum(a.stats["tokens_per_iter"]) == L and a.stats["steps_per_iter"] == [6] * 5
    assert (b.mask == 0).all() and torch.equal(mar.unpatchify(b.seq), b.tokens)
    with pytest.raises(ValueError, match="not both"):
        sample_tokens(mar, LABELS, generator=gen(), plan=MaskedPlan(), num_iter=3)
    with pytest.raises(ValueError, match="cfg_schedule"):
        MaskedPlan(cfg_schedule="cosine")


class InOrder:
    """A custom plan: ``per`` tokens per iteration from the front of the order, one fixed schedule."""

    guided = False

    def __init__(self, per):
        self.per, self.num_iter = per, L // per

    def iteration(self, step, orders):
        return Iteration(orders[:, step * self.per:(step + 1) * self.per], count=self.per)

    def head(self, step, z_rows, *, model, generator, stats):
        return HeadCall(head_schedule("ddim4", step, self.num_iter))


def test_a_custom_plan_drives_the_same_loop(mar):
    out = sample_tokens(mar, LABELS, generator=gen(1), plan=InOrder(4), record=True)
    assert out.stats["nfe_target"] == 4 and out.stats["tokens_per_iter"] == [4] * 4
    assert (out.mask == 0).all() and torch.isfinite(out.tokens).all()
    assert out.stats["head_rows"] == 4 * 4 * 3 * 4  # steps x tokens x rows x iterations
    assert len(out.trace) == 4 and out.trace[0]["head"].final_mean.shape == (12, CFG.vae_embed_dim)
    # continuing from a state: the first half, then the rest, equals one run (same generator stream)
    g = gen(1)
    orders = mar.sample_orders(3, g)
    half = InOrder(4)
    half.num_iter = 2
    first = sample_tokens(mar, LABELS, generator=g, plan=half, orders=orders)
    rest = InOrder(4)
    rest.iteration = lambda step, o: InOrder(4).iteration(step + 2, o)
    rest.num_iter = 2
    second = sample_tokens(mar, LABELS, generator=g, plan=rest, orders=orders, state=(first.seq, first.mask))
    assert torch.equal(second.tokens, out.tokens)


def test_predict_groups_per_column_schedules_exactly(mar):
    """Columns sharing a schedule share one head run; the result equals running each group alone."""
    orders = mar.sample_orders(3, gen(2))
    seq, mask = torch.zeros(3, L, CFG.vae_embed_dim), torch.ones(3, L)
    s4, s6 = DDPMSchedule.respaced("ddim4"), DDPMSchedule.respaced("ddim6")
    pos = orders[:, :3]
    g = gen(3)
    noise = HeadNoise(torch.randn(9, 4, generator=g), torch.randn(6, 9, 4, generator=g))  # S_max = 6
    it = Iteration(pos)
    mixed = predict(mar, seq, mask, LABELS, it, HeadCall([s4, s6, s4], noise), guided=False, generator=None,
                    trajectory=True)
    assert mixed.head_steps == 4 + 6 and mixed.head_rows == 4 * 6 + 6 * 3
    rows = torch.arange(9).reshape(3, 3)
    for cols, sched in (([0, 2], s4), ([1], s6)):
        idx = rows[:, cols].reshape(-1)
        alone = predict(mar, seq, mask, LABELS, Iteration(pos[:, cols]),
                        HeadCall(sched, HeadNoise(noise.x_T[idx], noise.steps[:sched.num_steps, idx])),
                        guided=False, generator=None, trajectory=True)
        assert torch.equal(mixed.tokens[idx], alone.tokens)
        assert torch.equal(mixed.head.log_std_sum[idx], alone.head.log_std_sum)
    with pytest.raises(ValueError, match="per-column"):
        predict(mar, seq, mask, LABELS, it, HeadCall([s4, s6], noise), guided=False, generator=None)


def test_every_sampler_plan_is_a_plan():
    sched = LinearSchedule(8, 2)
    plans = [MaskedPlan(), disa_plan(sched, num_iter=4), disa_plan(AdaptiveSchedule(8, 2), num_iter=4),
             WindowPlan(0, [1, 1], [DDPMSchedule.respaced(4)] * L, None)]
    assert all(isinstance(p, Plan) for p in plans)
    assert isinstance(plans[2], AdaptivePlan) and plans[1].head_steps is sched
