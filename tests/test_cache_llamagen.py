"""Cache policies inside LlamaGen's raster decode: identity == plain generate() (bitwise), exact budgets, kept
windows, compaction of post-RoPE keys == masked full attention, exact bytes, refusals."""
from dataclasses import dataclass

import pytest
import torch

from accel.models.kv_cache import KeepAll
from accel.cache.budgets import history_lengths
from accel.cache.llamagen import (RASTER_POLICIES, RasterKVCache, build_raster_policy, chunk_maps,
                                  generate_compressed)
from accel.models.llamagen import GPTConfig, KVCache, Transformer
from accel.models.llamagen_generate import SamplingConfig, generate

CFG = GPTConfig(dim=64, n_layer=3, n_head=4, multiple_of=16, vocab_size=37, block_size=16, num_classes=7)
SC = SamplingConfig(cfg_scale=2.0)
COND = torch.tensor([0, 3, 5])
WIN, SINKS = 2, 2
LOSSY = [p for p in RASTER_POLICIES if p != "full"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)  # init only; decoding uses explicit generators
    m = Transformer(CFG)
    for p in m.parameters():  # large weights so attention, hence the cache, really shapes the tokens
        torch.nn.init.normal_(p, std=0.3)
    return m.eval()


def decode(model, policy, every=None, seed=1, trace=None):
    return generate_compressed(model, COND, policy, sc=SC, every=every, generator=torch.Generator().manual_seed(seed),
                               trace=trace)


def token_bytes(model, rows=2 * len(COND)):
    """k + v bytes of one cached position in one layer (CFG doubles the rows)."""
    return 2 * rows * CFG.n_head * CFG.head_dim * model.tok_embeddings.weight.element_size()


@dataclass(frozen=True)
class Recorder:
    """Wraps a policy and records every compress call (inputs and outputs)."""

    inner: object
    calls: list

    @property
    def budget(self):
        return self.inner.budget

    def compress(self, layer, scale, k, v, q):
        k2, v2 = self.inner.compress(layer, scale, k, v, q)
        self.calls.append((layer, scale, k, k2, q, v))
        return k2, v2


@pytest.mark.parametrize("every", [None, 1, 3])
def test_identity_is_bitwise_plain_generate(model, every):
    t_ref, t_new, t_keep = {}, {}, {}
    ref = generate(model, COND, sc=SC, generator=torch.Generator().manual_seed(1), trace=t_ref)
    out = decode(model, None, every, trace=t_new)
    keep = decode(model, KeepAll(), every, trace=t_keep)
    assert torch.equal(out.tokens, ref) and torch.equal(keep.tokens, ref)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(t_ref["raw"], t_new["raw"], t_keep["raw"]))


@pytest.mark.parametrize("name", LOSSY)
def test_full_budget_is_identity(model, name):
    ref = generate(model, COND, sc=SC, generator=torch.Generator().manual_seed(1))
    pol = build_raster_policy(name, model, 1.0, window=WIN, sinks=SINKS)
    assert pol.budget.compressed_scales == ()
    assert torch.equal(decode(model, pol).tokens, ref)


@pytest.mark.parametrize("every", [1, 4])
@pytest.mark.parametrize("fraction", [0.25, 0.5])
@pytest.mark.parametrize("name", LOSSY)
def test_every_policy_keeps_exactly_its_budget(model, name, fraction, every):
    pol = build_raster_policy(name, model, fraction, every=every, window=WIN, sinks=SINKS)
    b = int(fraction * CFG.block_size)
    S = pol.budget.compressed_scales
    assert S and all(sum(pol.budget.tokens[j]) == CFG.n_layer * b for j in S)  # same total as uniform (pyramid)
    out = decode(model, pol, every)
    tb = token_bytes(model)
    kept = [0] * CFG.n_layer
    for j, (_, n_j) in enumerate(pol.budget.maps):
        for l in range(CFG.n_layer):
            att = kept[l] + n_j
            assert out.cache.store.attended_bytes[j][l] == att * tb
            kept[l] = att if j not in S else pol.budget.keep(l, j)
            assert out.cache.store.kept_bytes[j][l] == kept[l] * tb, (j, l)
    assert any(not torch.equal(decode(model, pol, every, seed=s).tokens,
                               generate(model, COND, sc=SC, generator=torch.Generator().manual_seed(s)))
               for s in (1, 2, 3))  # the policy really changes the decode


def rows_of(k_out, k_in):
    """For every kept key, its position in the input history (B, H, L'), via exact equality of vectors."""
    eq = (k_out[:, :, :, None, :] == k_in[:, :, None, :, :]).all(-1)  # (B, H, L', L)
    assert (eq.sum(-1) == 1).all()
    return eq.float().argmax(-1)


@pytest.mark.parametrize("every", [1, 4])
@pytest.mark.parametrize("name", LOSSY)
def test_window_and_recent_tokens_are_kept(model, name, every):
    rec = Recorder(build_raster_policy(name, model, 0.5, every=every, window=WIN, sinks=SINKS), [])
    decode(model, rec, every)
    compressed = [c for c in rec.calls if c[3].shape[2] < c[2].shape[2]]
    assert compressed
    for layer, j, k_in, k_out, q, _ in compressed:
        L, b, n = k_in.shape[2], k_out.shape[2], q.shape[2]
        pos = rows_of(k_out, k_in)
        assert (pos.diff(dim=-1) > 0).all()  # time order preserved
        if name == "sliding":
            want = torch.arange(L - b, L)
        elif name == "streamingllm":
            want = torch.cat((torch.arange(SINKS), torch.arange(L - b + SINKS, L)))
        else:  # SnapKV / PyramidKV: the observation window (the chunk's last queries' own keys) is kept
            w = min(WIN, n)
            assert (pos[..., -w:] == torch.arange(L - w, L)).all()
            continue
        assert (pos == want).all()


def test_policies_see_the_attentions_exact_queries(model):
    """softmax(q k^T) v with the q handed to the policy reproduces the attention output (the input of wo):
    q carries the right RoPE position and SDPA's scale."""
    rec, seen = Recorder(build_raster_policy("snapkv", model, 0.5, every=1, window=WIN), []), []
    hooks = [blk.attention.wo.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0])) for blk in model.layers]
    try:
        decode(model, rec, every=1)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == len(rec.calls) == CFG.n_layer * CFG.block_size
    for (_, _, k, _, q, v), y in zip(rec.calls, seen):
        want = ((q @ k.transpose(-1, -2)).softmax(-1) @ v).transpose(1, 2).flatten(2)  # (B, 1, C)
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("every", [1, 4])
@pytest.mark.parametrize("name", ["sliding", "streamingllm"])
def test_compacted_post_rope_keys_equal_masked_full_attention(model, name, every):
    """Gathering rotated keys is exact: every step's logits equal a teacher-forced forward of the full model whose
    mask hides exactly the evicted positions (same positions in every layer for these two policies)."""
    pol = build_raster_policy(name, model, 0.5, every=every, window=WIN, sinks=SINKS)
    trace = {}
    out = decode(model, pol, every, trace=trace)
    n = CFG.block_size  # positions 0 .. n-1: class token, tokens 0 .. n-2
    mask = torch.zeros(n, n, dtype=torch.bool)
    kept, s = [], 0
    for j, (_, n_j) in enumerate(pol.budget.maps):
        for i in range(n_j):
            mask[s + i, kept + list(range(s, s + i + 1))] = True
        hist, s = kept + list(range(s, s + n_j)), s + n_j
        b = pol.budget.keep(0, j)
        kept = hist if b is None else (hist[-b:] if name == "sliding" else hist[:SINKS] + hist[len(hist) - b + SINKS:])
    assert not mask.tril().all()  # something was evicted
    labels = torch.cat([COND, torch.full_like(COND, CFG.null_class)])
    idx = torch.cat([out.tokens, out.tokens])[:, :-1]
    full = model(idx, labels, input_pos=torch.arange(n), mask=mask)  # (2B, n, V)
    torch.testing.assert_close(torch.stack(trace["raw"], dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bytes_held_are_reported_exactly(model, dtype):
    m = Transformer(CFG).to(dtype)
    m.load_state_dict(model.state_dict())
    m.eval()
    n, tb = CFG.block_size, token_bytes(m)
    full = decode(m, None).cache
    assert full.store.bytes() == CFG.n_layer * n * tb == full.store.peak_attended_bytes()
    static = KVCache(CFG.n_layer, 2 * len(COND), CFG.n_head, n + 1, CFG.head_dim, dtype=dtype)  # generate()'s
    assert static.nbytes() == CFG.n_layer * static.max_len * tb
    pol = build_raster_policy("snapkv", m, 0.25, every=4, window=WIN)  # b = 4, chunks of 4
    c = decode(m, pol, every=4).cache
    assert [sum(r) // (CFG.n_layer * tb) for r in c.store.kept_bytes] == [4, 4, 4, 8]
    assert [sum(r) // (CFG.n_layer * tb) for r in c.store.attended_bytes] == [4, 8, 8, 8]
    assert c.store.bytes() == sum(t.numel() * t.element_size() for t in c.store.k + c.store.v) == 8 * CFG.n_layer * tb
    assert c.store.peak_attended_bytes() == 8 * CFG.n_layer * tb


def test_refusals(model):
    with pytest.raises(ValueError, match="scale"):
        build_raster_policy("scalekv", model, 0.25)
    with pytest.raises(KeyError, match="sliding"):
        build_raster_policy("h2o", model, 0.25)
    with pytest.raises(ValueError, match="below"):
        build_raster_policy("snapkv", model, 0.1, window=4)  # 1 position < window
    pol = build_raster_policy("sliding", model, 0.5)
    with pytest.raises(ValueError, match="chunks"):
        decode(model, pol, every=2)  # budget made for rows of 4
    gqa = Transformer(GPTConfig(dim=64, n_layer=1, n_head=4, n_kv_head=2, multiple_of=16, vocab_size=37,
                                block_size=16, num_classes=7))
    with pytest.raises(ValueError, match="GQA"):
        RasterKVCache(gqa, chunk_maps(16, 4), None)
    cache = RasterKVCache(model, chunk_maps(16, 1), build_raster_policy("sliding", model, 0.5, every=1))
    with pytest.raises(ValueError, match="contiguous"):  # a gap in the raster positions
        model(None, COND, input_pos=torch.arange(1, 2), cache=cache)
    model(None, COND, input_pos=torch.arange(1), cache=cache)
    assert cache.block_limit(1) == 8  # the first compression is after position 8 (history 9 > budget 8)
    with pytest.raises(ValueError, match="block_limit"):  # position 9 must see the history compressed after 8
        model(torch.zeros(3, 9, dtype=torch.long), input_pos=torch.arange(1, 10), cache=cache)


def test_chunk_maps_cover_all_steps():
    for n, e in [(16, 4), (64, 8), (15, 4), (1, 8)]:
        maps = chunk_maps(n, e)
        assert history_lengths(maps)[-1] == n and all(w <= e and h == 1 for h, w in maps)


class CodesAsImage(torch.nn.Module):
    """Test tokenizer: codes (B, g*g) -> (B, 3, g, g) in [-1, 1]."""

    def decode_code(self, codes, hw):
        x = codes.float().reshape(codes.shape[0], 1, *hw) / (CFG.vocab_size - 1) * 2 - 1
        return x.expand(-1, 3, -1, -1)


def test_method_reports_tokens_images_and_exact_bytes(model):
    from accel.cache.llamagen import CompressedLlamaGen

    pol = build_raster_policy("pyramidkv", model, 0.5, window=WIN)
    s = CompressedLlamaGen(model, CodesAsImage(), pol, SC).generate(COND, generator=torch.Generator().manual_seed(1))
    out = decode(model, pol)
    assert torch.equal(s.stats["tokens"], out.tokens) and s.images.shape == (3, 3, 4, 4)
    torch.testing.assert_close(s.images[:, 0].flatten(1), out.tokens.float() / (CFG.vocab_size - 1))
    st = out.cache.store
    assert s.stats["kv_bytes"] == st.peak_attended_bytes() and s.stats["kv_kept_table"] == st.kept_bytes
    assert s.stats["kv_kept_bytes"][2] == CFG.n_layer * 8 * token_bytes(model)  # b = 8 after the 3rd row chunk
