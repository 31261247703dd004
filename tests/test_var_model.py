"""VAR / multi-scale VQVAE: properties on tiny random configs (no fixture needed)."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from accel.models.kv_cache import KeepAll, KVCache
from accel.checkpoint import CheckpointMismatch, load_strict, read_state_dict
from accel.models.var import (PATCH_NUMS, VAR, VARConfig, build_var, configs_from_official_json, load_var_checkpoints,
                              mask_top_k_top_p, sample_from_logits, teacher_forced_logits, var_config)
from accel.models.var_calc import var_cost
from accel.models.var_vqvae import VQVAEConfig, phi_index
from paths import fixtures

FIXTURE = fixtures("var")
PNS = (1, 2, 3, 4, 5, 6)  # another scale list than the public fixture
VAE_CFG = VQVAEConfig(vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 1), num_res_blocks=1, v_patch_nums=PNS)
VAR_CFG = VARConfig(num_classes=5, depth=2, embed_dim=32, num_heads=2, patch_nums=PNS, drop_path_rate=0.0)


@pytest.fixture(autouse=True)
def _one_thread():
    """The CI box has 2 busy cores; intra-op threads only add contention for these tiny tensors."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(var_cfg: VARConfig = VAR_CFG, seed: int = 0):
    """Tiny VQVAE + VAR with every parameter drawn at random so that every weight matters."""
    vae, var = build_var(var_cfg, VAE_CFG)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in (vae, var):
            for name, p in m.named_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "scale_mul" in name else 0.2))
                if "scale_mul" in name:
                    p.add_(math.log(4.0))
    return vae, var


def infer(vae, var, seed=3, **kw):
    kw = {"cfg": 2.0, "top_k": 0, "top_p": 0.0, **kw}
    return var.autoregressive_infer_cfg(vae, 3, torch.tensor([0, 4, 2]), generator=torch.Generator().manual_seed(seed),
                                        keep_logits=True, **kw)


@pytest.mark.parametrize("variant", [{}, {"shared_aln": True}, {"attn_l2_norm": False}])
def test_cached_inference_logits_equal_teacher_forced(variant):
    vae, var = tiny(replace(VAR_CFG, **variant))
    s = infer(vae, var, top_k=5, top_p=0.9)
    B, SN = 3, len(PNS)
    lc = teacher_forced_logits(var, vae, torch.tensor([0, 4, 2]), s.idx_Bl)
    lu = teacher_forced_logits(var, vae, torch.full((B,), var.num_classes), s.idx_Bl)
    for si, (bg, ed) in enumerate(var.cfg.begin_ends):
        t = 2.0 * si / (SN - 1)  # linearly ramped CFG
        want = (1 + t) * lc[:, bg:ed] - t * lu[:, bg:ed]
        torch.testing.assert_close(s.logits_BlV[si], want, atol=1e-4, rtol=1e-4)


def test_keep_all_policy_is_bitwise_equal_to_no_policy():
    vae, var = tiny()
    a, b = infer(vae, var, top_k=6, top_p=0.8), infer(vae, var, top_k=6, top_p=0.8, policy=KeepAll())
    assert torch.equal(a.images, b.images) and torch.equal(a.f_hat, b.f_hat)
    assert all(torch.equal(x, y) for x, y in zip(a.idx_Bl, b.idx_Bl))
    assert all(torch.equal(x, y) for x, y in zip(a.logits_BlV, b.logits_BlV))
    assert a.cache.kept_bytes == b.cache.kept_bytes == a.cache.attended_bytes


class Recorder:
    def __init__(self, keep_last: int | None = None):
        self.calls, self.keep_last = [], keep_last

    def compress(self, layer, scale, k, v, q):
        self.calls.append((layer, scale, tuple(k.shape), tuple(v.shape), q.clone(), k.clone()))
        if self.keep_last is None:
            return k, v
        return k[:, :, -self.keep_last:], v[:, :, -self.keep_last:]


def test_policy_hook_contract():
    vae, var = tiny()
    rec = Recorder()
    infer(vae, var, policy=rec)
    assert [(c[0], c[1]) for c in rec.calls] == [(layer, s) for s in range(len(PNS)) for layer in range(2)]
    cum = 0
    for layer, s, kshape, vshape, q, k in rec.calls:
        cum = sum(p * p for p in PNS[:s + 1])
        assert kshape == vshape == (6, 2, cum, 16)  # (2B rows, H, history incl. this scale, head_dim)
        assert q.shape == (6, 2, PNS[s] ** 2, 16)
        # q is exactly what enters the logits: l2-normalised times exp(scale_mul); k is l2-normalised
        scale_mul = var.blocks[layer].attn.scale_mul_1H11.clamp_max(math.log(100)).exp().view(1, 2, 1)
        torch.testing.assert_close(q.norm(dim=-1), scale_mul.expand(6, 2, q.shape[2]))
        torch.testing.assert_close(k.norm(dim=-1), torch.ones(k.shape[:3]))


def test_compressing_policy_shrinks_cache_and_bytes_match_calculator():
    vae, var = tiny()
    full = infer(vae, var)
    rec = Recorder(keep_last=3)
    small = infer(vae, var, policy=rec)
    per_token = 2 * 6 * 2 * 16 * 4  # k+v, 2B rows, H, head_dim, fp32
    assert small.cache.kept_bytes[-1] == [3 * per_token] * 2
    for s in range(1, len(PNS)):  # scale s attends to 3 kept + its own tokens
        assert small.cache.attended_bytes[s] == [min(3, sum(p * p for p in PNS[:s])) * per_token + PNS[s] ** 2 * per_token] * 2
    assert not torch.equal(full.logits_BlV[-1], small.logits_BlV[-1])
    cost = var_cost(VAR_CFG, 16, 4, bytes_per_element=4)
    assert [sum(r) for r in full.cache.attended_bytes] == [3 * b for b in cost.kv_bytes_per_scale]
    kept = [[min(3, sum(p * p for p in PNS[:s + 1]))] * 2 for s in range(len(PNS))]
    cost_small = var_cost(VAR_CFG, 16, 4, bytes_per_element=4, kept=kept)
    assert [sum(r) for r in small.cache.attended_bytes] == [3 * b for b in cost_small.kv_bytes_per_scale]


def test_bad_policy_output_is_rejected():
    class Bad:
        def compress(self, layer, scale, k, v, q):
            return k[:, :1], v[:, :1]  # drops a head

    vae, var = tiny()
    with pytest.raises(ValueError, match="expected"):
        infer(vae, var, policy=Bad())
    with pytest.raises(TypeError):
        KVCache(2, policy=object())


def test_more_smooth_option_runs_and_first_scale_is_unchanged():
    vae, var = tiny()
    a, b = infer(vae, var, top_k=4), infer(vae, var, top_k=4, more_smooth=True)
    assert torch.equal(a.idx_Bl[0], b.idx_Bl[0])
    assert b.images.shape == (3, 3, 12, 12) and 0 <= b.images.min() and b.images.max() <= 1
    assert not torch.equal(a.f_hat, b.f_hat)


def test_label_dropout_only_when_asked():
    vae, var = tiny()
    idx = [torch.randint(0, 16, (2, p * p), generator=torch.Generator().manual_seed(p)) for p in PNS]
    x = vae.quantize.idxBl_to_var_input(idx)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    with torch.no_grad():
        a = var(torch.tensor([1, 2]), x, generator=g)
        assert torch.equal(g.get_state(), state)  # no randomness drawn at cond_drop_rate 0
        dropped = var(torch.tensor([1, 2]), x, cond_drop_rate=1.0, generator=g)
        null = var(torch.tensor([5, 5]), x)
    assert torch.equal(dropped, null) and not torch.equal(a, null)


def test_top_k_top_p_and_generator_consumption():
    logits = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]])
    assert torch.isinf(mask_top_k_top_p(logits, top_k=2)[0, 0, :2]).all()
    assert torch.isfinite(mask_top_k_top_p(logits, top_k=10)).all()  # k >= V keeps everything
    p = logits.softmax(-1)[0, 0]  # [0.032, 0.087, 0.237, 0.644]
    kept = torch.isfinite(mask_top_k_top_p(logits, top_p=0.7))[0, 0]
    assert kept.tolist() == [False, False, True, True]  # cumsum 0.032, 0.119 <= 0.3 removed; 0.356 kept
    assert p[:2].sum() <= 0.3 < p[:3].sum()
    assert torch.isfinite(mask_top_k_top_p(logits, top_p=1e-6))[0, 0].tolist() == [False, False, False, True]
    many = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(1))
    got = sample_from_logits(many, torch.Generator().manual_seed(9))
    want = torch.multinomial(many.softmax(-1).view(-1, 7), 1, replacement=True,
                             generator=torch.Generator().manual_seed(9)).view(2, 5)
    assert torch.equal(got, want)


def test_phi_index_rule():
    assert [phi_index(si, 10, 4) for si in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert [phi_index(si, 4, 4) for si in range(4)] == [0, 1, 2, 3]
    assert [phi_index(si, 6, 6) for si in range(6)] == list(range(6))  # one phi per scale (non-shared)


@pytest.mark.parametrize("share", [0, 1, 3])
def test_vqvae_fhat_paths_agree(share):
    cfg = replace(VAE_CFG, share_quant_resi=share)
    from accel.models.var_vqvae import VQVAE
    vae = VQVAE(cfg)
    img = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        idx = vae.img_to_idxBl(img)
        fhats = vae.quantize.f_to_idxBl_or_fhat(vae.img_to_f(img), to_fhat=True)
        from_idx = vae.quantize.embed_to_fhat([vae.quantize.idxBl_to_h(i) for i in idx])
        x = vae.quantize.idxBl_to_var_input(idx)
    assert [tuple(i.shape) for i in idx] == [(2, p * p) for p in PNS]
    assert x.shape == (2, sum(p * p for p in PNS) - 1, 4)
    for a, b in zip(fhats, from_idx):
        torch.testing.assert_close(a, b)


def test_configs_presets_and_errors():
    d16 = var_config("var-d16")
    assert (d16.depth, d16.embed_dim, d16.num_heads, d16.L) == (16, 1024, 16, 680)
    d36 = var_config("var-d36-512")
    assert d36.shared_aln and d36.patch_nums == PATCH_NUMS[512]
    with pytest.raises(KeyError, match="var-d16"):
        var_config("var-d99")
    with pytest.raises(ValueError, match="bogus"):
        VARConfig.from_dict({"bogus": 1})
    vc, rc = configs_from_official_json(json.loads((FIXTURE / "config.json").read_text()))
    assert (vc.ch_mult, vc.num_res_blocks, rc.depth, rc.patch_nums) == ((1, 1), 1, 2, (1, 2, 3, 4))
    with pytest.raises(ValueError, match="does not match"):
        _, var = tiny()
        var.check_vae(build_var(VARConfig(depth=1, embed_dim=32, num_heads=2, patch_nums=(1, 2)),
                                replace(VAE_CFG, v_patch_nums=(1, 2)))[0])


def test_checkpoint_layouts_and_mismatch(tmp_path):
    vae, var = tiny()
    sd = var.state_dict()
    assert {"lvl_1L", "attn_bias_for_masking", "blocks.0.attn.zero_k_bias"} <= set(sd)
    torch.save(sd, tmp_path / "raw.pth")
    torch.save({"model": sd, "epoch": 3}, tmp_path / "wrapped.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "var.safetensors"))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp_path / "vae.safetensors"))
    want = infer(vae, var).images
    for f in ("raw.pth", "wrapped.pth", "var.safetensors"):
        vae2, var2 = build_var(VAR_CFG, VAE_CFG)
        load_var_checkpoints(vae2, var2, tmp_path / "vae.safetensors", tmp_path / f)
        assert torch.equal(infer(vae2, var2).images, want), f
    bad = dict(sd)
    bad.pop("blocks.1.attn.q_bias")
    bad["blocks.1.attn.k_bias"] = torch.zeros(32)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatch, match=r"blocks\.1\.attn\.q_bias.*blocks\.1\.attn\.k_bias"):
        load_strict(build_var(VAR_CFG, VAE_CFG)[1], read_state_dict(tmp_path / "bad.pth"))
    with pytest.raises(CheckpointMismatch, match="shape"):  # same keys, other width
        load_strict(build_var(replace(VAR_CFG, num_classes=6), VAE_CFG)[1], read_state_dict(tmp_path / "raw.pth"))


def test_vqvae_file_for_another_scale_count_loads(tmp_path):
    vae, var = tiny()
    sd = dict(vae.state_dict())
    sd["quantize.ema_vocab_hit_SV"] = torch.ones(10, 16)  # e.g. the 10-scale 256 px tokenizer file
    torch.save(sd, tmp_path / "vae.pth")
    torch.save({"model": var.state_dict()}, tmp_path / "var.pth")
    vae2, var2 = load_var_checkpoints(*build_var(VAR_CFG, VAE_CFG), tmp_path / "vae.pth", tmp_path / "var.pth")
    assert torch.equal(vae2.quantize.ema_vocab_hit_SV, torch.zeros(len(PNS), 16))
    assert torch.equal(vae2.quantize.embedding.weight, vae.quantize.embedding.weight)
