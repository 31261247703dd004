"""DD1 flow map: pushes N(0, I) forward to p, lands on codes, and the sequence map is deterministic."""
import pytest
import torch
from scipy.stats import chisquare

from accel.distill.flow import FlowSolver, posterior_mean, velocity
from accel.distill.sequence import llamagen_noise_map
from accel.models.llamagen import GPTConfig, Transformer
from accel.models.llamagen_generate import SamplingConfig


def toy(V=6, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, d, generator=g), torch.tensor([0.3, 0.25, 0.2, 0.15, 0.07, 0.03])


def test_flow_pushes_gaussian_to_p_and_lands_on_codes():
    codes, p = toy()
    n = 6000
    eps = torch.randn(n, 4, generator=torch.Generator().manual_seed(1))
    solver = FlowSolver(steps=24)
    end = solver.endpoint(eps, codes, p.log().expand(n, -1))
    assert torch.cdist(end, codes).min(-1).values.max() < 1e-2  # every end point is (numerically) a code
    counts = torch.bincount(solver.tokens(eps, codes, p.log().expand(n, -1)), minlength=6).double()
    assert chisquare(counts.numpy(), (p.double() / p.double().sum() * n).numpy()).pvalue > 1e-3
    # power: the same test at the same n rejects a wrong distribution (the flow of a perturbed p)
    wrong = torch.tensor([0.25, 0.3, 0.2, 0.15, 0.07, 0.03])
    bad = torch.bincount(solver.tokens(eps, codes, wrong.log().expand(n, -1)), minlength=6).double()
    assert chisquare(bad.numpy(), (p.double() / p.double().sum() * n).numpy()).pvalue < 1e-3


def test_velocity_is_posterior_mean_direction_and_one_hot_near_one():
    codes, p = toy()
    x = torch.randn(5, 4)
    v = velocity(x, 0.3, codes, p.log())
    assert torch.allclose(v, (posterior_mean(x, 0.3, codes, p.log()) - x) / 0.7, atol=1e-6)
    # at t -> 1 the posterior mean of a point near t*c_2 is c_2
    assert torch.allclose(posterior_mean(0.999 * codes[2] + 1e-4, 0.999, codes, p.log()), codes[2], atol=1e-4)


def test_zero_probability_codes_are_never_reached():
    codes, p = toy()
    p = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    toks = FlowSolver(steps=16).tokens(torch.randn(2000, 4), codes, p.clamp_min(0).log().expand(2000, -1))
    assert set(toks.unique().tolist()) <= {0, 1}


def test_bad_solver_arguments():
    with pytest.raises(ValueError):
        FlowSolver(steps=0)
    with pytest.raises(ValueError, match="heun"):
        FlowSolver(method="rk9")


def test_llamagen_noise_map_is_deterministic_and_follows_the_noise():
    torch.manual_seed(0)
    cfg = GPTConfig(dim=32, n_layer=1, n_head=2, vocab_size=16, block_size=4, num_classes=3)
    model = Transformer(cfg).eval()
    for prm in model.parameters():
        torch.nn.init.normal_(prm, std=0.5)
    codes = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    noise = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(3))
    cond = torch.tensor([0, 2])
    sc = SamplingConfig(cfg_scale=2.0)
    a = llamagen_noise_map(model, codes, cond, noise, sc, FlowSolver(steps=8))
    b = llamagen_noise_map(model, codes, cond, noise, sc, FlowSolver(steps=8))
    assert a.shape == (2, 4) and torch.equal(a, b)
    other = llamagen_noise_map(model, codes, cond, torch.randn(2, 4, 8), sc, FlowSolver(steps=8))
    assert not torch.equal(a, other)
    # a prefix from the map's own trajectory continues it exactly; another prefix is kept and changes the rest
    assert torch.equal(llamagen_noise_map(model, codes, cond, noise, sc, FlowSolver(steps=8), prefix=a[:, :2]), a)
    bent = (a[:, :2] + 1) % 16
    c = llamagen_noise_map(model, codes, cond, noise, sc, FlowSolver(steps=8), prefix=bent)
    assert torch.equal(c[:, :2], bent) and not torch.equal(c[:, 2:], a[:, 2:])


def test_fused_solver_matches_the_reference_velocity_integration():
    """FlowSolver's fused addmm evaluation is the same Heun/Euler integration of ``velocity``."""
    g = torch.Generator().manual_seed(7)
    codes = torch.randn(16, 4, generator=g)
    logp = torch.log_softmax(torch.randn(3, 5, 16, generator=g), -1)
    eps = torch.randn(3, 5, 4, generator=g)
    for method in ("euler", "heun"):
        solver = FlowSolver(steps=6, method=method)
        ts = torch.linspace(0.0, 1.0, 7).tolist()
        x = eps.clone()
        for t0, t1 in zip(ts[:-2], ts[1:-1]):
            v0 = velocity(x, t0, codes, logp)
            x1 = x + (t1 - t0) * v0
            x = x1 if method == "euler" else x + (t1 - t0) * 0.5 * (v0 + velocity(x1, t1, codes, logp))
        want = posterior_mean(x, ts[-2], codes, logp)
        assert torch.allclose(solver.endpoint(eps, codes, logp), want, atol=1e-5)
