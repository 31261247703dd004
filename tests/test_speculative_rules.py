"""Exact speculative sampling: whole-sequence exactness (chi-square + power check) and greedy identity."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import scipy.stats
import torch

from accel.speculative.rules import ExactRule, exact_residual, normalize_or, verify_chain


class ToyLM:
    """A next-token table over every prefix of length < T (vocab V): the exact joint is a product of lookups."""

    def __init__(self, V: int, T: int, seed: int, sharp: float = 1.0):
        g = torch.Generator().manual_seed(seed)
        self.V, self.T = V, T
        self.offset = [sum(V**i for i in range(l)) for l in range(T + 1)]
        logits = torch.randn(self.offset[T], V, generator=g, dtype=torch.float64) * sharp
        self.table = logits.softmax(-1)

    def dist(self, seq: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """(N, V) next-token distribution given each row's first ``length`` tokens (uniform past T-1)."""
        N = seq.shape[0]
        pw = self.V ** torch.arange(seq.shape[1], dtype=torch.long)
        mask = torch.arange(seq.shape[1])[None] < length[:, None]
        code = (seq * pw * mask).sum(1)
        idx = torch.tensor(self.offset)[length.clamp(max=self.T - 1)] + code
        out = self.table[idx.clamp(max=self.table.shape[0] - 1)].clone()
        out[length >= self.T] = 1.0 / self.V
        return out

    def joint(self) -> np.ndarray:
        """Exact probability of each whole sequence, indexed by sum_t x_t V^t."""
        V, T = self.V, self.T
        seqs = torch.cartesian_prod(*[torch.arange(V)] * T).view(-1, T) if T > 1 else torch.arange(V)[:, None]
        prob = torch.ones(seqs.shape[0], dtype=torch.float64)
        for t in range(T):
            prob *= self.dist(seqs, torch.full((seqs.shape[0],), t)).gather(1, seqs[:, t : t + 1])[:, 0]
        code = (seqs * V ** torch.arange(T)).sum(1)
        out = np.zeros(V**T)
        out[code.numpy()] = prob.numpy()
        return out


def toy_speculative(p_lm, q_lm, rule, n, gamma, greedy, seed):
    """Chain speculative decoding of ``n`` sequences at once; returns (n, T) tokens and mean accepted length."""
    g = torch.Generator().manual_seed(seed)
    T = p_lm.T
    seq = torch.zeros(n, T + gamma + 1, dtype=torch.long)
    c = torch.zeros(n, dtype=torch.long)
    rows = torch.arange(n)
    steps = acc = 0
    while bool((c < T).any()):
        drafts, qs = [], []
        for i in range(gamma):
            qd = q_lm.dist(seq, c + i)
            qs.append(qd)
            xi = qd.argmax(-1) if greedy else torch.multinomial(qd, 1, generator=g)[:, 0]
            drafts.append(xi)
            seq[rows, c + i] = xi
        x = torch.stack(drafts, 1)
        p = torch.stack([p_lm.dist(seq, c + i) for i in range(gamma + 1)], 1)
        v = verify_chain(rule, p, torch.stack(qs, 1), x, greedy=greedy, generator=g)
        seq[rows, c + v.n_accepted] = v.next_token
        live = c < T
        steps += int(live.sum())
        acc += int(v.n_accepted[live].sum())
        c = (c + v.n_accepted + 1).clamp(max=T)
    return seq[:, :T], 1 + acc / steps


def sequence_histogram(seq: torch.Tensor, V: int) -> np.ndarray:
    code = (seq * V ** torch.arange(seq.shape[1])).sum(1)
    return np.bincount(code.numpy(), minlength=V ** seq.shape[1]).astype(float)


def chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    return float(scipy.stats.chisquare(counts, probs * counts.sum()).pvalue)


@dataclass(frozen=True)
class BrokenRule(ExactRule):
    """A classic bug: resample from p instead of the residual max(0, p - q)."""

    name: str = "broken"

    def residual(self, p, q, x):
        return p


P_LM, Q_LM = ToyLM(V=3, T=3, seed=0), ToyLM(V=3, T=3, seed=1, sharp=1.5)
N_SEQ = 6000


@pytest.mark.parametrize("gamma", [1, 3])
def test_exact_rule_matches_target_joint(gamma):
    seq, tau = toy_speculative(P_LM, Q_LM, ExactRule(), N_SEQ, gamma, greedy=False, seed=gamma)
    pv = chi2_pvalue(sequence_histogram(seq, 3), P_LM.joint())
    assert pv > 1e-3, f"exact speculative sampling deviates from p (chi2 p={pv:.2e}, tau={tau:.2f})"
    assert tau > 1.0  # some drafts were accepted, so the test exercised acceptance and residuals


def test_same_test_rejects_a_broken_rule():
    seq, _ = toy_speculative(P_LM, Q_LM, BrokenRule(), N_SEQ, 3, greedy=False, seed=3)
    pv = chi2_pvalue(sequence_histogram(seq, 3), P_LM.joint())
    assert pv < 1e-6, f"power check failed: the broken rule passed (p={pv:.2e})"


def test_draft_equal_target_accepts_everything():
    seq, tau = toy_speculative(P_LM, P_LM, ExactRule(), 500, 3, greedy=False, seed=0)
    assert tau == pytest.approx(4.0, abs=0.6)  # γ+1 per step, except the final truncated step


def test_greedy_speculative_equals_greedy_ar():
    seq, tau = toy_speculative(P_LM, Q_LM, ExactRule(), 8, 3, greedy=True, seed=0)
    ar = torch.zeros(1, P_LM.T, dtype=torch.long)
    for t in range(P_LM.T):
        ar[0, t] = P_LM.dist(ar, torch.tensor([t])).argmax(-1)[0]
    assert torch.equal(seq, ar.expand_as(seq))


def test_residual_and_accept_prob_formulas():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(5, 7, generator=g).softmax(-1)
    q = torch.rand(5, 7, generator=g).softmax(-1)
    x = torch.randint(0, 7, (5,), generator=g)
    r = exact_residual(p, q)
    ref = (p - q).clamp_min(0)
    assert torch.allclose(r, ref / ref.sum(-1, keepdim=True))
    a = ExactRule().accept_prob(p, q, x)
    assert torch.allclose(a, (p.gather(1, x[:, None]) / q.gather(1, x[:, None]))[:, 0].clamp(max=1))
    # single-step output distribution is exactly p: q(y) min(1, p/q) + P(reject) r(y)
    out = torch.minimum(p, q) + (1 - torch.minimum(p, q).sum(-1, keepdim=True)) * r
    assert torch.allclose(out, p, atol=1e-6)
    # p == q: zero residual mass falls back to p instead of NaN
    assert torch.allclose(exact_residual(p, p), p)
    assert torch.equal(normalize_or(torch.zeros(1, 3), torch.ones(1, 3)), torch.ones(1, 3))


def test_verify_chain_shape_errors():
    p = torch.rand(2, 3, 5).softmax(-1)
    with pytest.raises(ValueError):
        verify_chain(ExactRule(), p, p[:, :2], torch.zeros(2, 3, dtype=torch.long), greedy=False, generator=None)
    with pytest.raises(ValueError):
        verify_chain(ExactRule(), p, None, torch.zeros(2, 2, dtype=torch.long), greedy=False, generator=None)
