"""VAR: visual autoregressive modelling by next-scale prediction (Tian et al., arXiv 2404.02905).

Re-implemented from shared/research/dd_var_scalekv.md §1 (official FoundationVision/VAR @ 78b9539); state-dict
keys and buffers (``lvl_1L``, ``attn_bias_for_masking``, ``blocks.N.attn.zero_k_bias``) match the official
``VAR`` so checkpoints load strictly. The VQVAE is passed to inference explicitly, never stored inside.

Notation: B batch, L = sum(pn^2) tokens over all scales, l tokens of one scale, C width, D = C cond width,
V vocab, Cvae codebook width, SN number of scales, si scale index.

* Teacher forcing (paper Eq. 6, training): all scales at once under the block-causal mask
  (a token sees its own scale and all earlier ones). Label dropout only when asked (``cond_drop_rate``).
* The scale step, the one decode path every sampler drives (``autoregressive_infer_cfg``, the DD teacher map
  and teacher-involved sampler, the skip-k baselines, the KV-cache policies): ``state = begin(labels, cache)``,
  then per scale ``logits = step(state, cfg)`` (one pass over that scale's tokens only, attending to an explicit
  ``KVCache`` (accel/models/kv_cache.py) appended once per scale and compressed by its ``CachePolicy``, then
  linearly ramped classifier-free guidance ``t = cfg * si/(SN-1)``, ``logits = (1+t) l_cond - t l_uncond``),
  the caller's choice of tokens, and ``advance(state, vae, idx)`` (f_hat update, next scale's input).
* ``run_blocks`` is the one block loop (teacher forcing, the scale step, the DD student's parallel pass).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from accel.models.kv_cache import KVCache
from accel.types import CachePolicy
from accel.checkpoint import load_strict, read_state_dict
from accel.models.var_vqvae import VQVAE, VQVAEConfig
from accel.validate import check_finite, check_labels, check_var_sampling

log = logging.getLogger(__name__)

PATCH_NUMS = {  # official utils/arg_util.py schedules, keyed by image side in pixels (VQVAE downsample 16)
    256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    1024: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
}


@dataclass(frozen=True)
class VARConfig:
    """Official ``VAR(...)`` constructor arguments (vae_local excluded; V and Cvae come from the VQVAE)."""

    num_classes: int = 1000
    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-6
    shared_aln: bool = False  # one SharedAdaLin for all blocks + per-block ada_gss (the 512px d36 model)
    cond_drop_rate: float = 0.1  # label dropout used in training (class num_classes = null class)
    attn_l2_norm: bool = True  # cosine attention with learned per-head scale_mul (the released checkpoints)
    patch_nums: tuple[int, ...] = PATCH_NUMS[256]
    flash_if_available: bool = True  # kernel choices of the official code; no effect on the math here
    fused_if_available: bool = True

    def __post_init__(self):
        object.__setattr__(self, "patch_nums", tuple(int(p) for p in self.patch_nums))
        if len(self.patch_nums) < 2:
            raise ValueError(f"patch_nums needs at least 2 scales (the CFG ramp divides by SN-1): {self.patch_nums}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @property
    def L(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def first_l(self) -> int:
        return self.patch_nums[0] ** 2

    @property
    def begin_ends(self) -> list[tuple[int, int]]:
        out, cur = [], 0
        for pn in self.patch_nums:
            out.append((cur, cur + pn * pn))
            cur += pn * pn
        return out

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @classmethod
    def from_dict(cls, d: dict) -> "VARConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown VARConfig fields {unknown}; valid: {sorted(names)}")
        return cls(**d)


def _official(depth: int, px: int = 256, shared_aln: bool = False) -> VARConfig:
    # build_vae_var: heads = depth, width = 64 * depth (head_dim 64), drop_path_rate = 0.1 * depth / 24
    return VARConfig(num_classes=1000, depth=depth, embed_dim=64 * depth, num_heads=depth,
                     drop_path_rate=0.1 * depth / 24, shared_aln=shared_aln, patch_nums=PATCH_NUMS[px])


PRESETS = {
    "var-d16": _official(16), "var-d20": _official(20), "var-d24": _official(24), "var-d30": _official(30),
    "var-d36-512": _official(36, 512, shared_aln=True),  # var_d36.pth: 512 px, shared AdaLN ("VAR-d36-s")
}
VAE_PRESETS = {"vae_ch160v4096z32": VQVAEConfig()}  # the released tokenizer for every VAR checkpoint


def var_config(name: str, **overrides) -> VARConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown VAR preset {name!r}; valid names: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def vae_config(name: str = "vae_ch160v4096z32", **overrides) -> VQVAEConfig:
    if name not in VAE_PRESETS:
        raise KeyError(f"unknown VQVAE preset {name!r}; valid names: {sorted(VAE_PRESETS)}")
    return replace(VAE_PRESETS[name], **overrides)


def configs_from_official_json(cfg: dict) -> tuple[VQVAEConfig, VARConfig]:
    """Configs from a fixture ``config.json`` (``VQVAE_kwargs``, optional ddconfig override, ``VAR_kwargs``)."""
    vkw = dict(cfg["VQVAE_kwargs"])
    dd = cfg.get("VQVAE_encoder_decoder_ddconfig_override") or {}
    for k in ("ch", "dropout", "z_channels"):
        if k in dd and dd[k] != vkw.get(k, dd[k]):
            raise ValueError(f"ddconfig override {k}={dd[k]} disagrees with VQVAE_kwargs {k}={vkw[k]}")
    for k in ("ch_mult", "num_res_blocks", "in_channels", "using_sa", "using_mid_sa"):
        if k in dd:
            vkw[k] = dd[k]
    return VQVAEConfig.from_dict(vkw), VARConfig.from_dict(dict(cfg["VAR_kwargs"]))


# ---------------------------------------------------------------------------------------------------------
# Blocks

class DropPath(nn.Module):
    """Stochastic depth (training only; identity in eval)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class FFN(nn.Module):
    def __init__(self, C: int, hidden: int, drop: float):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(C, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, C)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x):
        return self.drop(self.fc2(self.act(self.fc1(x))))


class SelfAttention(nn.Module):
    """Multi-head attention; with ``attn_l2_norm``: q, k l2-normalised over head_dim, q times
    exp(min(scale_mul, log 100)), softmax scale 1; else softmax scale 0.25/sqrt(head_dim)."""

    def __init__(self, layer: int, C: int, num_heads: int, attn_l2_norm: bool, attn_drop: float, proj_drop: float):
        super().__init__()
        self.layer, self.num_heads, self.head_dim = layer, num_heads, C // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(C)), nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))  # keys carry no bias
        self.proj = nn.Linear(C, C)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop

    def forward(self, x: Tensor, attn_bias: Tensor | None, cache: KVCache | None = None, scale: int = -1) -> Tensor:
        B, l, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(B, l, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, l, hd)
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q = F.normalize(q, dim=-1).mul(scale_mul)
            k = F.normalize(k, dim=-1)
        if cache is not None:
            k, v = cache.append(self.layer, scale, k, v)  # (B, H, L_hist + l, hd)
        if attn_bias is not None and attn_bias.dtype != q.dtype:  # fp32 buffer under bf16/fp16 autocast
            attn_bias = attn_bias.to(q.dtype)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        if cache is not None:  # policy sees q exactly as in the logits q @ k^T (softmax scale folded in)
            cache.compress(self.layer, scale, q if self.scale == 1.0 else q * self.scale)
        return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, l, C)))


class AdaLNSelfAttn(nn.Module):
    """x += attn(LN(x)(1+scale1)+shift1) gamma1; x += ffn(LN(x)(1+scale2)+shift2) gamma2.
    The AdaLN chunks come in the official order gamma1, gamma2, scale1, scale2, shift1, shift2."""

    def __init__(self, layer: int, cfg: VARConfig, drop_path: float):
        super().__init__()
        C = cfg.embed_dim
        self.C, self.shared_aln = C, cfg.shared_aln
        self.attn = SelfAttention(layer, C, cfg.num_heads, cfg.attn_l2_norm, cfg.attn_drop_rate, cfg.drop_rate)
        self.ffn = FFN(C, round(C * cfg.mlp_ratio), cfg.drop_rate)
        self.ln_wo_grad = nn.LayerNorm(C, eps=cfg.norm_eps, elementwise_affine=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if cfg.shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C ** 0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def forward(self, x, cond_BD, attn_bias=None, cache: KVCache | None = None, scale: int = -1,
                mid: Tensor | None = None):
        """``mid`` (broadcastable to x) is added to the residual stream between the attention and FFN branches:
        DD1's layer-wise noise/data embedding (released ``AdaLNSelfAttn.forward(..., n_d_emb)``); None = VAR."""
        if self.shared_aln:  # cond_BD is already SharedAdaLin(cond), shape (B, 1, 6, C)
            g1, g2, s1, s2, sh1, sh2 = (self.ada_gss + cond_BD).unbind(2)
        else:
            g1, g2, s1, s2, sh1, sh2 = self.ada_lin(cond_BD).view(-1, 1, 6, self.C).unbind(2)
        x = x + self.drop_path(self.attn(self.ln_wo_grad(x).mul(s1.add(1)).add_(sh1), attn_bias, cache, scale).mul_(g1))
        if mid is not None:
            x = x + mid
        return x + self.drop_path(self.ffn(self.ln_wo_grad(x).mul(s2.add(1)).add_(sh2)).mul(g2))


class SharedAdaLin(nn.Linear):
    def forward(self, cond_BD):
        return super().forward(cond_BD).view(-1, 1, 6, self.out_features // 6)  # (B, 1, 6, C)


class AdaLNBeforeHead(nn.Module):
    """LN(x)(1+scale)+shift with (scale, shift) = Linear(SiLU(cond)), scale first."""

    def __init__(self, C: int, eps: float):
        super().__init__()
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x_BLC, cond_BD):
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x_BLC).mul(scale.add(1)).add_(shift)


# ---------------------------------------------------------------------------------------------------------
# Sampling helpers (pure functions of tensors + an explicit generator)

def mask_top_k_top_p(logits_BlV: Tensor, top_k: int = 0, top_p: float = 0.0) -> Tensor:
    """Official ``sample_with_top_k_top_p_`` masking, out of place: top-k keeps logits >= the k-th largest
    (k >= V keeps all); top-p sorts ascending and drops entries whose cumulative softmax is <= 1 - top_p,
    always keeping the largest."""
    V = logits_BlV.shape[-1]
    out = logits_BlV.clone()
    if 0 < top_k < V:
        kth = out.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        out.masked_fill_(out < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = out.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False
        out.masked_fill_(remove.scatter(sorted_idx.ndim - 1, sorted_idx, remove), -torch.inf)
    return out


def ramped_cfg(logits_2BlV: Tensor, si: int | Tensor, num_scales: int, cfg: float) -> Tensor:
    """VAR's linearly ramped classifier-free guidance, ``t = cfg * si / (SN - 1)``,
    ``logits = (1 + t) l_cond - t l_uncond`` on (2B, l, V) logits (rows B.. unconditional) -> (B, l, V).
    ``si`` is the scale index (an int, as the official sampler) or a (l,) tensor of per-token scale indices;
    both compute t and 1 + t in float64 and round them once to the logits' dtype (as a Python scalar is)."""
    B = logits_2BlV.shape[0] // 2
    if isinstance(si, Tensor):
        t = cfg * (si.to(device=logits_2BlV.device, dtype=torch.float64) / (num_scales - 1))
        w_cond, w_uncond = (1 + t).to(logits_2BlV.dtype).view(-1, 1), t.to(logits_2BlV.dtype).view(-1, 1)
    else:
        w_uncond = cfg * (si / (num_scales - 1))
        w_cond = 1 + w_uncond
    return w_cond * logits_2BlV[:B] - w_uncond * logits_2BlV[B:]


def sample_from_logits(masked_BlV: Tensor, generator: torch.Generator | None) -> Tensor:
    """One ``torch.multinomial`` call over all B*l rows (the official generator consumption); (B, l)."""
    B, l, V = masked_BlV.shape
    return torch.multinomial(masked_BlV.softmax(dim=-1).view(-1, V), num_samples=1, replacement=True,
                             generator=generator).view(B, l)


def gumbel_softmax(logits: Tensor, tau: float, generator: torch.Generator | None) -> Tensor:
    """Soft Gumbel-softmax with an explicit generator (``more_smooth`` visual option)."""
    gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()
    return ((logits + gumbels) / tau).softmax(dim=-1)


@dataclass
class VARSample:
    images: Tensor  # (B, 3, H, W) in [0, 1]
    idx_Bl: list[Tensor]  # per scale (B, pn*pn) int64
    f_hat: Tensor  # (B, Cvae, pn_max, pn_max)
    cache: KVCache
    logits_BlV: list[Tensor] = field(default_factory=list)  # guided logits before masking (if kept)


@dataclass
class ScaleState:
    """The running state of one KV-cached next-scale decode with CFG (``VAR.begin``, ``step``, ``advance``).

    Rows 0..B-1 of ``x_BlC`` / ``cond_BD`` are conditional, rows B..2B-1 the null class (only when ``guided``: a
    guidance-free decode, ``cfg = 0``, runs the B conditional rows alone). ``si`` is the scale the
    next ``step`` decodes, ``cur_L`` the number of tokens before it, ``x_BlC`` (2B, pn_si^2, C) its block input
    and ``f_hat`` (B, Cvae, pn_max, pn_max) the accumulated codes of scales < si. ``passes`` counts steps run."""

    cond_BD: Tensor  # (2B, C) class embeddings
    cond: Tensor  # shared_ada_lin(cond_BD): what the blocks take
    lvl_pos: Tensor  # (1, L, C) level + position embeddings of every token
    x_BlC: Tensor
    f_hat: Tensor
    cache: KVCache
    si: int = 0
    cur_L: int = 0
    passes: int = 0
    guided: bool = True

    @property
    def B(self) -> int:
        return self.f_hat.shape[0]


# ---------------------------------------------------------------------------------------------------------
# The model

class VAR(nn.Module):
    def __init__(self, cfg: VARConfig, vocab_size: int, Cvae: int):
        super().__init__()
        self.cfg, self.V, self.Cvae = cfg, vocab_size, Cvae
        self.num_classes, self.depth, self.C = cfg.num_classes, cfg.depth, cfg.embed_dim
        self.patch_nums, self.L, self.first_l = cfg.patch_nums, cfg.L, cfg.first_l
        C, init_std = self.C, math.sqrt(1 / self.C / 3)
        self.word_embed = nn.Linear(Cvae, C)
        self.class_emb = nn.Embedding(self.num_classes + 1, C)  # row num_classes = null class
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, C))
        self.lvl_embed = nn.Embedding(len(self.patch_nums), C)
        for t in (self.class_emb.weight, self.pos_start, self.pos_1LC, self.lvl_embed.weight):
            nn.init.trunc_normal_(t.data, mean=0, std=init_std)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), SharedAdaLin(C, 6 * C)) if cfg.shared_aln else nn.Identity()
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList([AdaLNSelfAttn(i, cfg, dpr[i]) for i in range(cfg.depth)])
        lvl = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(self.patch_nums)]).view(1, self.L, 1)
        self.register_buffer("lvl_1L", lvl[:, :, 0].contiguous())  # (1, L) scale index of each token
        # block-causal mask: query at scale a sees keys at scales <= a
        mask = torch.where(lvl >= lvl.transpose(1, 2), 0.0, -torch.inf).reshape(1, 1, self.L, self.L)
        self.register_buffer("attn_bias_for_masking", mask.contiguous())
        self.head_nm = AdaLNBeforeHead(C, cfg.norm_eps)
        self.head = nn.Linear(C, vocab_size)

    def init_weights(self, init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1.0,
                     generator: torch.Generator | None = None):
        """Official init (for training from scratch): trunc-normal Linear/Embedding, scaled head and AdaLN."""
        std = math.sqrt(1 / self.C / 3) if init_std < 0 else init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight.data, std=std, generator=generator)
                if getattr(m, "bias", None) is not None:
                    m.bias.data.zero_()
        if init_head >= 0:
            self.head.weight.data.mul_(init_head)
            self.head.bias.data.zero_()
        self.head_nm.ada_lin[-1].weight.data.mul_(init_adaln)
        self.head_nm.ada_lin[-1].bias.data.zero_()
        for b in self.blocks:
            b.attn.proj.weight.data.div_(math.sqrt(2 * self.depth))
            b.ffn.fc2.weight.data.div_(math.sqrt(2 * self.depth))
            if b.shared_aln:
                b.ada_gss.data[:, :, 2:].mul_(init_adaln)
                b.ada_gss.data[:, :, :2].mul_(init_adaln_gamma)
            else:
                b.ada_lin[-1].weight.data[2 * self.C:].mul_(init_adaln)
                b.ada_lin[-1].weight.data[:2 * self.C].mul_(init_adaln_gamma)
                b.ada_lin[-1].bias.data.zero_()
        return self

    def get_logits(self, h_BLC: Tensor, cond_BD: Tensor) -> Tensor:
        return self.head(self.head_nm(h_BLC.float(), cond_BD).float()).float()

    def embed(self, label_B: Tensor, x_BLCv_wo_first_l: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forcing block input (sos + pos_start, word_embed(x), + lvl_embed + pos_1LC) and cond_BD."""
        B = x_BLCv_wo_first_l.shape[0]
        sos = cond_BD = self.class_emb(label_B)
        sos = sos.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
        x_BLC = torch.cat((sos, self.word_embed(x_BLCv_wo_first_l.float())), dim=1)
        return x_BLC + (self.lvl_embed(self.lvl_1L.expand(B, -1)) + self.pos_1LC), cond_BD

    def forward(self, label_B: Tensor, x_BLCv_wo_first_l: Tensor, *, cond_drop_rate: float = 0.0,
                generator: torch.Generator | None = None) -> Tensor:
        """Teacher-forced logits (B, L, V). ``x_BLCv_wo_first_l`` = ``vae.quantize.idxBl_to_var_input(...)``.
        Labels are replaced by the null class with probability ``cond_drop_rate`` (0 = none; training
        passes ``cfg.cond_drop_rate``)."""
        if x_BLCv_wo_first_l.shape[1:] != (self.L - self.first_l, self.Cvae):
            raise ValueError(f"x_BLCv_wo_first_l must be (B, {self.L - self.first_l}, {self.Cvae}); "
                             f"got {tuple(x_BLCv_wo_first_l.shape)}")
        if cond_drop_rate > 0:
            u = torch.rand(label_B.shape[0], device=label_B.device, generator=generator)
            label_B = torch.where(u < cond_drop_rate, self.num_classes, label_B)
        x_BLC, cond_BD = self.embed(label_B, x_BLCv_wo_first_l)
        h_BLC = self.run_blocks(x_BLC, self.shared_ada_lin(cond_BD), self.attn_bias_for_masking)
        return self.get_logits(h_BLC, cond_BD)

    def run_blocks(self, x_BLC: Tensor, cond: Tensor, attn_bias: Tensor | None = None, cache: KVCache | None = None,
                   scale: int = -1, mids: Sequence[Tensor] | None = None) -> Tensor:
        """All blocks on ``x_BLC``: the one block loop of teacher forcing, the scale step and the DD student.
        ``cond`` = ``shared_ada_lin(cond_BD)``; ``cache``/``scale``: the KV cache and the scale it appends as;
        ``mids[i]``: optional addend of block i between its attention and FFN (``AdaLNSelfAttn.forward``)."""
        if mids is not None and len(mids) != len(self.blocks):
            raise ValueError(f"mids needs one tensor per block ({len(self.blocks)}); got {len(mids)}")
        for i, b in enumerate(self.blocks):
            x_BLC = b(x_BLC, cond, attn_bias, cache, scale, None if mids is None else mids[i])
        return x_BLC

    def check_vae(self, vae: VQVAE) -> None:
        if (vae.vocab_size, vae.Cvae, tuple(vae.v_patch_nums)) != (self.V, self.Cvae, tuple(self.patch_nums)):
            raise ValueError(f"VQVAE (V={vae.vocab_size}, Cvae={vae.Cvae}, patch_nums={vae.v_patch_nums}) does not "
                             f"match VAR (V={self.V}, Cvae={self.Cvae}, patch_nums={self.patch_nums})")

    def begin(self, label_B: Tensor, cache: KVCache | None = None, *, guided: bool = True) -> ScaleState:
        """The state before scale 0 for class labels ``label_B`` (B,) (``num_classes`` = the null class):
        sos = class embedding + pos_start + level/position embedding; ``cache`` defaults to a full KV cache.
        ``guided=False``: the conditional rows only (the official sampler runs the null rows even at cfg 0)."""
        label_B = torch.as_tensor(label_B, device=self.pos_1LC.device).long()
        if label_B.dim() != 1:
            raise ValueError(f"label_B must be (B,); got {tuple(label_B.shape)}")
        B = label_B.shape[0]
        rows = torch.cat((label_B, torch.full_like(label_B, self.num_classes))) if guided else label_B
        sos = cond_BD = self.class_emb(rows)
        R = rows.shape[0]
        lvl_pos = self.lvl_embed(self.lvl_1L) + self.pos_1LC  # (1, L, C)
        x = (sos.unsqueeze(1).expand(R, self.first_l, -1) + self.pos_start.expand(R, self.first_l, -1)
             + lvl_pos[:, :self.first_l])  # (R, first_l, C), R = 2B under guidance
        f_hat = sos.new_zeros(B, self.Cvae, self.patch_nums[-1], self.patch_nums[-1])
        cache = KVCache(self.depth) if cache is None else cache
        return ScaleState(cond_BD, self.shared_ada_lin(cond_BD), lvl_pos, x, f_hat, cache, guided=guided)

    def step(self, state: ScaleState, cfg: float, *, attn_bias: Tensor | None = None,
             token_scales: Tensor | None = None) -> Tensor:
        """Guided logits (B, l, V) of scale ``state.si``: one pass of the blocks over ``state.x_BlC`` attending to
        (and appending to, then compressing by its policy) ``state.cache``, then ramped CFG (``ramped_cfg``).

        Default: the l = pn_si^2 tokens of scale si, no mask (they see the cache and each other). A caller that
        decodes several scales in one pass sets ``state.x_BlC`` to their inputs and passes the block-causal
        ``attn_bias`` (l, L_hist + l) and ``token_scales`` (l,) for the per-token guidance ramp."""
        if state.si >= len(self.patch_nums):
            raise RuntimeError(f"all {len(self.patch_nums)} scales are decoded")
        if not state.guided and cfg != 0:
            raise ValueError(f"cfg={cfg}: this decode was begun without guidance (guided=False): use cfg=0")
        x = self.run_blocks(state.x_BlC, state.cond, attn_bias, state.cache, state.si)
        state.passes += 1
        if not state.guided:
            return self.get_logits(x, state.cond_BD)  # (B, l, V): what ramped_cfg gives at t = 0
        si = state.si if token_scales is None else token_scales
        return ramped_cfg(self.get_logits(x, state.cond_BD), si, len(self.patch_nums), cfg)

    def advance(self, state: ScaleState, vae: VQVAE, idx_Bl: Tensor | None = None, *,
                h_BlC: Tensor | None = None) -> None:
        """Add scale ``state.si``'s codes to f_hat (VQVAE ``get_next_autoregressive_input``: phi of the upsampled
        codes) and build the next scale's input ``word_embed(area-down(f_hat)) + lvl_pos``, repeated for CFG.
        Codes are indices ``idx_Bl`` (B, pn^2) or code vectors ``h_BlC`` (B, pn^2, Cvae) (soft codes)."""
        si, pns, B = state.si, self.patch_nums, state.B
        pn = pns[si]
        if (idx_Bl is None) == (h_BlC is None):
            raise ValueError("advance needs exactly one of idx_Bl and h_BlC")
        if idx_Bl is not None:
            if idx_Bl.shape != (B, pn * pn):
                raise ValueError(f"scale {si} needs indices of shape ({B}, {pn * pn}); got {tuple(idx_Bl.shape)}")
            h_BlC = vae.quantize.embedding(idx_Bl)
        h_BChw = h_BlC.transpose(1, 2).reshape(B, self.Cvae, pn, pn)
        state.f_hat, nxt = vae.quantize.get_next_autoregressive_input(si, state.f_hat, h_BChw)
        state.cur_L += pn * pn
        state.si += 1
        if state.si < len(pns):
            nxt = nxt.view(B, self.Cvae, -1).transpose(1, 2)  # (B, pn_next^2, Cvae)
            lvl_pos = state.lvl_pos[:, state.cur_L:state.cur_L + pns[state.si] ** 2]
            state.x_BlC = (self.word_embed(nxt) + lvl_pos).repeat(2 if state.guided else 1, 1, 1)

    @torch.no_grad()
    def autoregressive_infer_cfg(self, vae: VQVAE, B: int, label_B: Tensor | int | None = None, *,
                                 generator: torch.Generator | None = None, cfg: float = 1.5, top_k: int = 0,
                                 top_p: float = 0.0, more_smooth: bool = False, policy: CachePolicy | None = None,
                                 keep_logits: bool = False, progress: bool = False) -> VARSample:
        """Next-scale sampling with CFG (rows 0..B-1 conditional, B..2B-1 null class), KV-cached:
        ``begin``, then per scale ``step`` -> top-k/top-p mask -> sample -> ``advance``. ``cfg=0`` (no guidance)
        runs the conditional rows alone, half the work of the official sampler, which doubles the batch anyway.

        ``generator`` is consumed as the official code does: labels (if ``label_B`` is None), then one
        multinomial over all B*l tokens per scale (then the Gumbel noise when ``more_smooth``).
        ``policy`` compresses each layer's cache after each scale (``KeepAll`` = no compression).
        """
        self.check_vae(vae)
        check_var_sampling(B=B, cfg=cfg, top_k=top_k, top_p=top_p)
        dev, SN = self.pos_1LC.device, len(self.patch_nums)
        if isinstance(label_B, Tensor):
            check_labels(label_B, self.num_classes, name="label_B", model="VAR")
        elif isinstance(label_B, int) and label_B >= self.num_classes:
            raise ValueError(f"label_B={label_B} is out of range for VAR with {self.num_classes} classes; valid: "
                             f"0..{self.num_classes - 1}, or a negative int for the unconditional (null) class")
        if label_B is None:
            uniform = torch.full((1, self.num_classes), 1.0 / self.num_classes, device=dev)
            label_B = torch.multinomial(uniform, num_samples=B, replacement=True, generator=generator).reshape(B)
        elif isinstance(label_B, int):
            label_B = torch.full((B,), self.num_classes if label_B < 0 else label_B, device=dev)
        label_B = torch.as_tensor(label_B, device=dev).long()
        if label_B.shape != (B,):
            raise ValueError(f"label_B must have shape ({B},); got {tuple(label_B.shape)}")
        state = self.begin(label_B, KVCache(self.depth, policy), guided=cfg != 0)  # cfg 0: conditional rows only
        idx_list, logits_list = [], []
        for si in tqdm(range(SN), desc="VAR scales", disable=not progress, leave=False):
            logits_BlV = self.step(state, cfg)  # (B, l, V)
            pn = self.patch_nums[si]
            check_finite(logits_BlV, what="guided logits", model="VAR", step=f"scale {si} ({pn}x{pn})")  # 1 sync/scale
            if keep_logits:
                logits_list.append(logits_BlV)
            masked = mask_top_k_top_p(logits_BlV, top_k, top_p)
            idx_Bl = sample_from_logits(masked, generator)
            idx_list.append(idx_Bl)
            if more_smooth:  # soft codes for visuals only (the sampled idx_Bl are still returned)
                ratio = si / (SN - 1)
                tau = max(0.27 * (1 - ratio * 0.95), 0.005)
                soft_BlV = gumbel_softmax(masked.mul(1 + ratio), tau, generator)
                h_BlC = soft_BlV @ vae.quantize.embedding.weight.unsqueeze(0)
                self.advance(state, vae, h_BlC=h_BlC)
            else:
                self.advance(state, vae, idx_Bl)
        images = vae.fhat_to_img(state.f_hat).add_(1).mul_(0.5)
        return VARSample(images, idx_list, state.f_hat, state.cache, logits_list)


def build_var(var_cfg: VARConfig, vae_cfg: VQVAEConfig, device: torch.device | str = "cpu") -> tuple[VQVAE, VAR]:
    """Fresh (untrained) VQVAE and VAR in eval mode; load weights with ``load_var_checkpoints``."""
    if tuple(vae_cfg.v_patch_nums) != tuple(var_cfg.patch_nums):
        raise ValueError(f"VQVAE v_patch_nums {vae_cfg.v_patch_nums} != VAR patch_nums {var_cfg.patch_nums}")
    vae = VQVAE(vae_cfg).to(device)
    var = VAR(var_cfg, vae_cfg.vocab_size, vae_cfg.Cvae).to(device).eval()
    return vae, var


def load_var_checkpoints(vae: VQVAE, var: VAR, vae_path, var_path, key: str | None = None) -> tuple[VQVAE, VAR]:
    """Strictly load official files (``vae_ch160v4096z32.pth``, ``var_d16.pth``, ``.safetensors``, or a
    ``{"model": ...}``-style wrapper; ``key`` picks a nested entry of the VAR file)."""
    vae_sd = read_state_dict(vae_path)
    hit, want = vae_sd.get("quantize.ema_vocab_hit_SV"), vae.quantize.ema_vocab_hit_SV
    if hit is not None and hit.dim() == 2 and hit.shape[1] == want.shape[1] and hit.shape[0] != want.shape[0]:
        # training-only codebook statistics, one row per scale: like the official VQVAE.load_state_dict,
        # a file made for another number of scales gets this buffer reset (logged, not silent)
        log.info("%s: ema_vocab_hit_SV has %d scale rows, model uses %d; reset to zeros",
                 vae_path, hit.shape[0], want.shape[0])
        vae_sd["quantize.ema_vocab_hit_SV"] = torch.zeros_like(want)
    load_strict(vae, vae_sd, what=f"VQVAE checkpoint {vae_path}")
    load_strict(var, read_state_dict(var_path, key=key), what=f"VAR checkpoint {var_path}")
    return vae, var


def teacher_forced_logits(var: VAR, vae: VQVAE, label_B: Tensor, idx_Bl: Sequence[Tensor]) -> Tensor:
    """Logits (B, L, V) of ``var`` on given per-scale indices, no label dropout."""
    var.check_vae(vae)
    return var(label_B, vae.quantize.idxBl_to_var_input(idx_Bl))
