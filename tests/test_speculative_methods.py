"""SpeculativeLlamaGen as a harness Method, LANTERN through the decode loop, the EAGLE drafter recipe."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from accel.models.llamagen_generate import SamplingConfig
from accel.models.llamagen_vq import VQConfig, VQModel
from accel.speculative.decoder import speculative_generate
from accel.speculative.drafters import EagleDrafter, ModelDrafter
from accel.speculative.lantern import LanternRule, neighbour_table
from accel.speculative.methods import SpeculativeLlamaGen
from accel.speculative.rules import ExactRule
from accel.speculative.tree import TREES
from accel.train.drafter import EagleRecipe, EagleTraining, load_eagle
from accel.types import Method
from paths import fixtures

sys.path.insert(0, str(Path(__file__).parent))
from test_speculative_decoder import tiny  # noqa: E402

FIX = fixtures("llamagen") / "vq_config.json"


def tiny_vq(vocab=16):
    cfg = json.loads(FIX.read_text()) if FIX.is_file() else dict(encoder_ch_mult=[1, 1], decoder_ch_mult=[1, 1],
                                                                   z_channels=32, ch=32, num_res_blocks=1)
    cfg.update(codebook_size=vocab, num_res_blocks=1)
    torch.manual_seed(0)
    return VQModel(VQConfig.from_dict(cfg)).eval()


@pytest.mark.parametrize("tree", [None, "b2-2-1-1"])
def test_method_returns_images_and_stats(tree):
    target, vq = tiny(0), tiny_vq()
    rule = LanternRule(neighbour_table(vq.quantize.embedding.weight, 6), k=5, delta=0.2)
    m = SpeculativeLlamaGen("lantern", target, ModelDrafter(tiny(1, dim=16, n_layer=1)), rule, vq,
                            SamplingConfig(cfg_scale=2.0), gamma=3, tree=TREES[tree] if tree else None)
    assert isinstance(m, Method)
    s = m.generate(torch.tensor([0, 3]), generator=torch.Generator().manual_seed(0))
    assert s.images.shape[:2] == (2, 3) and float(s.images.min()) >= 0 and float(s.images.max()) <= 1
    for key in ("nfe_target", "nfe_draft", "accepted", "drafted", "verify_steps", "mean_accept_len", "tokens"):
        assert key in s.stats
    assert s.stats["tokens"].shape == (2, 16)
    assert 1 <= s.stats["mean_accept_len"] <= 5


def test_lantern_accepts_more_than_exact_on_a_model():
    target = tiny(0, scale=0.6)
    drafter = ModelDrafter(tiny(1, dim=16, n_layer=1, scale=0.6))
    sc = SamplingConfig(cfg_scale=2.0)
    cond = torch.arange(64) % 4
    table = neighbour_table(target.tok_embeddings.weight, 16)
    _, ex = speculative_generate(target, drafter, ExactRule(), cond, sc, gamma=3, generator=torch.Generator().manual_seed(0))
    _, la = speculative_generate(target, drafter, LanternRule(table, k=15, delta=0.4), cond, sc, gamma=3,
                                 generator=torch.Generator().manual_seed(0))
    assert la.as_dict()["mean_accept_len"] > ex.as_dict()["mean_accept_len"] + 0.1


def test_eagle_recipe_trains_only_the_head_and_roundtrips(tmp_path):
    target = tiny(0, vocab=16, block=16)
    model = EagleTraining(target)
    recipe = EagleRecipe()
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (8, 16), generator=g)
    labels = torch.randint(0, 4, (8,), generator=g)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(30):
        loss, logs = recipe.loss(model, (codes, labels), torch.Generator().manual_seed(1), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(p.grad is None for p in target.parameters())
    assert losses[-1] < 0.8 * losses[0]
    # export/load roundtrip (export() asks the recipe for the target config; give it this one)
    recipe.model_config = lambda: __import__("dataclasses").asdict(target.config)
    path = recipe.export(model, tmp_path, {"step": 30})[0]
    head, info = load_eagle(path)
    for k, v in model.head.state_dict().items():
        assert torch.allclose(head.state_dict()[k], v.half().float())
    EagleDrafter(head, target)  # compatible with its target
    with pytest.raises(ValueError):
        EagleDrafter(head, tiny(0, dim=16, n_layer=1))
