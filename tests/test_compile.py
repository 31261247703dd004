"""``accel.compile``: which networks it compiles (in place, tokenizers left eager), and compiled decoding is
token-identical to eager (sampled and greedy LlamaGen, speculative decoding, VAR) on tiny random models.

The compiled tests check that a graph was really compiled (dynamo's unique-graph counter grows), so a silent
fall-back to eager cannot pass them. They are slow (compilation) but small: tiny models, the default ``dynamic=None`` (static_shapes).
"""
import copy

import pytest
import torch
from torch._dynamo.utils import counters

import accel
from accel.api.compile import is_compiled, networks, step_modules
from accel.harness.registry import MethodEntry, Registry
from accel.harness.runner import RunConfig, run_group
from accel.models.llamagen import GPTConfig, Transformer
from accel.models.llamagen_vq import VQConfig, VQModel
from accel.models.var import VARConfig, build_var
from accel.models.var_vqvae import VQVAEConfig
from accel.speculative.drafters import EagleHead
from test_harness_fake import FakeMethod

VQ = VQConfig(codebook_size=16, codebook_embed_dim=4, codebook_show_usage=False, encoder_ch_mult=(1, 2, 2),
              decoder_ch_mult=(1, 2, 2), z_channels=32, ch=32, num_res_blocks=1)
GPT = GPTConfig(dim=32, n_layer=2, n_head=2, vocab_size=16, block_size=16, num_classes=10, multiple_of=32)
PNS = (1, 2, 3)
VAR_CFG = VARConfig(num_classes=5, depth=2, embed_dim=32, num_heads=2, patch_nums=PNS, drop_path_rate=0.0)
VAE_CFG = VQVAEConfig(vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 1), num_res_blocks=1, v_patch_nums=PNS)
LABELS = torch.tensor([3, 7])


def seed(s=0):
    return torch.Generator().manual_seed(s)


def tiny_llamagen(n_layer=2, s=0):
    torch.manual_seed(s)
    return Transformer(GPTConfig(**{**GPT.__dict__, "n_layer": n_layer})).eval(), VQModel(VQ).eval()


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_compile_is_in_place_on_the_step_networks_only():
    gpt, vq = tiny_llamagen()
    draft, _ = tiny_llamagen(n_layer=1, s=1)
    target = accel.wrap(gpt, vq, cfg_scale=2.0)
    spec = accel.speculative(target, accel.wrap(draft, vq), gamma=2)
    assert accel.compile(spec) is spec  # returns the method itself
    assert is_compiled(gpt) and is_compiled(draft) and not is_compiled(vq)
    assert isinstance(spec.target, Transformer) and spec.target is gpt  # attribute access and isinstance unchanged
    assert set(gpt.state_dict()) == set(Transformer(GPT).state_dict())
    eagle = EagleHead(GPT).eval()
    accel.compile(accel.speculative(accel.wrap(*tiny_llamagen()), eagle), "max-autotune")
    assert is_compiled(eagle.layer) and not is_compiled(eagle)
    vae, var = build_var(VAR_CFG, VAE_CFG)
    assert step_modules(var) == [*var.blocks, var.head_nm, var.head]
    g = accel.wrap(var.eval(), vae.eval(), compile=True)
    assert all(is_compiled(m) for m in step_modules(var)) and not is_compiled(vae) and networks(g) == [var]


def test_compile_options_are_checked_and_off_means_eager():
    gpt, vq = tiny_llamagen()
    g = accel.wrap(gpt, vq)
    assert accel.compile(g, False) is g and accel.compile(g, None) is g and not is_compiled(gpt)
    with pytest.raises(ValueError, match="mode='fast'"):
        accel.compile(g, "fast")
    with pytest.raises(ValueError, match="no network"):
        accel.compile(object())


class HoldsNetwork(FakeMethod):
    """A fake method that holds a LlamaGen network (compiled by the runner, never called: no compile cost)."""

    def __init__(self, name):
        super().__init__(name)
        self.model = Transformer(GPT).eval()


def test_bench_compile_treats_every_method_of_the_group_alike():
    reg, built = Registry(), {}
    reg.add(MethodEntry("base", "fakefam", lambda ctx: built.setdefault("base", HoldsNetwork("base")), models=("m",)))
    reg.add(MethodEntry("plain", "fakefam", lambda ctx: FakeMethod("plain"), models=("m",), baseline="base"))
    rows = run_group(reg, reg.get("base"), [reg.get("plain")], "m",
                     RunConfig(batch_sizes=(1,), repeats=1, memory=False, compile="default"))
    assert is_compiled(built["base"].model)  # the baseline is compiled like the method; "plain" has no network
    assert {r["method"] for r in rows} == {"base+compile", "plain+compile"}
    assert {r["baseline"] for r in rows} == {"base+compile"}
    assert all(r["compile"] == "default" and r["compile_s"] > 0 for r in rows)
    eager = run_group(reg, reg.get("base"), [reg.get("plain")], "m", RunConfig(batch_sizes=(1,), repeats=1, memory=False))
    assert {r["method"] for r in eager} == {"base", "plain"} and all(r["compile_s"] is None for r in eager)


@pytest.mark.slow
def test_compiled_llamagen_and_speculative_decoding_are_token_identical():
    # One compiled target serves plain decoding and speculative decoding (a technique over a generator loaded
    # with compile=True runs its compiled network), so the file compiles it once.
    gpt, vq = tiny_llamagen()
    draft, _ = tiny_llamagen(n_layer=1, s=1)
    eager = accel.wrap(gpt, vq, cfg_scale=2.0, top_k=8)
    compiled = accel.wrap(copy.deepcopy(gpt), vq, cfg_scale=2.0, top_k=8, compile=True)
    before = graphs()
    assert accel.warm_up(compiled, LABELS) > 0 and graphs() > before  # compiled, no eager fall-back
    for a, b in ((eager, compiled), (eager.with_sampling(greedy=True), compiled.with_sampling(greedy=True))):
        for s in range(2):
            assert torch.equal(a.tokens(LABELS, generator=seed(s)), b.tokens(LABELS, generator=seed(s)))
    one = torch.tensor([5])  # another batch size: dynamic shapes, same answer
    assert torch.equal(eager.tokens(one, generator=seed(3)), compiled.tokens(one, generator=seed(3)))
    before = graphs()
    spec = [accel.speculative(g, accel.wrap(draft, vq), gamma=3) for g in (eager, compiled)]
    for s in range(2):
        a, b = (m.generate(LABELS, generator=seed(s)) for m in spec)
        assert torch.equal(a.stats["tokens"], b.stats["tokens"]) and a.stats["accepted"] == b.stats["accepted"]
    assert graphs() > before  # the verify forward (per-row positions, masks) was compiled too


@pytest.mark.slow
def test_compiled_var_is_token_identical():
    torch.manual_seed(0)
    vae, var = build_var(VAR_CFG, VAE_CFG)
    eager = accel.wrap(var.eval(), vae.eval(), cfg_scale=1.5, top_k=4)
    compiled = accel.wrap(copy.deepcopy(var), vae, cfg_scale=1.5, top_k=4, compile=True)
    before = graphs()
    labels = torch.tensor([1, 4])
    for s in range(2):
        assert torch.equal(eager.tokens(labels, generator=seed(s)), compiled.tokens(labels, generator=seed(s)))
    assert graphs() > before


def test_compile_parts_choose_step_networks_decoders_or_both():
    from accel.api.compile import compiled_parts
    for parts, net, dec in (("networks", True, False), ("decoders", False, True), ("all", True, True)):
        gpt, vq = tiny_llamagen()
        g = accel.wrap(gpt, vq)
        assert accel.compile(g, parts=parts) is g
        assert (is_compiled(gpt), is_compiled(vq.decoder)) == (net, dec), parts
        assert not is_compiled(vq) and not is_compiled(vq.encoder)  # only the decoder of a tokenizer
    vae, var = build_var(VAR_CFG, VAE_CFG)
    assert compiled_parts(accel.wrap(var.eval(), vae.eval()), "decoders") == [vae.decoder]
    with pytest.raises(ValueError, match="parts='tokens'"):
        accel.compile(accel.wrap(*tiny_llamagen()), parts="tokens")
    with pytest.raises(ValueError, match="no tokenizer decoder"):
        accel.compile(HoldsNetwork("x"), parts="decoders")


def test_bench_compile_parts_name_the_rows_apart():
    from accel.harness.runner import compile_tag
    assert compile_tag(RunConfig()) == ""
    assert compile_tag(RunConfig(compile="default")) == "+compile"  # the rows' names before parts existed
    assert compile_tag(RunConfig(compile="default", compile_parts="decoders")) == "+compile-decoders"
    assert compile_tag(RunConfig(compile="max-autotune", compile_parts="all")) == "+compile-all-max-autotune"


@pytest.mark.slow
def test_compiled_decoders_give_the_eager_images():
    # The shared fast decode (issue #19): a compiled tokenizer decoder must decode what the eager one decodes,
    # from codes and from a DD student's unsnapped vectors (LlamaGen) and from f_hat (VAR), at two batch sizes.
    torch.manual_seed(0)
    vq = VQModel(VQ).eval()
    fast = copy.deepcopy(vq)
    before = graphs()
    accel.compile(fast, parts="decoders")
    with torch.no_grad():
        for b in (2, 3):  # decoders compile with static shapes: one graph per batch size
            ids = torch.randint(0, VQ.codebook_size, (b, 16))
            vec = torch.randn(b, 16, VQ.codebook_embed_dim)
            torch.testing.assert_close(fast.decode_code(ids, hw=(4, 4)), vq.decode_code(ids, hw=(4, 4)),
                                       rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(fast.decode_vectors(vec, (4, 4)), vq.decode_vectors(vec, (4, 4)),
                                       rtol=1e-4, atol=1e-4)
        assert graphs() > before  # really compiled
        vae, _ = build_var(VAR_CFG, VAE_CFG)
        vae = vae.eval()
        fast_vae = accel.compile(copy.deepcopy(vae), parts="decoders")
        f_hat = torch.randn(2, VAE_CFG.Cvae, PNS[-1], PNS[-1])
        torch.testing.assert_close(fast_vae.fhat_to_img(f_hat), vae.fhat_to_img(f_hat), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_dd_students_compile_whole_with_static_shapes_and_keep_their_tokens():
    # A student pass is one fixed-shape call: accel.compile compiles the whole student (predict and dd_step go
    # through forward, so the compiled graph is what sampling runs) with static shapes, as it does the image
    # decoders; the step networks whose sizes grow stay symbolic.
    from accel.api.compile import static_shapes
    from test_distill_llamagen import codes, teacher
    from test_distill_var_student import student as var_student
    from accel.distill.student_llamagen import DDLlamaGen, student_config
    t, c = teacher(), codes()
    s = DDLlamaGen(student_config(t.config), c).init_from_teacher(t).eval()
    vae, var, sv = var_student(scramble_new=True)
    gpt, vq = tiny_llamagen()
    assert step_modules(s) == [s] and step_modules(sv) == [sv]
    assert [static_shapes(m) for m in (s, sv, vq.decoder, vae.decoder, gpt, var.blocks[0])] == [True] * 4 + [False] * 2
    fast, fast_v = copy.deepcopy(s), copy.deepcopy(sv)
    fast.compile(dynamic=False)
    fast_v.compile(dynamic=False)
    before = graphs()
    noise = torch.randn(2, t.config.block_size, c.size(1), generator=seed(3))
    eps = torch.randn(2, sv.L_out, sv.Cvae, generator=seed(4))
    lab = torch.tensor([1, 2])
    with torch.no_grad():
        for t_list in ((0,), (0, 4)):
            assert torch.equal(fast.sample(lab, noise, t_list, split=5), s.sample(lab, noise, t_list, split=5))
        for t_list in ((0,), (0, 1)):
            a, b = fast_v.sample(lab, eps, t_list, split=1)[1], sv.sample(lab, eps, t_list, split=1)[1]
            assert torch.equal(a, b)
    assert graphs() > before  # the whole pass really compiled
