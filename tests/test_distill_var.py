"""DD1 for VAR: the noise -> tokens map (determinism, teacher distribution, consistency), pair generation
resume, and the parallel-sampling baselines (skip-k, one-step from marginals)."""
import math
import os

import pytest
import torch
from scipy.stats import chisquare

from accel.distill.baselines_var import onestep_sample, skip_sample, teacher_nll, token_marginals
from accel.distill.data import generate_pairs, load_pairs, shard_path
from accel.distill.flow import FlowSolver
from accel.distill.var_map import split_scales, var_noise_map, var_pair_map, var_pair_spec
from accel.models.var import VARConfig, build_var, mask_top_k_top_p, teacher_forced_logits
from accel.models.var_vqvae import VQVAEConfig

PNS = (1, 2, 3, 4)
VAE_CFG = VQVAEConfig(vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 1), num_res_blocks=1, v_patch_nums=PNS)
VAR_CFG = VARConfig(num_classes=5, depth=2, embed_dim=32, num_heads=2, patch_nums=PNS, drop_path_rate=0.0)
SOLVER = FlowSolver(steps=12)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(seed=0):
    """Tiny VQVAE + VAR, every parameter random so that every weight matters."""
    vae, var = build_var(VAR_CFG, VAE_CFG)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in (vae, var):
            for name, p in m.named_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "scale_mul" in name else 0.3))
                if "scale_mul" in name:
                    p.add_(math.log(4.0))
    return vae, var


def noise(B, seed=1):
    return torch.randn(B, sum(p * p for p in PNS), VAE_CFG.z_channels, generator=torch.Generator().manual_seed(seed))


def test_map_is_deterministic_row_independent_and_follows_the_noise():
    vae, var = tiny()
    lab, eps = torch.tensor([0, 3, 1]), noise(3)
    a = var_noise_map(var, vae, lab, eps, cfg=2.0, solver=SOLVER)
    assert a.shape == (3, var.L) and a.dtype == torch.long
    assert torch.equal(a, var_noise_map(var, vae, lab, eps, cfg=2.0, solver=SOLVER))
    # a row's tokens depend on its own label and noise only
    assert torch.equal(a[1:2], var_noise_map(var, vae, lab[1:2], eps[1:2], cfg=2.0, solver=SOLVER))
    other = var_noise_map(var, vae, lab, noise(3, seed=9), cfg=2.0, solver=SOLVER)
    assert (other != a).float().mean() > 0.2
    with pytest.raises(ValueError, match="noise must be"):
        var_noise_map(var, vae, lab, eps[:, :-1], solver=SOLVER)


@pytest.mark.parametrize("cfg", [2.5, 0.0])
def test_each_token_is_the_flow_of_its_teacher_distribution_given_the_mapped_scales(cfg):
    """Independent code path: teacher-forced logits (cond and null class) on the mapped ids, ramped CFG,
    top-k/top-p, then the per-token flow of each token's own noise, reproduce every token of every scale.
    cfg 0 (a guidance-free teacher): the map runs the conditional rows alone, same tokens."""
    vae, var = tiny()
    lab, eps = torch.tensor([0, 4, 2, 2]), noise(4, seed=5)
    kw = dict(cfg=cfg, top_k=6, top_p=0.9)
    ids = var_noise_map(var, vae, lab, eps, solver=SOLVER, **kw)
    per = split_scales(ids, PNS)
    with torch.no_grad():
        lc = teacher_forced_logits(var, vae, lab, per)
        lu = teacher_forced_logits(var, vae, torch.full_like(lab, var.num_classes), per)
    codes = vae.quantize.embedding.weight.detach()
    for si, (b, e) in enumerate(var.cfg.begin_ends):
        t = kw["cfg"] * si / (len(PNS) - 1)
        masked = mask_top_k_top_p((1 + t) * lc[:, b:e] - t * lu[:, b:e], kw["top_k"], kw["top_p"])
        again = SOLVER.tokens(eps[:, b:e], codes, masked.log_softmax(-1))
        assert torch.equal(again, per[si]), f"scale {si}"


def test_first_scale_frequencies_follow_the_teacher_distribution_with_power():
    vae, var = tiny()
    n, label = 3000, 2
    eps = noise(n, seed=11)
    toks = var_noise_map(var, vae, torch.full((n,), label), eps, cfg=2.0, solver=SOLVER, stop=1)
    assert toks.shape == (n, 1)
    counts = torch.bincount(toks[:, 0], minlength=var.V).double().numpy()
    with torch.no_grad():
        zero = torch.zeros(2, var.L - 1, var.Cvae)
        p = torch.softmax(var(torch.tensor([label, 4]), zero)[:, 0].double(), -1)  # scale 0: no CFG (t = 0)
    keep = (p[0] * n >= 5).numpy()  # pool rare codes into one bin (chi-square validity)

    def binned(x):
        return list(x[keep]) + ([x[~keep].sum()] if (~keep).any() else [])

    assert chisquare(binned(counts), binned(p[0].numpy() * n)).pvalue > 1e-3
    # power: the same counts against another class's first-scale distribution are rejected
    assert 0.5 * (p[0] - p[1]).abs().sum() > 0.1
    assert chisquare(binned(counts), binned(p[1].numpy() * n)).pvalue < 1e-6
    # top-k: only the k most likely codes are ever reached
    toks_k = var_noise_map(var, vae, torch.full((500,), label), eps[:500], cfg=2.0, top_k=3, solver=SOLVER, stop=1)
    assert set(toks_k.unique().tolist()) <= set(p[0].topk(3).indices.tolist())


def test_pair_generation_resumes_and_splits_across_processes(tmp_path):
    vae, var = tiny()
    spec = var_pair_spec(var, n_pairs=7, shard_size=2, seed=3)
    nm = var_pair_map(var, vae, cfg=2.0, top_k=8, solver=SOLVER)
    full = generate_pairs(nm, spec, tmp_path / "one", batch_size=3, progress=False)
    assert len(full) == spec.n_shards == 4
    # two "processes" write disjoint shards; together identical files
    for r in (1, 0):
        generate_pairs(nm, spec, tmp_path / "two", rank=r, world=2, batch_size=3, progress=False)
    a, b = load_pairs(tmp_path / "one"), load_pairs(tmp_path / "two")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert a["noise"].shape == (7, var.L, var.Cvae) and a["tokens"].shape == (7, var.L)
    # tokens are the map of the stored noise
    assert torch.equal(a["tokens"][5:].long(), var_noise_map(var, vae, a["labels"][5:], a["noise"][5:], cfg=2.0,
                                                             top_k=8, solver=SOLVER))
    # a killed run: shard 2 missing (and a stale temp file); the rerun writes only shard 2
    shard_path(tmp_path / "one", 2).unlink()
    mtimes = {s: os.stat(shard_path(tmp_path / "one", s)).st_mtime_ns for s in (0, 1, 3)}
    with pytest.raises(FileNotFoundError, match="1 shards missing"):
        load_pairs(tmp_path / "one")
    again = generate_pairs(nm, spec, tmp_path / "one", batch_size=3, progress=False)
    assert again == [shard_path(tmp_path / "one", 2)]
    assert all(os.stat(shard_path(tmp_path / "one", s)).st_mtime_ns == m for s, m in mtimes.items())
    c = load_pairs(tmp_path / "one")
    for k in a:
        assert torch.equal(a[k], c[k]), k
    with pytest.raises(ValueError, match="another spec"):
        generate_pairs(nm, var_pair_spec(var, 7, 2, seed=4), tmp_path / "one", progress=False)  # other noise seed


@pytest.mark.parametrize("kw", [dict(cfg=2.0), dict(cfg=1.5, top_k=5, top_p=0.9)])
def test_skip_zero_is_the_teacher_bitwise(kw):
    vae, var = tiny()
    lab = torch.tensor([0, 3, 1])
    s = var.autoregressive_infer_cfg(vae, 3, lab, generator=torch.Generator().manual_seed(5), **kw)
    ids, info = skip_sample(var, vae, lab, 0, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(torch.cat(s.idx_Bl, 1), ids) and info["teacher_passes"] == len(PNS)


def test_skip_k_passes_and_prefix():
    vae, var = tiny()
    lab = torch.tensor([0, 3, 1])
    ref = skip_sample(var, vae, lab, 0, generator=torch.Generator().manual_seed(2), cfg=2.0)[0]
    for k in range(1, len(PNS)):
        ids, info = skip_sample(var, vae, lab, k, generator=torch.Generator().manual_seed(2), cfg=2.0)
        assert ids.shape == (3, var.L) and info["teacher_passes"] == len(PNS) - k
        n = sum(p * p for p in PNS[:len(PNS) - 1 - k])  # scales sampled one per step: same draws
        assert torch.equal(ids[:, :n], ref[:, :n])
    with pytest.raises(ValueError, match="k must lie"):
        skip_sample(var, vae, lab, len(PNS), generator=None)


def test_skip_k_from_marginals():
    vae, var = tiny()
    lab = torch.tensor([0, 3, 1])
    pool = skip_sample(var, vae, torch.arange(5).repeat(4), 0, generator=torch.Generator().manual_seed(7), cfg=2.0)[0]
    m = token_marginals(pool, torch.arange(5).repeat(4), 5, var.V)
    ref = skip_sample(var, vae, lab, 0, generator=torch.Generator().manual_seed(2), cfg=2.0)[0]
    assert torch.equal(skip_sample(var, vae, lab, 0, generator=torch.Generator().manual_seed(2), cfg=2.0,
                                   marginals=m)[0], ref)
    for k in (1, 2):
        ids, info = skip_sample(var, vae, lab, k, generator=torch.Generator().manual_seed(2), cfg=2.0, marginals=m)
        n = sum(p * p for p in PNS[:len(PNS) - k])
        assert info["teacher_passes"] == len(PNS) - k and torch.equal(ids[:, :n], ref[:, :n])
        assert (m[lab[:, None], torch.arange(n, var.L)[None], ids[:, n:]] > 0).all()  # drawn from the support


def test_teacher_nll_matches_teacher_forced_scoring():
    vae, var = tiny()
    lab = torch.tensor([1, 2])
    kw = dict(cfg=2.0, top_k=10, top_p=0.0)
    ids = skip_sample(var, vae, lab, 0, generator=torch.Generator().manual_seed(0), **kw)[0]
    nll = teacher_nll(var, vae, lab, ids, **kw)
    per = split_scales(ids, PNS)
    with torch.no_grad():
        lc = teacher_forced_logits(var, vae, lab, per)
        lu = teacher_forced_logits(var, vae, torch.full_like(lab, 5), per)
    ref = torch.zeros(2)
    for si, (b, e) in enumerate(var.cfg.begin_ends):
        t = kw["cfg"] * si / (len(PNS) - 1)
        lp = mask_top_k_top_p((1 + t) * lc[:, b:e] - t * lu[:, b:e], kw["top_k"]).log_softmax(-1)
        ref -= lp.gather(-1, per[si].unsqueeze(-1)).squeeze(-1).sum(-1)
    assert torch.allclose(nll, ref / var.L, atol=1e-4)


def test_marginals_and_onestep_sampling():
    tokens = torch.tensor([[0, 1], [0, 2], [1, 2], [3, 3]])
    labels = torch.tensor([0, 0, 0, 1])
    m = token_marginals(tokens, labels, 2, 4)
    assert torch.allclose(m[0, 0], torch.tensor([2 / 3, 1 / 3, 0, 0]))
    assert torch.allclose(m[0, 1], torch.tensor([0, 1 / 3, 2 / 3, 0]))
    assert torch.allclose(m[1, 1], torch.tensor([0.0, 0, 0, 1]))
    with pytest.raises(ValueError, match="no samples for classes"):
        token_marginals(tokens, labels, 3, 4)
    n = 3000
    s = onestep_sample(m, torch.zeros(n, dtype=torch.long), torch.Generator().manual_seed(0))
    assert s.shape == (n, 2) and set(s[:, 0].unique().tolist()) <= {0, 1}
    freq = torch.bincount(s[:, 1], minlength=4).double().numpy()
    assert chisquare(freq[1:3], [n / 3, 2 * n / 3]).pvalue > 1e-3 and freq[[0, 3]].sum() == 0
    # positions are drawn independently: the pair (pos 0, pos 1) = (1, 1) has probability 1/9 > 0
    assert ((s[:, 0] == 1) & (s[:, 1] == 1)).any()
