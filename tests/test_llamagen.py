"""LlamaGen family: parity with the official fixtures, KV cache vs full forward, decoding, loading."""
import argparse
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from accel.checkpoint import CheckpointMismatch
from accel.cli import main as cli
from accel.models.llamagen import GPTConfig, Transformer, attention_plan, gpt_config, load_gpt, rope_2d_table
from accel.models.llamagen_generate import SamplingConfig, generate
from accel.models.llamagen_vq import VQConfig, VQModel, load_vq
from accel.sampling import logits_to_probs, top_k_top_p_filter
from paths import fixtures

FIX = fixtures("llamagen")
needs_fixture = pytest.mark.skipif(not FIX.exists(), reason="shared/fixtures/llamagen not found")

# Another config than the public fixture: other head dim, vocab, grid, rope base, class count, and GQA.
OTHER = GPTConfig(dim=96, n_layer=3, n_head=3, n_kv_head=1, multiple_of=16, vocab_size=37, block_size=9,
                  num_classes=7, rope_base=500.0)


def other_model(seed=0):
    torch.manual_seed(seed)
    m = Transformer(OTHER)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return m.eval()


@needs_fixture
def test_parity_public_fixture(capsys):
    assert cli(["parity", "llamagen", str(FIX)]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "PASS" in out


@needs_fixture
def test_parity_detects_perturbation_and_unknown_tensor(tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(FIX, bad)
    io = load_file(str(bad / "gpt_c2i_io.safetensors"))
    io["tf_logits"] = io["tf_logits"] + 1e-3
    save_file(io, str(bad / "gpt_c2i_io.safetensors"))
    assert cli(["parity", "llamagen", str(bad)]) == 1
    assert "FAIL gpt.tf_logits" in capsys.readouterr().out

    extra = tmp_path / "extra"
    shutil.copytree(FIX, extra)
    vq = load_file(str(extra / "vq_io.safetensors"))
    vq["mystery_tensor"] = torch.zeros(3)
    save_file(vq, str(extra / "vq_io.safetensors"))
    assert cli(["parity", "llamagen", str(extra)]) == 1
    assert "vq_io:mystery_tensor" in capsys.readouterr().out


def test_rope_table_layout():
    t = rope_2d_table(grid=3, head_dim=8, base=100.0, cls_token_num=1)
    assert t.shape == (10, 4, 2)
    assert torch.all(t[0] == 0)  # class token rows are zeros (not identity)
    # cell (h, w) = row 1 + h*3 + w: first half of the pairs rotates with h, second half with w
    freqs = 1.0 / (100.0 ** (torch.tensor([0.0, 2.0]) / 4))
    h, w = 2, 1
    want = torch.cat([h * freqs, w * freqs])
    assert torch.allclose(t[1 + h * 3 + w, :, 0], want.cos()) and torch.allclose(t[1 + h * 3 + w, :, 1], want.sin())


def test_kv_cached_decoding_equals_full_forward():
    m = other_model()
    g = torch.Generator().manual_seed(0)
    cond = torch.tensor([0, 3, 6])
    toks = generate(m, cond, sc=SamplingConfig(temperature=1.0), generator=g)
    # decode again token by token through the cache, compare with one full teacher-forced forward
    n = OTHER.block_size
    full = m(toks[:, :-1], cond, input_pos=torch.arange(n))
    cache = m.new_cache(3)
    step = [m(None, cond, input_pos=torch.tensor([0]), cache=cache)[:, -1]]
    for t in range(n - 1):
        step.append(m(toks[:, t: t + 1], input_pos=torch.tensor([t + 1]), cache=cache)[:, -1])
    assert torch.allclose(torch.stack(step, 1), full, atol=1e-5)
    # a multi-token chunk through the cache (what speculative verification does) also matches
    cache2 = m.new_cache(3)
    m(None, cond, input_pos=torch.tensor([0]), cache=cache2)
    chunk = m(toks[:, :4], input_pos=torch.arange(1, 5), cache=cache2)
    assert torch.allclose(chunk, full[:, 1:5], atol=1e-5)


def test_cfg_decoding_matches_full_forward_logits():
    m = other_model(1)
    cond = torch.tensor([2, 5])
    sc = SamplingConfig(cfg_scale=3.0, sample_logits=False)
    trace = {}
    toks = generate(m, cond, sc=sc, trace=trace)
    both = torch.cat([cond, torch.full_like(cond, OTHER.num_classes)])
    full = m(torch.cat([toks, toks])[:, :-1], both, input_pos=torch.arange(OTHER.block_size))
    want = full[2:] + (full[:2] - full[2:]) * 3.0
    assert torch.allclose(torch.stack(trace["logits"], 1), want, atol=1e-5)
    assert torch.equal(toks, want.argmax(-1))


def test_greedy_is_deterministic_and_batch_independent():
    m = other_model(2)
    cond = torch.tensor([1, 4, 4, 0])
    sc = SamplingConfig(cfg_scale=2.0, sample_logits=False)
    a = generate(m, cond, sc=sc)
    b = generate(m, cond, sc=sc)
    assert torch.equal(a, b)
    single = torch.cat([generate(m, cond[i: i + 1], sc=sc) for i in range(4)])
    assert torch.equal(a, single)


def test_sampling_is_deterministic_under_a_generator():
    m = other_model(3)
    cond = torch.tensor([1, 2])
    sc = SamplingConfig(cfg_scale=1.5, top_k=10, top_p=0.95)
    a = generate(m, cond, sc=sc, generator=torch.Generator().manual_seed(7))
    b = generate(m, cond, sc=sc, generator=torch.Generator().manual_seed(7))
    c = generate(m, cond, sc=sc, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_top_p_filter():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, -1.0]])
    assert torch.isinf(top_k_top_p_filter(logits, top_k=2)).tolist() == [[False, True, False, False, True]]  # ties kept
    p = torch.softmax(logits, -1)[0]
    kept = ~torch.isinf(top_k_top_p_filter(logits, top_p=float(p[0]) + 1e-4))
    assert kept[0].sum() == 2  # the first token crossing the threshold is kept
    probs = logits_to_probs(logits, temperature=0.5, top_k=3)
    assert torch.isclose(probs.sum(), torch.tensor(1.0)) and probs[0, 1] == 0


def test_cfg_without_null_row_is_an_error():
    cfg = GPTConfig(dim=32, n_layer=1, n_head=2, vocab_size=8, block_size=4, num_classes=3, class_dropout_prob=0.0)
    with pytest.raises(ValueError, match="null class"):
        generate(Transformer(cfg).eval(), torch.tensor([0]), sc=SamplingConfig(cfg_scale=2.0))


def test_presets_and_bad_names():
    assert gpt_config("GPT-XL").ffn_hidden == 3584 and gpt_config("GPT-3B").head_dim == 100
    with pytest.raises(KeyError, match="GPT-B"):
        gpt_config("GPT-Q")
    with pytest.raises(ValueError, match="unknown"):
        GPTConfig.from_dict({"dim": 8, "bogus": 1})


def _save(obj, path):
    if path.suffix == ".safetensors":
        save_file(obj, str(path))
    else:
        torch.save(obj, str(path))


@pytest.mark.parametrize("layout", ["model", "raw", "safetensors", "ddp_with_args", "compiled_prefix"])
def test_gpt_checkpoint_layouts(tmp_path, layout):
    m = other_model(4)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    path = tmp_path / ("ckpt.safetensors" if layout == "safetensors" else "ckpt.pt")
    obj = {"model": sd, "model_ema": sd, "steps": 3, "args": argparse.Namespace(lr=1.0)} if layout in (
        "model", "ddp_with_args") else sd
    if layout == "compiled_prefix":
        obj = {f"_orig_mod.{k}": v for k, v in sd.items()}
    _save(obj, path)
    loaded = load_gpt(path, OTHER)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k])


def test_gpt_mismatched_file_names_keys_and_shapes(tmp_path):
    sd = dict(other_model().state_dict())
    sd.pop("norm.weight")
    sd["extra.weight"] = torch.zeros(1)
    sd["output.weight"] = torch.zeros(5, 96)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatch) as e:
        load_gpt(path, OTHER)
    msg = str(e.value)
    assert "norm.weight" in msg and "extra.weight" in msg and "output.weight" in msg


def tiny_vq_cfg(**kw):
    return VQConfig(codebook_size=16, codebook_embed_dim=4, encoder_ch_mult=(1, 2), decoder_ch_mult=(1, 2),
                    z_channels=32, ch=32, num_res_blocks=1, **kw)


@pytest.mark.parametrize("usage", [True, False])
def test_vq_loading_with_and_without_codebook_used(tmp_path, usage):
    torch.manual_seed(0)
    vq = VQModel(tiny_vq_cfg(codebook_show_usage=usage))
    assert ("quantize.codebook_used" in vq.state_dict()) == usage
    assert any("nin_shortcut" in k for k in vq.state_dict())  # channel change 32 -> 64
    path = tmp_path / "vq.pt"
    torch.save({"model": vq.state_dict(), "optimizer": {}}, path)
    loaded = load_vq(path, tiny_vq_cfg())  # the file decides about codebook_used
    x = torch.rand(2, 3, 16, 24) * 2 - 1  # non-square image
    zq, idx = loaded.encode(x)
    assert idx.shape == (2, 8, 12) and zq.shape == (2, 4, 8, 12)
    assert loaded.decode_code(idx).shape == (2, 3, 16, 24)
    with torch.no_grad():
        assert torch.allclose(loaded.decode_code(idx), vq.eval().decode_code(idx))


def test_vq_mismatch_error(tmp_path):
    vq = VQModel(tiny_vq_cfg())
    sd = vq.state_dict()
    sd["quantize.embedding.weight"] = torch.zeros(32, 4)
    path = tmp_path / "vq.safetensors"
    save_file(dict(sd), str(path))
    with pytest.raises(CheckpointMismatch, match="quantize.embedding.weight"):
        load_vq(path, tiny_vq_cfg())


def test_attention_plan_builds_the_additive_mask_once_with_the_same_outputs():
    """A bool mask becomes SDPA's additive mask (0 / -inf) once per forward; the layers give bit-identical
    outputs to the bool mask that SDPA would convert in every layer."""
    torch.manual_seed(0)
    cfg = GPTConfig(dim=32, n_layer=2, n_head=4, multiple_of=16, vocab_size=16, num_classes=4, block_size=16)
    m = Transformer(cfg).eval()
    cache = m.new_cache(2, 12)
    x = torch.randn(2, 5, 32)
    tree = torch.rand(2, 5, 9) < 0.7
    tree[..., 0] = True  # every query sees slot 0
    outs = []
    for dtype in (None, torch.float32):
        rope, slots, mask, kv = attention_plan(m.freqs_cis, torch.arange(3, 8).expand(2, 5), 5, cache=cache,
                                               mask=tree, dtype=dtype)
        assert mask.dtype == (torch.bool if dtype is None else torch.float32)
        h = x
        for layer in m.layers:
            h = layer(h, rope, slots, cache, mask, kv)
        outs.append(h)
    assert torch.equal(mask[:, 0] == 0, tree) and torch.isinf(mask[:, 0][~tree]).all()
    assert torch.equal(outs[0], outs[1])
