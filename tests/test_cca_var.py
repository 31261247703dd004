"""The VAR CCA recipe (fmnist-var-cca) on a tiny random VAR and synthetic per-scale codes: it trains (the policy
moves, the reference stays the base), resumes after a stop to the uninterrupted state, and exports a zoo file at
bf16 precision that loads back as a VAR sampled guidance-free."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from accel import zoo
from accel.models.var import VARConfig, build_var
from accel.models.var_vqvae import VQVAEConfig
from accel.train.loop import fit, trained_model
from accel.train.recipes.cca import VARCCARecipe

VAR_CFG = dict(num_classes=5, depth=2, embed_dim=32, num_heads=2, patch_nums=(1, 2, 3), drop_path_rate=0.0)
VAE_CFG = VQVAEConfig(vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 1), num_res_blocks=1, v_patch_nums=(1, 2, 3))


def tiny_var():
    torch.manual_seed(0)
    vae, var = build_var(VARConfig(**VAR_CFG), VAE_CFG)
    return vae, var.eval()


@dataclass
class TinyVARCCARecipe(VARCCARecipe):
    name: str = "tiny-var-cca"
    steps: int = 12
    batch_size: int = 8
    ckpt_every: int = 3
    lr: float = 1e-3

    def _base(self):
        return tiny_var()[1]

    def _config_of(self, net) -> dict:
        return {**VAR_CFG, "patch_nums": list(VAR_CFG["patch_nums"]), "_vocab_size": net.V, "_Cvae": net.Cvae}

    def train_data(self, run_dir, device):
        vae = tiny_var()[0]
        g = torch.Generator().manual_seed(0)
        idx = [torch.randint(0, 16, (32, pn * pn), generator=g) for pn in (1, 2, 3)]
        labels = torch.arange(32) % 5
        return torch.cat(idx, dim=1), vae.quantize.idxBl_to_var_input(idx).half(), labels


def test_var_cca_trains_the_policy_only(tmp_path):
    torch.set_num_threads(1)
    out = fit(TinyVARCCARecipe(steps=6), tmp_path / "run", progress=False)
    state = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)["model"]
    base = tiny_var()[1].state_dict()
    assert out["finished"] and out["step"] == 6
    assert all(torch.equal(state[f"reference.{k}"], v) for k, v in base.items())
    moved = [k for k, v in base.items() if v.is_floating_point() and not torch.equal(state[f"policy.{k}"], v)]
    assert len(moved) > len(base) // 2, "the policy did not train"


def test_var_cca_stop_and_resume_matches_uninterrupted(tmp_path):
    torch.set_num_threads(1)
    full = fit(TinyVARCCARecipe(), tmp_path / "a", progress=False)
    part = fit(TinyVARCCARecipe(), tmp_path / "b", stop_at=5, progress=False)
    assert part["step"] == 5 and not part["finished"]
    rest = fit(TinyVARCCARecipe(), tmp_path / "b", progress=False)
    assert rest["resumed_from"] == 5 and rest["finished"] and rest["last"] == full["last"]
    a, b = (torch.load(d / "last.pt", map_location="cpu", weights_only=False)["model"] for d in (tmp_path / "a", tmp_path / "b"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_var_cca_export_is_bf16_precision_and_loads_as_a_var(tmp_path):
    torch.set_num_threads(1)
    r = TinyVARCCARecipe(steps=3)
    fit(r, tmp_path / "run", progress=False)
    model, info = trained_model(r, tmp_path / "run")
    (path,) = r.export(model, tmp_path / "zoo", info)
    net, info = zoo.load_with_info(str(path))
    assert info["kind"] == "var" and info["precision"].startswith("bf16") and info["recipe"]["lam"] == r.lam
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(v, v.bfloat16().to(v.dtype)), f"{k} is not at bf16 precision"
    vae = tiny_var()[0]
    img = net.autoregressive_infer_cfg(vae, 2, torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0),
                                       cfg=0.0).images
    assert img.shape[0] == 2 and torch.isfinite(img).all()


def test_scale_ramp_is_zero_on_the_first_scale_rises_linearly_and_averages_one():
    from accel.align.cca import var_scale_ramp

    w = var_scale_ramp((1, 2, 3))  # raw ramp 0 | 0.5 x4 | 1 x9, sum 11 over 14 tokens
    assert w.shape == (14,) and w.mean().item() == pytest.approx(1.0)
    assert torch.allclose(w, torch.tensor([0.0] + [0.5] * 4 + [1.0] * 9) * 14 / 11)
    with pytest.raises(ValueError, match="patch_nums"):
        var_scale_ramp((4,))


def test_ramp_weighted_logp_is_the_weighted_token_sum_and_uniform_keeps_the_old_identity():
    from accel.align.cca import var_scale_ramp

    torch.set_num_threads(1)
    vae, var = tiny_var()
    codes, inputs, labels = TinyVARCCARecipe().train_data(None, "cpu")
    codes, inputs, labels = codes[:4], inputs[:4], labels[:4]
    logits = var(labels, inputs.float(), cond_drop_rate=0.0)
    per_tok = torch.log_softmax(logits.float(), -1).gather(-1, codes.unsqueeze(-1)).squeeze(-1)  # (B, L)
    ramp = TinyVARCCARecipe(scale_weights="ramp").seq_logp(var, (codes, inputs), labels)
    assert torch.allclose(ramp, (per_tok * var_scale_ramp((1, 2, 3))).sum(-1), atol=1e-5)
    assert torch.allclose(TinyVARCCARecipe().seq_logp(var, (codes, inputs), labels), per_tok.sum(-1), atol=1e-5)
    assert "scale_weights" not in TinyVARCCARecipe().describe()  # runs made before the field still resume
    assert TinyVARCCARecipe(scale_weights="ramp").describe()["scale_weights"] == "ramp"
    with pytest.raises(ValueError, match="scale_weights"):
        TinyVARCCARecipe(scale_weights="linear")
