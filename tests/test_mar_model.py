"""MAR model and KL-VAE: configs/presets, checkpoint layouts, mismatch errors, generation loop properties."""
import argparse
import logging

import pytest
import torch
from safetensors.torch import save_file

from accel.checkpoint import CheckpointMismatch
from accel.models.kl_vae import AutoencoderKL, KLVAEConfig, load_kl_vae
from accel.models.mar import MAR, MARConfig, cfg_at, load_mar, mask_len_at, preset
from accel.models.mar_head import HeadNoise, space_timesteps

# A config unlike the public fixture: 6x6 grid, patch 2 (token dim 12), unequal widths, 3 head blocks.
SMALL = MARConfig(img_size=48, vae_stride=4, patch_size=2, encoder_embed_dim=24, encoder_depth=1,
                  encoder_num_heads=3, decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2,
                  vae_embed_dim=3, class_num=7, buffer_size=3, diffloss_d=3, diffloss_w=20,
                  num_sampling_steps="6")
VAE_SMALL = KLVAEConfig(embed_dim=4, ch_mult=(1, 2), ch=32, num_res_blocks=1, resolution=16)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _mar(cfg=SMALL, seed=0):
    torch.manual_seed(seed)
    m = MAR(cfg).eval()
    with torch.no_grad():
        for p in m.diffloss.parameters():
            p.normal_(0, 0.05)
    return m


# -- configs ------------------------------------------------------------------------------------------

def test_presets_and_unknown_names():
    b, h = preset("mar_base"), preset("mar_huge")
    assert (b.encoder_embed_dim, b.encoder_depth, b.diffloss_d, b.diffloss_w) == (768, 12, 6, 1024)
    assert (h.decoder_embed_dim, h.decoder_num_heads, h.diffloss_d, h.diffloss_w) == (1280, 16, 12, 1536)
    assert preset("mar_large").diffloss_w == 1280 and b.seq_len == 256 and b.buffer_size == 64
    with pytest.raises(KeyError, match="mar_base"):
        preset("mar_giant")
    with pytest.raises(KeyError, match="valid"):
        MARConfig.from_dict({"img_size": 64, "not_a_field": 1})
    cfg = MARConfig.from_dict({"img_size": 64, "vae_stride": 16, "num_sampling_steps": 20, "_seed": 0,
                               "_norm_layer_eps": 1e-5})
    assert cfg.seq_len == 16 and cfg.num_sampling_steps == "20" and cfg.norm_eps == 1e-5
    with pytest.raises(dataclasses_frozen_error()):
        cfg.img_size = 32


def dataclasses_frozen_error():
    import dataclasses
    return dataclasses.FrozenInstanceError


def test_vae_config_from_fixture_style_dict():
    d = {"embed_dim": 8, "ch_mult": [1, 2, 2], "use_variational": True,
         "encoder_overrides": {"ch": 32, "num_res_blocks": 1, "resolution": 64},
         "decoder_overrides": {"ch": 32, "num_res_blocks": 1, "resolution": 64},
         "encoder_fixed_defaults": {"attn_resolutions": [16], "z_channels": 8},
         "decoder_fixed_defaults": {"attn_resolutions": [], "z_channels": 8}, "groupnorm": {"num_groups": 32, "eps": 1e-6}}
    cfg = KLVAEConfig.from_dict(d)
    assert (cfg.ch, cfg.num_res_blocks, cfg.resolution, cfg.ch_mult) == (32, 1, 64, (1, 2, 2))
    vae = AutoencoderKL(cfg)
    assert "encoder.down.2.attn.0.q.weight" in vae.state_dict()  # 64 -> 32 -> 16: attention at level 2
    assert "decoder.up.0.block.0.nin_shortcut.weight" in vae.state_dict()  # level 0: 64 -> 32 channels
    assert "decoder.up.1.block.0.nin_shortcut.weight" not in vae.state_dict()
    with pytest.raises(ValueError, match="differ"):
        KLVAEConfig.from_dict({**d, "decoder_overrides": {"ch": 64, "num_res_blocks": 1, "resolution": 64}})


# -- checkpoint layouts -------------------------------------------------------------------------------

def test_checkpoint_last_model_and_model_ema(tmp_path):
    a, b = _mar(seed=1), _mar(seed=2)
    path = tmp_path / "checkpoint-last.pth"
    torch.save({"model": a.state_dict(), "model_ema": b.state_dict(), "optimizer": {"state": {}}, "epoch": 3,
                "args": argparse.Namespace(model="mar_base", lr=1e-4)}, path)
    for key, ref in (("model", a), ("model_ema", b), (None, a)):
        m = load_mar(path, SMALL, key=key)
        assert not m.training
        assert all(torch.equal(m.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_raw_and_safetensors_layouts(tmp_path):
    a = _mar(seed=3)
    torch.save(a.state_dict(), tmp_path / "raw.pth")
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(tmp_path / "m.safetensors"))
    for f in ("raw.pth", "m.safetensors"):
        m = load_mar(tmp_path / f, SMALL)
        assert torch.equal(m.diffloss.net.final_layer.linear.weight, a.diffloss.net.final_layer.linear.weight)


def test_vae_kl16_layout_ignores_loss_keys_with_log(tmp_path, caplog):
    torch.manual_seed(0)
    vae = AutoencoderKL(VAE_SMALL)
    sd = {**vae.state_dict(), "loss.discriminator.main.0.weight": torch.zeros(3), "loss.logvar": torch.zeros(())}
    torch.save({"model": sd, "optimizer": {}}, tmp_path / "kl16.ckpt")
    with caplog.at_level(logging.INFO, logger="accel.checkpoint"):
        got = load_kl_vae(tmp_path / "kl16.ckpt", VAE_SMALL)
    assert "ignoring 2 keys" in caplog.text
    assert torch.equal(got.decoder.conv_out.weight, vae.decoder.conv_out.weight)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        post = got.encode(x)
        assert post.mean.shape == (1, 4, 8, 8) and got.decode(post.mean).shape == (1, 3, 16, 16)


def test_mismatched_files_raise_clear_errors(tmp_path):
    a = _mar()
    torch.save({"model": a.state_dict()}, tmp_path / "ckpt.pth")
    other = MARConfig(**{**SMALL.__dict__, "diffloss_d": 2, "class_num": 9})
    with pytest.raises(CheckpointMismatch) as e:
        load_mar(tmp_path / "ckpt.pth", other)
    msg = str(e.value)
    assert "unexpected keys" in msg and "diffloss.net.res_blocks.2" in msg and "class_emb.weight" in msg
    with pytest.raises(CheckpointMismatch, match="model_ema"):
        load_mar(tmp_path / "ckpt.pth", SMALL, key="model_ema")
    with pytest.raises(CheckpointMismatch, match="missing keys"):
        load_kl_vae(tmp_path / "ckpt.pth", VAE_SMALL)  # a MAR file given as the VAE
    torch.save({"model": AutoencoderKL(VAE_SMALL).state_dict()}, tmp_path / "vae.ckpt")
    with pytest.raises(CheckpointMismatch, match="shape mismatches"):
        load_kl_vae(tmp_path / "vae.ckpt", KLVAEConfig(**{**VAE_SMALL.__dict__, "embed_dim": 8}))


# -- model pieces -------------------------------------------------------------------------------------

def test_patchify_roundtrip_and_condition_shapes():
    m = _mar()
    lat = torch.randn(2, 3, 12, 12)
    tok = m.patchify(lat)
    assert tok.shape == (2, 36, 12) and torch.equal(m.unpatchify(tok), lat)
    mask = torch.ones(2, 36)
    mask[0, :5] = 0
    mask[1, 10:15] = 0
    with torch.no_grad():
        z = m.condition(tok, mask, torch.tensor([1, 6]), cfg=True)
        z1 = m.condition(tok, mask, torch.tensor([1, 6]))
    assert z.shape == (4, 36, 16) and torch.allclose(z[:2], z1, atol=1e-6)
    # rows knowing different numbers of tokens (CSpD's textbook verification): padded encoder, each row as alone
    uneven = mask.clone()
    uneven[0, 20:23] = 0  # 8 known vs 5
    with torch.no_grad():
        zu = m.condition(tok, uneven, torch.tensor([1, 6]), cfg=True)  # rows [c0, c1, u0, u1]
        alone = [m.condition(tok[i:i + 1], uneven[i:i + 1], torch.tensor([[1, 6][i]]), cfg=True) for i in range(2)]
    want = torch.cat([alone[0][:1], alone[1][:1], alone[0][1:], alone[1][1:]])
    assert torch.allclose(zu, want, atol=1e-5) and not torch.allclose(zu[0], z[0], atol=1e-3)


def _tokens_per_iter(num_iter, L=256):
    out, remaining = [], L
    for step in range(num_iter):
        n = mask_len_at(step, num_iter, L, remaining)
        out.append(remaining - n if step < num_iter - 1 else remaining)
        remaining = n
    return out


def test_mask_and_cfg_schedules():
    # research note §1.2: 256 iterations = 1 token each; 64: 1 early, 6-7 late; 16: 2 ... 25
    assert _tokens_per_iter(256) == [1] * 256
    c64, c16 = _tokens_per_iter(64), _tokens_per_iter(16)
    assert sum(c64) == sum(c16) == 256 and c64[0] == 1 and max(c64[-8:]) == 7 and min(c64) == 1
    assert c16[0] == 2 and max(c16) == 25
    assert float(cfg_at(2.5, "linear", 16, 1)) == 2.40625 and cfg_at(3.0, "constant", 16, 5) == 3.0
    with pytest.raises(ValueError, match="cfg_schedule"):
        cfg_at(2.0, "cosine", 16, 1)


# -- generation ---------------------------------------------------------------------------------------

def _gen(m, seed, **kw):
    args = dict(num_iter=4, cfg=2.0, temperature=0.9)
    args.update(kw)
    return m.sample_tokens(torch.tensor([0, 3, 6]), generator=torch.Generator().manual_seed(seed), **args)


def test_generation_deterministic_under_generator():
    m = _mar()
    a, b, c = _gen(m, 7), _gen(m, 7), _gen(m, 8)
    assert a.tokens.shape == (3, 3, 12, 12) and torch.equal(a.tokens, b.tokens)
    assert not torch.allclose(a.tokens, c.tokens)
    assert a.stats["nfe_target"] == 4 and sum(a.stats["tokens_per_iter"]) == 36
    assert a.stats["head_steps"] == 4 * 6  # config default num_sampling_steps = "6"


def test_constant_head_steps_equal_plain_step_count():
    """A per-iteration schedule that always returns S (DiSA's 'constant') equals asking for S."""
    m = _mar()
    plain = _gen(m, 1, head_steps=5)
    for hs in (lambda step, n: 5, "5", space_timesteps(1000, 5), lambda step, n: space_timesteps(1000, 5)):
        assert torch.equal(_gen(m, 1, head_steps=hs).tokens, plain.tokens)
    varying = _gen(m, 1, head_steps=lambda step, n: 8 - step)
    assert varying.stats["head_steps"] == 8 + 7 + 6 + 5 and not torch.allclose(varying.tokens, plain.tokens)


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_batch_rows_are_independent(cfg):
    """Each sample of a batch equals that sample generated alone with its own order and recorded noise."""
    m = _mar()
    out = _gen(m, 11, cfg=cfg, record=True)
    g = torch.Generator().manual_seed(11)
    orders = m.sample_orders(3, g)  # what the run drew first
    for b in range(3):
        noises = []
        for k, tr in enumerate(out.trace):
            n = out.stats["tokens_per_iter"][k]
            noises.append(HeadNoise(tr["x_T"][b * n:(b + 1) * n], tr["step_noise"][:, b * n:(b + 1) * n]))
        alone = m.sample_tokens(torch.tensor([[0, 3, 6][b]]), num_iter=4, cfg=cfg, temperature=0.9,
                                orders=orders[b:b + 1], noises=noises)
        scale = out.tokens[b].abs().max()
        assert (alone.tokens[0] - out.tokens[b]).abs().max() <= 1e-4 * scale


def test_unconditional_and_bad_arguments():
    m = _mar()
    out = m.sample_tokens(None, batch=2, generator=torch.Generator().manual_seed(0), num_iter=3)
    assert out.tokens.shape == (2, 3, 12, 12)
    with pytest.raises(ValueError, match="num_iter"):
        m.sample_tokens(None, batch=2, generator=torch.Generator(), num_iter=37)
    with pytest.raises(ValueError, match="Generator"):
        m.sample_tokens(torch.tensor([1]), num_iter=3)
    with pytest.raises(ValueError, match="permutations"):
        m.sample_tokens(torch.tensor([1]), generator=torch.Generator(), num_iter=3,
                        orders=torch.zeros(1, 36, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        m.sample_tokens(torch.tensor([7]), generator=torch.Generator(), num_iter=3)


def test_head_condition_rows():
    m = _mar()
    tok = torch.randn(2, 36, 12)
    mask = torch.ones(2, 36)
    mask[:, :4] = 0
    labels = torch.tensor([2, 4])
    with torch.no_grad():
        z = m.condition(tok, mask, labels, cfg=True)  # (4, 36, 16)
        pick = torch.zeros(2, 36, dtype=torch.bool)
        pick[0, [5, 9]] = True
        pick[1, [7, 30]] = True
        rows = m.head_condition(tok, mask, labels, pick, cfg=True)
        assert torch.equal(rows, torch.stack([z[0, 5], z[0, 9], z[1, 7], z[1, 30], z[2, 5], z[2, 9], z[3, 7], z[3, 30]]))
        idx = torch.tensor([[9, 5], [30, 7]])  # generation order, not position order
        rows = m.head_condition(tok, mask, labels, idx)
        z1 = m.condition(tok, mask, labels)
        assert torch.equal(rows, torch.stack([z1[0, 9], z1[0, 5], z1[1, 30], z1[1, 7]]))


def test_preset_sizes_match_released_models():
    """Research note §1.1: MAR-B/L/H have 208M/479M/943M parameters (with their released heads); KL-16 VAE."""
    for name, ref in (("mar_base", 208e6), ("mar_large", 479e6), ("mar_huge", 943e6)):
        with torch.device("meta"):
            n = sum(p.numel() for p in MAR(preset(name)).parameters())
        assert abs(n - ref) / ref < 0.005, (name, n)
    with torch.device("meta"):
        vae = AutoencoderKL()
    assert "encoder.down.4.attn.1.q.weight" in vae.state_dict()  # attention only at running resolution 16
    assert not any(k.startswith("decoder.up.") and ".attn." in k for k in vae.state_dict())


def test_max_timestep_clips_every_head_schedule():
    """MARConfig.max_timestep = DiSA's clip: the same tokens as passing the clipped timesteps explicitly."""
    from dataclasses import replace

    from accel.models.mar_head import DDPMSchedule, clip_schedule

    s = DDPMSchedule.respaced("50")
    c = clip_schedule(s, 950)
    assert max(s.timesteps) == 999 and max(c.timesteps) == 950 and c.num_steps == 48
    assert clip_schedule(s, None) is s and clip_schedule(c, 950) is c
    clipped = sorted({min(t, 950) for t in space_timesteps(1000, 5)})
    m, mc = _mar(), _mar(replace(SMALL, max_timestep=950))
    want = _gen(m, 3, head_steps=clipped)
    for hs in (5, "5", space_timesteps(1000, 5), lambda step, n: 5):
        got = _gen(mc, 3, head_steps=hs)
        assert torch.equal(got.tokens, want.tokens) and got.stats["head_steps"] == 4 * len(clipped)
    assert not torch.equal(_gen(m, 3, head_steps=5).tokens, want.tokens)  # unclipped (999) differs


def test_cspd_step_schedules_clip_at_the_target_max_timestep():
    from accel.annealing.disa import make_schedule
    from accel.speculative.cspd import CSpDConfig, step_schedules

    for cfg in (CSpDConfig(head_steps=50), CSpDConfig(schedule=make_schedule("linear:50:5:noclip"))):
        raw, cl = step_schedules(cfg, 16), step_schedules(cfg, 16, 950)
        assert max(raw[0].timesteps) == 999 and all(max(s.timesteps) <= 950 for s in cl)
