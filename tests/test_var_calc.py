"""Analytic VAR calculator against hand-computed values and instantiated models."""
from __future__ import annotations

from dataclasses import replace

import pytest

from accel.models.var import VAR, VARConfig, var_config
from accel.models.var_calc import kv_bytes, num_params, schedule, var_cost

TINY = VARConfig(num_classes=3, depth=1, embed_dim=8, num_heads=2, mlp_ratio=4.0, patch_nums=(1, 2))


def test_tiny_config_by_hand():
    c = var_cost(TINY, vocab_size=4, Cvae=2, bytes_per_element=2, cfg_guidance=False)
    assert c.tokens == 5
    # KV bytes = 2 * layers * tokens * dim * bytes * batch; scale 0 attends to 1 token, scale 1 to 5
    assert c.kv_bytes_per_scale == (2 * 1 * 1 * 8 * 2, 2 * 1 * 5 * 8 * 2) == (32, 160)
    assert c.kv_bytes_peak == 160
    # scale 0 (l=1, Lk=1): qkv 2*1*8*24=384, logits 16, reduce 16, proj 128, ffn 2*1*8*32*2=1024,
    #   adaln 2*8*48=768, head_adaln 2*8*16=256, head 2*1*8*4=64, word_embed 0            -> 2656
    # scale 1 (l=4, Lk=5): qkv 1536, logits 2*4*5*8=320, reduce 320, proj 512, ffn 4096,
    #   adaln 768, head_adaln 256, head 256, word_embed 2*4*2*8=128                       -> 8192
    assert c.flops_per_scale == (2656, 8192)
    assert c.flops == 10848
    assert c.flops_breakdown["attn_logits"] == 16 + 320 and c.flops_breakdown["word_embed"] == 128
    cfg2 = var_cost(TINY, vocab_size=4, Cvae=2, bytes_per_element=2)  # CFG doubles rows
    assert cfg2.flops == 2 * 10848 and cfg2.kv_bytes_peak == 320


def test_kept_tokens_and_shared_adaln():
    kept = [[1]]  # after scale 0 the policy keeps 1 token; scale 1 attends to 1 + 4
    c = var_cost(TINY, 4, 2, cfg_guidance=False, kept=kept)
    assert c.kv_bytes_per_scale == (32, 160)
    s = var_cost(replace(TINY, depth=2, shared_aln=True), 4, 2, cfg_guidance=False)
    assert s.flops_breakdown["adaln"] == 2 * (2 * 8 * 48)  # once per scale, not per block
    with pytest.raises(ValueError):
        var_cost(TINY, 4, 2, kept=[[1, 2]])


def test_official_schedules_and_sizes():
    assert [sum(p * p for p in schedule(px)) for px in (256, 512, 1024)] == [680, 2240, 9451]
    with pytest.raises(KeyError, match="256"):
        schedule(384)
    d16 = var_cost(var_config("var-d16"), 4096, 32, cfg_guidance=False)
    assert d16.kv_bytes_peak == kv_bytes(16, 680, 1024, 2) == 44_564_480  # ~45 MB fp16, research notes §1.4
    d30 = var_cost(var_config("var-d30"), 4096, 32, schedule(1024))
    assert d30.kv_bytes_peak == 2 * 30 * 9451 * 1920 * 2 * 2
    # README parameter counts: d16 310M, d20 600M, d24 1.0B, d30 2.0B, d36 2.3B
    got = [num_params(var_config(n), 4096, 32) / 1e6 for n in ("var-d16", "var-d20", "var-d24", "var-d30", "var-d36-512")]
    assert [round(g) for g in got] == [310, 601, 1033, 2010, 2354]


@pytest.mark.parametrize("cfg", [TINY, replace(TINY, shared_aln=True), replace(TINY, attn_l2_norm=False)])
def test_num_params_matches_module(cfg):
    m = VAR(cfg, vocab_size=4, Cvae=2)
    assert num_params(cfg, 4, 2) == sum(p.numel() for p in m.parameters())
