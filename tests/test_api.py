"""The public API on random-config models: loading every way a user holds a model, one sampling convention,
and the technique constructors' checks (they refuse what they cannot honour, before any work)."""
import pytest
import torch

import accel
from accel import zoo
from accel.api.sampling import Sampling, from_family, mar_kwargs, var_kwargs
from accel.distill.student_llamagen import DDLlamaGen
from accel.models.kl_vae import AutoencoderKL, KLVAEConfig
from accel.models.llamagen import GPTConfig, Transformer
from accel.models.llamagen_generate import generate
from accel.models.llamagen_vq import VQConfig, VQModel
from accel.models.mar import MAR, MARConfig
from accel.speculative.drafters import EagleHead

VQ = VQConfig(codebook_size=16, codebook_embed_dim=4, codebook_show_usage=False, encoder_ch_mult=(1, 2, 2),
              decoder_ch_mult=(1, 2, 2), z_channels=32, ch=32, num_res_blocks=1)
GPT = GPTConfig(dim=32, n_layer=2, n_head=2, vocab_size=16, block_size=16, num_classes=10, multiple_of=32)
LABELS = torch.tensor([3, 7])


def seed(s=0):
    return torch.Generator().manual_seed(s)


@pytest.fixture(scope="module")
def llamagen():
    torch.manual_seed(0)
    return Transformer(GPT).eval(), VQModel(VQ).eval()


def test_sampling_refuses_out_of_range_values():
    for bad in (dict(cfg_scale=0.5), dict(cfg_scale=float("nan")), dict(temperature=0.0), dict(temperature=-1.0),
                dict(top_k=-1), dict(top_k=2.5), dict(top_p=0.0), dict(top_p=1.5), dict(greedy=1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Sampling(**bad)
    with pytest.raises(ValueError, match="unknown sampling settings"):
        Sampling().replace(cfg=2.0)


def test_one_convention_maps_onto_each_family():
    s = Sampling(cfg_scale=3.0, top_k=5)
    assert var_kwargs(s) == {"cfg": 2.0, "top_k": 5, "top_p": 0.0}  # VAR's cfg is the excess; its "off" top_p is 0.0
    assert var_kwargs(Sampling(top_p=0.9))["top_p"] == 0.9
    assert mar_kwargs(Sampling(cfg_scale=4.0, temperature=0.9)) == {"cfg": 4.0, "temperature": 0.9}
    with pytest.raises(ValueError, match="top_k=5.*MAR"):
        mar_kwargs(s)
    with pytest.raises(ValueError, match="temperature=0.5.*VAR"):
        var_kwargs(Sampling(temperature=0.5))
    assert from_family("var", {"cfg": 1.5, "top_k": 0, "top_p": 0.0, "more_smooth": False}) == \
        (Sampling(cfg_scale=2.5), {"more_smooth": False})
    assert from_family("mar", {"cfg": 5.0, "num_iter": 16})[0].cfg_scale == 5.0


def test_wrap_samples_exactly_as_the_family_loop(llamagen):
    gpt, vq = llamagen
    g = accel.wrap(gpt, vq, cfg_scale=2.0, top_k=4)
    assert isinstance(g, accel.LlamaGenGenerator) and g.params["top_k"] == 4
    s = g.generate(LABELS, generator=seed())
    want = generate(gpt, LABELS, sc=g.config, generator=seed())
    assert torch.equal(s.stats["tokens"], want) and s.images.shape == (2, 3, 16, 16)
    assert not s.images.requires_grad and 0 <= float(s.images.min()) and float(s.images.max()) <= 1
    greedy = g.with_sampling(greedy=True)
    assert torch.equal(greedy.tokens(LABELS, generator=seed(1)), greedy.tokens(LABELS, generator=seed(2)))


def test_bad_labels_and_settings_are_refused(llamagen):
    gpt, vq = llamagen
    g = accel.wrap(gpt, vq)
    for cond in (torch.tensor([10]), torch.tensor([-1]), torch.tensor([0.5]), torch.tensor([[1]])):
        with pytest.raises(ValueError, match="cond"):
            g.generate(cond, generator=seed())
    with pytest.raises(ValueError, match="unknown settings.*num_iter"):
        accel.wrap(gpt, vq, num_iter=4)
    with pytest.raises(TypeError, match="tokenizer"):
        accel.wrap(gpt, torch.nn.Linear(2, 2))


def test_load_official_checkpoint_files(llamagen, tmp_path):
    gpt, vq = llamagen
    torch.save({"model": gpt.state_dict()}, tmp_path / "gpt.pt")
    torch.save({"model": vq.state_dict()}, tmp_path / "vq.pt")
    g = accel.load(tmp_path / "gpt.pt", family="llamagen", config=GPT, tokenizer=tmp_path / "vq.pt",
                   tokenizer_config=VQ, cfg_scale=1.5)
    ref = accel.wrap(gpt, vq, cfg_scale=1.5)
    assert torch.equal(g.tokens(LABELS, generator=seed()), ref.tokens(LABELS, generator=seed()))
    with pytest.raises(ValueError, match="tokenizer"):
        accel.load(tmp_path / "gpt.pt", family="llamagen", config=GPT)
    with pytest.raises(KeyError, match="GPT-B"):
        accel.load(tmp_path / "gpt.pt", family="llamagen", config="GPT-Q", tokenizer=tmp_path / "vq.pt")


def test_load_refuses_non_generators():
    with pytest.raises(ValueError, match="tokenizer, not a generator"):
        accel.load("fmnist-llamagen-vq")
    with pytest.raises(FileNotFoundError):
        accel.load("no-such-model")


def test_speculative_checks_its_draft_before_any_work(llamagen):
    gpt, vq = llamagen
    target = accel.wrap(gpt, vq)
    other = accel.wrap(Transformer(GPTConfig(**{**GPT.__dict__, "vocab_size": 32})).eval(), vq)
    with pytest.raises(ValueError, match="vocab"):
        accel.speculative(target, other)
    with pytest.raises(ValueError, match="gamma"):
        accel.speculative(target, target, gamma=0)
    with pytest.raises(ValueError, match="vocab"):  # a zoo name is loaded, then checked like any draft
        accel.speculative(target, "fmnist-llamagen-draft")
    with pytest.raises(TypeError, match="draft"):
        accel.speculative(target, "fmnist-var")
    with pytest.raises(TypeError, match="draft"):
        accel.speculative(target, object())
    with pytest.raises(ValueError, match="delta"):
        accel.lantern(delta=1.5)


def test_modules_in_training_mode_are_refused(llamagen):
    """Dropout would be active while sampling: wrap, drafts and students say so instead of sampling with it."""
    gpt, vq = llamagen
    with pytest.raises(ValueError, match="network.*training mode"):
        accel.wrap(Transformer(GPT), vq)  # a fresh module is in training mode
    with pytest.raises(ValueError, match="tokenizer.*training mode"):
        accel.wrap(gpt, VQModel(VQ))
    target = accel.wrap(gpt, vq)
    with pytest.raises(ValueError, match="draft.*training mode"):
        accel.speculative(target, EagleHead(GPT))
    with pytest.raises(ValueError, match="student.*training mode"):
        accel.distilled(target, DDLlamaGen(GPT, torch.randn(16, 4)))
    assert accel.speculative(target, EagleHead(GPT).eval()) is not None


def test_greedy_speculative_equals_greedy_ar_through_the_api(llamagen):
    gpt, vq = llamagen
    target = accel.wrap(gpt, vq, cfg_scale=2.0, greedy=True)
    torch.manual_seed(1)
    draft = accel.wrap(Transformer(GPTConfig(**{**GPT.__dict__, "n_layer": 1})).eval(), vq)
    for d in (draft, EagleHead(GPT).eval()):
        s = accel.speculative(target, d, gamma=3).generate(LABELS, generator=seed())
        assert torch.equal(s.stats["tokens"], target.tokens(LABELS, generator=seed()))


def test_generate_decodes_under_inference_mode(llamagen):
    """The generators and the techniques' generate run without autograd bookkeeping (torch.inference_mode): their
    outputs are inference tensors, whatever the caller's grad mode."""
    gpt, vq = llamagen
    g = accel.wrap(gpt, vq, cfg_scale=2.0)
    student = DDLlamaGen(GPT, torch.nn.functional.normalize(vq.quantize.embedding.weight.detach(), dim=-1)).eval()
    for m in (g, accel.speculative(g, EagleHead(GPT).eval(), gamma=2), accel.distilled(g, student)):
        s = m.generate(LABELS, generator=seed())
        assert s.images.is_inference() and s.stats["tokens"].is_inference(), m.name


def test_distilled_and_kv_compress_on_random_llamagen(llamagen):
    gpt, vq = llamagen
    g = accel.wrap(gpt, vq, cfg_scale=2.0)
    student = DDLlamaGen(GPT, torch.nn.functional.normalize(vq.quantize.embedding.weight.detach(), dim=-1)).eval()
    one = accel.distilled(g, student, steps=1).generate(LABELS, generator=seed())
    assert one.stats["nfe_student"] == 1 and one.stats["tokens"].shape == (2, 16)
    mixed = accel.distilled(g, student, teacher_involved=(4, 8)).generate(LABELS, generator=seed())
    assert mixed.stats["nfe_target"] == 5
    with pytest.raises(ValueError, match="steps"):
        accel.distilled(g, student, steps=3)
    with pytest.raises(TypeError, match="DDLlamaGen"):
        accel.distilled(g, gpt)
    full = accel.kv_compress(g, accel.sliding(1.0)).generate(LABELS, generator=seed())
    assert torch.equal(full.stats["tokens"], g.tokens(LABELS, generator=seed()))  # full budget = no policy
    with pytest.raises(ValueError, match="budget"):
        accel.snapkv(0.0)


def test_disa_and_cspd_take_mar_generators():
    torch.manual_seed(0)
    cfg = MARConfig(img_size=32, vae_stride=4, encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2,
                    decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, vae_embed_dim=4, class_num=10,
                    buffer_size=2, diffloss_d=1, diffloss_w=32)
    vae = AutoencoderKL(KLVAEConfig(embed_dim=4, ch_mult=(1, 2, 2), ch=32, num_res_blocks=1, resolution=32,
                                    encoder_attn_resolutions=(), decoder_attn_resolutions=())).eval()
    mar = accel.wrap(MAR(cfg).eval(), vae, num_iter=4, head_steps="5", cfg_scale=2.0, cfg_schedule="constant")
    plain = mar.generate(LABELS, generator=seed())
    same = accel.disa(mar, accel.constant(5)).generate(LABELS, generator=seed())
    assert torch.equal(plain.images, same.images)  # a constant schedule is plain MAR
    annealed = accel.disa(mar, accel.linear(50, 5)).generate(LABELS, generator=seed())
    assert annealed.stats["head_steps"] > plain.stats["head_steps"]
    with pytest.raises(TypeError, match="MAR"):
        accel.disa(object(), accel.linear())
    with pytest.raises(ValueError, match="top_k"):
        mar.with_sampling(top_k=3)
    with pytest.raises(ValueError, match="num_iter"):
        mar.with_sampling(num_iter=0)
    m = accel.cspd(mar, mar, gamma=4, verify="independent", schedule=accel.linear(10, 5))
    assert m.generate(LABELS, generator=seed()).images.shape == (2, 3, 32, 32)


def test_dd_released_readout_split(llamagen):
    """split = n reads every slot from the logits (the snapped read-out, same tokens, same image up to the
    codebook's float rounding); split = 0 decodes the continuous head's vectors unsnapped."""
    gpt, vq = llamagen
    g = accel.wrap(gpt, vq)
    codes = torch.nn.functional.normalize(vq.quantize.embedding.weight.detach(), dim=-1)
    student = DDLlamaGen(GPT, codes).eval()
    snapped = accel.distilled(g, student).generate(LABELS, generator=seed())
    full = accel.distilled(g, student, split=16).generate(LABELS, generator=seed())
    assert torch.equal(snapped.stats["tokens"], full.stats["tokens"])
    assert torch.allclose(snapped.images, full.images, atol=1e-5)
    noise = torch.randn(2, 16, 4, generator=seed())
    vec, ids = student.sample_vectors(LABELS, noise, (0,), split=0)
    logits, conti = student.predict(noise, LABELS, 0)
    assert torch.allclose(vec, conti) and torch.equal(ids, student.nearest(conti))
    two = accel.distilled(g, student, steps=2, t2=5, split=8).generate(LABELS, generator=seed())
    assert two.stats["nfe_student"] == 2 and two.images.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="split"):
        accel.distilled(g, student, split=17)


def test_drafts_by_zoo_name_are_the_loaded_networks():
    """A zoo name for the draft is that network loaded onto the target's device and dtype: the same tokens as the
    loaded object, in both speculative families; a bfloat16 target gets a bfloat16 EAGLE head."""
    target = accel.load("fmnist-llamagen")
    rule = accel.lantern(delta=0.4)
    by_name = accel.speculative(target, "fmnist-llamagen-eagle-cfg", rule=rule, gamma=5)
    by_object = accel.speculative(target, zoo.load("fmnist-llamagen-eagle-cfg"), rule=rule, gamma=5)
    assert torch.equal(by_name.generate(LABELS, generator=seed()).stats["tokens"],
                       by_object.generate(LABELS, generator=seed()).stats["tokens"])
    half = accel.speculative(accel.load("fmnist-llamagen", dtype=torch.bfloat16), "fmnist-llamagen-eagle-cfg")
    assert next(half.drafter.head.parameters()).dtype == torch.bfloat16
    assert half.generate(LABELS[:1], generator=seed()).stats["tokens"].shape == (1, 64)
    mar = accel.load("fmnist-mar", num_iter=64, head_steps="5")
    runs = [accel.cspd(mar, d, gamma=8, verify="independent", relaxed=True).generate(LABELS, generator=seed())
            for d in ("fmnist-mar-draft-aligned", accel.load("fmnist-mar-draft-aligned"))]
    assert torch.equal(runs[0].images, runs[1].images)
