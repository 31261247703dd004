"""Few-step VAR baselines that DD1 (arXiv 2412.17153, Table 1) shows failing: they sample tokens of several
scales in parallel, each from its own per-token distribution, which drops the dependencies between them.

The paper's exact constructions are not in any readable source (research/dd_var_scalekv.md §2.4); accel's:

* ``onestep`` (the paper's "onestep*", FID 157.5 on VAR-d16): every token of every scale sampled
  independently, in one step, from its class-conditional *marginal* p(x_i | class), estimated by counting
  teacher samples (e.g. the DD pair set, whose tokens are teacher samples). Exact marginals are the best
  any per-token parallel sampler can have, so this is the ideal form of the baseline; it costs no network
  pass at all.
* ``skip-k`` (the paper's VAR-skip-1/-2: 9/8 steps for 10 scales): the last k scales get no teacher step
  of their own; SN - k teacher passes. Two readings of where their tokens come from:
  ``source="teacher"`` (default): the teacher samples scales 0..SN-k-2 one per step as usual; its last
  pass covers the remaining k + 1 scales at once (KV-cached, block-causal mask), each scale's input built
  from the f_hat of the scales sampled so far (the skipped scales contribute nothing), each token from its
  guided, masked teacher distribution. ``source="marginals"``: the teacher samples scales 0..SN-k-1, the
  last k scales are drawn from the class-conditional marginals (as ``onestep``), ignoring the prefix.
  ``skip-0`` is the teacher itself (bitwise, same generator).

``teacher_nll`` scores any token set under the teacher (guided, masked distribution per token, as it
samples), so the baselines are measured against the teacher's own samples, not assumed bad.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from accel.distill.var_map import split_scales
from accel.models.var import VAR, mask_top_k_top_p, sample_from_logits
from accel.models.var_vqvae import VQVAE


def token_marginals(tokens: Tensor, labels: Tensor, num_classes: int, V: int, alpha: float = 0.0) -> Tensor:
    """Class-conditional per-position token frequencies (num_classes, L, V) from teacher samples
    ``tokens`` (N, L) with ``labels`` (N,); ``alpha`` adds Laplace pseudo-counts. A class without samples
    is an error (its marginals are unknown)."""
    N, L = tokens.shape
    counts = torch.zeros(num_classes, L, V, dtype=torch.float64)
    flat = (labels.long().view(N, 1) * L + torch.arange(L).view(1, L)) * V + tokens.long()
    counts.view(-1).index_add_(0, flat.view(-1), torch.ones(N * L, dtype=torch.float64))
    per_class = counts[:, 0].sum(-1)
    if (per_class == 0).any():
        raise ValueError(f"no samples for classes {torch.nonzero(per_class == 0).view(-1).tolist()}")
    counts += alpha
    return (counts / counts.sum(-1, keepdim=True)).float()


def onestep_sample(marginals: Tensor, label_B: Tensor, generator: torch.Generator | None) -> Tensor:
    """Token ids (B, L): each position drawn independently from ``marginals[label]`` (one multinomial)."""
    p = marginals[label_B.cpu().long()]  # (B, L, V)
    B, L, V = p.shape
    return torch.multinomial(p.view(-1, V), 1, replacement=True, generator=generator).view(B, L)


@torch.no_grad()
def skip_sample(var: VAR, vae: VQVAE, label_B: Tensor, k: int, *, generator: torch.Generator | None,
                cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0,
                marginals: Tensor | None = None) -> tuple[Tensor, dict]:
    """Token ids (B, L) of skip-k sampling (module docstring) and ``{"teacher_passes": SN - k}``;
    ``marginals`` (num_classes, L, V) selects ``source="marginals"``."""
    var.check_vae(vae)
    st, SN, pns = var.begin(label_B), len(var.patch_nums), var.patch_nums
    if not 0 <= k < SN:
        raise ValueError(f"k must lie in 0..{SN - 1} for {SN} scales; got {k}")
    s0 = SN - 1 - k
    out = []
    for _ in range(s0 + (marginals is not None)):
        idx = sample_from_logits(mask_top_k_top_p(var.step(st, cfg), top_k, top_p), generator)
        out.append(idx)
        var.advance(st, vae, idx)
    if marginals is not None:
        if marginals.shape[1:] != (var.L, var.V):
            raise ValueError(f"marginals must be (num_classes, {var.L}, {var.V}); got {tuple(marginals.shape)}")
        if k:
            out.append(onestep_sample(marginals[:, st.cur_L:], label_B, generator).to(st.x_BlC.device))
        return torch.cat(out, 1), {"teacher_passes": st.passes}
    # one step over scales s0..SN-1; scale s0's input is exact, later ones see f_hat of scales < s0 only
    xs, scales = [st.x_BlC], [torch.full((pns[s0] ** 2,), s0)]
    L0 = st.cur_L + pns[s0] ** 2
    for s in range(s0 + 1, SN):
        nxt = F.interpolate(st.f_hat, size=(pns[s], pns[s]), mode="area") if s < SN - 1 else st.f_hat
        nxt = nxt.reshape(st.B, var.Cvae, -1).transpose(1, 2)
        xs.append((var.word_embed(nxt) + st.lvl_pos[:, L0:L0 + pns[s] ** 2]).repeat(2, 1, 1))
        scales.append(torch.full((pns[s] ** 2,), s))
        L0 += pns[s] ** 2
    st.x_BlC, lv = torch.cat(xs, 1), torch.cat(scales).to(st.x_BlC.device)
    hist = st.cur_L
    ok = torch.cat((torch.ones(lv.numel(), hist, dtype=torch.bool, device=lv.device), lv[:, None] >= lv[None]), 1)
    bias = torch.where(ok, 0.0, -torch.inf).view(1, 1, lv.numel(), hist + lv.numel())
    masked = mask_top_k_top_p(var.step(st, cfg, attn_bias=bias, token_scales=lv), top_k, top_p)
    out.append(sample_from_logits(masked, generator))
    return torch.cat(out, 1), {"teacher_passes": st.passes}


def teacher_sample(var: VAR, vae: VQVAE, label_B: Tensor, *, generator: torch.Generator | None, cfg: float = 1.5,
                   top_k: int = 0, top_p: float = 0.0) -> Tensor:
    """The teacher's own samples (B, L), through the same decoder (== ``autoregressive_infer_cfg`` ids)."""
    return skip_sample(var, vae, label_B, 0, generator=generator, cfg=cfg, top_k=top_k, top_p=top_p)[0]


@torch.no_grad()
def teacher_nll(var: VAR, vae: VQVAE, label_B: Tensor, tokens_BL: Tensor, *, cfg: float = 1.5, top_k: int = 0,
                top_p: float = 0.0) -> Tensor:
    """Per-sample negative log-likelihood (B,) in nats/token of ``tokens`` under the teacher's sampling
    distribution (guided + masked per token given the earlier scales); +inf where a token is masked out."""
    var.check_vae(vae)
    st = var.begin(label_B)
    total = torch.zeros(st.B, device=tokens_BL.device)
    for idx in split_scales(tokens_BL, var.patch_nums):
        logp = mask_top_k_top_p(var.step(st, cfg), top_k, top_p).float().log_softmax(-1)
        total -= logp.gather(-1, idx.unsqueeze(-1)).squeeze(-1).sum(-1)
        var.advance(st, vae, idx)
    return total / tokens_BL.shape[1]
