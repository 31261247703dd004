"""The drafter trained on the target's own guided samples (accel/train/drafter_cfg.py): resumable data chunks,
features equal the target's teacher-forced hidden states on both CFG rows, the loss is the guided one and
trains the head only, and the pair statistics are what they claim."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from accel.models.llamagen_generate import SamplingConfig, generate
from accel.sampling import cfg_combine
from accel.train.drafter import EagleTraining
from accel.train.drafter_cfg import EagleCFGRecipe, cfg_samples, guided_pair_stats, load_chunks, target_features

sys.path.insert(0, str(Path(__file__).parent))
from test_speculative_decoder import tiny  # noqa: E402


def test_chunks_are_target_samples_with_features_and_resume(tmp_path):
    target = tiny(0, block=16, scale=0.5)
    sc = SamplingConfig(cfg_scale=2.0)
    paths = cfg_samples(target, tmp_path, 10, chunk=4, seed=3, sc=sc)
    assert [p.name for p in paths] == ["chunk_0000.pt", "chunk_0001.pt", "chunk_0002.pt"]
    tokens, labels, hc, hu = load_chunks(paths)
    assert tokens.shape == (10, 16) and labels.tolist() == [i % 4 for i in range(10)]
    assert hc.dtype == torch.float16 and hc.shape == (10, 16, 32)
    # chunk 1 is the target's own sampler with the chunk's seed
    ref = generate(target, labels[4:8], 16, sc, generator=torch.Generator().manual_seed(3 * 1_000_003 + 1))
    assert torch.equal(tokens[4:8], ref)
    c, u = target_features(target, tokens[:2], labels[:2])
    lab = torch.cat([labels[:2], torch.full((2,), 4)])
    _, h = target(torch.cat([tokens[:2, :-1]] * 2), lab, input_pos=torch.arange(16), return_hidden=True)
    assert torch.allclose(c, h[:2]) and torch.allclose(u, h[2:])
    assert torch.allclose(hc[:2].float(), c, atol=2e-3)
    mtime = paths[1].stat().st_mtime_ns
    paths[2].unlink()
    cfg_samples(target, tmp_path, 10, chunk=4, seed=3, sc=sc)  # resumes: only the missing chunk is written
    assert paths[1].stat().st_mtime_ns == mtime and paths[2].is_file()
    assert torch.equal(load_chunks(paths)[0], tokens)
    with pytest.raises(ValueError, match="chunk"):
        cfg_samples(target, tmp_path, 10, chunk=0)
    # `only`: a process makes just its chunks (the others' work), the same files as one process makes
    part = tmp_path / "part"
    assert cfg_samples(target, part, 10, chunk=4, seed=3, sc=sc, only=[2, 0]) == [part / p.name for p in paths]
    assert sorted(p.name for p in part.iterdir()) == ["chunk_0000.pt", "chunk_0002.pt"]
    assert torch.equal(torch.load(part / "chunk_0002.pt")["tokens"], tokens[8:])
    with pytest.raises(ValueError, match="outside 0..2"):
        cfg_samples(target, part, 10, chunk=4, only=[3])


def test_loss_is_the_guided_cross_entropy_and_trains_the_head_only(tmp_path):
    target = tiny(0, block=16, scale=0.5)
    tokens, labels, hc, hu = load_chunks(cfg_samples(target, tmp_path, 4, chunk=4, sc=SamplingConfig(cfg_scale=2.0)))
    model = EagleTraining(target).eval()  # no dropout: the check below recomputes the loss
    r = EagleCFGRecipe(init="", noise=0.0)
    loss, logs = r.loss(model, (tokens, labels, hc, hu), torch.Generator().manual_seed(0), 0)
    loss.backward()
    assert model.head.fc.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in target.parameters())
    # the CE term is against the target's guided softmax, from the drafter's guided logits (same scale)
    with torch.no_grad():
        h = torch.cat([hc, hu]).float()
        emb = target.tok_embeddings(torch.cat([tokens, tokens]))
        pred = model.head.forward_train(emb, h)[:, :-1]
        p = torch.softmax(cfg_combine(*target.output(h[:, 1:]).float().chunk(2), 2.0), -1)
        logq = torch.log_softmax(cfg_combine(*target.output(pred).float().chunk(2), 2.0), -1)
        assert logs["ce"].item() == pytest.approx(-(p * logq).sum(-1).mean().item(), rel=1e-4)
    assert loss.item() == pytest.approx(logs["smooth_l1"].item() + r.p_w * logs["ce"].item(), rel=1e-5)
    # p_tv adds the total variation between the two guided laws (exact SD accepts w.p. 1 - TV), with gradient
    r_tv = EagleCFGRecipe(init="", noise=0.0, p_tv=2.0)
    loss_tv, logs_tv = r_tv.loss(model, (tokens, labels, hc, hu), torch.Generator().manual_seed(0), 0)
    tv = 0.5 * (p - logq.exp()).abs().sum(-1).mean().item()
    assert tv > 0.01 and logs_tv["tv"].item() == pytest.approx(tv, rel=1e-4)
    assert loss_tv.item() == pytest.approx(loss.item() + 2.0 * tv, rel=1e-5)
    g_plain = model.head.fc.weight.grad.clone()
    model.zero_grad()
    loss_tv.backward()  # the TV term has a gradient of its own on the head
    assert not torch.allclose(model.head.fc.weight.grad, g_plain, rtol=1e-3, atol=1e-7)


def test_pair_stats():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    q = torch.tensor([[0.2, 0.6, 0.2], [0.1, 0.1, 0.8]])
    s = guided_pair_stats(p, q.log())
    assert s["tv_mean"].item() == pytest.approx(0.15)
    assert s["p_argmax_q"].item() == pytest.approx((0.3 + 0.8) / 2)
    assert s["top1"].item() == pytest.approx(0.5)


def test_init_takes_a_zoo_name_or_a_zoo_file():
    from accel import zoo
    if not zoo.is_available("fmnist-llamagen-eagle"):
        pytest.skip("zoo weights not in this copy")
    by_name = EagleCFGRecipe(init="fmnist-llamagen-eagle").build().head.state_dict()
    by_file = EagleCFGRecipe(init=str(zoo.weights_path("fmnist-llamagen-eagle"))).build().head.state_dict()
    fresh = EagleCFGRecipe(init="").build().head.state_dict()
    assert all(torch.equal(by_name[k], by_file[k]) for k in by_name)
    assert not torch.equal(by_name["fc.weight"], fresh["fc.weight"])


def test_made_by_lists_every_stage(monkeypatch):
    """A stage started from an exported head records that head's commands before its own; a head exported
    without a lineage of its own is rebuilt from its recorded recipe."""
    from accel.train import drafter_cfg

    infos = {"zoo/fmnist-llamagen-eagle.safetensors.xz": {"step": 3000, "recipe": {"name": "fmnist-llamagen-eagle"}}}
    monkeypatch.setattr(drafter_cfg, "read_zoo_file", lambda path: (None, None, infos[str(path)], None))
    monkeypatch.setattr(drafter_cfg.zoo, "resolve", lambda s: s if "/" in s else f"zoo/{s}.safetensors.xz")
    assert EagleCFGRecipe().command(2500) == "accel train fmnist-llamagen-eagle-cfg --steps 2500"
    assert EagleCFGRecipe().made_by(2500) == ["accel train fmnist-llamagen-eagle",
                                              "accel train fmnist-llamagen-eagle-cfg --steps 2500"]
    infos["zoo/fmnist-llamagen-eagle-cfg.safetensors.xz"] = {"step": 2500, "recipe": {
        **{k: v for k, v in EagleCFGRecipe().__dict__.items()}, "betas": [0.9, 0.95]}}
    stage2 = EagleCFGRecipe(init="fmnist-llamagen-eagle-cfg", lr=3e-4, p_tv=1.0)
    assert stage2.made_by(6000) == [
        "accel train fmnist-llamagen-eagle", "accel train fmnist-llamagen-eagle-cfg --steps 2500",
        "accel train fmnist-llamagen-eagle-cfg --steps 6000 --set lr=0.0003 "
        "--set 'init=\"fmnist-llamagen-eagle-cfg\"' --set p_tv=1.0"]
    infos["runs/s2/fmnist-llamagen-eagle-cfg.safetensors.xz"] = {"made_by": stage2.made_by(6000)}
    stage3 = EagleCFGRecipe(init="runs/s2/fmnist-llamagen-eagle-cfg.safetensors.xz", n_samples=47750)
    assert stage3.made_by(12000)[:3] == stage2.made_by(6000)
    assert stage3.made_by(12000)[3] == (
        "accel train fmnist-llamagen-eagle-cfg --steps 12000 --set "
        "'init=\"runs/s2/fmnist-llamagen-eagle-cfg.safetensors.xz\"' --set n_samples=47750")


def test_card_quality_is_the_shipped_heads_held_out_evaluation(tmp_path):
    from accel import zoo
    from accel.train.drafter import load_eagle
    if not zoo.is_available("fmnist-llamagen-eagle-cfg"):
        pytest.skip("zoo weights not in this copy")
    r = EagleCFGRecipe(n_samples=4, n_val=4, chunk=4, data_dir=str(tmp_path), init="")
    assert r.val_paths() == [tmp_path / "chunk_0001.pt"] and r.card_quality("fmnist-llamagen-eagle-cfg") is None
    cfg_samples(zoo.load("fmnist-llamagen"), tmp_path, 8, chunk=4, seed=r.data_seed, sc=r.sampling())
    q = r.card_quality("fmnist-llamagen-eagle-cfg")
    model = r.build()
    model.head.load_state_dict(load_eagle(zoo.weights_path("fmnist-llamagen-eagle-cfg"))[0].state_dict())
    assert q["val_tv_mean"] == pytest.approx(r.evaluate(model.eval(), None)["val_tv_mean"])
    assert 0 < q["val_tv_mean"] < 0.5 and "chunk_0001.pt" in q["measured on"]
