"""Speculative decoding (exact, LANTERN) composed with a compressed target KV cache on LlamaGen.

Properties: with the identity policy the decode is bitwise plain speculative decoding; with a real policy greedy
speculative decoding equals greedy raster decoding with the same policy (every committed token attends to the
same kept keys, see accel/speculative/decoder.py), the cache holds fewer bytes than the full one, and batch > 1
is refused.
"""
import pytest
import torch

from accel.models.kv_cache import KeepAll
from accel.cache.llamagen import RASTER_POLICIES, build_raster_policy, generate_compressed, raster_cache
from accel.models.llamagen import GPTConfig, Transformer
from accel.models.llamagen_generate import SamplingConfig
from accel.speculative.decoder import speculative_generate
from accel.speculative.drafters import EagleDrafter, EagleHead, ModelDrafter
from accel.speculative.lantern import LanternRule, neighbour_table
from accel.speculative.rules import ExactRule

LOSSY = [p for p in RASTER_POLICIES if p != "full"]


def tiny(seed, dim=64, n_layer=2, vocab=24, block=16, scale=0.3):
    torch.manual_seed(seed)
    cfg = GPTConfig(dim=dim, n_layer=n_layer, n_head=4, multiple_of=16, vocab_size=vocab, num_classes=4,
                    block_size=block)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, scale)
    return m


@pytest.fixture(scope="module")
def setup():
    target = tiny(0)
    head = EagleHead(target.config).eval()  # eval: no dropout, so runs are comparable
    torch.manual_seed(5)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.2)
    drafters = [ModelDrafter(tiny(1, dim=32, n_layer=1)), EagleDrafter(head, target)]
    table = neighbour_table(target.tok_embeddings.weight, 6)
    return target, drafters, LanternRule(table, k=5, delta=0.2), table


@pytest.mark.parametrize("greedy", [False, True])
def test_identity_policy_is_plain_speculative_decoding(setup, greedy):
    target, drafters, lantern, table = setup
    sc = SamplingConfig(cfg_scale=2.0, sample_logits=not greedy)
    for drafter in drafters:
        for rule in (ExactRule(), lantern):
            for gamma in (1, 3):
                def run(cache):
                    return speculative_generate(target, drafter, rule, torch.tensor([2]), sc, gamma=gamma,
                                                generator=torch.Generator().manual_seed(gamma), cache=cache)

                a, sa = run(None)
                b, sb = run(raster_cache(target, KeepAll()))
                assert torch.equal(a, b) and sa.accepted == sb.accepted and sa.nfe_target == sb.nfe_target


@pytest.mark.parametrize("every", [1, 4])
@pytest.mark.parametrize("name", LOSSY)
def test_greedy_speculative_with_policy_equals_greedy_raster_decoding(setup, name, every):
    target, drafters, lantern, table = setup
    sc = SamplingConfig(cfg_scale=2.0, sample_logits=False)
    pol = build_raster_policy(name, target, 0.25, every=every, window=2, sinks=2)
    full = generate_compressed(target, torch.tensor([1]), None, sc=sc, every=every)
    for cond in (torch.tensor([1]), torch.tensor([3])):
        ar = generate_compressed(target, cond, pol, sc=sc, every=every)
        # the target as its own (uncompressed) drafter: many drafts accepted, some rejected by the compression
        for drafter in [ModelDrafter(target, name="self")] + drafters:
            for rule in (ExactRule(), LanternRule(table, k=5, delta=0.0)):
                cache = raster_cache(target, pol, every=every)
                toks, st = speculative_generate(target, drafter, rule, cond, sc, gamma=3, cache=cache)
                assert torch.equal(toks, ar.tokens), (name, drafter.name, rule.name)
                assert st.accepted > 0 or drafter.name != "self"
                # the committed history evolves exactly as in the raster decode; drafts add at most γ positions
                assert cache.store.kept_bytes[: len(ar.cache.store.kept_bytes) - 1] == ar.cache.store.kept_bytes[:-1]
                assert cache.peak_attended_bytes() < full.cache.peak_attended_bytes()


def test_sampled_speculative_with_policy_runs_and_reports_bytes(setup):
    target, drafters, lantern, table = setup
    sc = SamplingConfig(cfg_scale=2.0)
    pol = build_raster_policy("snapkv", target, 0.25, window=2)
    full = generate_compressed(target, torch.tensor([0]), None, sc=sc).cache.peak_attended_bytes()
    for drafter in drafters:
        for rule in (ExactRule(), lantern):
            cache = raster_cache(target, pol)
            toks, st = speculative_generate(target, drafter, rule, torch.tensor([0]), sc, gamma=4, cache=cache,
                                            generator=torch.Generator().manual_seed(0))
            assert toks.shape == (1, 16) and 0 <= int(toks.min()) and int(toks.max()) < 24
            assert 0 < cache.peak_attended_bytes() < full
            assert st.drafted <= 4 * st.verify_steps and st.nfe_target >= 1 + 16 // 5


def test_batch_above_one_is_refused(setup):
    target, drafters, _, _ = setup
    with pytest.raises(ValueError, match="batch 1"):
        speculative_generate(target, drafters[0], ExactRule(), torch.tensor([0, 1]), SamplingConfig(cfg_scale=2.0),
                             cache=raster_cache(target, None))


class CodesAsImage(torch.nn.Module):
    """Test tokenizer: codes (B, g*g) -> (B, 3, g, g) in [-1, 1]."""

    def decode_code(self, codes, hw):
        return (codes.float().reshape(codes.shape[0], 1, *hw) / 23 * 2 - 1).expand(-1, 3, -1, -1)


def test_method_with_policy_reports_kv_bytes(setup):
    from accel.speculative.methods import SpeculativeLlamaGen

    target, drafters, lantern, _ = setup
    sc = SamplingConfig(cfg_scale=2.0)
    pol = build_raster_policy("streamingllm", target, 0.25, sinks=2)
    m = SpeculativeLlamaGen("lantern+streamingllm", target, drafters[1], lantern, CodesAsImage(), sc, gamma=3,
                            policy=pol)
    s = m.generate(torch.tensor([3]), generator=torch.Generator().manual_seed(0))
    full = generate_compressed(target, torch.tensor([3]), None, sc=sc).cache.peak_attended_bytes()
    assert s.images.shape == (1, 3, 4, 4) and 0 < s.stats["kv_bytes"] < full
    with pytest.raises(ValueError, match="chain"):
        SpeculativeLlamaGen("x", target, drafters[1], lantern, CodesAsImage(), sc, tree=object(), policy=pol)


def test_sampled_speculative_with_policy_follows_the_compressed_target_joint():
    """Exact rule + sliding window: the sequences follow the joint of the target whose attention hides the evicted
    positions (what raster decoding with the policy computes; tests/test_cache_llamagen.py), by chi-square."""
    import numpy as np
    import scipy.stats

    target = tiny(0, vocab=6, block=4, scale=0.5)
    drafter = ModelDrafter(tiny(1, dim=32, n_layer=1, vocab=6, block=4, scale=0.5))
    sc = SamplingConfig(cfg_scale=2.0, top_k=4)
    n, N = 3, 600
    # keep 1 position after position 1
    pol = build_raster_policy("sliding", target, 0.34, max_new_tokens=n, every=1, window=1)
    assert pol.budget.compressed_scales == (1,)
    g = torch.Generator().manual_seed(0)
    counts = np.zeros(6 ** n)
    for _ in range(N):
        toks, _ = speculative_generate(target, drafter, ExactRule(), torch.tensor([2]), sc, gamma=2, generator=g,
                                       max_new_tokens=n, cache=raster_cache(target, pol, n, every=1))
        counts[int((toks[0] * 6 ** torch.arange(n)).sum())] += 1
    seqs = torch.cartesian_prod(*[torch.arange(6)] * n)
    lab = torch.tensor([2, 4]).repeat_interleave(len(seqs))  # [cond; null]
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)  # position 2 no longer sees 0
    with torch.no_grad():
        logits = target(torch.cat([seqs, seqs])[:, : n - 1], lab, input_pos=torch.arange(n), mask=mask)
    from accel.speculative.drafters import process

    p = process(logits, torch.arange(n).expand(len(seqs), n), sc).double()
    prob = torch.ones(len(seqs), dtype=torch.float64)
    for i in range(n):
        prob *= p[:, i].gather(1, seqs[:, i: i + 1])[:, 0]
    code = (seqs * 6 ** torch.arange(n)).sum(1).numpy()
    exp, obs = prob.numpy() * N, counts[code]
    keep = exp >= 5
    assert obs[~keep].sum() <= max(25, 3 * exp[~keep].sum())
    assert scipy.stats.chisquare(obs[keep], exp[keep] * obs[keep].sum() / exp[keep].sum()).pvalue > 1e-3
