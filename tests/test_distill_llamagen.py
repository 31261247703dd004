"""DD1 for LlamaGen: resumable pair generation, the student's structure, init and sampling."""
import pytest
import torch
import torch.nn.functional as F

from accel.distill.data import PairSpec, generate_pairs, load_pairs, shard_path
from accel.distill.flow import FlowSolver
from accel.distill.sequence import llamagen_noise_map
from accel.distill.student_llamagen import DDLlamaGen, distill_loss
from accel.models.llamagen import GPTConfig, Transformer
from accel.models.llamagen_generate import SamplingConfig

CFG = GPTConfig(dim=32, n_layer=2, n_head=2, vocab_size=8, block_size=9, num_classes=3)


def teacher(seed=0):
    torch.manual_seed(seed)
    t = Transformer(CFG).eval()
    for p in t.parameters():
        torch.nn.init.normal_(p, std=0.4)
    return t


def codes(v=8, d=8, seed=1):
    return F.normalize(torch.randn(v, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def noise_map_for(t, c):
    return lambda noise, labels: llamagen_noise_map(t, c, labels, noise, SamplingConfig(cfg_scale=2.0), FlowSolver(6))


def test_pair_generation_resumes_and_splits_across_processes(tmp_path):
    t, c = teacher(), codes()
    spec = PairSpec(n_pairs=10, shard_size=4, seq_len=9, token_dim=8, num_classes=3, seed=5)
    nm = noise_map_for(t, c)
    one = tmp_path / "one"
    assert len(generate_pairs(nm, spec, one, progress=False)) == 3
    full = load_pairs(one)
    assert full["tokens"].shape == (10, 9) and torch.equal(full["index"], torch.arange(10))
    # an interrupted run: a missing shard is regenerated, the others are skipped
    before = shard_path(one, 0).stat().st_mtime_ns
    shard_path(one, 1).unlink()
    assert generate_pairs(nm, spec, one, progress=False) == [shard_path(one, 1)]
    assert shard_path(one, 0).stat().st_mtime_ns == before
    again = load_pairs(one)
    assert all(torch.equal(full[k], again[k]) for k in full)
    # two processes (ranks 0 and 1 of 2) write exactly the same pairs
    two = tmp_path / "two"
    w0 = generate_pairs(nm, spec, two, rank=0, world=2, progress=False)
    w1 = generate_pairs(nm, spec, two, rank=1, world=2, progress=False)
    assert len(w0) == 2 and len(w1) == 1
    split = load_pairs(two)
    assert all(torch.equal(full[k], split[k]) for k in full)
    # growing the set keeps the existing shards and adds the new ones; another teacher config is refused
    from dataclasses import replace
    assert generate_pairs(nm, replace(spec, n_pairs=14), one, progress=False) == [shard_path(one, 2), shard_path(one, 3)]
    grown = load_pairs(one)
    assert len(grown["labels"]) == 14 and torch.equal(grown["tokens"][:8], full["tokens"][:8])
    import pytest
    with pytest.raises(ValueError, match="another spec"):
        generate_pairs(nm, replace(spec, seed=6), one, progress=False)


def test_student_init_reproduces_teacher_on_data_inputs():
    t, c = teacher(), codes(v=8, d=8)  # V <= d + 1: the least-squares embedding is exact
    s = DDLlamaGen(CFG, c).init_from_teacher(t).eval()
    toks = torch.randint(0, 8, (2, 9), generator=torch.Generator().manual_seed(0))
    cond = torch.tensor([0, 2])
    with torch.no_grad():
        logits, _ = s.predict(c[toks], cond, n_data=9)
        want = t(toks[:, :-1], cond, input_pos=torch.arange(9))
    # student slot i holds q_i at sequence position i+1, like the teacher's input there
    assert torch.allclose(logits[:, :-1], want[:, 1:], atol=1e-4)


def test_student_is_causal_and_sampling_is_deterministic():
    s = DDLlamaGen(CFG, codes()).init_from_teacher(teacher()).eval()
    cond = torch.tensor([1, 2])
    noise = torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, _ = s.predict(noise, cond, 0)
        changed = noise.clone()
        changed[:, 5] += 1.0
        b, _ = s.predict(changed, cond, 0)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6) and not torch.allclose(a[:, 5:], b[:, 5:])
    one = s.sample(cond, noise)
    assert one.shape == (2, 9) and torch.equal(one, s.sample(cond, noise))
    two = s.sample(cond, noise, (0, 4), split=6)
    assert torch.equal(two[:, :4], one[:, :4])  # the first step's tokens before t2 are kept
    for bad in ((1,), (0, 4, 2), ()):
        try:
            s.sample(cond, noise, bad)
        except ValueError:
            continue
        raise AssertionError(f"t_list {bad} accepted")


def test_distill_loss_trains_the_student_towards_the_teacher_map():
    t, c = teacher(), codes()
    noise = torch.randn(32, 9, 8, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(32) % 3
    target = noise_map_for(t, c)(noise, labels)
    s = DDLlamaGen(CFG, c).init_from_teacher(t).train()
    opt = torch.optim.Adam(s.parameters(), lr=3e-3)
    first = None
    for step in range(60):
        loss, parts = distill_loss(s, noise, target, labels, torch.tensor((0, 4)[step % 2]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(parts["ce"])
    assert float(parts["ce"]) < 0.5 * first
    acc = (s.eval().sample(labels, noise) == target).float().mean()
    assert acc > 0.5  # fits the (noise -> tokens) map on its training pairs


def test_marginals_are_class_position_frequencies():
    s = DDLlamaGen(CFG, codes())
    toks = torch.randint(0, 8, (300, 9), generator=torch.Generator().manual_seed(4))
    labels = torch.arange(300) % 3
    s.fit_marginals(toks, labels, smoothing=0.0)
    want = torch.zeros(8)
    want.index_add_(0, toks[labels == 1, 4], torch.ones(100))
    assert torch.allclose(s.marginals[1, 4], want / 100)
    assert torch.allclose(s.marginals.sum(-1), torch.ones(3, 9))


def test_generate_with_prefix_continues_the_given_tokens():
    from accel.models.llamagen_generate import generate

    t = teacher()
    cond = torch.tensor([0, 2])
    for sc in (SamplingConfig(sample_logits=False), SamplingConfig(sample_logits=False, cfg_scale=2.0)):
        full = generate(t, cond, sc=sc)
        for P in (1, 4, 8):
            assert torch.equal(generate(t, cond, sc=sc, prefix=full[:, :P]), full)  # greedy: identical continuation
    other = torch.randint(0, 8, (2, 3), generator=torch.Generator().manual_seed(3))
    sc = SamplingConfig(cfg_scale=2.0)
    out = generate(t, cond, sc=sc, prefix=other, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :3], other)
    trace = {}  # step 3's distribution is the teacher-forced one after the prefix
    generate(t, cond, 4, sc=sc, prefix=other, generator=torch.Generator().manual_seed(0), trace=trace)
    with torch.no_grad():
        raw = t(torch.cat([other, other]), torch.cat([cond, torch.full_like(cond, CFG.num_classes)]),
                input_pos=torch.arange(4))[:, -1]
    assert torch.allclose(trace["raw"][0], raw, atol=1e-5)
    for bad in (other[:1], torch.zeros(2, 9, dtype=torch.long)):
        try:
            generate(t, cond, sc=sc, prefix=bad, generator=torch.Generator())
        except ValueError:
            continue
        raise AssertionError("bad prefix accepted")


def test_teacher_involved_method_keeps_dd_prefix_and_teacher_segment():
    from accel import zoo
    from accel.harness.registry import BuildContext
    from accel.presets.distill import STUDENT, dd_llamagen

    assert STUDENT in zoo.available() and "fmnist-llamagen" in zoo.available()  # shipped in the package
    m = dd_llamagen(teacher_involved=(16, 48))(BuildContext("fmnist-llamagen"))
    cond = torch.tensor([3, 7])
    a = m.generate(cond, generator=torch.Generator().manual_seed(0))
    b = m.generate(cond, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.stats["tokens"], b.stats["tokens"]) and a.images.shape == (2, 3, 32, 32)
    noise = torch.randn(2, 64, m.student.codes.size(1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        one = m.student.sample(cond, noise, (0,))
    assert torch.equal(a.stats["tokens"][:, :16], one[:, :16])
    assert a.stats["nfe_target"] == 33 and a.stats["nfe_student"] == 2


def test_released_settings_prenorm_head_no_dropout_and_t2():
    from accel.distill.student_llamagen import default_t2, student_config

    assert default_t2(256) == 80 and default_t2(64) == 20  # released eval_fewstep.py --t_list 0,80
    cfg = student_config(GPTConfig(dim=32, n_layer=2, n_head=2, vocab_size=8, block_size=9, num_classes=3))
    assert cfg.token_dropout_p == cfg.resid_dropout_p == cfg.ffn_dropout_p == cfg.attn_dropout_p == 0.0
    t, c = teacher(), codes()
    x = torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(3))
    cond = torch.tensor([0, 1])
    for prenorm in (True, False):
        s = DDLlamaGen(cfg, c, conti_prenorm=prenorm).init_from_teacher(t).train()  # train(): no dropout left
        with torch.no_grad():
            l1, c1 = s.predict(x, cond, 0)
            assert torch.equal(s.predict(x, cond, 0)[0], l1)  # deterministic in training mode
            s.norm.weight.mul_(torch.linspace(0.5, 2.0, 32))  # the final RMSNorm feeds the logits head ...
            l2, c2 = s.predict(x, cond, 0)
        assert not torch.allclose(l1, l2)
        assert torch.allclose(c1, c2, atol=1e-5) == prenorm  # ... and the continuous head only when post-norm


def test_shipped_student_loads_with_the_released_settings():
    import pytest

    from accel import zoo

    if not zoo.is_available("fmnist-llamagen-dd"):
        pytest.skip("fmnist-llamagen-dd not shipped in this checkout")
    s, info = zoo.load_with_info("fmnist-llamagen-dd")
    assert isinstance(s, DDLlamaGen) and s.conti_prenorm  # the released head input
    assert info["config"]["t_list"] == [0, 20] and info["config"]["conti_prenorm"] is True
    assert s.config.token_dropout_p == s.config.resid_dropout_p == s.config.ffn_dropout_p == 0.0
    assert torch.allclose(s.marginals.sum(-1), torch.ones(s.marginals.shape[:2]), atol=1e-2)  # fp16 storage
    n, d = s.config.block_size, s.codes.size(1)
    noise = torch.randn(2, n, d, generator=torch.Generator().manual_seed(0))
    ids = s.eval().sample(torch.tensor([1, 7]), noise, (0, 20))
    assert ids.shape == (2, n) and int(ids.min()) >= 0 and int(ids.max()) < s.codes.size(0)


def test_shallower_student_starts_from_evenly_spaced_layers_of_a_deeper_one():
    from dataclasses import replace

    deep_cfg = replace(CFG, n_layer=4)
    c = codes(v=8, d=8)
    deep = DDLlamaGen(deep_cfg, c)
    with torch.no_grad():
        for i, p in enumerate(deep.parameters()):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))  # every tensor distinct
        deep.marginals.copy_(torch.rand(deep.marginals.shape).softmax(-1))
    small = DDLlamaGen(replace(CFG, n_layer=2), c, conti_prenorm=False).init_with_student(deep)
    theirs = deep.state_dict()
    for k, v in small.state_dict().items():
        src = k.replace("layers.1.", "layers.3.")  # 4 -> 2 layers: 0 and 3 (first and last kept)
        assert torch.equal(v, theirs[src]), k
    assert small.conti_prenorm == deep.conti_prenorm
    x, cond = torch.randn(2, 9, 8), torch.tensor([0, 2])
    small.eval(), deep.eval()  # no class-label dropout
    with torch.no_grad():  # the copied network is the deeper one without layers 1 and 2
        del deep.layers[1:3]
        assert torch.allclose(small.predict(x, cond, 3)[0], deep.predict(x, cond, 3)[0])
    with pytest.raises(ValueError, match="cannot start from"):
        DDLlamaGen(replace(CFG, n_layer=6), c).init_with_student(DDLlamaGen(deep_cfg, c))


def test_bench_entries_of_the_smaller_student_run_the_four_layer_zoo_file():
    from accel import zoo
    from accel.harness.registry import BuildContext
    from accel.presets import distill as presets

    if not (zoo.is_available(presets.STUDENT4) and zoo.is_available("fmnist-llamagen")):
        pytest.skip("fmnist-llamagen-dd4 not shipped in this checkout")
    for name, steps in (("dd4-1step", 1), ("dd4-2step", 2)):
        entry = next(e for e in presets.ENTRIES if e.name == name)
        m = entry.build(BuildContext("fmnist-llamagen"))
        assert m.name == name and m.student.config.n_layer == 4 and m.t_list == (0, 20)[:steps]
        s = m.generate(torch.tensor([1, 7]), generator=torch.Generator().manual_seed(0))
        assert s.images.shape == (2, 3, 32, 32) and s.stats["nfe_student"] == steps


def test_onpolicy_pairs_continue_the_students_prefix_and_feed_its_second_step(tmp_path):
    from dataclasses import replace
    from types import SimpleNamespace

    from accel.distill.sequence import llamagen_pair_map
    from accel.train.recipes.dd_llamagen import LlamaGenDistillRecipe

    t, c = teacher(), codes()
    vq = SimpleNamespace(quantize=SimpleNamespace(codebook=lambda: c))
    torch.manual_seed(2)
    s = DDLlamaGen(CFG, c).eval()
    sc, solver = SamplingConfig(cfg_scale=2.0), FlowSolver(6)
    spec = PairSpec(n_pairs=8, shard_size=4, seq_len=9, token_dim=8, num_classes=3, seed=5)
    plain, onp, other = tmp_path / "plain", tmp_path / "onpolicy", tmp_path / "other"
    generate_pairs(llamagen_pair_map(t, vq, sc, solver)[0], spec, plain, progress=False)
    nm = llamagen_pair_map(t, vq, sc, solver, prefix_student=s, prefix_len=3)[0]
    with pytest.raises(TypeError, match="DDLlamaGen"):
        llamagen_pair_map(t, vq, sc, solver, prefix_student=t, prefix_len=3)
    with pytest.raises(ValueError, match="codebook"):
        llamagen_pair_map(t, vq, sc, solver, prefix_student=DDLlamaGen(CFG, codes(seed=9)), prefix_len=3)
    with pytest.raises(ValueError, match="prefix_len"):
        llamagen_pair_map(t, vq, sc, solver, prefix_student=s, prefix_len=9)
    generate_pairs(nm, spec, onp, meta={"prefix": {"student": "toy", "len": 3}}, progress=False)
    d, o = load_pairs(plain), load_pairs(onp)
    own = s.sample(d["labels"], d["noise"], (0,))[:, :3]
    assert torch.equal(o["noise"], d["noise"]) and torch.equal(o["tokens"][:, :3].long(), own)
    assert torch.equal(o["tokens"].long(), llamagen_noise_map(t, c, d["labels"], d["noise"], sc, solver, prefix=own))
    assert not torch.equal(o["tokens"], d["tokens"])

    r = LlamaGenDistillRecipe(pairs_dir=str(plain), onpolicy_dir=str(onp), t_list=(0, 3), val_pairs=2)
    batch = r.train_data(tmp_path, "cpu")
    assert len(batch) == 4 and torch.equal(batch[3], o["tokens"][:6].long())
    # the first step learns the teacher trajectory, the second (t = 3) the on-policy targets from their prefix
    for step, t_, tokens in ((0, 0, batch[1]), (1, 3, batch[3])):
        got, _ = r.loss(s, batch, None, step)
        assert torch.allclose(got, distill_loss(s, batch[0], tokens, batch[2], torch.tensor(t_))[0])
    assert 0 <= r.evaluate(s, tmp_path)["token_acc_step2_onpolicy"] <= 1
    with pytest.raises(ValueError, match="second-step time"):
        replace(r, t_list=(0, 4)).train_data(tmp_path, "cpu")
    generate_pairs(nm, replace(spec, seed=6), other, meta={"prefix": {"student": "toy", "len": 3}}, progress=False)
    with pytest.raises(ValueError, match="different pairs"):
        replace(r, onpolicy_dir=str(other)).train_data(tmp_path, "cpu")
