"""DD1 whole-sequence map for VAR (arXiv 2412.17153, Fig. 6; research/dd_var_scalekv.md §2.1).

Noise tokens ``eps`` (B, L, Cvae) are drawn once, one per output token over all scales. Scale by scale, the
teacher gives each token of scale ``si`` its distribution conditioned on the already-mapped scales ``< si``
(tokens of one scale are conditionally independent, as VAR samples them), exactly as the teacher samples:
linearly ramped CFG ``t = cfg * si / (SN - 1)``, ``logits = (1 + t) l_cond - t l_uncond``, then the
official top-k / top-p masking. Each token is then ``q = Phi(eps; p)``, the per-token flow map of
``accel.distill.flow`` in the space of the raw VQVAE codebook vectors (Cvae dims, what VAR looks up). The
result is a deterministic function of (label, noise): the trajectory X_1 = all noise, X_{s+1} = (scales
< s+1 mapped, noise after) that the DD student learns.

``ScaleDecoder`` is the teacher's KV-cached scale loop as an explicit object (the same arithmetic as
``VAR.autoregressive_infer_cfg``, which hides its sampling step): ``logits()`` runs the blocks on the
current scale and returns its guided, masked logits; ``advance(idx)`` adds that scale's codes to ``f_hat``
and prepares the next scale's input. The map, the teacher-involved DD sampler and the skip-k baseline all
drive it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from accel.cache.base import KVCache
from accel.distill.data import NoiseMap, PairSpec
from accel.distill.flow import FlowSolver
from accel.models.var import VAR, mask_top_k_top_p
from accel.models.var_vqvae import VQVAE


class ScaleDecoder:
    """One scale-wise teacher decode with CFG (rows 0..B-1 conditional, B..2B-1 the null class)."""

    def __init__(self, var: VAR, vae: VQVAE, label_B: Tensor, *, cfg: float = 1.5, top_k: int = 0,
                 top_p: float = 0.0):
        var.check_vae(vae)
        self.var, self.vae, self.cfg, self.top_k, self.top_p = var, vae, cfg, top_k, top_p
        dev = var.pos_1LC.device
        label_B = torch.as_tensor(label_B, device=dev).long()
        if label_B.dim() != 1:
            raise ValueError(f"label_B must be (B,); got {tuple(label_B.shape)}")
        self.B, self.SN, self.pns = label_B.shape[0], len(var.patch_nums), var.patch_nums
        sos = self.cond_BD = var.class_emb(torch.cat((label_B, torch.full_like(label_B, var.num_classes))))
        self.cond = var.shared_ada_lin(self.cond_BD)
        self.lvl_pos = var.lvl_embed(var.lvl_1L) + var.pos_1LC  # (1, L, C)
        first = var.first_l
        self.x = (sos.unsqueeze(1).expand(2 * self.B, first, -1) + var.pos_start.expand(2 * self.B, first, -1)
                  + self.lvl_pos[:, :first])  # (2B, first_l, C)
        self.f_hat = sos.new_zeros(self.B, var.Cvae, self.pns[-1], self.pns[-1])
        self.cache = KVCache(var.depth)
        self.si, self.cur_L, self.passes = 0, 0, 0  # next scale, tokens before it, transformer passes run

    def guide(self, logits_2BlV: Tensor, si: Tensor | int) -> Tensor:
        """Ramped CFG and top-k/top-p masking; ``si`` an int or a (l,) tensor of scale indices."""
        t = self.cfg * (torch.as_tensor(si, dtype=torch.float32, device=logits_2BlV.device) / (self.SN - 1))
        t = t.view(-1, 1) if t.dim() else t
        g = (1 + t) * logits_2BlV[:self.B] - t * logits_2BlV[self.B:]
        return mask_top_k_top_p(g, self.top_k, self.top_p)

    def logits(self) -> Tensor:
        """Guided, masked logits (B, pn^2, V) of the current scale (one transformer pass over its tokens)."""
        if self.si >= self.SN:
            raise RuntimeError("all scales are decoded")
        x = self.x
        for b in self.var.blocks:
            x = b(x, self.cond, None, self.cache, self.si)
        self.passes += 1
        return self.guide(self.var.get_logits(x, self.cond_BD), self.si)

    def advance(self, idx_Bl: Tensor) -> None:
        """Add the current scale's codes ``idx_Bl`` (B, pn^2) to f_hat; build the next scale's input."""
        si, pn, var = self.si, self.pns[self.si], self.var
        if idx_Bl.shape != (self.B, pn * pn):
            raise ValueError(f"scale {si} needs indices of shape ({self.B}, {pn * pn}); got {tuple(idx_Bl.shape)}")
        h = self.vae.quantize.embedding(idx_Bl).transpose(1, 2).reshape(self.B, var.Cvae, pn, pn)
        self.f_hat, nxt = self.vae.quantize.get_next_autoregressive_input(si, self.f_hat, h)
        self.cur_L += pn * pn
        self.si += 1
        if self.si < self.SN:
            nxt = nxt.view(self.B, var.Cvae, -1).transpose(1, 2)  # (B, pn_next^2, Cvae)
            l = self.pns[self.si] ** 2
            self.x = (var.word_embed(nxt) + self.lvl_pos[:, self.cur_L:self.cur_L + l]).repeat(2, 1, 1)

    def images(self) -> Tensor:
        """Decoded images (B, 3, H, W) in [0, 1] from the accumulated f_hat."""
        return self.vae.fhat_to_img(self.f_hat).add(1).mul(0.5)


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
    then unused. ``cfg``/``top_k``/``top_p`` are the teacher's sampling settings.
    """
    L, Cvae = var.L, var.Cvae
    if noise.dim() != 3 or noise.shape[1:] != (L, Cvae):
        raise ValueError(f"noise must be (B, {L}, {Cvae}); got {tuple(noise.shape)}")
    dec = ScaleDecoder(var, vae, label_B, cfg=cfg, top_k=top_k, top_p=top_p)
    if noise.shape[0] != dec.B:
        raise ValueError(f"{noise.shape[0]} noise rows for {dec.B} labels")
    codes = vae.quantize.embedding.weight.detach()
    stop = dec.SN if stop is None else stop
    out = []
    for si in range(stop):
        logp = dec.logits().float().log_softmax(-1)  # (B, l, V), -inf where masked
        b, l = dec.cur_L, logp.shape[1]
        eps = noise[:, b:b + l].reshape(-1, Cvae).to(codes)  # (B*l, Cvae)
        idx = flow_tokens(solver, eps, codes, logp.reshape(-1, logp.shape[-1])).view(dec.B, l)
        out.append(idx)
        dec.advance(idx)
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
