"""DD1 student for VAR: shapes, the exact mask, init from the teacher, 1/2-step and teacher-involved
sampling, the loss, and resumable training on generated pairs."""
from dataclasses import dataclass, replace

import pytest
import torch

from accel.train.recipes.dd_var import VARDistill4Recipe, VARDistillRecipe, build_student, dd_var_loss, default_split, student_config
from accel.distill.student_var import DDVAR, decode_vectors
from accel.models.var import teacher_forced_logits
from accel.train.loop import fit, trained_model
from test_distill_var import PNS, noise, tiny

L = sum(p * p for p in PNS)


def student(seed=0, scramble_new=False):
    vae, var = tiny(seed)
    s = DDVAR.from_teacher(var, vae).eval()
    if scramble_new:  # give the zero-initialised noise/data maps and the continuous head real weights
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for name, p in s.named_parameters():
                if name.startswith(("n_d_embed", "layerwise_n_d_embed", "final_layer_conti")):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return vae, var, s


def test_shapes_levels_and_exact_mask():
    vae, var, s = student()
    lab, eps = torch.tensor([0, 2]), noise(2)
    logits, conti = s.predict(eps, lab, 0)
    assert logits.shape == (2, L, var.V) and conti.shape == (2, L, var.Cvae)
    assert s.patch_nums == (1,) + PNS and s.L == L + 1
    assert s.lvl_1L[0].tolist() == [0, 1] + [2] * 4 + [3] * 9 + [4] * 16
    seen = [set(torch.nonzero(row == 0).view(-1).tolist()) for row in s.attn_bias_for_masking[0, 0]]
    assert seen[0] == {0}  # sos: itself only
    assert seen[1] == {0, 1}  # the 1x1 scale's slot: sos and itself
    assert seen[2] == {0, 1, 2} and seen[5] == {0, 1, 5}  # 2x2 scale: earlier scales + itself, no sibling
    assert seen[6] == {0, 1, 2, 3, 4, 5, 6} and seen[14] == set(range(6)) | {14}
    assert seen[L] == set(range(15)) | {L}
    for q in range(L + 1):  # the rule, for every position
        lv = s.lvl_1L[0]
        assert seen[q] == {k for k in range(L + 1) if lv[k] < lv[q] or k == q}
    # mask is the teacher's block-causal one nowhere but on sos
    assert not torch.equal(s.attn_bias_for_masking[..., 1:, 1:], var.attn_bias_for_masking)


def test_outputs_depend_on_earlier_scales_and_own_slot_only():
    vae, var, s = student(scramble_new=True)
    lab, eps = torch.tensor([1]), noise(1, seed=4)
    base = torch.cat(s.predict(eps, lab, 1), -1)
    lv = s.lvl_1L[0, 1:]
    for j in (0, 2, 7, 20):
        x = eps.clone()
        x[0, j] += 1.0
        changed = (torch.cat(s.predict(x, lab, 1), -1) - base).abs().amax(-1)[0] > 1e-6
        expect = (lv > lv[j]) | (torch.arange(L) == j)
        assert torch.equal(changed, expect), j


def test_init_with_teacher():
    """Verified: every teacher tensor is copied (all class_emb rows, unlike the released code), lvl_embed /
    pos_1LC shifted by the sos slot; the new maps start at zero so the data/noise flags change nothing,
    and the sos slot's hidden state gives exactly the teacher's (conditional) first-scale logits."""
    vae, var, s = student()
    tsd, ssd = var.state_dict(), s.state_dict()
    for k, v in tsd.items():
        if k not in ("lvl_embed.weight", "pos_1LC", "lvl_1L", "attn_bias_for_masking"):
            assert torch.equal(ssd[k], v), k
    assert torch.equal(s.class_emb.weight[1], var.class_emb.weight[1])
    assert torch.equal(s.lvl_embed.weight[1:], var.lvl_embed.weight) and torch.equal(s.pos_1LC[:, 1:], var.pos_1LC)
    assert torch.equal(s.codes, vae.quantize.embedding.weight)
    lab, eps = torch.tensor([0, 3, 4]), noise(3)
    with torch.no_grad():
        h, cond_BD = s.hidden(eps, lab, 0)
        ids = [torch.zeros(3, p * p, dtype=torch.long) for p in PNS]
        first = teacher_forced_logits(var, vae, lab, ids)[:, :1]
    assert torch.allclose(s.get_logits(h[:, :1], cond_BD), first, atol=1e-5)
    a, b = s.predict(eps, lab, 0), s.predict(eps, lab, len(PNS) - 1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    _, _, s2 = student(scramble_new=True)  # ...and they do once the maps are trained
    assert not torch.allclose(s2.predict(eps, lab, 0)[0], s2.predict(eps, lab, len(PNS) - 1)[0])
    with pytest.raises(ValueError, match="does not match"):
        DDVAR(replace(var.cfg, patch_nums=(1, 2, 3)), 16, 4).init_with_teacher(var)


def test_one_and_two_step_sampling():
    vae, var, s = student(scramble_new=True)
    lab, eps = torch.tensor([0, 2, 4]), noise(3, seed=6)
    t2 = split = 2
    n2 = 1 + 4
    v1, i1 = s.sample(lab, eps, (0,), split)
    assert v1.shape == (3, L, var.Cvae) and i1.shape == (3, L)
    assert torch.equal(v1[:, :n2], s.codes[i1[:, :n2]])  # scales < split: codes of the logits' arg-max
    assert torch.equal(s.sample(lab, eps, (0,), split)[0], v1)  # deterministic
    v2, i2 = s.sample(lab, eps, (0, t2), split)
    assert torch.equal(v2[:, :n2], v1[:, :n2])  # step-1 data kept
    # the second call sees step 1's first scales as data and the SAME noise after them
    x2 = torch.cat((v1[:, :n2], eps[:, n2:]), 1)
    logits, conti = s.predict(x2, lab, t2)
    assert torch.allclose(v2[:, n2:], conti[:, n2:]) and not torch.allclose(v2, v1)
    assert decode_vectors(vae, v2, PNS).shape == (3, 3, 8, 8)
    with pytest.raises(ValueError, match="t_list"):
        s.sample(lab, eps, (1,), split)
    with pytest.raises(ValueError, match="t_list"):
        s.sample(lab, eps, (0, len(PNS)), split)


def test_teacher_involved_sampling():
    vae, var, s = student(scramble_new=True)
    lab, eps = torch.tensor([0, 2]), noise(2, seed=8)
    kw = dict(t_mid=3, teacher_start=1, split=2, cfg=2.0)
    v, i, info = s.sample_teacher_involved(var, vae, lab, eps, generator=torch.Generator().manual_seed(1), **kw)
    v_, i_, _ = s.sample_teacher_involved(var, vae, lab, eps, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(v, v_) and v.shape == (2, L, var.Cvae) and info == {"student_passes": 2, "teacher_passes": 3}
    one = s.sample(lab, eps, (0,), 2)[1]
    assert torch.equal(i[:, :1], one[:, :1])  # scale 0 from the first DD step, snapped
    assert torch.equal(v[:, :14], s.codes[i[:, :14]])  # teacher scales are codes
    with pytest.raises(ValueError, match="teacher_start"):
        s.sample_teacher_involved(var, vae, lab, eps, generator=None, t_mid=2, teacher_start=3)


def test_loss_per_row_timesteps_and_gradients():
    vae, var, s = student()
    s.train()
    B = 4
    eps, toks = noise(B, seed=2), torch.randint(0, var.V, (B, L), generator=torch.Generator().manual_seed(0))
    t_B = torch.tensor([0, 2, 0, 2])
    loss, logs = dd_var_loss(s, eps, toks, torch.tensor([0, 1, 2, 3]), t_B, split=2)
    assert torch.isfinite(loss) and logs["ce"] > 0 and logs["mse"] > 0
    loss.backward()
    assert s.layerwise_n_d_embed[0].weight.grad.abs().sum() > 0 or s.n_d_embed.weight.grad.abs().sum() > 0
    assert s.final_layer_conti.linear.weight.grad.abs().sum() > 0
    # at t=2 the noise under the data slots (scales < 2) is never seen; at t=0 it is the input
    s.eval()
    eps2 = eps.clone()
    eps2[:, :5] += 1.0
    with torch.no_grad():
        for t, same in ((2, True), (0, False)):
            tt = torch.full((B,), t)
            a = dd_var_loss(s, eps, toks, torch.tensor([0, 1, 2, 3]), tt, split=2)[0]
            b = dd_var_loss(s, eps2, toks, torch.tensor([0, 1, 2, 3]), tt, split=2)[0]
            assert torch.equal(a, b) == same, t
    assert default_split((1, 2, 3, 4, 5, 6, 8, 10, 13, 16)) == 5 and default_split(PNS) == 1


@dataclass
class TinyRecipe(VARDistillRecipe):
    name: str = "tiny-var-dd"
    teacher: str = "tiny"
    tokenizer: str = "tiny"
    solver_steps: int = 8
    holdout: int = 8
    steps: int = 6
    batch_size: int = 8
    warmup: int = 2
    eval_every: int = 0
    ckpt_every: int = 2
    log_every: int = 1

    def load_teacher(self):
        return tiny()


def test_recipe_trains_from_pairs_and_resumes_bitwise(tmp_path):
    rec = TinyRecipe(pairs=str(tmp_path / "pairs"))
    rec.make_pairs(32, shard_size=8, batch_size=16, progress=False)
    a = fit(rec, tmp_path / "a", seed=1, cpu=True, progress=False)
    assert a["finished"] and a["step"] == 6
    part = fit(rec, tmp_path / "b", seed=1, cpu=True, progress=False, stop_at=3)
    assert not part["finished"] and part["step"] == 3
    b = fit(rec, tmp_path / "b", seed=1, cpu=True, progress=False)
    assert b["resumed_from"] == 3 and b["finished"]
    ma, _ = trained_model(rec, tmp_path / "a")
    mb, _ = trained_model(rec, tmp_path / "b")
    for k, v in ma.state_dict().items():
        assert torch.equal(v, mb.state_dict()[k]), k
    ev = rec.evaluate(ma, tmp_path / "a")
    assert set(ev) >= {"agree_1step", "agree_2step", "mse_conti_1step"} and 0 <= ev["agree_1step"] <= 1
    # zoo builder round trip
    rebuilt = build_student(student_config(ma))
    rebuilt.load_state_dict(ma.state_dict())
    assert torch.equal(rebuilt.codes, ma.codes)
    # pairs made with other teacher settings are refused
    with pytest.raises(ValueError, match="was made with"):
        TinyRecipe(pairs=str(tmp_path / "pairs"), cfg=3.0).train_data(tmp_path, "cpu")


def test_smaller_student_starts_from_evenly_spaced_teacher_blocks():
    from accel.distill.depth import teacher_blocks

    assert teacher_blocks(6, 6) == list(range(6)) and teacher_blocks(6, 4) == [0, 2, 3, 5]
    assert teacher_blocks(6, 1) == [5]
    with pytest.raises(ValueError, match="depth=7"):
        teacher_blocks(6, 7)
    vae, var = tiny(0)
    if var.depth >= 2:
        small = DDVAR.from_teacher(var, vae, depth=2)
        full = DDVAR.from_teacher(var, vae)
        last = var.depth - 1
        for k, v in small.state_dict().items():
            if k == "final_layer_conti.scale_shift_table":
                continue  # random init, not from the teacher
            src = k.replace("blocks.1.", f"blocks.{last}.") if k.startswith("blocks.1.") else k
            assert torch.equal(v, full.state_dict()[src]), k  # block 1 = the teacher's last, the rest shared


def test_smaller_student_starts_from_evenly_spaced_blocks_of_a_deeper_student():
    _, var, deep = student(scramble_new=True)  # depth 2, every new map nonzero
    with torch.no_grad():
        for p in deep.parameters():
            p.add_(0.01)  # no longer the teacher's weights anywhere
    small = DDVAR(replace(var.cfg, depth=1), var.V, var.Cvae).init_with_student(deep)
    want = {"blocks.0.": "blocks.1.", "layerwise_n_d_embed.0.": "layerwise_n_d_embed.1.",
            "layerwise_n_d_embed.1.": "layerwise_n_d_embed.2."}
    theirs = deep.state_dict()
    for k, v in small.state_dict().items():
        pre = next((p for p in want if k.startswith(p)), None)
        assert torch.equal(v, theirs[want[pre] + k[len(pre):]] if pre else theirs[k]), k
    same = DDVAR(var.cfg, var.V, var.Cvae).init_with_student(deep)  # same depth: an exact copy
    assert all(torch.equal(v, theirs[k]) for k, v in same.state_dict().items())
    with pytest.raises(ValueError, match="depth=2"):
        DDVAR(var.cfg, var.V, var.Cvae).init_with_student(small)  # a shallower source cannot fill 2 blocks
    with pytest.raises(ValueError, match="does not match"):
        DDVAR(replace(var.cfg, depth=1, embed_dim=64, num_heads=2), var.V, var.Cvae).init_with_student(deep)


@dataclass
class TinyRecipe4(TinyRecipe):
    name: str = "tiny-var-dd4"
    depth: int | None = 1

    def export(self, model, out_dir, info):
        return VARDistill4Recipe.export(self, model, out_dir, info)


def test_small_student_recipe_warm_starts_from_a_deeper_file_and_exports_bf16_rounded(tmp_path):
    from accel import zoo
    from accel.zoo.store import save_zoo_file

    _, _, deep = student(scramble_new=True)
    src = save_zoo_file(tmp_path / "deep.safetensors.xz", deep.state_dict(), kind="var-dd", config=student_config(deep))
    rec = TinyRecipe4(init_from=str(src))
    small = rec.build()
    assert small.depth == 1
    fp16 = lambda t: t.half().float()  # noqa: E731  (zoo files store fp16)
    assert torch.equal(small.blocks[0].ffn.fc1.weight, fp16(deep.blocks[1].ffn.fc1.weight))
    assert torch.equal(small.layerwise_n_d_embed[1].weight, fp16(deep.layerwise_n_d_embed[2].weight))
    (path,) = rec.export(small, tmp_path, {})
    back = zoo.load(path)
    assert back.depth == 1 and torch.equal(back.codes, small.codes)  # the codebook is kept exact
    for k, v in back.state_dict().items():
        if v.is_floating_point() and k != "codes":
            assert torch.equal(v, v.bfloat16().float()), k  # bf16-representable
            assert torch.allclose(v, small.state_dict()[k], rtol=2 ** -8, atol=1e-6), k
