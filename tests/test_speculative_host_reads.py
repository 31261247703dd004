"""Host reads of the chain, static-tree and dynamic-tree decode loops (``decoder.py``, ``tree.py``,
``dynamic_tree.py``, through the shared ``decoder.read_round``): at most one per round (issue 18, item 4),
counted at the dispatcher (``_local_scalar_dense`` behind ``bool``/``int``/``item``, ``nonzero`` behind boolean
indexing, ``equal``) and at ``Tensor.tolist``; and the same tokens as before the change for pinned seeds (the
tokens below were produced by the loops with several host reads per round: chain at commit 325705a, static tree
at commit 03d6b11)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from accel.models.llamagen_generate import SamplingConfig
from accel.speculative.decoder import TokenBar, speculative_generate
from accel.speculative.lantern import LanternRule, neighbour_table
from accel.speculative.lantern_deterministic import DeterministicLanternRule
from accel.speculative.rules import ExactRule

sys.path.insert(0, str(Path(__file__).parent))
from test_speculative_decoder import _drafters, tiny  # noqa: E402

READS = {"_local_scalar_dense", "nonzero", "equal", "masked_select", "is_nonzero"}


class HostReads(TorchDispatchMode):
    """Counts the operators that copy a device value to the host (see module doc)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _rule(kind, target):
    table = neighbour_table(target.tok_embeddings.weight, 8)
    return {"exact": ExactRule(), "lantern": LanternRule(table, k=7, delta=0.2),
            "det": DeterministicLanternRule(table, k=7, delta=0.2)}[kind]


def _setup(kind, which, greedy=False, gamma=3, seed=7):
    """The call, built outside it (models, neighbour table, rule); batch 5, CFG, top-k."""
    target = tiny(0, scale=0.6)
    drafter, rule = _drafters(target)[which], _rule(kind, target)
    sc = SamplingConfig(cfg_scale=2.0, top_k=12, sample_logits=not greedy)
    cond = torch.tensor([0, 1, 2, 3, 1])
    return lambda: speculative_generate(target, drafter, rule, cond, sc, gamma=gamma,
                                        generator=torch.Generator().manual_seed(seed))


def _run(kind, which, greedy=False):
    return _setup(kind, which, greedy)()


CASES = [("exact", 0, False), ("exact", 1, False), ("lantern", 0, False), ("lantern", 1, False), ("det", 1, False),
         ("det", 0, False), ("exact", 1, True), ("lantern", 1, True)]

PINNED = {  # (tokens, accepted, nfe_target) before the change
    ("exact", 0, False): ([[9, 14, 12, 5, 15, 14, 5, 8, 9, 5, 7, 8, 15, 8, 14, 8], [15, 15, 15, 15, 15, 8, 4, 15, 9, 8, 15, 2, 5, 11, 5, 6], [15, 9, 15, 15, 9, 7, 5, 8, 5, 5, 12, 2, 5, 2, 7, 0], [15, 7, 13, 8, 14, 2, 15, 10, 13, 5, 7, 5, 14, 11, 5, 6], [15, 15, 15, 15, 15, 11, 11, 15, 4, 9, 4, 4, 3, 15, 15, 15]], 25, 14),
    ("exact", 1, False): ([[9, 13, 7, 5, 5, 5, 5, 11, 7, 13, 5, 7, 1, 10, 5, 7], [15, 15, 15, 15, 15, 4, 15, 4, 15, 2, 11, 15, 15, 11, 15, 11], [15, 9, 15, 15, 15, 4, 15, 7, 7, 3, 9, 13, 13, 7, 14, 8], [15, 6, 15, 4, 11, 11, 12, 15, 15, 5, 13, 15, 11, 14, 2, 10], [15, 15, 15, 15, 15, 8, 11, 15, 4, 3, 4, 15, 15, 15, 11, 15]], 10, 16),
    ("lantern", 0, False): ([[9, 14, 12, 5, 15, 14, 5, 8, 7, 1, 10, 2, 5, 15, 7, 13], [15, 15, 15, 15, 12, 4, 9, 2, 0, 4, 11, 4, 15, 11, 3, 8], [15, 9, 5, 1, 4, 4, 7, 14, 12, 11, 7, 13, 2, 10, 6, 11], [15, 7, 13, 15, 11, 9, 2, 11, 7, 2, 15, 14, 10, 13, 5, 12], [15, 12, 7, 8, 13, 3, 6, 8, 8, 2, 2, 5, 12, 12, 11, 12]], 47, 9),
    ("lantern", 1, False): ([[9, 13, 7, 15, 7, 4, 9, 5, 11, 10, 5, 9, 8, 15, 14, 5], [15, 15, 15, 15, 15, 5, 2, 15, 5, 13, 15, 4, 7, 7, 8, 9], [15, 9, 15, 15, 15, 4, 15, 7, 7, 3, 9, 13, 13, 7, 13, 0], [15, 6, 15, 4, 11, 10, 13, 15, 15, 11, 14, 10, 5, 14, 15, 11], [15, 5, 2, 9, 11, 2, 5, 4, 9, 6, 15, 1, 4, 5, 9, 11]], 23, 13),
    ("det", 1, False): ([[9, 13, 7, 12, 13, 5, 5, 6, 12, 8, 14, 12, 11, 7, 11, 10], [15, 15, 15, 15, 15, 2, 15, 11, 11, 15, 15, 11, 11, 4, 4, 15], [15, 9, 15, 15, 15, 11, 7, 12, 8, 10, 14, 0, 10, 8, 12, 2], [15, 7, 13, 6, 6, 7, 2, 14, 7, 0, 0, 0, 6, 2, 7, 4], [15, 3, 8, 15, 3, 3, 5, 4, 0, 9, 5, 3, 15, 10, 7, 2]], 13, 15),
    ("det", 0, False): ([[9, 13, 7, 12, 6, 7, 8, 7, 6, 9, 15, 8, 11, 13, 15, 8], [15, 15, 15, 15, 11, 11, 11, 11, 11, 11, 15, 11, 4, 8, 15, 2], [15, 9, 15, 15, 15, 4, 15, 15, 15, 4, 2, 9, 5, 10, 8, 9], [15, 7, 13, 13, 8, 4, 15, 11, 11, 7, 11, 2, 8, 7, 15, 0], [15, 15, 15, 15, 15, 11, 4, 15, 11, 15, 4, 11, 15, 9, 15, 11]], 11, 15),
    ("exact", 1, True): ([[9, 2, 7, 5, 7, 2, 14, 5, 12, 5, 2, 5, 10, 5, 5, 5], [15, 15, 15, 15, 15, 11, 11, 11, 11, 11, 11, 11, 11, 11, 4, 15], [9, 7, 5, 7, 5, 12, 5, 10, 7, 5, 12, 13, 1, 5, 5, 7], [15, 0, 5, 0, 0, 8, 8, 5, 1, 0, 12, 5, 13, 0, 7, 1], [15, 15, 15, 15, 15, 11, 11, 11, 11, 11, 11, 11, 11, 11, 4, 15]], 5, 16),
    ("lantern", 1, True): ([[9, 2, 7, 5, 7, 2, 14, 5, 12, 5, 2, 5, 10, 5, 5, 5], [15, 15, 15, 15, 15, 11, 11, 11, 11, 11, 11, 11, 11, 11, 4, 15], [9, 7, 5, 7, 5, 12, 5, 10, 7, 5, 13, 2, 5, 7, 0, 5], [15, 0, 5, 0, 0, 8, 8, 5, 1, 0, 12, 5, 13, 14, 7, 1], [15, 15, 15, 15, 15, 11, 11, 11, 11, 11, 11, 11, 11, 11, 4, 15]], 6, 16),
}


@pytest.mark.parametrize("kind,which,greedy", CASES)
def test_same_tokens_as_before_for_pinned_seeds(kind, which, greedy):
    toks, st = _run(kind, which, greedy)
    want, accepted, nfe = PINNED[(kind, which, greedy)]
    assert toks.tolist() == want
    assert (st.accepted, st.nfe_target) == (accepted, nfe)


@pytest.mark.parametrize("kind,which,greedy", [("exact", 0, False), ("lantern", 1, False), ("det", 1, False),
                                               ("exact", 1, True)])
def test_one_host_read_per_round(kind, which, greedy, monkeypatch):
    lists = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: lists.append(t.numel()) or tolist(t))
    call = _setup(kind, which, greedy)
    with HostReads() as reads:
        _, st = call()
    rounds = st.nfe_target - 1
    # one read per round and one for the loop's exit test, the counters once at the end, and the input checks'
    # two reads of the labels (check_labels: min and max) before any work
    assert reads.count + len(lists) <= rounds + 1 + 1 + 2, (reads.count, len(lists), rounds)
    assert rounds >= 4  # several rounds: the bound is not met trivially


def test_non_finite_target_is_still_reported(monkeypatch):
    """The NaN check moved into the round's one read: a non-finite target still raises NonFiniteError."""
    from accel.validate import NonFiniteError

    target = tiny(0, scale=0.6)
    drafter = _drafters(target)[1]
    with torch.no_grad():
        target.output.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        speculative_generate(target, drafter, ExactRule(), torch.tensor([0, 1]), SamplingConfig(cfg_scale=2.0),
                             gamma=3, generator=torch.Generator().manual_seed(0))


def _dyn_setup(delta, seed=3):
    from test_dynamic_tree import _eagle

    from accel.speculative.dynamic_tree import DynamicTree, dynamic_tree_generate

    target = tiny(0, scale=0.6)
    drafter = _eagle(target, scale=0.05)
    rule = DeterministicLanternRule(neighbour_table(target.tok_embeddings.weight, 15), k=15, delta=delta)
    cond, sc = torch.tensor([0, 1, 2, 3, 1]), SamplingConfig(cfg_scale=2.0)
    return lambda: dynamic_tree_generate(target, drafter, rule, cond, sc, spec=DynamicTree(6, 3, 3),
                                         generator=torch.Generator().manual_seed(seed))


DYN_PINNED = {  # δ: (tokens, accepted, nfe_target) of the dynamic tree at commit 3f28c4c
    0.0: ([[0, 5, 14, 4, 12, 15, 6, 14, 8, 5, 5, 12, 11, 8, 10, 14], [15, 15, 15, 15, 15, 15, 4, 4, 15, 12, 4, 15, 11, 15, 15, 15], [9, 2, 10, 7, 5, 14, 10, 8, 11, 7, 7, 8, 2, 5, 7, 8], [0, 14, 15, 3, 12, 0, 12, 8, 6, 1, 0, 15, 0, 15, 5, 4], [15, 15, 11, 8, 15, 15, 4, 15, 3, 15, 15, 15, 15, 13, 15, 2]], 11, 15),
    0.3: ([[0, 8, 12, 15, 5, 13, 10, 3, 13, 14, 8, 15, 11, 5, 5, 5], [15, 5, 13, 7, 4, 11, 15, 11, 3, 10, 5, 7, 1, 10, 5, 15], [9, 2, 10, 7, 5, 14, 8, 8, 11, 7, 7, 11, 4, 8, 6, 14], [0, 14, 15, 5, 13, 8, 11, 11, 5, 7, 8, 5, 5, 7, 1, 5], [15, 15, 15, 15, 11, 11, 11, 13, 2, 8, 14, 13, 3, 11, 13, 15]], 25, 12),
}


@pytest.mark.parametrize("delta", [0.0, 0.3])
def test_dynamic_tree_same_tokens_and_one_read_per_round(delta, monkeypatch):
    toks, st = _dyn_setup(delta)()
    want, accepted, nfe = DYN_PINNED[delta]
    assert toks.tolist() == want and (st.accepted, st.nfe_target) == (accepted, nfe)
    lists = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: lists.append(t.numel()) or tolist(t))
    call = _dyn_setup(delta)
    with HostReads() as reads:
        _, st = call()
    rounds = st.nfe_target - 1
    # per round one read, the exit test, the counters and the path ranks at the end, the label checks
    assert reads.count + len(lists) <= rounds + 1 + 2 + 2, (reads.count, len(lists), rounds)


def _tree_setup(kind, which, greedy, tree, seed=11):
    from accel.speculative.tree import TREES, tree_generate

    target = tiny(0, scale=0.6)
    drafter, rule = _drafters(target)[which], _rule(kind, target)
    sc = SamplingConfig(cfg_scale=2.0, top_k=12, sample_logits=not greedy)
    return lambda: tree_generate(target, drafter, rule, torch.tensor([0, 1, 2, 3, 1]), sc, tree=TREES[tree],
                                 generator=torch.Generator().manual_seed(seed))


TREE_PINNED = {  # (kind, drafter, greedy, tree): (tokens, accepted, nfe_target) of the static tree at commit 03d6b11
    ('exact', 0, False, 'b2-2-1-1'): ([[0, 14, 15, 2, 0, 14, 15, 5, 11, 14, 13, 4, 3, 15, 5, 2], [15, 15, 15, 15, 15, 11, 11, 11, 11, 11, 11, 15, 4, 15, 15, 15], [15, 9, 15, 15, 15, 15, 9, 5, 9, 15, 11, 9, 5, 7, 8, 7], [0, 5, 6, 15, 15, 15, 4, 15, 1, 15, 4, 12, 0, 12, 15, 14], [15, 15, 15, 15, 15, 15, 11, 4, 15, 11, 15, 4, 15, 11, 15, 11]], 28, 12),
    ('exact', 1, False, 'b3-1-1-1'): ([[0, 14, 15, 8, 8, 2, 7, 11, 5, 7, 11, 5, 5, 7, 9, 5], [15, 15, 15, 11, 11, 11, 11, 11, 11, 11, 2, 7, 0, 5, 2, 5], [15, 9, 11, 11, 2, 0, 5, 5, 0, 5, 7, 8, 7, 8, 7, 12], [0, 14, 15, 1, 0, 13, 5, 6, 12, 5, 8, 9, 15, 15, 15, 0], [15, 15, 15, 15, 15, 4, 15, 4, 15, 15, 15, 9, 11, 15, 15, 15]], 16, 16),
    ('lantern', 0, False, 'b2-2-1-1'): ([[0, 15, 0, 14, 13, 11, 5, 5, 14, 13, 13, 9, 10, 1, 0, 2], [15, 9, 14, 0, 14, 4, 15, 8, 12, 5, 15, 4, 7, 12, 14, 11], [15, 4, 0, 4, 4, 4, 14, 5, 15, 9, 6, 2, 3, 10, 8, 9], [0, 5, 6, 15, 11, 5, 7, 14, 1, 14, 13, 2, 9, 12, 12, 14], [15, 10, 2, 3, 5, 15, 5, 2, 5, 5, 2, 6, 6, 5, 14, 7]], 55, 7),
    ('lantern', 1, False, 'b4-2-1'): ([[0, 14, 4, 15, 7, 11, 5, 9, 14, 15, 4, 0, 5, 13, 12, 15], [15, 3, 13, 9, 15, 7, 4, 15, 1, 15, 2, 7, 4, 6, 6, 8], [15, 9, 13, 15, 15, 4, 15, 15, 15, 5, 15, 4, 12, 7, 11, 9], [0, 5, 13, 8, 3, 15, 1, 0, 7, 2, 8, 5, 6, 10, 15, 15], [15, 5, 0, 11, 11, 7, 13, 3, 12, 15, 15, 11, 5, 11, 15, 5]], 45, 9),
    ('det', 1, False, 'b3-1-1-1'): ([[0, 10, 14, 15, 15, 1, 14, 9, 15, 7, 7, 8, 15, 7, 12, 11], [15, 15, 15, 15, 15, 11, 15, 4, 15, 15, 4, 15, 15, 9, 15, 3], [15, 14, 15, 1, 7, 0, 5, 1, 10, 8, 14, 2, 11, 14, 8, 4], [0, 5, 6, 10, 6, 6, 10, 15, 15, 15, 5, 7, 2, 11, 12, 15], [15, 3, 11, 3, 8, 3, 8, 4, 15, 15, 11, 11, 11, 13, 2, 1]], 21, 16),
    ('det', 0, False, 'b4-2-1'): ([[0, 8, 12, 5, 8, 5, 5, 1, 1, 10, 5, 7, 8, 13, 5, 5], [15, 11, 11, 11, 11, 4, 15, 4, 15, 11, 15, 8, 15, 11, 15, 15], [15, 9, 15, 4, 14, 15, 4, 2, 3, 9, 7, 3, 15, 8, 9, 5], [0, 15, 15, 5, 5, 12, 11, 5, 5, 7, 8, 7, 13, 5, 7, 2], [15, 15, 15, 15, 15, 2, 15, 11, 4, 15, 8, 15, 15, 15, 15, 8]], 23, 13),
    ('exact', 1, True, 'b2-2-1-1'): ([[9, 2, 7, 5, 7, 2, 14, 5, 12, 5, 2, 5, 10, 5, 5, 5], [15, 15, 15, 15, 15, 11, 11, 11, 11, 11, 11, 11, 11, 11, 4, 15], [9, 7, 5, 7, 5, 12, 5, 10, 7, 5, 12, 13, 1, 5, 5, 7], [15, 0, 5, 0, 0, 8, 8, 5, 1, 0, 12, 5, 13, 0, 7, 1], [15, 15, 15, 15, 15, 11, 11, 11, 11, 11, 11, 11, 11, 11, 4, 15]], 10, 15),
    ('lantern', 0, True, 'b4-2-1'): ([[9, 2, 7, 5, 7, 2, 6, 7, 0, 7, 5, 10, 7, 7, 5, 10], [15, 15, 15, 15, 15, 11, 11, 11, 11, 11, 11, 11, 11, 4, 9, 11], [9, 7, 5, 7, 5, 13, 7, 1, 4, 15, 11, 5, 5, 7, 12, 5], [15, 0, 5, 0, 0, 8, 8, 5, 1, 0, 12, 5, 13, 15, 8, 7], [15, 15, 15, 15, 15, 11, 11, 11, 11, 11, 11, 11, 11, 4, 9, 11]], 18, 14),
}


@pytest.mark.parametrize("case", sorted(TREE_PINNED))
def test_static_tree_same_tokens_as_before(case):
    """Sampled (exact, LANTERN++), deterministic and greedy static trees: the round's uniforms drawn in one call
    (``verify_tree``) give the tokens of drawing them as the walk needed them."""
    toks, st = _tree_setup(*case)()
    want, accepted, nfe = TREE_PINNED[case]
    assert toks.tolist() == want and (st.accepted, st.nfe_target) == (accepted, nfe)


@pytest.mark.parametrize("case", [("exact", 0, False, "b2-2-1-1"), ("lantern", 1, False, "b4-2-1"),
                                  ("det", 1, False, "b3-1-1-1"), ("exact", 1, True, "b2-2-1-1")])
def test_static_tree_one_host_read_per_round(case, monkeypatch):
    lists = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: lists.append(t.numel()) or tolist(t))
    call = _tree_setup(*case)
    with HostReads() as reads:
        _, st = call()
    rounds = st.nfe_target - 1
    # per round one read, the exit test, the counters at the end, the label checks
    assert reads.count + len(lists) <= rounds + 1 + 1 + 2, (reads.count, len(lists), rounds)
    assert rounds >= 4


@pytest.mark.parametrize("loop", ["tree", "dynamic"])
def test_non_finite_target_is_still_reported_by_the_tree_loops(loop):
    from test_dynamic_tree import _eagle

    from accel.speculative.dynamic_tree import DynamicTree, dynamic_tree_generate
    from accel.speculative.tree import TREES, tree_generate
    from accel.validate import NonFiniteError

    target = tiny(0, scale=0.6)
    with torch.no_grad():
        target.output.weight[0, 0] = float("nan")
    cond, sc, g = torch.tensor([0, 1]), SamplingConfig(cfg_scale=2.0), torch.Generator().manual_seed(0)
    with pytest.raises(NonFiniteError):
        if loop == "tree":
            tree_generate(target, _drafters(target)[1], ExactRule(), cond, sc, tree=TREES["b2-2-1-1"], generator=g)
        else:
            rule = DeterministicLanternRule(neighbour_table(target.tok_embeddings.weight, 15), k=15, delta=0.2)
            dynamic_tree_generate(target, _eagle(target), rule, cond, sc, spec=DynamicTree(6, 3, 3), generator=g)


def test_token_bar_counts_committed_tokens_capped_at_n():
    """The loops' progress bar: committed tokens per row from the round's host copy of c, a row past n counted as
    n, the loop's first committed tokens given as ``done``; disabled, it counts nothing."""
    bar = TokenBar(2, 5, "t", True, done=2)
    bar.update([3, 7])
    assert bar.bar.n == 8 and bar.done == 8
    bar.update([5, 9])
    assert bar.bar.n == 10 == bar.bar.total
    bar.close()
    off = TokenBar(2, 5, "t", False)
    off.update([3, 3])
    assert off.done == 0
