"""Zoo loading (names, zoo files, training runs), sampling shapes and determinism, zoo file format."""
from __future__ import annotations

import lzma

import pytest
import torch

from accel import zoo
from accel.checkpoint import CheckpointMismatch
from accel.models.llamagen import GPTConfig, Transformer
from accel.models.llamagen_vq import VQConfig, VQModel
from accel.zoo.sample import ZooSampler, class_grid_labels, to_grid
from accel.zoo.store import read_zoo_file, save_zoo_file

TINY_VQ = dict(codebook_size=16, codebook_embed_dim=4, codebook_show_usage=False, encoder_ch_mult=(1, 2, 2),
               decoder_ch_mult=(1, 2, 2), z_channels=32, ch=32, num_res_blocks=1)
TINY_GPT = dict(dim=32, n_layer=2, n_head=2, vocab_size=16, block_size=64, num_classes=10, multiple_of=32)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    vq, gpt = VQModel(VQConfig(**TINY_VQ)), Transformer(GPTConfig(**TINY_GPT))
    save_zoo_file(d / "vq.safetensors", vq.state_dict(), kind="llamagen-vq", config=TINY_VQ)
    save_zoo_file(d / "gpt.safetensors", gpt.state_dict(), kind="llamagen-gpt", config=TINY_GPT, info={"step": 3})
    return d, vq, gpt


@pytest.mark.parametrize("suffix", [".safetensors", ".safetensors.xz"])
def test_zoo_file_roundtrip_is_fp16_exact(tiny_files, tmp_path, suffix):
    d, _, gpt = tiny_files
    path = tmp_path / f"gpt{suffix}"
    save_zoo_file(path, gpt.state_dict(), kind="llamagen-gpt", config=TINY_GPT, info={"step": 3})
    if suffix.endswith(".xz"):
        assert lzma.decompress(path.read_bytes())[8:].lstrip(b" ").startswith(b"{")  # xz around safetensors
    kind, cfg, info, tensors = read_zoo_file(path)
    assert kind == "llamagen-gpt" and cfg == TINY_GPT and info == {"step": 3}
    loaded = zoo.load(path)
    for k, v in gpt.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.half().float()), k
    assert not loaded.training


def test_wrong_file_is_a_clear_error(tiny_files, tmp_path):
    d, vq, _ = tiny_files
    bad = {k: v for k, v in vq.state_dict().items() if not k.startswith("decoder.conv_out")}
    save_zoo_file(tmp_path / "bad.safetensors", bad, kind="llamagen-vq", config=TINY_VQ)
    with pytest.raises(CheckpointMismatch, match="decoder.conv_out"):
        zoo.load(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="neither a zoo name"):
        zoo.load(tmp_path / "missing.safetensors")
    with pytest.raises(KeyError, match="valid"):
        zoo.weights_path("fmnist-nope")


def test_is_available_takes_zoo_files_as_load_does(tiny_files, tmp_path):
    d, _, _ = tiny_files
    assert zoo.is_available(d / "gpt.safetensors") and zoo.is_available(str(d / "gpt.safetensors"))
    assert not zoo.is_available(tmp_path / "missing.safetensors.xz")
    with pytest.raises(KeyError, match="valid"):  # neither a zoo name nor a zoo-format file name
        zoo.is_available("fmnist-nope")


def test_sampling_shapes_and_determinism(tiny_files):
    d, _, _ = tiny_files
    s = ZooSampler(str(d / "gpt.safetensors"), tokenizer=str(d / "vq.safetensors"), cfg_scale=1.5)
    labels = torch.tensor([0, 3, 9])
    a = s(labels, generator=torch.Generator().manual_seed(1))
    b = s(labels, generator=torch.Generator().manual_seed(1))
    c = s(labels, generator=torch.Generator().manual_seed(2))
    assert a.shape == (3, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_grid_layout():
    labels = class_grid_labels(4)
    assert labels.tolist()[:5] == [0, 0, 0, 0, 1] and len(labels) == 40
    g = to_grid(torch.zeros(40, 3, 32, 32), ncol=4)
    assert g.shape == (3, 10 * 34 + 2, 4 * 34 + 2)


def test_run_folder_loads_like_a_zoo_name(tmp_path):
    from accel.train.loop import fit
    from accel.train.recipes import get_recipe

    fit(get_recipe("toy"), tmp_path, steps=3, progress=False)
    m, info = zoo.load_with_info(tmp_path)
    assert info["step"] == 3 and info["weights"] == "ema" and info["kind"] == "toy"
    assert m(torch.zeros(2, 8)).shape == (2, 1)


def test_trained_model_exports_ema_or_raw_weights_on_request(tmp_path):
    from accel.train.loop import CKPT, fit, trained_model
    from accel.train.recipes import get_recipe

    recipe = get_recipe("toy")
    fit(recipe, tmp_path, steps=3, progress=False)
    state = torch.load(tmp_path / CKPT, map_location="cpu", weights_only=True)
    ema, info_e = trained_model(recipe, tmp_path)
    raw, info_r = trained_model(recipe, tmp_path, weights="raw")
    assert (info_e["weights"], info_r["weights"]) == ("ema", "raw")
    for k, v in state["model"].items():
        assert torch.equal(raw.state_dict()[k], v), k
        if v.is_floating_point():
            assert torch.equal(ema.state_dict()[k], state["ema"]["shadow"][k].to(v.dtype)), k
    assert any(not torch.equal(raw.state_dict()[k], ema.state_dict()[k]) for k in state["model"])
    with pytest.raises(ValueError, match="ema"):
        trained_model(recipe, tmp_path, weights="best")


@pytest.mark.parametrize("name", zoo.available() or ["(none shipped)"])
def test_shipped_models_load_and_run(name):
    if name not in zoo.ZOO:
        pytest.skip("no zoo weights shipped in this checkout")
    model, info = zoo.load_with_info(name)
    assert info["path"].endswith(f"{name}.safetensors.xz")
    assert (zoo.CARDS_DIR / f"{name}.md").is_file(), f"{name} ships without a model card"
    if name == "fmnist-cnn":
        f, logits = model.features_logits(torch.rand(2, 3, 32, 32))
        assert f.shape == (2, model.feature_dim) and logits.shape == (2, 10)
        ref = zoo.reference_stats()
        assert ref["ref_cov"].shape == (model.feature_dim,) * 2 and ref["ref_bank"].shape[1] == model.feature_dim
    elif name in zoo.TOKENIZER and zoo.is_available(zoo.TOKENIZER[name]):
        s = ZooSampler(name)
        x = s(torch.tensor([1, 7]), generator=torch.Generator().manual_seed(0))
        assert x.shape == (2, 3, 32, 32)
        assert torch.equal(x, s(torch.tensor([1, 7]), generator=torch.Generator().manual_seed(0)))


def test_zoo_under_size_budget():
    total = sum(p.stat().st_size for p in zoo.WEIGHTS_DIR.iterdir() if p.is_file()) if zoo.WEIGHTS_DIR.is_dir() else 0
    assert total < 50e6, f"zoo weights take {total / 1e6:.1f} MB (budget 50 MB)"


def _tiny_family_files(d, family):
    torch.manual_seed(0)
    if family == "mar":
        vae_cfg = dict(embed_dim=4, ch_mult=(1, 2, 2), ch=32, num_res_blocks=1, resolution=32,
                       encoder_attn_resolutions=(), decoder_attn_resolutions=())
        gen_cfg = dict(img_size=32, vae_stride=4, encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2,
                       decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, vae_embed_dim=4, class_num=10,
                       buffer_size=2, diffloss_d=1, diffloss_w=32)
        kinds = ("mar-vae", "mar")
    else:
        vae_cfg = dict(vocab_size=32, z_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                       v_patch_nums=(1, 2, 4, 8), test_mode=True)
        gen_cfg = dict(num_classes=10, depth=1, embed_dim=32, num_heads=2, patch_nums=(1, 2, 4, 8),
                       _vocab_size=32, _Cvae=8)
        kinds = ("var-vqvae", "var")
    tok, gen = zoo.BUILDERS[kinds[0]](vae_cfg), zoo.BUILDERS[kinds[1]](gen_cfg)
    if family == "var":
        gen.init_weights(generator=torch.Generator().manual_seed(0))
    save_zoo_file(d / "tok.safetensors", tok.state_dict(), kind=kinds[0], config=vae_cfg, dtype=None)
    save_zoo_file(d / "gen.safetensors", gen.state_dict(), kind=kinds[1], config=gen_cfg, dtype=None)


@pytest.mark.parametrize("family,settings", [("mar", dict(num_iter=4, cfg=2.0, head_steps=5)),
                                             ("var", dict(cfg=1.5))])
def test_mar_and_var_zoo_sampling_shapes_and_determinism(tmp_path, family, settings):
    _tiny_family_files(tmp_path, family)
    s = ZooSampler(str(tmp_path / "gen.safetensors"), tokenizer=str(tmp_path / "tok.safetensors"), **settings)
    assert s.family == family
    labels = torch.tensor([2, 5])
    a = s(labels, generator=torch.Generator().manual_seed(3))
    b = s(labels, generator=torch.Generator().manual_seed(3))
    assert a.shape == (2, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)


def test_sampler_settings_use_one_convention_and_refuse_unknown_keys():
    if not {"fmnist-mar", "fmnist-var"} <= set(zoo.available()):
        pytest.skip("zoo weights not shipped")
    assert ZooSampler("fmnist-mar", cfg_scale=3.0).settings["cfg"] == 3.0  # same guidance formula as LlamaGen
    with pytest.raises(KeyError, match="cfg_scale"):
        ZooSampler("fmnist-var", cfg_scale=3.0)  # VAR's ramped `cfg` is another convention
    with pytest.raises(ValueError, match="temperature"):
        ZooSampler("fmnist-mar", temperature=-1.0)
