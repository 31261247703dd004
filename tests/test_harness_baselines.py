"""The family baselines and the classifier reference on tiny random-weight zoo files (temp WEIGHTS_DIR)."""
import numpy as np
import pytest
import torch

from accel import zoo
from accel.presets import baselines as BL
from accel.presets import registry
from accel.presets.zoo_models import load_reference
from accel.harness.registry import BuildContext
from accel.models.classifier import ClassifierConfig
from accel.models.llamagen_generate import SamplingConfig, generate
from accel.zoo import sample as zoo_sample
from accel.zoo.store import save_zoo_file, zoo_file

TINY_VQ = dict(codebook_size=16, codebook_embed_dim=4, codebook_show_usage=False, encoder_ch_mult=(1, 2, 2),
               decoder_ch_mult=(1, 2, 2), z_channels=32, ch=32, num_res_blocks=1)
TINY_GPT = dict(dim=32, n_layer=2, n_head=2, vocab_size=16, block_size=64, num_classes=10, multiple_of=32,
                class_dropout_prob=0.1)
MAR_VAE = dict(embed_dim=4, ch_mult=(1, 2, 2), ch=32, num_res_blocks=1, resolution=32,
               encoder_attn_resolutions=(), decoder_attn_resolutions=())
MAR_GEN = dict(img_size=32, vae_stride=4, encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2,
               decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, vae_embed_dim=4, class_num=10,
               buffer_size=2, diffloss_d=1, diffloss_w=32)
VAR_VAE = dict(vocab_size=32, z_channels=8, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, v_patch_nums=(1, 2, 4, 8),
               test_mode=True)
VAR_GEN = dict(num_classes=10, depth=1, embed_dim=32, num_heads=2, patch_nums=(1, 2, 4, 8), _vocab_size=32, _Cvae=8)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)

    def put(name, kind, cfg, module=None):
        module = module if module is not None else zoo.BUILDERS[kind](cfg)
        save_zoo_file(zoo_file(d, name), module.state_dict(), kind=kind, config=cfg, dtype=None)
        return module

    put("fmnist-llamagen-vq", "llamagen-vq", TINY_VQ)
    put("fmnist-llamagen", "llamagen-gpt", TINY_GPT)
    put("fmnist-mar-vae", "mar-vae", MAR_VAE)
    put("fmnist-mar", "mar", MAR_GEN)
    put("fmnist-var-vqvae", "var-vqvae", VAR_VAE)
    var = zoo.BUILDERS["var"](VAR_GEN)
    var.init_weights(generator=torch.Generator().manual_seed(0))
    put("fmnist-var", "var", VAR_GEN, var)
    cnn = put("fmnist-cnn", "fmnist-cnn", ClassifierConfig().to_dict()).eval()
    f = cnn.features_logits(torch.rand(300, 3, 32, 32, generator=torch.Generator().manual_seed(1)))[0].double()
    save_zoo_file(zoo_file(d, "fmnist-cnn-ref"), {"ref_mean": f.mean(0).float(), "ref_cov": torch.cov(f.T).float(),
                  "ref_bank": f.float(), "ref_labels": torch.arange(300) % 10}, kind="feature-stats", config={}, dtype=None)
    return d


@pytest.fixture
def tiny_zoo(weights, monkeypatch):
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", weights)
    monkeypatch.setitem(zoo_sample.DEFAULTS, "fmnist-mar", dict(num_iter=4, cfg=2.0, head_steps=5))
    return weights


def _run(cls, model, cond=(3, 7), seed=0):
    method = cls(BuildContext(model=model))
    return method, method.generate(torch.tensor(cond), generator=torch.Generator().manual_seed(seed))


def test_llamagen_ar_images_stats_and_exact_kv_bytes(tiny_zoo):
    method, s = _run(BL.llamagen_ar, "fmnist-llamagen")
    assert s.images.shape == (2, 3, 32, 32) and 0 <= s.images.min() and s.images.max() <= 1
    assert s.stats["nfe_target"] == 64 and s.stats["tokens"].shape == (2, 64)
    rows = 4 if method.config.uses_cfg else 2
    assert s.stats["kv_bytes"] == method.model.new_cache(rows, method.model.config.cls_token_num + 64).nbytes()
    again = method.generate(torch.tensor([3, 7]), generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.images, s.images)


def test_llamagen_scorer_matches_the_sampling_distribution(tiny_zoo):
    ctx = BuildContext(model="fmnist-llamagen")
    model = zoo.load("fmnist-llamagen")
    sc = SamplingConfig(**zoo_sample.DEFAULTS["fmnist-llamagen"])
    cond = torch.tensor([1, 4, 9])
    trace = {}
    tokens = generate(model, cond, sc=sc, generator=torch.Generator().manual_seed(5), trace=trace)
    probs = torch.stack(trace["probs"], 1)  # (B, L, V) as sampled with the KV cache
    want = probs.gather(-1, tokens[..., None]).squeeze(-1).log().mean(1)
    got = BL.llamagen_scorer(ctx)(tokens, cond)
    assert torch.allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("cls,model", [(BL.mar_default, "fmnist-mar"), (BL.var_default, "fmnist-var")])
def test_mar_and_var_baselines(tiny_zoo, cls, model):
    method, s = _run(cls, model)
    assert s.images.shape == (2, 3, 32, 32) and 0 <= s.images.min() and s.images.max() <= 1
    if model == "fmnist-mar":
        assert s.stats["nfe_target"] == 4 and s.stats["head_steps"] == 4 * 5
    else:
        assert s.stats["nfe_target"] == 4 and s.stats["tokens"].shape == (2, 1 + 4 + 16 + 64) and s.stats["kv_bytes"] > 0
    _, again = _run(cls, model)
    assert torch.equal(again.images, s.images)


def test_reference_and_registry(tiny_zoo):
    ref = load_reference("cpu")
    feats, logits = ref.extract(torch.rand(5, 3, 32, 32))
    assert feats.shape == (5, ref.real_feats.shape[1]) and logits.shape == (5, 10)
    assert ref.name == "fmnist-cnn" and np.allclose(ref.ref_stats[0], ref.real_feats.mean(0), atol=1e-3)
    reg = registry()
    for name in ("llamagen-ar", "mar-default", "var-default"):
        e = reg.get(name)
        assert e.baseline is None and e.why_unavailable(e.models[0]) is None


def test_untrained_zoo_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path)
    assert "not trained" in registry().get("var-default").why_unavailable("fmnist-var")


def test_bench_on_tiny_llamagen(tiny_zoo, tmp_path, capsys):
    from accel.cli import main as cli
    from accel.harness.results import read_rows

    assert cli(["bench", "--method", "llamagen-ar", "--n-images", "12", "--quality-batch", "6", "--batch-size", "2",
                "--repeats", "1", "--no-memory", "--out", str(tmp_path)]) == 0
    (row,) = read_rows(tmp_path / "bench.jsonl")
    assert row["fid_feature"] == "FID[fmnist-cnn, N=12]" and row["loglik_per_token"] < 0 and row["speedup"] == 1.0
    assert row["params"]["cfg_scale"] == zoo_sample.DEFAULTS["fmnist-llamagen"]["cfg_scale"]


def test_bf16_casts_llamagen_weights_and_autocasts_var(tiny_zoo):
    from accel.harness.distributed import autocast

    ctx = BuildContext(model="fmnist-llamagen", dtype=torch.bfloat16)
    method = BL.llamagen_ar(ctx)
    cond, g = torch.tensor([3, 7]), torch.Generator().manual_seed(0)
    with torch.no_grad(), autocast("cpu", torch.bfloat16):
        s = method.generate(cond, generator=g)
    _, s32 = _run(BL.llamagen_ar, "fmnist-llamagen")
    assert s.stats["kv_bytes"] * 2 == s32.stats["kv_bytes"] and s.images.dtype == torch.float32
    var = BL.var_default(BuildContext(model="fmnist-var", dtype=torch.bfloat16))
    assert next(var.model.parameters()).dtype == torch.float32  # fp32 weights, autocast does the rest
    with torch.no_grad(), autocast("cpu", torch.bfloat16):
        out = var.generate(cond, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 3, 32, 32) and torch.isfinite(out.images).all()
