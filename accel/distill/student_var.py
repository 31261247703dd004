"""DD1 student for VAR (arXiv 2412.17153; research/dd_var_scalekv.md §2.2, released ``DD_Model(VAR)``).

The teacher's VAR with patch_nums prefixed by an extra 1, so position 0 is the class token (sos) and
positions 1..L hold one slot per output token, in scale order. Slot inputs are *raw codebook vectors*
(Cvae dims, noise or data) through ``word_embed`` — not VAR's f_hat-interpolated teacher-forcing input.

* Mask (``attn_bias_for_masking``): a query at level a sees keys at levels <= a - 1 and itself, no other
  token of its own scale (levels: sos 0, scale k's slots k + 1). This mirrors the map's conditional
  independence within a scale: slot i's output may depend on its own noise and on earlier scales only.
* Noise/data embedding ``n_d_embed = Embedding(2, C)`` (1 = sos and data slots, 0 = noise slots) added to
  the input, and ``layerwise_n_d_embed``: depth + 1 ``Linear(C, C)`` maps of it, the i-th added inside
  block i between the attention and FFN residual branches, the last once before the heads. There is no
  time embedding; the data/noise flags and the mask carry the timestep.
* Heads: the teacher's ``head_nm`` + ``head`` (logits over V) and ``final_layer_conti`` (PixArt FinalLayer:
  LN without affine, shift/scale = ``scale_shift_table`` + class embedding, ``Linear(C, Cvae)``).

Timesteps are scale indices t: X_t holds data (mapped codes) for scales < t and the original noise from
scale t on (``perturb``). Output combination (released ``get_final_sequence``): slots of scales < ``split``
take the code of the logits' arg-max, later slots the continuous output; data slots pass their input
through (released ``final_predict``). One step: X_0 -> X_end; two steps: X_0 -> X_end, re-noise scales
>= t2 with the same noise, -> X_end again.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from accel.models.kv_cache import KVCache
from accel.types import CachePolicy
from accel.distill.depth import copy_renamed, teacher_blocks
from accel.distill.var_map import split_scales, tokens_before
from accel.models.var import VAR, VARConfig, mask_top_k_top_p, sample_from_logits
from accel.models.var_vqvae import VQVAE
from accel.validate import check_finite


class FinalLayer(nn.Module):
    """PixArt final layer: LN (no affine) modulated by (table + condition), then ``Linear(C, out)``."""

    def __init__(self, C: int, out_dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm_final = nn.LayerNorm(C, elementwise_affine=False, eps=eps)
        self.scale_shift_table = nn.Parameter(torch.randn(2, C) / C ** 0.5)
        self.linear = nn.Linear(C, out_dim)

    def forward(self, x_BLC: Tensor, c_BC: Tensor) -> Tensor:
        shift, scale = (self.scale_shift_table[None] + c_BC[:, None]).chunk(2, dim=1)  # (B, 1, C) each
        return self.linear(self.norm_final(x_BLC) * (1 + scale) + shift)


def dd_mask(levels: Tensor) -> Tensor:
    """(1, 1, n, n) additive mask: query q sees key k iff level(k) < level(q) or k == q."""
    lq, lk = levels.view(-1, 1), levels.view(1, -1)
    ok = (lq >= lk + 1) | torch.eye(levels.numel(), dtype=torch.bool, device=levels.device)
    return torch.where(ok, 0.0, -torch.inf).view(1, 1, levels.numel(), levels.numel())


class DDVAR(VAR):
    """Student for a teacher of config ``teacher_cfg``; ``codes`` (V, Cvae) is the VQVAE codebook."""

    def __init__(self, teacher_cfg: VARConfig, vocab_size: int, Cvae: int, codes: Tensor | None = None):
        super().__init__(replace(teacher_cfg, patch_nums=(1,) + tuple(teacher_cfg.patch_nums)), vocab_size, Cvae)
        self.teacher_cfg, self.tpns = teacher_cfg, tuple(teacher_cfg.patch_nums)
        self.attn_bias_for_masking = dd_mask(self.lvl_1L[0])  # (1, 1, L+1, L+1)
        C = self.C
        self.n_d_embed = nn.Embedding(2, C)
        self.layerwise_n_d_embed = nn.ModuleList([nn.Linear(C, C) for _ in range(self.depth + 1)])
        self.final_layer_conti = FinalLayer(C, Cvae, teacher_cfg.norm_eps)
        self.register_buffer("codes", torch.zeros(vocab_size, Cvae) if codes is None else codes.detach().clone().float())
        self.L_out = self.L - 1  # output slots = the teacher's L

    @classmethod
    def from_teacher(cls, teacher: VAR, vae: VQVAE, depth: int | None = None) -> "DDVAR":
        """A student of the teacher's shape, or with ``depth`` blocks (a smaller student: its blocks start from
        evenly spaced teacher blocks, ``teacher_blocks``)."""
        teacher.check_vae(vae)
        cfg = teacher.cfg if depth is None else replace(teacher.cfg, depth=depth)
        student = cls(cfg, teacher.V, teacher.Cvae, vae.quantize.embedding.weight)
        return student.to(teacher.pos_1LC.device).init_with_teacher(teacher)

    @torch.no_grad()
    def init_with_teacher(self, teacher: VAR) -> "DDVAR":
        """Copy every teacher weight (word_embed, all class_emb rows — the released code re-initialises row 1
        by mistake —, pos_start, blocks, shared AdaLN, head_nm, head); lvl_embed and pos_1LC shifted by the
        sos slot: student entry k + 1 = teacher entry k (slot of token k), and the sos slot gets the
        teacher's entry 0 (what its own sos position used). The new noise/data maps start at zero, so at
        init the student is the teacher's network on the DD layout: its sos slot reproduces the teacher's
        first-scale logits exactly and the noise/data flags change nothing."""
        if tuple(teacher.cfg.patch_nums) != self.tpns or (teacher.V, teacher.Cvae) != (self.V, self.Cvae):
            raise ValueError(f"teacher (patch_nums {teacher.cfg.patch_nums}, V {teacher.V}, Cvae {teacher.Cvae}) does not "
                             f"match this student (patch_nums {self.tpns}, V {self.V}, Cvae {self.Cvae})")
        own, skip = self.state_dict(), ("lvl_embed.weight", "pos_1LC", "lvl_1L", "attn_bias_for_masking", "pos_start")
        src = {f"blocks.{t}.": f"blocks.{i}." for i, t in enumerate(teacher_blocks(teacher.depth, self.depth))}
        for k, v in teacher.state_dict().items():
            if k in skip:
                continue
            if k.startswith("blocks."):
                pre = "blocks." + k.split(".")[1] + "."
                if pre not in src:
                    continue  # a teacher block the smaller student does not keep
                k = src[pre] + k[len(pre):]
            if k not in own or own[k].shape != v.shape:
                raise ValueError(f"teacher tensor {k} {tuple(v.shape)} has no student counterpart")
            own[k].copy_(v)
        self.pos_start.copy_(teacher.pos_start[:, :1])  # sos is one slot (teacher first_l is 1 for VAR schedules)
        self.lvl_embed.weight[1:].copy_(teacher.lvl_embed.weight)
        self.lvl_embed.weight[0].copy_(teacher.lvl_embed.weight[0])
        self.pos_1LC[:, 1:].copy_(teacher.pos_1LC)
        self.pos_1LC[:, 0].copy_(teacher.pos_1LC[:, 0])
        self.n_d_embed.weight.zero_()
        for lin in self.layerwise_n_d_embed:
            lin.weight.zero_()
            lin.bias.zero_()
        self.final_layer_conti.linear.weight.zero_()  # PixArt zero-initialises the output layer
        self.final_layer_conti.linear.bias.zero_()
        return self

    @torch.no_grad()
    def init_with_student(self, deeper: "DDVAR") -> "DDVAR":
        """Copy a trained student of the same teacher with at least this many blocks: block i and the layerwise
        noise/data map added inside it from the deeper student's block ``teacher_blocks(deeper.depth, depth)[i]``,
        the last layerwise map (before the heads) from its last, every other tensor as is. A smaller student so
        starts from what the deeper one learned on the DD layout rather than from the teacher."""
        if (deeper.tpns, deeper.V, deeper.Cvae, deeper.C) != (self.tpns, self.V, self.Cvae, self.C):
            raise ValueError(f"student (patch_nums {deeper.tpns}, V {deeper.V}, Cvae {deeper.Cvae}, width {deeper.C}) "
                             f"does not match this one (patch_nums {self.tpns}, V {self.V}, Cvae {self.Cvae}, width "
                             f"{self.C})")
        src = {f"blocks.{i}.": f"blocks.{t}." for i, t in enumerate(teacher_blocks(deeper.depth, self.depth))}
        src.update({f"layerwise_n_d_embed.{i}.": f"layerwise_n_d_embed.{t}."
                    for i, t in enumerate(teacher_blocks(deeper.depth, self.depth))})
        src[f"layerwise_n_d_embed.{self.depth}."] = f"layerwise_n_d_embed.{deeper.depth}."
        copy_renamed(self.state_dict(), deeper.state_dict(), src)
        return self

    # ------------------------------------------------------------------------------------------------
    def n_data(self, t: Tensor | int, B: int) -> Tensor:
        """(B,) number of data tokens for timestep(s) t (scale indices)."""
        accum = torch.tensor([tokens_before(self.tpns, s) for s in range(len(self.tpns) + 1)],
                             device=self.pos_1LC.device)
        t = torch.as_tensor(t, device=accum.device).long().expand(B)
        if (t < 0).any() or (t > len(self.tpns)).any():
            raise ValueError(f"timesteps must lie in 0..{len(self.tpns)}; got {t.tolist()}")
        return accum[t]

    def hidden(self, x_BLCv: Tensor, label_B: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor]:
        """Final hidden states (B, L+1, C) (position 0 = sos) and cond_BD; ``t`` an int or (B,) tensor."""
        B = x_BLCv.shape[0]
        if x_BLCv.shape[1:] != (self.L_out, self.Cvae):
            raise ValueError(f"x must be (B, {self.L_out}, {self.Cvae}); got {tuple(x_BLCv.shape)}")
        cond_BD = self.class_emb(label_B)
        sos = cond_BD.unsqueeze(1) + self.pos_start.expand(B, 1, -1)
        h = torch.cat((sos, self.word_embed(x_BLCv.float())), 1) + (self.lvl_embed(self.lvl_1L) + self.pos_1LC)
        pos = torch.arange(self.L, device=h.device)
        is_data = (pos[None] < 1 + self.n_data(t, B)[:, None]).long()  # (B, L+1): sos and data slots
        h = h + self.n_d_embed(is_data)  # (B, L+1, C)
        # layerwise maps of the two embedding rows, then looked up: lin(n_d_embed(f)) per slot, computed on 2 rows
        # instead of L+1 (the released code maps the (B, L+1, C) embedding; same values)
        rows = self.n_d_embed.weight  # (2, C)
        maps = [F.embedding(is_data, lin(rows)) for lin in self.layerwise_n_d_embed]  # each (B, L+1, C)
        h = self.run_blocks(h, self.shared_ada_lin(cond_BD), self.attn_bias_for_masking, mids=maps[:-1])
        return h + maps[-1], cond_BD

    def predict(self, x_BLCv: Tensor, label_B: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor]:
        """Logits (B, L, V) and continuous tokens (B, L, Cvae) at the output slots."""
        h, cond_BD = self.hidden(x_BLCv, label_B, t)
        h = h[:, 1:]
        return self.get_logits(h, cond_BD), self.final_layer_conti(h.float(), cond_BD).float()

    def forward(self, x_BLCv: Tensor, label_B: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor]:
        return self.predict(x_BLCv, label_B, t)

    # ------------------------------------------------------------------------------------------------
    def perturb(self, x_BLCv: Tensor, t: int, noise: Tensor) -> Tensor:
        """X_t: data from ``x`` for scales < t, the original ``noise`` from scale t on."""
        n = tokens_before(self.tpns, t)
        return torch.cat((x_BLCv[:, :n], noise[:, n:]), 1)

    def combine(self, logits: Tensor, conti: Tensor, split: int) -> Tensor:
        """Output vectors (B, L, Cvae): codes of the arg-max for scales < split, continuous after."""
        n = tokens_before(self.tpns, split)
        return torch.cat((self.codes[logits[:, :n].argmax(-1)], conti[:, n:]), 1)

    def nearest(self, vec_BLCv: Tensor) -> Tensor:
        """Index (B, L) of the code nearest to each vector."""
        B, L, d = vec_BLCv.shape
        return torch.cdist(vec_BLCv.reshape(-1, d).float(), self.codes).argmin(-1).view(B, L)

    @torch.no_grad()
    def dd_step(self, x: Tensor, label_B: Tensor, t: int, noise: Tensor, split: int) -> Tensor:
        """One DD call from X_t built out of ``x`` (data part) and ``noise``; data slots pass through."""
        xt = self.perturb(x, t, noise)
        logits, conti = self(xt, label_B, t)  # through the module: accel.compile compiles one whole pass
        for what, v in (("logits", logits), ("continuous outputs", conti)):  # one read per student pass
            check_finite(v, what=what, model="DD student (VAR)", step=f"t={t}")
        n = tokens_before(self.tpns, t)
        return torch.cat((xt[:, :n], self.combine(logits, conti, split)[:, n:]), 1)

    @torch.no_grad()
    def sample(self, label_B: Tensor, noise: Tensor, t_list: tuple[int, ...] = (0,),
               split: int = 0) -> tuple[Tensor, Tensor]:
        """Vectors (B, L, Cvae) and their nearest code ids (B, L) in ``len(t_list)`` student calls.
        ``t_list`` starts at 0 and increases (``(0,)``: one step; ``(0, t2)``: two steps)."""
        _check_t_list(t_list, len(self.tpns))
        x = noise
        for t in t_list:
            x = self.dd_step(x, label_B, t, noise, split)
        return x, self.nearest(x)

    @torch.no_grad()
    def sample_teacher_involved(self, teacher: VAR, vae: VQVAE, label_B: Tensor, noise: Tensor, *, t_mid: int,
                                teacher_start: int, generator: torch.Generator | None, split: int = 0,
                                cfg: float = 2.0, top_k: int = 0, top_p: float = 0.0,
                                policy: CachePolicy | None = None) -> tuple[Tensor, Tensor, dict]:
        """Released ``combine_sample``: a DD step from X_0, its scales < ``teacher_start`` snapped to codes,
        the teacher samples scales ``teacher_start..t_mid-1`` (its own sampling settings), the original
        noise for scales >= ``t_mid``, and a DD step from X_{t_mid}. Returns vectors, ids and pass counts.
        ``policy`` compresses the teacher's KV cache (its scale steps), as in ``CompressedVAR``."""
        if not 0 < teacher_start <= t_mid < len(self.tpns):
            raise ValueError(f"need 0 < teacher_start <= t_mid < {len(self.tpns)}; got {teacher_start}, {t_mid}")
        ids = self.nearest(self.dd_step(noise, label_B, 0, noise, split))
        teacher.check_vae(vae)
        st = teacher.begin(label_B, KVCache(teacher.depth, policy))
        per = split_scales(ids, self.tpns)
        for si in range(t_mid):
            logits = teacher.step(st, cfg)  # the teacher's pass over scale si (fills its KV cache)
            if si >= teacher_start:
                per[si] = sample_from_logits(mask_top_k_top_p(logits, top_k, top_p), generator)
            teacher.advance(st, vae, per[si])
        x = self.codes[torch.cat(per[:t_mid] + [ids[:, tokens_before(self.tpns, t_mid):]], 1)]
        out = self.dd_step(x, label_B, t_mid, noise, split)
        return out, self.nearest(out), {"student_passes": 2, "teacher_passes": st.passes}


def _check_t_list(t_list, SN: int) -> None:
    if not t_list or t_list[0] != 0 or list(t_list) != sorted(set(t_list)) or t_list[-1] >= SN:
        raise ValueError(f"t_list must start at 0 and increase below {SN} (got {tuple(t_list)})")


def decode_vectors(vae: VQVAE, vec_BLCv: Tensor, patch_nums) -> Tensor:
    """Images (B, 3, H, W) in [0, 1] from per-slot token vectors (codes or continuous): f_hat accumulated
    scale by scale (bicubic up + phi) as VAR does with looked-up codes, then decoded."""
    return vae.fhat_to_img(vectors_to_fhat(vae, vec_BLCv, patch_nums)).add(1).mul(0.5)


def vectors_to_fhat(vae: VQVAE, vec_BLCv: Tensor, patch_nums) -> Tensor:
    """f_hat (B, Cvae, H, W) accumulated scale by scale from per-slot token vectors (B, L, Cvae)."""
    B, L, Cvae = vec_BLCv.shape
    hs = [v.transpose(1, 2).reshape(B, Cvae, pn, pn)
          for v, pn in zip(vec_BLCv.split([pn * pn for pn in patch_nums], 1), patch_nums)]
    return vae.quantize.embed_to_fhat(hs, last_one=True)
