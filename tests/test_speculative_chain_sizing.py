"""gamma="auto": the chain's γ measured on the device (accel.speculative.chain_sizing), through the public API."""
from __future__ import annotations

import pytest
import torch

import accel
from accel.models.llamagen import GPTConfig, Transformer
from accel.models.llamagen_vq import VQConfig, VQModel
from accel.speculative import chain_sizing, methods
from accel.speculative.decoder import speculative_generate
from accel.speculative.sizing import expected_chain_tokens

VQ = VQConfig(codebook_size=16, codebook_embed_dim=4, codebook_show_usage=False, encoder_ch_mult=(1, 2, 2),
              decoder_ch_mult=(1, 2, 2), z_channels=32, ch=32, num_res_blocks=1)
GPT = GPTConfig(dim=32, n_layer=2, n_head=2, vocab_size=16, block_size=16, num_classes=10, multiple_of=32)
LABELS = torch.tensor([3, 7])


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    vq = VQModel(VQ).eval()
    target = accel.wrap(Transformer(GPT).eval(), vq, cfg_scale=2.0)
    draft = accel.wrap(Transformer(GPTConfig(**{**GPT.__dict__, "n_layer": 1})).eval(), vq)
    return target, draft


def seed(s=0):
    return torch.Generator().manual_seed(s)


def test_auto_sizes_each_batch_size_once_and_decodes_with_that_gamma(pair, monkeypatch):
    target, draft = pair
    m = accel.speculative(target, draft, gamma="auto")
    calls = []
    real = chain_sizing.size_chain
    monkeypatch.setattr(methods, "size_chain", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    s = m.generate(LABELS, generator=seed())
    sized = m.sizings[2]
    assert 1 <= sized.gamma <= 8 and s.stats["gamma"] == sized.gamma and m.params["gamma"] == "auto"
    assert len(sized.ranked) == 9 and sized.ranked[0].tokens_per_second >= sized.ranked[-1].tokens_per_second
    # the sizing draws from its own generator: the caller's tokens are those of the plain loop at the chosen γ
    ref, _ = speculative_generate(m.target, m.drafter, m.rule, LABELS, m.sc, gamma=sized.gamma, generator=seed())
    assert torch.equal(s.stats["tokens"], ref)
    m.generate(LABELS, generator=seed(1))
    m.generate(LABELS[:1], generator=seed(1))
    assert calls == [2, 1] and m.sizings[2] is sized and set(m.sizings) == {1, 2}


def test_choose_gamma_by_hand():
    """Linear verify cost, acceptance 0.5, free drafts: γ = 1 gives 1.5 tokens per 2 units against plain decoding's 1
    per 1, so the best γ >= 1 is 1 and speculation does not pay; a flat curve with acceptance 0.9 and cheap drafts
    takes the longest chain. The curve is rescaled to the given verify cost at γ_max + 1."""
    lin = chain_sizing.choose_gamma({T: 2.0 * T for T in range(1, 10)}, 9.0, [0.5], 0.0, 0.0, 8)
    assert lin.gamma == 1 and not lin.speculation_pays and lin.verify_s[9] == 9.0 and lin.verify_s[1] == 1.0
    assert [b.name for b in lin.ranked][:2] == ["chain0", "chain1"]
    assert lin.ranked[1].tokens_per_second == pytest.approx(1.5 / 2.0)
    flat = chain_sizing.choose_gamma({T: 1.0 for T in range(1, 10)}, 1.0, [0.9], 0.01, 0.0, 8)
    assert flat.gamma == 8 and flat.speculation_pays
    rate8 = expected_chain_tokens([0.9], 8) / (8 * 0.01 + 1.0)
    assert flat.ranked[0].tokens_per_second == pytest.approx(rate8)


def test_the_measured_choice_follows_the_verify_cost_curve(pair, monkeypatch):
    """size_chain keeps the curve's shape (scaled to the calibration decodes' own verify forwards) and picks the γ
    that maximises E(γ) / (γ·draft + verify(γ + 1) + loop) over what it reports; the target as its own draft (every
    draft accepted) on a flat curve (an accelerator where 9 tokens cost one) takes the longest chain."""
    target, _ = pair
    m = accel.speculative(target, target, gamma=3)
    flat = {T: 1.0 for T in range(1, 10)}
    monkeypatch.setattr(chain_sizing, "verify_cost_curve", lambda *a, **k: flat)
    sized = accel.size_gamma(m, 2)
    v = sized.verify_s
    assert len(set(v.values())) == 1 and sized.accept_at == [1.0] * 8

    def rate(g):
        return expected_chain_tokens(sized.accept_at, g) / (g * sized.draft_step_s + v[g + 1] + sized.loop_s)

    assert sized.gamma == max(range(1, 9), key=rate) == 8 and sized.speculation_pays
    assert m.gamma_for(2) == 8 and m.gamma_for(1) == 3  # a fixed-γ method keeps its γ where it was not sized


def test_auto_refuses_what_it_cannot_size(pair):
    target, draft = pair
    with pytest.raises(ValueError, match="'auto'"):
        accel.speculative(target, draft, gamma="fast")
    with pytest.raises(ValueError, match="auto.*plain chain"):
        accel.speculative(target, draft, gamma="auto", tree="b4-2-1")
    with pytest.raises(ValueError, match="auto.*plain chain"):
        accel.speculative(target, draft, gamma="auto", kv_policy=accel.snapkv(0.5, window=2))
    with pytest.raises(TypeError, match="accel.speculative"):
        accel.size_gamma(target, 1)
    m = accel.speculative(target, draft, gamma="auto")
    with pytest.raises(ValueError, match="gamma_max"):
        accel.size_gamma(m, 1, gamma_max=15)
    with pytest.raises(ValueError, match="batch_size"):
        accel.size_gamma(m, 0)
