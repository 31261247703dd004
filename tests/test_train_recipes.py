"""Properties of the zoo training objectives (no dataset needed)."""
from __future__ import annotations

import torch

from accel.train.diffusion_loss import DiffusionLoss
from accel.train.recipes import RECIPES, get_recipe
from accel.train.recipes.mar import MARTraining, rescale_latent, truncnorm_mask_rate


class _OracleNet(torch.nn.Module):
    """Predicts the exact noise from (x_t, t, c = x0) and the true posterior variance (v = -1)."""

    def __init__(self, dl: DiffusionLoss):
        super().__init__()
        self.dl = dl

    def forward(self, x_t, t, c):
        abar = self.dl.abar[t][:, None]
        eps = (x_t - abar.sqrt() * c) / (1 - abar).sqrt()
        return torch.cat([eps, -torch.ones_like(eps)], dim=1)


def test_hybrid_diffusion_loss_vanishes_for_the_oracle_when_t_positive():
    dl = DiffusionLoss()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(512, 4, generator=g).clamp(-1, 1)
    loss = dl(_OracleNet(dl), x0, x0, torch.Generator().manual_seed(1))
    t = torch.randint(0, dl.T, (512,), generator=torch.Generator().manual_seed(1))
    assert loss[t > 0].abs().max() < 1e-3
    wrong = dl(lambda x, tt, c: torch.zeros(x.shape[0], 8), x0, x0, torch.Generator().manual_seed(1))
    assert wrong[t > 0].mean() > 0.5


class _RecordT:
    def __init__(self):
        self.t = None

    def __call__(self, x, t, c):
        self.t = t
        return torch.zeros(x.shape[0], 2 * x.shape[1])


def test_diffusion_loss_tail_oversampling():
    x0 = torch.zeros(20000, 2)
    uni, tail = _RecordT(), _RecordT()
    DiffusionLoss()(uni, x0, x0, torch.Generator().manual_seed(0))
    DiffusionLoss(tail_frac=0.1, tail=20)(tail, x0, x0, torch.Generator().manual_seed(0))
    # uniform: ~2% of rows in the last 20 steps; with the tail: 0.1 + 0.9 * 0.02 = 11.8%
    assert abs(float((uni.t >= 980).float().mean()) - 0.02) < 0.005
    assert abs(float((tail.t >= 980).float().mean()) - 0.118) < 0.01
    assert int(tail.t.min()) == 0 and int(tail.t.max()) == 999
    for bad in (dict(tail_frac=1.0), dict(tail_frac=-0.1), dict(tail_frac=0.1, tail=0)):
        try:
            DiffusionLoss(**bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")


def test_truncnorm_mask_rate_range():
    g = torch.Generator().manual_seed(0)
    r = [truncnorm_mask_rate(0.7, g, "cpu") for _ in range(300)]
    assert min(r) >= 0.7 and max(r) <= 1.0 and 0.85 < sum(r) / len(r) < 0.92  # truncnorm mean ~0.886


def test_vae_latent_rescale_is_exact():
    vae = get_recipe("fmnist-mar-vae", model=dict(embed_dim=4, ch_mult=(1, 2), ch=32, num_res_blocks=1,
                                                  resolution=32, encoder_attn_resolutions=(), decoder_attn_resolutions=())).build().eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        p = vae.encode(x)
        d = vae.decode(p.mean)
        rescale_latent(vae, 2.5)
        p2 = vae.encode(x)
        assert torch.allclose(p2.mean, 2.5 * p.mean, atol=1e-5)
        assert torch.allclose(p2.logvar, p.logvar + 2 * torch.log(torch.tensor(2.5)), atol=1e-4)
        assert torch.allclose(vae.decode(p2.mean), d, atol=1e-4)


def test_mar_training_step_is_finite_and_trains_every_part():
    cfg = dict(img_size=32, vae_stride=4, encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2,
               decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, vae_embed_dim=4, class_num=10,
               buffer_size=2, diffloss_d=1, diffloss_w=32, diffusion_batch_mul=2)
    r = get_recipe("fmnist-mar", model=cfg)
    m = r.build()
    assert isinstance(m, MARTraining)
    loss, _ = r.loss(m, (torch.randn(4, 64, 4), torch.tensor([0, 1, 2, 3])), torch.Generator().manual_seed(0), 0)
    loss.backward()
    assert torch.isfinite(loss)
    for name in ("mar.z_proj.weight", "mar.decoder_blocks.0.mlp.fc1.weight", "mar.diffloss.net.input_proj.weight"):
        assert dict(m.named_parameters())[name].grad.abs().sum() > 0, name


def test_vq_loss_reaches_the_codebook():
    r = get_recipe("fmnist-llamagen-vq", model=dict(codebook_size=16, codebook_embed_dim=4, codebook_show_usage=False,
                                                    encoder_ch_mult=(1, 2), decoder_ch_mult=(1, 2), z_channels=32,
                                                    ch=32, num_res_blocks=1))
    m = r.build()
    loss, logs = r.loss(m, (torch.rand(2, 3, 32, 32) * 2 - 1, torch.zeros(2, dtype=torch.long)),
                        torch.Generator().manual_seed(0), 0)
    loss.backward()
    assert m.vq.quantize.embedding.weight.grad.abs().sum() > 0
    assert m.vq.encoder.conv_in.weight.grad.abs().sum() > 0 and set(logs) >= {"rec", "vq", "commit"}


def test_every_recipe_resolves():
    for name in RECIPES:
        assert get_recipe(name).name == name


def test_card_data_names_what_each_recipe_trained_on():
    """A model card's data line comes from its recipe: the zoo images by default, the teacher pairs / target chains /
    target samples for the distilled members (whose cards used to claim the Fashion-MNIST train split)."""
    from accel.zoo.store import IMAGE_DATA

    assert get_recipe("fmnist-llamagen").card_data() == IMAGE_DATA
    for name in ("fmnist-llamagen-dd", "fmnist-llamagen-dd4", "fmnist-var-dd", "fmnist-var-dd4", "fmnist-mar-draft-aligned",
                 "fmnist-llamagen-eagle-cfg"):
        assert "Fashion-MNIST train split" not in get_recipe(name).card_data(), name
