"""The MAR diffusion head: per-call step counts, explicit timesteps, supplied noise, trajectories, CFG."""
import pytest
import torch

from accel.models.mar_head import DDPMSchedule, DiffLoss, HeadNoise, space_timesteps


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _head(C=4, Dz=8, depth=2, width=16, seed=0):
    torch.manual_seed(seed)
    h = DiffLoss(C, Dz, depth, width).eval()
    with torch.no_grad():  # the zero-init of the official head would make eps = 0; randomise everything
        for p in h.parameters():
            p.normal_(0, 0.05)
    return h


def _z(rows, Dz=8, seed=1):
    return torch.randn(rows, Dz, generator=torch.Generator().manual_seed(seed))


def test_space_timesteps_official_examples():
    assert space_timesteps(1000, "5") == [0, 250, 500, 749, 999]  # research note §1.3
    assert len(space_timesteps(1000, "100")) == 100 and space_timesteps(1000, "100")[-1] == 999
    assert space_timesteps(1000, "ddim4") == [0, 250, 500, 750]
    assert space_timesteps(10, "2,3") == [0, 4, 5, 7, 9]
    with pytest.raises(ValueError):
        space_timesteps(10, "11")


def test_full_schedule_is_the_1000_step_cosine():
    s = DDPMSchedule.respaced("")
    assert s.num_steps == 1000 and s.timesteps == tuple(range(1000))
    assert abs(float(s.alphas_cumprod[-1]) - 2.4e-9) < 0.1e-9  # research note: abar(999) = 2.4e-9


@torch.no_grad()
def test_steps_timesteps_and_schedule_are_the_same_call():
    h, z = _head(), _z(3)
    a = h.sample(z, steps=20, generator=torch.Generator().manual_seed(5))
    b = h.sample(z, steps="20", generator=torch.Generator().manual_seed(5))
    c = h.sample(z, timesteps=space_timesteps(1000, 20), generator=torch.Generator().manual_seed(5))
    d = h.sample(z, schedule=DDPMSchedule.respaced(20), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(a, d)


@torch.no_grad()
def test_step_count_is_per_call_not_stored():
    """Alternating step counts on one head gives exactly what fresh calls with each count give."""
    h, z = _head(), _z(2)
    ref = {S: h.sample(z, steps=S, generator=torch.Generator().manual_seed(S)) for S in (5, 12)}
    for S in (12, 5, 12, 5):
        assert torch.equal(h.sample(z, steps=S, generator=torch.Generator().manual_seed(S)), ref[S])
    assert not torch.allclose(ref[5], ref[12])
    with pytest.raises(ValueError, match="exactly one"):
        h.sample(z, generator=torch.Generator())
    with pytest.raises(ValueError, match="exactly one"):
        h.sample(z, steps=5, timesteps=[0, 500], generator=torch.Generator())


@torch.no_grad()
def test_explicit_timesteps_respaced_betas():
    """A clipped list (DiSA-style) respaces the cosine schedule: beta_i = 1 - abar(t_i) / abar(t_{i-1})."""
    full = DDPMSchedule.respaced("")
    ts = [0, 250, 500, 749, 950]
    s = DDPMSchedule.from_timesteps(ts)
    abar = full.alphas_cumprod[ts]
    assert s.timesteps == tuple(ts)
    assert torch.allclose(s.betas[1:], 1 - abar[1:] / abar[:-1], rtol=0, atol=1e-15)
    h, z = _head(), _z(2)
    out = h.sample_trajectory(z, timesteps=ts, generator=torch.Generator().manual_seed(0))
    assert out.timesteps == tuple(reversed(ts)) and out.mean.shape == (5, 2, 4)


@torch.no_grad()
def test_supplied_noise_reproduces_generator_run_and_trajectory_is_consistent():
    h, z = _head(), _z(3)
    tr = h.sample_trajectory(z, steps=10, temperature=0.7, generator=torch.Generator().manual_seed(3))
    plain = h.sample(z, steps=10, temperature=0.7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(tr.sample, plain)
    replay = h.sample(z, steps=10, temperature=0.7, noise=HeadNoise(tr.x_T, tr.noise))
    assert torch.equal(replay, plain)
    # per-step consistency: x_{k+1} = mean + [i != 0] exp(logvar / 2) noise * temperature
    for k in range(10):
        i = 9 - k
        st = h.step_stats(tr.states[k], i, z, tr.schedule)
        # same arithmetic; the time embedding is computed for one row here vs all S rows in the loop
        assert torch.allclose(st.mean, tr.mean[k], rtol=1e-5, atol=1e-6)
        assert torch.allclose(st.log_variance, tr.log_variance[k], rtol=1e-5, atol=1e-6)
        want = tr.mean[k] + (i != 0) * torch.exp(0.5 * tr.log_variance[k]) * tr.noise[k] * 0.7
        assert torch.allclose(tr.samples[k], want, rtol=1e-6, atol=1e-6)
    assert torch.equal(tr.samples[-1], tr.mean[-1])  # no noise at the last step
    assert torch.equal(tr.states[1:], tr.samples[:-1]) and torch.equal(tr.states[0], tr.x_T)


@torch.no_grad()
def test_temperature_scales_only_the_noise():
    h, z = _head(), _z(2)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(9))
    s = DDPMSchedule.respaced(8)
    noise = HeadNoise(x, torch.zeros(8, 2, 4))  # zero noise: temperature must not matter
    assert torch.equal(h.sample(z, schedule=s, temperature=0.3, noise=noise),
                       h.sample(z, schedule=s, temperature=1.0, noise=noise))


@torch.no_grad()
def test_cfg_guides_eps_only_and_cond_rows_ignore_uncond_state():
    h = _head()
    zc, zu = _z(3, seed=1), _z(3, seed=2)
    z = torch.cat([zc, zu])
    s = DDPMSchedule.respaced(10)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(4))
    g = h.step_stats(x, 7, z, s, cfg=2.5)
    c = h.step_stats(x[:3], 7, zc, s)
    u = h.step_stats(x[:3], 7, zu, s)
    assert torch.allclose(g.eps[:3], u.eps + 2.5 * (c.eps - u.eps), atol=1e-6)
    assert torch.equal(g.eps[:3], g.eps[3:])
    assert torch.allclose(g.log_variance[:3], c.log_variance, atol=1e-6)  # variance not guided
    x2 = x.clone()
    x2[3:] += 5.0  # the uncond half of the state never influences the cond rows
    assert torch.equal(h.step_stats(x2, 7, z, s, cfg=2.5).mean[:3], g.mean[:3])
    # supplied noise may give only the cond half (duplicated); the cond rows match a full-noise run
    full = h.sample_trajectory(z, schedule=s, cfg=2.5, generator=torch.Generator().manual_seed(1))
    half = h.sample(z, schedule=s, cfg=2.5, noise=HeadNoise(full.x_T[:3], full.noise[:, :3]))
    assert torch.equal(half[:3], full.sample[:3])


def test_bad_inputs_raise():
    h, z = _head(), _z(3)
    with pytest.raises(ValueError, match="Generator"):
        h.sample(z, steps=5)
    with pytest.raises(ValueError, match="even"):
        h.sample(z, steps=5, cfg=2.0, generator=torch.Generator())
    with pytest.raises(ValueError, match="supplied noise"):
        h.sample(z, steps=5, noise=HeadNoise(torch.zeros(3, 4), torch.zeros(4, 3, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        h.sample(z, timesteps=[999], generator=torch.Generator())
    with pytest.raises(ValueError):
        DDPMSchedule.from_timesteps([0, 1000])
