"""MAR: masked autoregressive image generation with a per-token diffusion head (Li et al., arXiv 2406.11838).

A clean re-implementation of LTH14/mar ``models/mar.py`` from ``shared/research/cspd_mar_disa.md`` §1:
MAE-style bidirectional encoder/decoder with ``buffer_size`` class-embedding rows, learned position
embeddings, the ``fake_latent`` null class for CFG, and the ``DiffLoss`` head (``accel.models.mar_head``).
State-dict keys equal the official ones, so ``checkpoint-last.pth`` (``model`` / ``model_ema``) loads strictly.

One sampling loop, driven by a plan (``accel.models.mar_loop``, re-exported here): ``sample_tokens(model,
labels, plan=..., generator=...)``, its body ``predict``, MAR's own ``MaskedPlan``. Pieces it drives:

- ``MAR.condition(tokens, mask, labels, cfg=...) -> z``: head conditions ``(B or 2B, L, dec_dim)`` for the
  current known tokens (mask 1 = unknown). With ``cfg=True`` rows are ``[cond; uncond]``.
- ``MAR.head_condition(tokens, mask, labels, positions, cfg=...)``: the same, as head rows for chosen positions.
- ``MAR.head``: the diffusion head (steps chosen per call, see ``mar_head``).

Cost without a KV cache (attention is bidirectional, so nothing can be cached across iterations): each
iteration runs the encoder on ``buffer_size + #known`` rows and the decoder on ``buffer_size + L`` rows, per
sample, doubled under CFG (the uncond branch differs in the buffer rows, so both must run). The head runs
S steps only on the rows being predicted (2x under CFG). Nothing else is recomputed: with cfg == 1 no
uncond branch is built, and masked positions never enter the encoder.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from accel.checkpoint import CheckpointMismatch, load_strict, read_state_dict
from accel.models.mar_head import DiffLoss, HeadNoise, HeadStats, space_timesteps  # noqa: F401  (re-exported)
from accel.models.mar_loop import (HeadCall, HeadSteps, Iteration, MaskedPlan, Plan, Prediction,  # noqa: F401
                                   TokenSample, cfg_at, head_schedule, mask_len_at, mask_lengths, predict,
                                   sample_tokens, write_tokens)

LATENT_SCALE = 0.2325  # MAR's KL-16 latent scale: tokens = posterior.sample() * 0.2325, decode(tokens / 0.2325)


@dataclass(frozen=True)
class MARConfig:
    """Official ``MAR(...)`` constructor arguments (defaults = the official constructor defaults)."""

    img_size: int = 256
    vae_stride: int = 16
    patch_size: int = 1
    encoder_embed_dim: int = 1024
    encoder_depth: int = 16
    encoder_num_heads: int = 16
    decoder_embed_dim: int = 1024
    decoder_depth: int = 16
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    vae_embed_dim: int = 16
    mask_ratio_min: float = 0.7  # training only (truncated-normal mask ratio)
    label_drop_prob: float = 0.1  # training only (class -> fake_latent)
    class_num: int = 1000
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    buffer_size: int = 64
    diffloss_d: int = 3
    diffloss_w: int = 1024
    num_sampling_steps: str = "100"  # default head steps of the generation loop (a call may override)
    # accel extension (None = official MAR): every head timestep t > max_timestep becomes max_timestep, then
    # duplicates are dropped, as DiSA's official ``clip_timesteps=950``. The zoo MARs set 950: the clipped
    # cosine beta makes abar(999) = 2.4e-9, so the first step multiplies the eps error at t = 999 by
    # sqrt(abar(979) / abar(999)) ~ 670 in the sampled mean; heads trained for minutes on a CPU are not
    # accurate enough there and their samples diverge (mar_head.clip_schedule).
    max_timestep: int | None = None
    diffusion_batch_mul: int = 4  # training only
    grad_checkpointing: bool = False  # training only; accepted for config compatibility
    norm_eps: float = 1e-6  # mar_base/large/huge pass LayerNorm(eps=1e-6) as norm_layer

    @property
    def seq_h(self) -> int:
        return self.img_size // self.vae_stride // self.patch_size

    @property
    def seq_w(self) -> int:
        return self.seq_h  # official MAR is square

    @property
    def seq_len(self) -> int:
        return self.seq_h * self.seq_w

    @property
    def token_embed_dim(self) -> int:
        return self.vae_embed_dim * self.patch_size ** 2

    @classmethod
    def from_dict(cls, d: dict) -> "MARConfig":
        """From official constructor kwargs (e.g. a fixture's JSON). ``_``-keys are metadata, except
        ``_norm_layer_eps``; an unknown key is an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if not k.startswith("_")}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise KeyError(f"unknown MAR config keys {unknown}; valid: {sorted(names)}")
        if "_norm_layer_eps" in d:
            kw["norm_eps"] = float(d["_norm_layer_eps"])
        if "num_sampling_steps" in kw:
            kw["num_sampling_steps"] = str(kw["num_sampling_steps"])
        return cls(**kw)


_PRESETS = {
    # name: (enc/dec dim, depth, heads, diffloss_d, diffloss_w)  -- released checkpoints' head sizes
    "mar_base": (768, 12, 12, 6, 1024),
    "mar_large": (1024, 16, 16, 8, 1280),
    "mar_huge": (1280, 20, 16, 12, 1536),
}


def preset(name: str, **overrides) -> MARConfig:
    """``mar_base`` / ``mar_large`` / ``mar_huge`` with the released DiffLoss sizes (ImageNet-256 defaults of
    ``main_mar.py``: buffer 64, diffusion_batch_mul 1)."""
    if name not in _PRESETS:
        raise KeyError(f"unknown MAR preset {name!r}; valid: {sorted(_PRESETS)}")
    dim, depth, heads, d, w = _PRESETS[name]
    base = dict(encoder_embed_dim=dim, encoder_depth=depth, encoder_num_heads=heads, decoder_embed_dim=dim,
                decoder_depth=depth, decoder_num_heads=heads, diffloss_d=d, diffloss_w=w, buffer_size=64,
                diffusion_batch_mul=1)
    return MARConfig(**{**base, **overrides})


# ----------------------------------------------------------------------------------------------------
# Transformer block (timm 0.9.12 ``Block`` semantics and key names)
# ----------------------------------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_drop: float, proj_drop: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} not divisible by {num_heads} heads")
        self.num_heads, self.attn_drop, self.proj_drop = num_heads, attn_drop, proj_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``attn_mask``: None (every key attends), or bool (B, 1, 1, N), True = a real key (padding off)."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, nh, N, hd)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        x = self.proj(x.transpose(1, 2).reshape(B, N, C))
        return F.dropout(x, self.proj_drop, self.training)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(dim, hidden), nn.Linear(hidden, dim), drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(F.gelu(self.fc1(x)), self.drop, self.training)
        return F.dropout(self.fc2(x), self.drop, self.training)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float, attn_drop: float, proj_drop: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


# ----------------------------------------------------------------------------------------------------
# MAR
# ----------------------------------------------------------------------------------------------------

class MAR(nn.Module):
    def __init__(self, cfg: MARConfig):
        super().__init__()
        self.cfg = cfg
        enc, dec, L, buf = cfg.encoder_embed_dim, cfg.decoder_embed_dim, cfg.seq_len, cfg.buffer_size
        blk = lambda dim, heads: Block(dim, heads, cfg.mlp_ratio, cfg.norm_eps, cfg.attn_dropout, cfg.proj_dropout)  # noqa: E731
        self.class_emb = nn.Embedding(cfg.class_num, enc)
        self.fake_latent = nn.Parameter(torch.zeros(1, enc))  # CFG null class
        self.z_proj = nn.Linear(cfg.token_embed_dim, enc)
        self.z_proj_ln = nn.LayerNorm(enc, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, L + buf, enc))
        self.encoder_blocks = nn.ModuleList([blk(enc, cfg.encoder_num_heads) for _ in range(cfg.encoder_depth)])
        self.encoder_norm = nn.LayerNorm(enc, eps=cfg.norm_eps)
        self.decoder_embed = nn.Linear(enc, dec)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, L + buf, dec))
        self.decoder_blocks = nn.ModuleList([blk(dec, cfg.decoder_num_heads) for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dec, eps=cfg.norm_eps)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, L, dec))
        self.diffloss = DiffLoss(cfg.token_embed_dim, dec, cfg.diffloss_d, cfg.diffloss_w)
        self._init_weights()

    @property
    def head(self) -> DiffLoss:
        return self.diffloss

    def _init_weights(self):
        """Official init (std 0.02 embeddings/tokens, xavier linears); checkpoints overwrite it."""
        for p in (self.class_emb.weight, self.fake_latent, self.mask_token, self.encoder_pos_embed_learned,
                  self.decoder_pos_embed_learned, self.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for name, m in self.named_modules():
            if name.startswith("diffloss"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- token layout -------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) latents -> (B, L, C*p*p) tokens (raster order)."""
        B, C, H, W = x.shape
        p = self.cfg.patch_size
        x = x.reshape(B, C, H // p, p, W // p, p)
        x = torch.einsum("nchpwq->nhwcpq", x)
        return x.reshape(B, (H // p) * (W // p), C * p * p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C*p*p) -> (B, C, seq_h*p, seq_w*p)."""
        c, p = self.cfg, self.cfg.patch_size
        x = x.reshape(x.shape[0], c.seq_h, c.seq_w, c.vae_embed_dim, p, p)
        x = torch.einsum("nhwcpq->nchpwq", x)
        return x.reshape(x.shape[0], c.vae_embed_dim, c.seq_h * p, c.seq_w * p)

    # -- MAE encoder / decoder ----------------------------------------------------------------------
    def forward_mae_encoder(self, tokens: torch.Tensor, mask: torch.Tensor, class_embedding: torch.Tensor) -> torch.Tensor:
        """tokens (B, L, Ct), mask (B, L) 1 = unknown, class_embedding (B, enc) -> (B, buf + max #known, enc).

        Rows with equal known counts run exactly the official computation (kept rows in position order, no
        attention mask). Rows with different counts (CSpD's textbook verification batches a window's prefixes)
        are right-padded to the largest count and the padded keys are masked out of every encoder attention, so
        each row computes what it would alone (up to float rounding); the padded outputs are garbage the
        decoder never reads (``forward_mae_decoder`` scatters only the real rows)."""
        B, L, _ = tokens.shape
        buf = self.cfg.buffer_size
        x = self.z_proj(tokens)
        x = torch.cat([class_embedding.unsqueeze(1).expand(B, buf, -1).to(x.dtype), x], dim=1)  # buffer rows
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned)
        keep = torch.cat([mask.new_ones(B, buf, dtype=torch.bool), mask == 0], dim=1)  # (B, buf + L)
        n_keep = keep.sum(-1)  # (B,)
        attn_mask = None
        if bool((n_keep == n_keep[0]).all()):
            x = x[keep].reshape(B, -1, x.shape[-1])  # kept rows, position order
        else:  # kept rows first (position order, stable sort), then padding up to the largest count
            K = int(n_keep.max())
            idx = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :K]  # (B, K)
            x = x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))
            attn_mask = (torch.arange(K, device=x.device)[None] < n_keep[:, None])[:, None, None, :]  # (B,1,1,K)
        for block in self.encoder_blocks:
            x = block(x, attn_mask)
        return self.encoder_norm(x)

    def forward_mae_decoder(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoder output -> z (B, L, dec): scatter into a mask-token canvas, decode, drop the buffer. A padded
        encoder output (rows with different known counts) contributes only its first buf + #known rows."""
        B = x.shape[0]
        buf = self.cfg.buffer_size
        x = self.decoder_embed(x)
        keep = torch.cat([mask.new_ones(B, buf, dtype=torch.bool), mask == 0], dim=1)
        canvas = self.mask_token.to(x.dtype).expand(B, keep.shape[1], -1).clone()
        n_keep = keep.sum(-1)
        if bool((n_keep == x.shape[1]).all()):
            canvas[keep] = x.reshape(-1, x.shape[-1])
        else:
            canvas[keep] = x[torch.arange(x.shape[1], device=x.device)[None] < n_keep[:, None]]
        x = canvas + self.decoder_pos_embed_learned
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)[:, buf:]
        return x + self.diffusion_pos_embed_learned

    def class_embedding(self, labels: torch.Tensor | None, batch: int | None = None) -> torch.Tensor:
        """class_emb(labels), or the null class ``fake_latent`` for ``labels=None`` (then give ``batch``)."""
        if labels is None:
            if batch is None:
                raise ValueError("unconditional class embedding needs the batch size")
            return self.fake_latent.expand(batch, -1)
        if labels.min() < 0 or labels.max() >= self.cfg.class_num:
            raise ValueError(f"labels must lie in [0, {self.cfg.class_num - 1}]")
        return self.class_emb(labels)

    def condition(self, tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None, *,
                  cfg: bool = False) -> torch.Tensor:
        """Head conditions for every position given the known tokens: (B, L, dec), or (2B, L, dec) rows
        [cond; uncond] with ``cfg=True``. One encoder + one decoder pass (on 2B rows under CFG)."""
        B = tokens.shape[0]
        cls = self.class_embedding(labels, B)
        if cfg:
            tokens, mask = torch.cat([tokens, tokens]), torch.cat([mask, mask])
            cls = torch.cat([cls, self.fake_latent.expand(B, -1)])
        return self.forward_mae_decoder(self.forward_mae_encoder(tokens, mask, cls), mask)

    def head_condition(self, tokens: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None,
                       positions: torch.Tensor, *, cfg: bool = False) -> torch.Tensor:
        """Head conditions of chosen positions, as rows for ``DiffLoss.sample``: ``positions`` is a bool (B, L)
        mask (rows in (sample, position) order, as ``sample_tokens``) or indices (B, n) (rows in (sample,
        index) order, e.g. a draft's generation order). Under ``cfg`` the rows are [cond; uncond]."""
        z = self.condition(tokens, mask, labels, cfg=cfg)  # (B or 2B, L, dec)
        pos = torch.cat([positions, positions]) if cfg else positions
        if pos.dtype == torch.bool:
            return z[pos]
        return z.gather(1, pos[..., None].expand(-1, -1, z.shape[-1])).reshape(-1, z.shape[-1])

    # -- generation ---------------------------------------------------------------------------------
    def sample_orders(self, batch: int, generator: torch.Generator, device=None) -> torch.Tensor:
        """Per-sample random generation orders (B, L) from a torch.Generator (official: numpy shuffle)."""
        dev = generator.device if device is None else device
        return torch.stack([torch.randperm(self.cfg.seq_len, generator=generator, device=generator.device)
                            for _ in range(batch)]).to(dev)

    def sample_tokens(self, labels: torch.Tensor | None, **kw) -> "TokenSample":
        """The official generation loop; see ``accel.models.mar.sample_tokens`` for the arguments."""
        return sample_tokens(self, labels, **kw)


def decode_tokens(vae: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Token latents -> images in [0, 1]: ``vae.decode(tokens / LATENT_SCALE)``, then (x + 1) / 2."""
    return ((vae.decode(tokens / LATENT_SCALE) + 1) / 2).clamp(0, 1)


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------

def load_mar(path: str | Path, cfg: MARConfig, *, key: str | None = None, device=None) -> MAR:
    """Build MAR from ``cfg`` and load ``path`` strictly (eval mode).

    ``checkpoint-last.pth`` holds ``model`` and ``model_ema``: pass ``key="model_ema"`` for the EMA weights
    the official evaluation uses; ``key=None`` takes ``model`` (or a raw / ``.safetensors`` state dict).
    A wrong file raises ``CheckpointMismatch`` naming missing/unexpected keys and shape mismatches.
    """
    try:
        sd = read_state_dict(path, key=key)
    except KeyError as e:
        raise CheckpointMismatch(f"{path}: not a MAR checkpoint with {key!r}: {e}") from e
    model = MAR(cfg)
    load_strict(model, sd, what=f"MAR checkpoint {Path(path).name}" + (f"[{key}]" if key else ""))
    return model.to(device).eval()
