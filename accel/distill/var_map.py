"""DD1 whole-sequence map for VAR (arXiv 2412.17153, Fig. 6; research/dd_var_scalekv.md §2.1).

Noise tokens ``eps`` (B, L, Cvae) are drawn once, one per output token over all scales. Scale by scale, the
teacher gives each token of scale ``si`` its distribution conditioned on the already-mapped scales ``< si``
(tokens of one scale are conditionally independent, as VAR samples them), exactly as the teacher samples:
linearly ramped CFG ``t = cfg * si / (SN - 1)``, ``logits = (1 + t) l_cond - t l_uncond``, then the
official top-k / top-p masking. Each token is then ``q = Phi(eps; p)``, the per-token flow map of
``accel.distill.flow`` in the space of the raw VQVAE codebook vectors (Cvae dims, what VAR looks up). The
result is a deterministic function of (label, noise): the trajectory X_1 = all noise, X_{s+1} = (scales
< s+1 mapped, noise after) that the DD student learns.

The map drives the teacher through VAR's own scale step (``VAR.begin`` / ``step`` / ``advance``, what
``autoregressive_infer_cfg`` runs), choosing each scale's tokens by the flow map instead of sampling them.
"""
from __future__ import annotations

import torch
from torch import Tensor

from accel.distill.data import NoiseMap, PairSpec
from accel.distill.flow import FlowSolver
from accel.models.var import VAR, mask_top_k_top_p
from accel.models.var_vqvae import VQVAE


def flow_tokens(solver: FlowSolver, eps: Tensor, codes: Tensor, logp: Tensor, max_elems: int = 1 << 24) -> Tensor:
    """``solver.tokens`` over rows ``eps`` (N, d) / ``logp`` (N, V), chunked so that the (rows, V, d)
    distance tensor stays under ``max_elems`` elements (memory only; the result does not depend on it)."""
    N, d = eps.shape
    rows = max(1, max_elems // (codes.shape[0] * d))
    return torch.cat([solver.tokens(eps[i:i + rows], codes, logp[i:i + rows]) for i in range(0, N, rows)])


@torch.no_grad()
def var_noise_map(var: VAR, vae: VQVAE, label_B: Tensor, noise: Tensor, *, cfg: float = 1.5, top_k: int = 0,
                  top_p: float = 0.0, solver: FlowSolver = FlowSolver(), stop: int | None = None) -> Tensor:
    """Token ids (B, L) (scales concatenated in order) that the DD1 map assigns to ``noise`` (B, L, Cvae).

    ``stop`` maps only scales ``< stop`` (returns (B, tokens before ``stop``)); the rest of ``noise`` is
    then unused. ``cfg``/``top_k``/``top_p`` are the teacher's sampling settings; ``cfg = 0`` (a guidance-free teacher such
    as a CCA fine-tune) runs the conditional rows alone, half the teacher work, as ``autoregressive_infer_cfg`` does.
    """
    L, Cvae = var.L, var.Cvae
    if noise.dim() != 3 or noise.shape[1:] != (L, Cvae):
        raise ValueError(f"noise must be (B, {L}, {Cvae}); got {tuple(noise.shape)}")
    var.check_vae(vae)
    st = var.begin(label_B, guided=cfg != 0)  # cfg 0: the conditional rows alone, as the sampler runs them
    if noise.shape[0] != st.B:
        raise ValueError(f"{noise.shape[0]} noise rows for {st.B} labels")
    codes = vae.quantize.embedding.weight.detach()
    stop = len(var.patch_nums) if stop is None else stop
    out = []
    for si in range(stop):
        logp = mask_top_k_top_p(var.step(st, cfg), top_k, top_p).float().log_softmax(-1)  # (B, l, V), -inf masked
        b, l = st.cur_L, logp.shape[1]
        eps = noise[:, b:b + l].reshape(-1, Cvae).to(codes)  # (B*l, Cvae)
        idx = flow_tokens(solver, eps, codes, logp.reshape(-1, logp.shape[-1])).view(st.B, l)
        out.append(idx)
        var.advance(st, vae, idx)
    return torch.cat(out, dim=1)


def var_pair_map(var: VAR, vae: VQVAE, *, cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0,
                 solver: FlowSolver = FlowSolver()) -> NoiseMap:
    """The teacher's noise -> tokens map as ``accel.distill.data.generate_pairs`` takes it."""
    dev = var.pos_1LC.device

    def noise_map(noise: Tensor, labels: Tensor) -> Tensor:
        return var_noise_map(var, vae, labels.to(dev), noise.to(dev), cfg=cfg, top_k=top_k, top_p=top_p,
                             solver=solver).cpu()

    return noise_map


def var_pair_spec(var: VAR, n_pairs: int, shard_size: int, seed: int = 0) -> PairSpec:
    """Pair layout for a VAR teacher: one noise token per output token (L of them), Cvae dims each."""
    return PairSpec(n_pairs=n_pairs, shard_size=shard_size, seq_len=var.L, token_dim=var.Cvae,
                    num_classes=var.num_classes, seed=seed)


def tokens_before(patch_nums, s: int) -> int:
    """Number of tokens in scales ``< s``."""
    if not 0 <= s <= len(patch_nums):
        raise ValueError(f"scale index {s} outside 0..{len(patch_nums)}")
    return sum(pn * pn for pn in patch_nums[:s])


def split_scales(tokens_BL: Tensor, patch_nums) -> list[Tensor]:
    """(B, L) -> per-scale list of (B, pn^2)."""
    return list(tokens_BL.split([pn * pn for pn in patch_nums], dim=1))
