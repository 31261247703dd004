"""VAR's one scale step (``VAR.begin`` / ``step`` / ``advance``) and its one block loop (``run_blocks``) on tiny
random configs: a hand-driven loop is the sampler, guidance is one arithmetic, the block's ``mid`` input is
an exact residual addend, and misuse is refused."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from accel.models.kv_cache import KVCache
from accel.cache.budgets import uniform
from accel.cache.snapkv import SnapKV
from accel.models.var import VARConfig, build_var, mask_top_k_top_p, ramped_cfg, sample_from_logits
from accel.models.var_vqvae import VQVAEConfig

PNS = (1, 2, 3, 4, 5)
VAE_CFG = VQVAEConfig(vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 1), num_res_blocks=1, v_patch_nums=PNS)
VAR_CFG = VARConfig(num_classes=5, depth=2, embed_dim=32, num_heads=2, patch_nums=PNS, drop_path_rate=0.0)


def tiny(var_cfg: VARConfig = VAR_CFG, seed: int = 0):
    vae, var = build_var(var_cfg, VAE_CFG)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in (vae, var):
            for name, p in m.named_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "scale_mul" in name else 0.2))
                if "scale_mul" in name:
                    p.add_(math.log(4.0))
    return vae, var


@pytest.mark.parametrize("variant, policy", [({}, None), ({"shared_aln": True}, None), ({}, "snapkv")])
def test_hand_driven_steps_reproduce_the_sampler_bitwise(variant, policy):
    vae, var = tiny(replace(VAR_CFG, **variant))
    labels, kw = torch.tensor([0, 4, 2]), dict(cfg=2.0, top_k=6, top_p=0.9)
    pol = SnapKV(uniform(PNS, var.depth, 0.3, min_keep=2), window=2) if policy else None
    ref = var.autoregressive_infer_cfg(vae, 3, labels, generator=torch.Generator().manual_seed(1), policy=pol,
                                       keep_logits=True, **kw)
    g = torch.Generator().manual_seed(1)
    st = var.begin(labels, KVCache(var.depth, pol))
    with torch.no_grad():
        for si in range(len(PNS)):
            assert st.si == si and st.cur_L == sum(p * p for p in PNS[:si])
            logits = var.step(st, kw["cfg"])
            assert torch.equal(logits, ref.logits_BlV[si])
            idx = sample_from_logits(mask_top_k_top_p(logits, kw["top_k"], kw["top_p"]), g)
            assert torch.equal(idx, ref.idx_Bl[si])
            var.advance(st, vae, idx)
    assert st.passes == len(PNS) and torch.equal(st.f_hat, ref.f_hat)
    assert st.cache.kept_bytes == ref.cache.kept_bytes


def test_guidance_int_and_per_token_scales_are_one_arithmetic():
    g = torch.Generator().manual_seed(0)
    for SN in (7, 10, 14):
        for cfg in (1.5, 2.0, 2.5):
            for si in range(SN):
                x = torch.randn(4, 3, 8, generator=g)
                a = ramped_cfg(x, si, SN, cfg)
                assert torch.equal(a, ramped_cfg(x, torch.full((3,), si), SN, cfg))
                t = cfg * si / (SN - 1)
                assert torch.allclose(a, (1 + t) * x[:2] - t * x[2:], atol=1e-5)
    x = torch.randn(2, 3, 8, generator=g)
    assert torch.equal(ramped_cfg(x, 4, 7, 0.0), x[:1])  # no guidance: the conditional rows


def test_block_mid_is_a_residual_addend_between_attention_and_ffn():
    _, var = tiny()
    b, x = var.blocks[0], torch.randn(2, 5, 32)
    cond = var.shared_ada_lin(torch.randn(2, 32))
    with torch.no_grad():
        assert torch.equal(b(x, cond), b(x, cond, mid=None))
        assert torch.equal(b(x, cond), b(x, cond, mid=torch.zeros(2, 5, 32)))
        mid = torch.randn(2, 5, 32)
        g1, g2, s1, s2, sh1, sh2 = b.ada_lin(cond).view(-1, 1, 6, 32).unbind(2)
        h = x + b.attn(b.ln_wo_grad(x) * (1 + s1) + sh1, None) * g1 + mid
        want = h + b.ffn(b.ln_wo_grad(h) * (1 + s2) + sh2) * g2
        assert torch.allclose(b(x, cond, mid=mid), want, atol=1e-5)
        assert not torch.allclose(b(x, cond, mid=mid), b(x, cond), atol=1e-3)


def test_misuse_is_refused():
    vae, var = tiny()
    st = var.begin(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="label_B"):
        var.begin(torch.tensor([[1]]))
    with torch.no_grad():
        var.step(st, 1.5)
        with pytest.raises(ValueError, match="exactly one"):
            var.advance(st, vae)
        with pytest.raises(ValueError, match="shape"):
            var.advance(st, vae, torch.zeros(2, 4, dtype=torch.long))
        for si in range(len(PNS)):
            if si:
                var.step(st, 1.5)
            var.advance(st, vae, torch.zeros(2, PNS[si] ** 2, dtype=torch.long))
        with pytest.raises(RuntimeError, match="decoded"):
            var.step(st, 1.5)
        with pytest.raises(ValueError, match="mids"):
            var.run_blocks(torch.zeros(1, 1, 32), st.cond[:1], mids=[torch.zeros(1)])


def test_guidance_free_decode_runs_the_conditional_rows_alone():
    """cfg 0 runs B rows instead of the official 2B; its logits are what the doubled batch gives at t = 0."""
    torch.manual_seed(0)
    vae, var = build_var(VARConfig(num_classes=4, depth=2, embed_dim=32, num_heads=2, patch_nums=(1, 2, 3)),
                         VQVAEConfig(vocab_size=16, z_channels=4, ch=32, v_patch_nums=(1, 2, 3), ch_mult=(1, 1),
                                     num_res_blocks=1, using_sa=False, using_mid_sa=False))
    var.init_weights(init_adaln_gamma=1.0, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3])
    alone = var.autoregressive_infer_cfg(vae, 2, labels, cfg=0.0, generator=torch.Generator().manual_seed(1),
                                         keep_logits=True)
    st = var.begin(labels, KVCache(var.depth))  # guided: 2B rows, cfg 0 at every scale
    for si, idx in enumerate(alone.idx_Bl):
        assert torch.allclose(var.step(st, 0.0), alone.logits_BlV[si], atol=1e-5)
        var.advance(st, vae, idx)
    assert alone.cache.peak_attended_bytes() * 2 == st.cache.peak_attended_bytes()
    with pytest.raises(ValueError, match="guided=False"):
        var.step(var.begin(labels, guided=False), 1.5)
