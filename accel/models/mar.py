"""MAR: masked autoregressive image generation with a per-token diffusion head (Li et al., arXiv 2406.11838).

A clean re-implementation of LTH14/mar ``models/mar.py`` from ``shared/research/cspd_mar_disa.md`` §1:
MAE-style bidirectional encoder/decoder with ``buffer_size`` class-embedding rows, learned position
embeddings, the ``fake_latent`` null class for CFG, and the ``DiffLoss`` head (``accel.models.mar_head``).
State-dict keys equal the official ones, so ``checkpoint-last.pth`` (``model`` / ``model_ema``) loads strictly.

One sampling loop, driven by a plan (every MAR sampler in accel is this loop):

- ``sample_tokens(model, labels, plan=..., generator=...)``: the loop. It owns the state (known tokens and
  mask), runs one ``predict`` per iteration and writes the tokens. A ``Plan`` says, per iteration, which
  positions are predicted with which CFG scale (``iteration``) and, once their conditions are known, which
  head timesteps and noise (``head``). ``MaskedPlan`` is MAR's own (the official loop; ``replay`` orders /
  noises for parity); DiSA's fixed schedules are ``MaskedPlan(head_steps=schedule)``, its adaptive schedule
  and CSpD's windows are plans of their own packages.
- ``predict(...)``: one iteration, nothing written (CSpD verifies a window with it).
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
import math
from dataclasses import dataclass, field
from pathlib import Path
from functools import lru_cache
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from accel.checkpoint import CheckpointMismatch, load_strict, read_state_dict
from accel.models.mar_head import (DDPMSchedule, DiffLoss, HeadNoise, HeadStats, clip_schedule,  # noqa: F401
                                   clip_timesteps, space_timesteps)

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, nh, N, hd)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
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
        """tokens (B, L, Ct), mask (B, L) 1 = unknown, class_embedding (B, enc) -> (B, buf + #known, enc)."""
        B, L, _ = tokens.shape
        buf = self.cfg.buffer_size
        known = mask.shape[1] - mask.sum(-1)
        if not bool((known == known[0]).all()):
            raise ValueError("every row of the mask must have the same number of known tokens")
        x = self.z_proj(tokens)
        x = torch.cat([class_embedding.unsqueeze(1).expand(B, buf, -1).to(x.dtype), x], dim=1)  # buffer rows
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned)
        keep = torch.cat([mask.new_ones(B, buf, dtype=torch.bool), mask == 0], dim=1)  # (B, buf + L)
        x = x[keep].reshape(B, -1, x.shape[-1])  # kept rows, position order
        for block in self.encoder_blocks:
            x = block(x)
        return self.encoder_norm(x)

    def forward_mae_decoder(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoder output -> z (B, L, dec): scatter into a mask-token canvas, decode, drop the buffer."""
        B = x.shape[0]
        buf = self.cfg.buffer_size
        x = self.decoder_embed(x)
        keep = torch.cat([mask.new_ones(B, buf, dtype=torch.bool), mask == 0], dim=1)
        canvas = self.mask_token.to(x.dtype).expand(B, keep.shape[1], -1).clone()
        canvas[keep] = x.reshape(-1, x.shape[-1])
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


@dataclass
class TokenSample:
    """Result of ``sample_tokens``: latents (B, C, seq_h*p, seq_w*p) (scaled by LATENT_SCALE, as official),
    work counters, (``record=True``) per-iteration ``trace`` dicts (z / sampled / x_T / step_noise / head
    statistics), and the final state in sequence layout: ``seq`` (B, L, C) and ``mask`` (B, L), 1 = unknown
    (a caller continues the loop from them, e.g. CSpD between its prefill, drafts and verification)."""

    tokens: torch.Tensor
    stats: dict = field(default_factory=dict)
    trace: list[dict] = field(default_factory=list)
    seq: torch.Tensor | None = None
    mask: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------------
# The generation loop (official ``MAR.sample_tokens``, research note §1.2) and its per-iteration plan
# ----------------------------------------------------------------------------------------------------

HeadSteps = int | str | Sequence[int] | Callable[[int, int], "int | str | Sequence[int]"] | None


def mask_len_at(step: int, num_iter: int, seq_len: int, remaining: int) -> int:
    """Tokens still masked after iteration ``step``: floor(L cos(pi/2 (step+1)/num_iter)), clamped to
    [1, remaining-1] (MAR's cosine schedule; at the last step everything left is predicted anyway)."""
    mask_ratio = math.cos(math.pi / 2.0 * (step + 1) / num_iter)
    return max(1, min(remaining - 1, math.floor(seq_len * mask_ratio)))


@lru_cache(maxsize=None)
def mask_lengths(num_iter: int, seq_len: int) -> tuple[int, ...]:
    """``mask_len_at`` of every iteration of a run from nothing known (the same for every row)."""
    out, remaining = [], seq_len
    for step in range(num_iter):
        remaining = mask_len_at(step, num_iter, seq_len, remaining)
        out.append(remaining)
    return tuple(out)


def cfg_at(cfg: float, schedule: str, seq_len: int, mask_len: int) -> float | torch.Tensor:
    """Muse-style CFG schedule: linear 1 + (cfg-1)(L - mask_len)/L (float32, as official) or constant."""
    if schedule == "linear":
        return 1 + (cfg - 1) * torch.tensor([seq_len - mask_len], dtype=torch.float32) / seq_len
    if schedule == "constant":
        return cfg
    raise ValueError(f"unknown cfg_schedule {schedule!r}; valid: ['constant', 'linear']")


@lru_cache(maxsize=256)
def _ddpm(key, max_timestep: int | None) -> DDPMSchedule:
    if isinstance(key, tuple):  # explicit timesteps: clipped first, so equal clipped lists share one object
        return DDPMSchedule.from_timesteps(clip_timesteps(key, max_timestep))
    return clip_schedule(DDPMSchedule.respaced(key), max_timestep)


def head_schedule(head_steps: HeadSteps, step: int, num_iter: int, default: int | str = "100",
                  max_timestep: int | None = None) -> DDPMSchedule:
    """The head's DDPM schedule at AR iteration ``step`` of ``num_iter``: ``head_steps`` is None (= ``default``,
    the config's ``num_sampling_steps``), an int / respacing string, an explicit timestep list, a
    ``StepSchedule`` (DiSA: ``timesteps(step, num_iter)``) or a callable ``(step, num_iter) -> any of those``;
    clipped at ``max_timestep`` (``MARConfig.max_timestep``). Equal specs give the same (immutable) object."""
    spec = head_steps
    if hasattr(spec, "timesteps") and callable(spec.timesteps):
        spec = spec.timesteps(step, num_iter)
    elif callable(spec):
        spec = spec(step, num_iter)
    spec = default if spec is None else spec
    key = tuple(int(t) for t in spec) if isinstance(spec, (list, tuple, torch.Tensor)) else spec
    return _ddpm(key, max_timestep)


@dataclass
class Iteration:
    """What one MAR iteration predicts.

    ``positions``: a bool (B, L) mask (head rows in (sample, position) order, MAR's own) or indices (B, n)
    (rows in (sample, index) order); ``cfg``: a float or one scale per conditional row (B*n,); ``final_noise``:
    the token is the last Gaussian step drawn with noise, N(final_mean, final_std^2) (CSpD's convention),
    instead of the head's output (its mean: MAR adds no noise at the last step); ``count``: tokens per row
    (known to the plan; None = counted from ``positions``)."""

    positions: torch.Tensor
    cfg: float | torch.Tensor = 1.0
    temperature: float = 1.0
    final_noise: bool = False
    count: int | None = None


@dataclass
class HeadCall:
    """The head's timesteps and noise for one iteration.

    ``schedule``: one DDPMSchedule for every row, or one per column of index positions (B, n) (columns with
    the same object share one head run; DiSA inside CSpD); ``noise``: supplied draws for the conditional rows
    (``HeadNoise`` x_T (B*n, C), steps (S_max, B*n, C) in loop order; a column runs the first S of them) or
    None: drawn from the generator in the official order."""

    schedule: DDPMSchedule | Sequence[DDPMSchedule]
    noise: HeadNoise | None = None


@runtime_checkable
class Plan(Protocol):
    """Per-iteration decisions of ``sample_tokens``; the loop owns the state, the forward and the head.

    ``iteration(step, orders)`` (no randomness) says which positions are predicted with which CFG scale;
    ``head(step, z_rows, model=, generator=, stats=)`` picks the head's timesteps and noise once the rows'
    conditions are known (an adaptive plan may measure them, drawing from ``generator``, and record what it
    did in ``stats``); it is called after the MAR pass and before the head samples."""

    num_iter: int
    guided: bool  # rows [cond; uncond] are run (cfg != 1 somewhere)

    def iteration(self, step: int, orders: torch.Tensor) -> Iteration: ...

    def head(self, step: int, z_rows: torch.Tensor, *, model: "MAR", generator: torch.Generator | None,
             stats: dict) -> HeadCall: ...


@dataclass(frozen=True)
class MaskedPlan:
    """MAR's own plan (research note §1.2): ``num_iter`` iterations of the cosine mask schedule, each
    predicting the next block from the END of every row's order; Muse CFG schedule (``cfg_at``); head
    timesteps per iteration from ``head_steps`` (see ``head_schedule``: a DiSA ``StepSchedule`` is a plan
    here); ``noises``: one ``HeadNoise`` per iteration to replay recorded draws instead of drawing."""

    num_iter: int = 64
    cfg: float = 1.0
    cfg_schedule: str = "linear"
    temperature: float = 1.0
    head_steps: HeadSteps = None
    noises: Sequence[HeadNoise] | None = None

    def __post_init__(self):
        if self.noises is not None and len(self.noises) != self.num_iter:
            raise ValueError(f"got {len(self.noises)} HeadNoise entries for {self.num_iter} iterations")
        cfg_at(self.cfg, self.cfg_schedule, 1, 1)  # validates the schedule name

    @property
    def guided(self) -> bool:
        return float(self.cfg) != 1.0

    def iteration(self, step: int, orders: torch.Tensor) -> Iteration:
        L = orders.shape[1]
        lens = mask_lengths(self.num_iter, L)  # host-side counts: no device sync
        remaining, mask_len = (L if step == 0 else lens[step - 1]), lens[step]
        lo = 0 if step == self.num_iter - 1 else mask_len  # the last iteration predicts everything left
        pos = torch.zeros(orders.shape, dtype=torch.bool, device=orders.device)
        pos.scatter_(-1, orders[:, lo:remaining], True)  # (B, L)
        cfg = float(cfg_at(self.cfg, self.cfg_schedule, L, mask_len))  # float32 value, exact as a Python float
        return Iteration(pos, cfg, self.temperature, count=remaining - lo)

    def head(self, step: int, z_rows: torch.Tensor, *, model: "MAR", generator, stats: dict) -> HeadCall:
        c = model.cfg
        sched = head_schedule(self.head_steps, step, self.num_iter, c.num_sampling_steps, c.max_timestep)
        return HeadCall(sched, None if self.noises is None else self.noises[step])


@dataclass
class Prediction:
    """One iteration's head output: ``tokens`` (B*n, C) for the conditional rows in head-row order, their
    ``head`` statistics (when a trajectory was run), the rows' conditions, work counts and (``record``) the
    trace dict of ``sample_tokens``."""

    tokens: torch.Tensor
    head: HeadStats | None
    z_rows: torch.Tensor
    head_steps: int
    head_rows: int
    trace: dict | None = None


def predict(model: "MAR", seq: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None, it: Iteration,
            head: HeadCall | Callable[[torch.Tensor], HeadCall], *, guided: bool,
            generator: torch.Generator | None, trajectory: bool = False, record: bool = False) -> Prediction:
    """One MAR iteration, nothing written: the MAR pass on the known tokens ``seq`` / ``mask`` (1 = unknown),
    the head on ``it.positions`` (``head``: a HeadCall, or a function of the rows' conditions returning one).
    ``trajectory`` (or ``record``, or ``it.final_noise``) runs ``DiffLoss.sample_trajectory`` and returns the
    rows' ``HeadStats``. Cost: one ``condition`` pass plus, per distinct schedule, S net calls on its rows."""
    z_rows = model.head_condition(seq, mask, labels, it.positions, cfg=guided)  # (R, dec), R = B*n (x2 guided)
    call = head(z_rows) if callable(head) else head
    n = len(z_rows) // 2 if guided else len(z_rows)
    trajectory = trajectory or record or it.final_noise
    kw = dict(temperature=it.temperature, generator=generator)
    if isinstance(call.schedule, DDPMSchedule):
        groups = [(None, call.schedule)]
    else:  # one schedule per column of (B, ncol) index positions: one head run per distinct schedule
        if it.positions.dtype == torch.bool or len(call.schedule) != it.positions.shape[1]:
            raise ValueError("per-column schedules need index positions (B, n) and one schedule per column")
        cols: dict[int, list[int]] = {}
        for j, sch in enumerate(call.schedule):
            cols.setdefault(id(sch), []).append(j)
        groups = [(js, call.schedule[js[0]]) for js in cols.values()]
        if len(groups) == 1:
            groups = [(None, groups[0][1])]
    parts, steps, rows_run, trace = [], 0, 0, None
    for js, sched in groups:
        if js is None:
            idx, z_g, cfg, noise = None, z_rows, it.cfg, call.noise
        else:
            B, ncol = it.positions.shape
            dev = z_rows.device
            idx = (torch.arange(B, device=dev)[:, None] * ncol + torch.tensor(js, device=dev)).reshape(-1)  # (B*|js|,)
            z_g = torch.cat([z_rows[idx], z_rows[n + idx]]) if guided else z_rows[idx]
            cfg = it.cfg[idx] if isinstance(it.cfg, torch.Tensor) and it.cfg.ndim else it.cfg
            noise = None if call.noise is None else HeadNoise(call.noise.x_T[idx], call.noise.steps[:, idx])
        if noise is not None and noise.steps.shape[0] != sched.num_steps:
            noise = HeadNoise(noise.x_T, noise.steps[: sched.num_steps])  # a shorter head: its first S draws
        rows = len(z_g) // 2 if guided else len(z_g)
        if trajectory:
            traj = model.head.sample_trajectory(z_g, schedule=sched, cfg=cfg, noise=noise, **kw)
            stats = HeadStats.of(traj, rows)
            parts.append((idx, stats))
            if record and js is None:
                trace = {"z": z_g, "sampled": traj.sample, "x_T": traj.x_T[:rows], "step_noise": traj.noise[:, :rows],
                         "cfg_iter": cfg, "timesteps": sched.timesteps, "head": stats}
        else:
            parts.append((idx, model.head.sample(z_g, schedule=sched, cfg=cfg, noise=noise, **kw)[:rows]))
        steps += sched.num_steps
        rows_run += sched.num_steps * len(z_g)
    if len(parts) == 1:
        out = parts[0][1]
    else:  # reassemble the groups in head-row order
        fields = HeadStats.FIELDS if trajectory else (None,)
        full = {f: None for f in fields}
        for idx, part in parts:
            for f in fields:
                val = part if f is None else getattr(part, f)
                if full[f] is None:
                    full[f] = val.new_empty((n,) + val.shape[1:])
                full[f][idx] = val
        out = HeadStats(*(full[f] for f in fields)) if trajectory else full[None]
    stats = out if trajectory else None
    tokens = out.sample if trajectory else out
    if it.final_noise:  # the last Gaussian step with the model's own noise (CSpD)
        tokens = stats.final_mean + stats.final_std * torch.randn(
            stats.final_mean.shape, generator=generator, device=stats.final_mean.device)
    return Prediction(tokens, stats, z_rows, steps, rows_run, trace)


def write_tokens(seq: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> None:
    """Write (B*n, C) head-row values at ``positions`` (bool (B, L) or indices (B, n)) in place; mark them known."""
    if positions.dtype == torch.bool:
        seq[positions] = values.to(seq.dtype)
        mask[positions] = 0.0
    else:
        ar = torch.arange(seq.shape[0], device=seq.device)[:, None]
        seq[ar, positions] = values.to(seq.dtype).reshape(positions.shape + values.shape[-1:])
        mask[ar, positions] = 0.0


@torch.no_grad()
def sample_tokens(model: MAR, labels: torch.Tensor | None, *, plan: Plan | None = None,
                  generator: torch.Generator | None = None, batch: int | None = None,
                  orders: torch.Tensor | None = None, state: tuple[torch.Tensor, torch.Tensor] | None = None,
                  record: bool = False, progress: bool = False, **settings) -> TokenSample:
    """Generate (B, C, h, w) token latents with MAR's masked-AR loop (research note §1.2), driven by a ``Plan``.

    - ``labels`` (B,) class ids, or None for unconditional (then ``batch``); the CFG null class is
      ``fake_latent``; guided plans run rows [cond; uncond] and guide eps.
    - ``plan``: per-iteration positions, CFG, head timesteps and noise. None builds MAR's own ``MaskedPlan``
      from ``settings`` (``num_iter=64, cfg=1.0, cfg_schedule="linear", temperature=1.0, head_steps=None,
      noises=None``, see ``MaskedPlan`` / ``head_schedule``); DiSA and CSpD pass their own plans.
    - ``generator`` (on the model's device) draws the per-sample orders (``randperm``, unless ``orders``
      (B, L) are given) and then whatever the plan and the head draw, in iteration order; same generator
      state = same output.
    - ``state``: (seq (B, L, C), mask (B, L)) to continue from (copied), e.g. CSpD's drafts; default nothing known.
    - ``record``: keep per-iteration z / sampled / x_T / step_noise (cond half) / head stats in ``trace``.

    Cost per iteration: one ``condition`` pass (encoder on buffer + #known rows, decoder on buffer + L rows,
    x2 under CFG) plus S head-net evaluations on the predicted rows (x2 under CFG).
    """
    if plan is None:
        plan = MaskedPlan(**settings)
    elif settings:
        raise ValueError(f"give MAR's settings or a plan, not both (got plan and {sorted(settings)})")
    c = model.cfg
    L = c.seq_len
    device = next(model.parameters()).device
    B = labels.shape[0] if labels is not None else batch
    if B is None:
        raise ValueError("give labels or batch")
    if not 1 <= plan.num_iter <= L:
        raise ValueError(f"num_iter must lie in [1, {L}] (more iterations than tokens leave empty steps)")
    if generator is None and (orders is None or getattr(plan, "noises", None) is None):
        raise ValueError("pass a torch.Generator (sampling never uses the global RNG)")
    if orders is None:
        orders = model.sample_orders(B, generator, device)
    orders = orders.to(device).long()
    if tuple(orders.shape) != (B, L) or not bool((orders.sort(-1).values == torch.arange(L, device=device)).all()):
        raise ValueError(f"orders must be {B} permutations of range({L})")
    labels = None if labels is None else labels.to(device)
    if state is None:
        seq, mask = torch.zeros(B, L, c.token_embed_dim, device=device), torch.ones(B, L, device=device)
    else:
        seq, mask = state[0].clone(), state[1].clone()
    out = TokenSample(seq, {"nfe_target": 0, "head_steps": 0, "head_rows": 0, "tokens_per_iter": [],
                            "steps_per_iter": []})
    for step in tqdm(range(plan.num_iter), disable=not progress, desc="MAR"):
        it = plan.iteration(step, orders)
        pred = predict(model, seq, mask, labels, it,
                       lambda z: plan.head(step, z, model=model, generator=generator, stats=out.stats),
                       guided=plan.guided, generator=generator, record=record)
        write_tokens(seq, mask, it.positions, pred.tokens)  # in place: z of this iteration is already computed
        out.stats["nfe_target"] += 1
        out.stats["head_steps"] += pred.head_steps
        out.stats["head_rows"] += pred.head_rows
        out.stats["tokens_per_iter"].append(it.count if it.count is not None else (
            it.positions.shape[1] if it.positions.dtype != torch.bool else int(it.positions[0].sum())))
        out.stats["steps_per_iter"].append(pred.head_steps)
        if record:
            out.trace.append(pred.trace)
    out.tokens, out.seq, out.mask = model.unpatchify(seq), seq, mask
    return out


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
