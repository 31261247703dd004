"""`accel parity mar` is not specialised to the public fixture: a folder in the same format with another
config (6x6 grid with patch 2, unequal encoder/decoder widths, 3-block head of width 24, 7 classes,
"7"/"ddim5" step counts, constant CFG, a 3-level VAE on 24x24 images) is read and checked end to end.

The folder's expected tensors are written by accel itself following the README's recorded calls, so this
proves the checker's generality and its failure detection, not numerical agreement with the official code
(that is ``test_mar_parity.py`` on the public fixture).
"""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from accel.cli import main
from accel.models.kl_vae import AutoencoderKL, KLVAEConfig
from accel.models.mar import MAR, MARConfig
from accel.models.mar_head import DDPMSchedule, timestep_embedding

MAR_CFG = dict(img_size=48, vae_stride=4, patch_size=2, encoder_embed_dim=24, encoder_depth=1, encoder_num_heads=3,
               decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2, mlp_ratio=2.0, vae_embed_dim=3,
               mask_ratio_min=0.7, label_drop_prob=0.1, class_num=7, attn_dropout=0.1, proj_dropout=0.1,
               buffer_size=3, diffloss_d=3, diffloss_w=24, num_sampling_steps="7", diffusion_batch_mul=1,
               grad_checkpointing=False)
VAE_JSON = {"embed_dim": 3, "ch_mult": [1, 2, 2], "use_variational": True,
            "encoder_overrides": {"ch": 32, "num_res_blocks": 1, "resolution": 24},
            "decoder_overrides": {"ch": 32, "num_res_blocks": 1, "resolution": 24},
            "encoder_fixed_defaults": {"attn_resolutions": [12], "z_channels": 3, "double_z": True},
            "decoder_fixed_defaults": {"attn_resolutions": [], "z_channels": 3, "give_pre_end": False},
            "groupnorm": {"num_groups": 32, "eps": 1e-6, "affine": True}}
TRAJ = [{"name": "A", "cfg": 2.0, "temperature": 0.8, "timestep_respacing": "7", "seed": 3},
        {"name": "Q", "cfg": 1.0, "temperature": 1.0, "timestep_respacing": "ddim5", "seed": 4}]
ST = {"seed_torch": 9, "num_sampling_steps": "6", "labels": [2, 6, 0],
      "kwargs": {"bsz": 3, "num_iter": 3, "cfg": 1.5, "cfg_schedule": "constant", "temperature": 0.9}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (1.0 if p.ndim == 1 and "norm" in str(p.shape) else 0.0))


@torch.no_grad()
def _mar_folder(d: Path) -> None:
    cfg = MARConfig.from_dict(MAR_CFG)
    m = MAR(cfg).eval()
    _randomise(m, 0)
    g = torch.Generator().manual_seed(1)
    B, L, C = 2, cfg.seq_len, cfg.token_embed_dim
    io = {}
    tok = torch.randn(B, L, C, generator=g)
    mask = torch.ones(B, L)
    for b in range(B):
        mask[b, torch.randperm(L, generator=g)[:10]] = 0.0
    lab = torch.tensor([1, 5])
    ce = m.class_emb(lab)
    enc = m.forward_mae_encoder(tok, mask, ce)
    io.update({"mae.labels": lab, "mae.tokens": tok, "mae.mask": mask, "mae.class_embedding": ce,
               "mae.encoder_out": enc, "mae.z": m.forward_mae_decoder(enc, mask)})
    ce0, ones = m.fake_latent.repeat(B, 1), torch.ones(B, L)
    enc0 = m.forward_mae_encoder(torch.zeros(B, L, C), ones, ce0)
    io.update({"mae_uncond_allmasked.tokens": torch.zeros(B, L, C), "mae_uncond_allmasked.mask": ones,
               "mae_uncond_allmasked.class_embedding": ce0, "mae_uncond_allmasked.encoder_out": enc0,
               "mae_uncond_allmasked.z": m.forward_mae_decoder(enc0, ones)})
    lat = torch.randn(B, cfg.vae_embed_dim, 12, 12, generator=g)
    io.update({"patchify.latent_image": lat, "patchify.tokens": m.patchify(lat),
               "patchify.unpatchified": m.unpatchify(m.patchify(lat))})
    net = m.diffloss.net
    x, t, c = torch.randn(4, C, generator=g), torch.tensor([0, 3, 500, 999]), torch.randn(4, 16, generator=g)
    io.update({"net.x_t": x, "net.t": t, "net.c": c, "net.out": net(x, t, c),
               "net.timestep_freq_embedding": timestep_embedding(t, 256)})
    io.update({"net_cfg.x_t": x, "net_cfg.t": t, "net_cfg.c": c, "net_cfg.cfg_scale": torch.tensor(2.5),
               "net_cfg.out": net.forward_with_cfg(x, t, c, 2.5)})
    for S in ("7", "ddim5"):
        s = DDPMSchedule.respaced(S)
        io[f"sched_{S}.timestep_map"] = torch.tensor(s.timesteps)
        for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                     "posterior_mean_coef1", "posterior_mean_coef2"):
            io[f"sched_{S}.{name}"] = getattr(s, name).float()
    for tr in TRAJ:
        cfg_on = tr["cfg"] != 1.0
        z = torch.randn(4 if cfg_on else 3, 16, generator=g)
        run = m.head.sample_trajectory(z, steps=tr["timestep_respacing"], cfg=tr["cfg"], temperature=tr["temperature"],
                                       generator=torch.Generator().manual_seed(tr["seed"]))
        n = 2 if cfg_on else 3
        p = f"traj{tr['name']}"
        io.update({f"{p}.c": z, f"{p}.x_T": run.x_T[:n], f"{p}.final": run.sample})
        for key, val in (("step_noise", run.noise), ("samples", run.samples), ("pred_xstart", run.pred_xstart),
                         ("mean", run.mean), ("log_variance", run.log_variance)):
            io[f"{p}.{key}"] = val[:, :n]
    kw = ST["kwargs"]
    orders = torch.stack([torch.randperm(L, generator=g) for _ in range(kw["bsz"])])
    out = m.sample_tokens(torch.tensor(ST["labels"]), generator=torch.Generator().manual_seed(ST["seed_torch"]),
                          num_iter=kw["num_iter"], cfg=kw["cfg"], cfg_schedule=kw["cfg_schedule"],
                          temperature=kw["temperature"], head_steps=ST["num_sampling_steps"], orders=orders, record=True)
    io.update({"sample_tokens.labels": torch.tensor(ST["labels"]), "sample_tokens.orders": orders,
               "sample_tokens.out": out.tokens})
    iters = []
    for k, it in enumerate(out.trace):
        for key in ("z", "sampled", "x_T", "step_noise"):
            io[f"sample_tokens.iter{k}.{key}"] = it[key]
        iters.append({"iter": k, "n_rows": len(it["z"]), "cfg_iter": it["cfg_iter"]})
    save_file({k: v.contiguous().clone() for k, v in io.items()}, str(d / "mar_other_io.safetensors"))
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(d / "mar_other_state_dict.safetensors"))
    n_params = sum(p.numel() for p in m.parameters())
    (d / "mar_other_config.json").write_text(json.dumps({**MAR_CFG, "_n_params": n_params, "_seq_len": L,
                                                         "_norm_layer_eps": 1e-6}))
    manifest = {"trajectories": TRAJ, "sample_tokens": {**ST, "iterations": iters}, "vae_posterior_sample_seed": 5}
    (d / "_manifest_mar.json").write_text(json.dumps(manifest))


@torch.no_grad()
def _vae_folder(d: Path) -> None:
    vae = AutoencoderKL(KLVAEConfig.from_dict(VAE_JSON)).eval()
    _randomise(vae, 2)
    g = torch.Generator().manual_seed(3)
    img = torch.rand(2, 3, 24, 24, generator=g) * 2 - 1
    post = vae.encode(img)
    eps = torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(5))
    latent = torch.randn(post.mean.shape, generator=g)
    io = {"vae.image": img, "vae.encoder_out": vae.encoder(img), "vae.moments": vae.moments(img),
          "vae.posterior_mean": post.mean, "vae.posterior_logvar": post.logvar, "vae.posterior_std": post.std,
          "vae.posterior_sample": post.sample(eps=eps), "vae.posterior_sample_eps": eps, "vae.latent": latent,
          "vae.decoded": vae.decode(latent), "vae.decoded_from_mean": vae.decode(post.mean)}
    save_file({k: v.contiguous() for k, v in io.items()}, str(d / "vae_other_io.safetensors"))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(d / "vae_other_state_dict.safetensors"))
    (d / "vae_other_config.json").write_text(json.dumps({**VAE_JSON, "_n_params": sum(p.numel() for p in vae.parameters())}))


@pytest.fixture(scope="module")
def other_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("mar_other")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    _mar_folder(d)
    _vae_folder(d)
    torch.set_num_threads(n)
    return d


def test_other_config_folder_passes(other_folder, capsys):
    assert main(["parity", "mar", str(other_folder)]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    for name in ("trajQ.mean", "trajA.final", "sched_ddim5.timestep_map", "sample_tokens.iter2.sampled",
                 "sample_tokens.out (replayed noises)", "vae.decoded_from_mean", "mar.n_params"):
        assert f"ok   {name} " in out, name


def test_other_config_folder_detects_a_wrong_step_count(other_folder, tmp_path):
    import shutil

    for f in other_folder.iterdir():
        shutil.copy(f, tmp_path / f.name)
    man = json.loads((tmp_path / "_manifest_mar.json").read_text())
    man["trajectories"][1]["timestep_respacing"] = "ddim4"  # the recorded run used 5 steps
    (tmp_path / "_manifest_mar.json").write_text(json.dumps(man))
    from accel.parity.mar import run

    r = run(tmp_path)
    assert not r.ok and any(c.name == "trajQ.mean" and not c.ok for c in r.checks)
