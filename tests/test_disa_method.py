"""AnnealedMAR: constant schedule == plain MAR (bitwise), scheduled steps reach the head, adaptive schedule."""
from __future__ import annotations

import pytest
import torch

from accel.annealing.disa import AdaptiveSchedule, AnnealedMAR, describe, make_schedule, x0_spread
from accel.annealing.schedules import (MAR_RESPACING, ConstantSchedule, LinearSchedule, TwoStageSchedule,
                                       steps_per_iteration)
from accel.models.kl_vae import AutoencoderKL, KLVAEConfig
from accel.models.mar import MAR, MARConfig, decode_tokens, sample_tokens
from accel.types import Method

# 4x4 tokens (L = 16), two conditioning classes' worth of rows; a config unlike the public fixture
TINY = MARConfig(img_size=32, vae_stride=8, patch_size=1, encoder_embed_dim=16, encoder_depth=1,
                 encoder_num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, vae_embed_dim=4,
                 class_num=5, buffer_size=2, diffloss_d=2, diffloss_w=16, num_sampling_steps="100")
VAE = KLVAEConfig(embed_dim=4, ch_mult=(1, 2, 2, 2), ch=32, num_res_blocks=1, resolution=32)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def mar():
    torch.manual_seed(0)
    m = MAR(TINY).eval()
    with torch.no_grad():
        for p in m.diffloss.parameters():
            p.normal_(0, 0.05)
    return m


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(1)
    return AutoencoderKL(VAE).eval()


LABELS = torch.tensor([0, 3, 4])


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_constant_schedule_is_bitwise_plain_mar(mar, vae, cfg):
    settings = dict(num_iter=6, cfg=cfg, temperature=0.9)
    plain = sample_tokens(mar, LABELS, generator=_gen(3), **settings)  # config default: 100 steps
    method = AnnealedMAR(mar, vae, ConstantSchedule(100), **settings)
    assert isinstance(method, Method)
    annealed = method.sample_tokens(LABELS, generator=_gen(3))
    assert torch.equal(annealed.tokens, plain.tokens)
    assert annealed.stats["head_steps"] == plain.stats["head_steps"] == 6 * 100
    assert annealed.stats["head_rows"] == plain.stats["head_rows"]
    sample = method.generate(LABELS, generator=_gen(3))
    assert torch.equal(sample.images, decode_tokens(vae, plain.tokens).float())
    assert sample.images.shape == (3, 3, 32, 32) and 0 <= sample.images.min() and sample.images.max() <= 1


def test_annealed_run_uses_the_scheduled_steps(mar, vae):
    sched = LinearSchedule(50, 5)
    method = AnnealedMAR(mar, vae, sched, num_iter=8)
    out = method.sample_tokens(LABELS, generator=_gen(5))
    want = steps_per_iteration(sched, 8)
    assert out.stats["steps_per_iter"] == want and out.stats["head_steps"] == sum(want)
    assert want[0] == 48 and want[-1] == 5  # the clip: 50 requested -> 48 run
    assert out.stats["head_rows"] == 3 * sum(s * n for s, n in zip(want, out.stats["tokens_per_iter"]))
    # same as giving sample_tokens the per-iteration timestep lists directly
    ref = sample_tokens(mar, LABELS, generator=_gen(5), num_iter=8, head_steps=lambda k, n: sched.timesteps(k, n))
    assert torch.equal(out.tokens, ref.tokens)
    # and different from plain MAR under the same generator
    plain = sample_tokens(mar, LABELS, generator=_gen(5), num_iter=8)
    assert not torch.equal(out.tokens, plain.tokens)


def test_adaptive_schedule_follows_the_signal(mar, vae):
    sched = AdaptiveSchedule(50, 5, probes=4)
    assert sched.requested_steps(1.0, 1.0) == 50 and sched.requested_steps(0.0, 1.0) == 5
    assert sched.requested_steps(0.5, 1.0) == 27 and sched.requested_steps(3.0, 1.0) == 50
    assert AdaptiveSchedule(50, 5, power=2.0).requested_steps(0.5, 1.0) == 16
    assert sched.probe_timestep() == 950 and AdaptiveSchedule(respacing=MAR_RESPACING).probe_timestep() == 999
    method = AnnealedMAR(mar, vae, sched, num_iter=6, cfg=2.0)
    a = method.sample_tokens(LABELS, generator=_gen(9))
    b = method.sample_tokens(LABELS, generator=_gen(9))
    assert torch.equal(a.tokens, b.tokens)  # deterministic under the generator
    s, steps = a.stats["signal"], a.stats["steps_per_iter"]
    assert steps[0] == 48  # first iteration is its own reference -> upper (48 after the clip)
    ref = s[0]
    assert steps == [len(sched.timesteps(x, ref)) for x in s]
    assert a.stats["probe_rows"] == 4 * 3 * sum(a.stats["tokens_per_iter"])
    assert a.stats["head_rows"] == sum(st * 2 * 3 * n for st, n in zip(steps, a.stats["tokens_per_iter"])) + a.stats["probe_rows"]


def test_x0_spread_measures_the_conditional_spread(mar):
    # identical conditions -> identical spreads per row; more probes -> a finite positive estimate
    z = torch.randn(1, TINY.decoder_embed_dim, generator=_gen(0)).repeat(3, 1)
    s = x0_spread(mar.head, z, 950, 64, _gen(1))
    assert s.shape == (3,) and bool((s > 0).all()) and torch.isfinite(s).all()
    head = type(mar.head)(TINY.token_embed_dim, TINY.decoder_embed_dim, 1, 8)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
    # eps = 0 -> x0_hat = x_t / sqrt(abar): Var = 1 / abar (up to sampling error)
    from accel.models.mar_head import DDPMSchedule

    abar = float(DDPMSchedule.from_timesteps([500]).alphas_cumprod[0])
    s = x0_spread(head, torch.zeros(2, TINY.decoder_embed_dim), 500, 4000, _gen(2))
    assert torch.allclose(s, torch.full((2,), 1 / abar, dtype=s.dtype), rtol=0.05)


def test_names_and_specs():
    assert describe(LinearSchedule(50, 5)) == "linear50-5" and describe(ConstantSchedule(100)) == "const100"
    assert describe(make_schedule("cosine:25:5:noclip")) == "cosine25-5-noclip"
    assert make_schedule("two-stage:100:5") == TwoStageSchedule(100, 5)
    assert isinstance(make_schedule("adaptive:50:5"), AdaptiveSchedule)
    assert make_schedule("constant:100") == ConstantSchedule(100)
    with pytest.raises(KeyError):
        make_schedule("zigzag:50:5")
    with pytest.raises(ValueError):
        make_schedule("linear:50")
    with pytest.raises(ValueError):
        AdaptiveSchedule(50, 1)


def test_head_time_replays_the_recorded_conditions(mar):
    from accel.harness.mar_costs import head_time, mar_pass_time, record_conditions

    trace = record_conditions(mar, LABELS, num_iter=4, generator=_gen(0), cfg=2.0)
    assert len(trace) == 4 and sum(len(t["z"]) for t in trace) == 2 * 3 * TINY.seq_len  # [cond; uncond] rows
    t = head_time(mar, trace, {"mar": ConstantSchedule(10), "disa": LinearSchedule(10, 3)}, repeats=1, warmup=0)
    assert set(t) == {"mar", "disa"} and all(len(v.times) == 1 and v.median > 0 for v in t.values())
    assert mar_pass_time(mar, LABELS, num_iter=4, cfg=2.0, repeats=1, warmup=0).median > 0


def test_bench_entries_are_registered():
    from accel.presets import registry

    reg = registry()
    names = [n for n in reg.entries if n.startswith("disa-")]
    assert "disa-linear50-5" in names and not reg.errors
    assert all(reg.get(n).baseline == "mar-default" for n in names)


def test_ddpm_schedules_per_ar_step():
    from accel.annealing.disa import ddpm_schedules

    scheds = ddpm_schedules(LinearSchedule(50, 5), 16)
    assert [s.num_steps for s in scheds] == steps_per_iteration(LinearSchedule(50, 5), 16)
    assert scheds[-1] is scheds[-2] or scheds[-1].timesteps != scheds[-2].timesteps  # shared when equal
    assert scheds[0].timesteps == LinearSchedule(50, 5).timesteps(0, 16)
