"""DD1 student for LlamaGen (arXiv 2412.17153; research/dd_var_scalekv.md §2.3, released ``DDTransformer``).

The teacher's GPT (RMSNorm, SwiGLU, 2D RoPE, class token) with continuous token inputs: slot i holds either
the noise token eps_i or the mapped code q_i (``tok_embeddings = Linear(code_dim, dim)`` replaces the
embedding table), ``n_d_embed = Embedding(2, dim)`` marks data (1, also the class token) vs noise (0)
inputs, plain causal attention, and two heads read at slot i's own position: the teacher's logits head
(``norm`` + ``output``) predicting q_i's index, and ``final_layer_conti`` (LayerNorm without affine,
shift/scale from a learned table plus the class embedding, ``Linear(dim, code_dim)``) regressing q_i. As
released, the continuous head reads the last block's output *before* the final RMSNorm (``conti_prenorm``;
the first shipped student read it after, and its zoo file, which lacks the flag, still loads that way), and
the released DD config sets every dropout to 0 (``student_config``).

Sampling (trajectory X_1 = all noise, X_t = (q_<t, eps_>=t)): one step predicts every q_i from X_1; two
steps predict from X_1, keep the first ``t2`` predictions as data, put the *same* noise back at
positions >= t2, and predict again. ``default_t2``: the released second-step time, 80 of 256 tokens
(``eval_fewstep.py --t_list 0,80``), i.e. 0.3125 n.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dataclasses import replace

from accel.distill.depth import copy_renamed, teacher_blocks
from accel.models.llamagen import GPTConfig, Transformer
from accel.validate import check_finite

RELEASED_T2_FRACTION = 80 / 256  # LlamaGen-B/L two-step time in the released eval_fewstep.py


def default_t2(n: int) -> int:
    """The released second-step time scaled to ``n`` tokens (64 -> 20), at least 1 and below n."""
    return min(max(1, round(RELEASED_T2_FRACTION * n)), n - 1)


def student_config(teacher_cfg: GPTConfig) -> GPTConfig:
    """The teacher's config with every dropout at 0, as in the released DD config."""
    return replace(teacher_cfg, token_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0,
                   drop_path_rate=0.0)


class FinalLayer(nn.Module):
    """PixArt-style final layer: LN (no affine) modulated by (table + condition), then a linear map."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim ** 0.5)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:  # x (B, T, dim), c (B, dim)
        shift, scale = (self.scale_shift_table[None] + c[:, None]).chunk(2, dim=1)  # (B, 1, dim) each
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class DDLlamaGen(Transformer):
    """Student. ``codes`` (V, code_dim) is the token space (the VQ's l2-normalised codebook)."""

    def __init__(self, cfg: GPTConfig, codes: Tensor, conti_prenorm: bool = True):
        super().__init__(cfg)
        self.conti_prenorm = conti_prenorm  # continuous head on the last block's output before ``norm`` (released)
        code_dim = codes.size(1)
        self.tok_embeddings = nn.Linear(code_dim, cfg.dim)
        self.n_d_embed = nn.Embedding(2, cfg.dim)
        self.final_layer_conti = FinalLayer(cfg.dim, code_dim)
        self.register_buffer("codes", codes.detach().clone().float())
        # Per-class, per-position token frequencies of the teacher's samples (the training pairs): what the
        # naive one-step baseline samples from (accel.distill.methods), shipped with the student.
        self.register_buffer("marginals", torch.full((cfg.num_classes, cfg.block_size, codes.size(0)),
                                                     1.0 / codes.size(0)))

    @torch.no_grad()
    def init_from_teacher(self, teacher: Transformer) -> "DDLlamaGen":
        """Copy every teacher weight with the same name and shape; fit ``tok_embeddings`` by least squares so
        that a code's vector maps to the teacher's embedding of that code; zero the noise/data embedding."""
        own = self.state_dict()
        for k, v in teacher.state_dict().items():
            if k in own and own[k].shape == v.shape and not k.startswith("tok_embeddings"):
                own[k].copy_(v)
        A = torch.cat([self.codes, torch.ones(self.codes.size(0), 1)], 1)  # (V, d+1)
        sol = torch.linalg.lstsq(A, teacher.tok_embeddings.weight.float()).solution  # (d+1, dim)
        self.tok_embeddings.weight.copy_(sol[:-1].t())
        self.tok_embeddings.bias.copy_(sol[-1])
        self.n_d_embed.weight.zero_()
        return self

    @torch.no_grad()
    def init_with_student(self, deeper: "DDLlamaGen") -> "DDLlamaGen":
        """Copy a trained student of the same teacher with at least this many layers: layer i from the deeper
        student's layer ``teacher_blocks(deeper depth, depth)[i]`` (evenly spaced, first and last kept: 8 -> 4 is
        0, 2, 5, 7), every other tensor (embeddings, heads, marginals) as is. A shallower student so starts from
        what the deeper one learned of the DD map rather than from the teacher."""
        mine, theirs = self.config, deeper.config
        if (mine.dim, mine.n_head, mine.vocab_size, mine.block_size) != \
                (theirs.dim, theirs.n_head, theirs.vocab_size, theirs.block_size) or mine.n_layer > theirs.n_layer:
            raise ValueError(f"student (dim {mine.dim}, heads {mine.n_head}, vocab {mine.vocab_size}, "
                             f"{mine.block_size} tokens, {mine.n_layer} layers) cannot start from one with dim "
                             f"{theirs.dim}, heads {theirs.n_head}, vocab {theirs.vocab_size}, {theirs.block_size} "
                             f"tokens, {theirs.n_layer} layers")
        src = {f"layers.{i}.": f"layers.{t}." for i, t in enumerate(teacher_blocks(theirs.n_layer, mine.n_layer))}
        copy_renamed(self.state_dict(), deeper.state_dict(), src)
        self.conti_prenorm = deeper.conti_prenorm
        return self

    @torch.no_grad()
    def fit_marginals(self, tokens: Tensor, labels: Tensor, smoothing: float = 0.5) -> "DDLlamaGen":
        """Set ``marginals`` from teacher token sequences (N, n) with class labels (N,), add-``smoothing``."""
        C, n, V = self.marginals.shape
        counts = torch.full((C, n, V), smoothing)
        flat = (labels.long()[:, None] * n + torch.arange(n)[None]) * V + tokens.long()  # (N, n)
        counts.view(-1).index_add_(0, flat.reshape(-1), torch.ones(flat.numel()))
        self.marginals.copy_(counts / counts.sum(-1, keepdim=True))
        return self

    def predict(self, x: Tensor, cond: Tensor, n_data: int, conti: bool = True) -> tuple[Tensor, Tensor | None]:
        """x (B, n, code_dim) with data in slots < n_data and noise after -> (logits (B, n, V), conti (B, n, d));
        ``conti=False`` skips the continuous head (None in its place) when the read-out does not use it. Calls
        the module (``forward``), so ``accel.compile`` compiles one whole student pass."""
        return self(x, cond, n_data, conti)

    def forward(self, x: Tensor, cond: Tensor, n_data: int, conti: bool = True) -> tuple[Tensor, Tensor | None]:
        """One student pass (see :meth:`predict`); replaces the teacher's next-token forward."""
        B, n, _ = x.shape
        c = self.cls_embedding(cond)  # (B, 1, dim)
        h = torch.cat([c, self.tok_embeddings(x)], 1)  # (B, n+1, dim)
        is_data = (torch.arange(n + 1, device=x.device) <= n_data).long()  # class token + data slots
        h = self.tok_dropout(h + self.n_d_embed(is_data)[None])
        pos = torch.arange(n + 1, device=x.device)
        rope = self.freqs_cis[: n + 1]  # = freqs_cis[pos], a view
        for layer in self.layers:
            h = layer(h, rope, pos, None, None, 0)
        h = h[:, 1:]
        hn = self.norm(h)
        if not conti:
            return self.output(hn).float(), None
        return self.output(hn).float(), self.final_layer_conti(h if self.conti_prenorm else hn, c[:, 0]).float()

    def tokens_from(self, logits: Tensor, conti: Tensor, split: int) -> Tensor:
        """Slots < split take the logits' arg-max, slots >= split the code nearest the continuous output."""
        ids = logits.argmax(-1)
        if split < ids.size(1):
            near = torch.cdist(conti[:, split:].reshape(-1, conti.size(-1)), self.codes).argmin(-1)
            ids[:, split:] = near.view(ids.size(0), -1)
        return ids

    @torch.no_grad()
    def sample_vectors(self, cond: Tensor, noise: Tensor, t_list: tuple[int, ...] = (0,),
                       split: int | None = None) -> tuple[Tensor, Tensor]:
        """The released read-out (``get_final_sequence``): slots < ``split`` are the codes of the logits' arg-max,
        slots >= ``split`` the continuous head's outputs, unsnapped; a later step re-noises slots >= t from the same
        noise and keeps the vectors before t (Alg. 3). Returns vectors (B, n, d), to decode directly, and token ids
        (B, n) (arg-max before ``split``, nearest code after), for statistics."""
        if not t_list or t_list[0] != 0 or list(t_list) != sorted(set(t_list)):
            raise ValueError(f"t_list must start at 0 and increase (got {t_list})")
        n = noise.size(1)
        split = n if split is None else split
        if not 0 <= split <= n:
            raise ValueError(f"split={split}: must be in [0, {n}]")
        vec = None
        for t in t_list:
            x = noise if vec is None else torch.cat([vec[:, :t], noise[:, t:]], 1)
            logits, conti = self.predict(x, cond, t)
            for what, v in (("logits", logits), ("continuous outputs", conti)):  # one read per student pass
                check_finite(v, what=what, model="DD student (LlamaGen)", step=f"t={t}")
            new = torch.cat([self.codes[logits[:, :split].argmax(-1)], conti[:, split:].to(self.codes.dtype)], 1)
            vec = new if vec is None else torch.cat([vec[:, :t], new[:, t:]], 1)
        return vec, self.nearest(vec)  # before split the vectors are codes: their own ids

    def nearest(self, vec: Tensor) -> Tensor:
        """Ids of the codes nearest to vectors (B, m, d) -> (B, m)."""
        if vec.size(1) == 0:
            return vec.new_zeros(vec.shape[:2], dtype=torch.long)
        return torch.cdist(vec.reshape(-1, vec.size(-1)), self.codes).argmin(-1).view(vec.shape[:2])

    @torch.no_grad()
    def sample(self, cond: Tensor, noise: Tensor, t_list: tuple[int, ...] = (0,), split: int | None = None) -> Tensor:
        """Token ids (B, n) from noise (B, n, d) in ``len(t_list)`` student calls (t_list[0] must be 0)."""
        if not t_list or t_list[0] != 0 or list(t_list) != sorted(set(t_list)):
            raise ValueError(f"t_list must start at 0 and increase (got {t_list})")
        n = noise.size(1)
        split = n if split is None else split
        ids = None
        for t in t_list:
            x = noise if ids is None else torch.cat([self.codes[ids[:, :t]], noise[:, t:]], 1)
            logits, conti = self.predict(x, cond, t, conti=split < n)  # the snapped read-out needs no vectors
            for what, v in (("logits", logits), ("continuous outputs", conti)):  # one read per student pass
                if v is not None:
                    check_finite(v, what=what, model="DD student (LlamaGen)", step=f"t={t}")
            new = self.tokens_from(logits, conti, split)
            ids = new if ids is None else torch.cat([ids[:, :t], new[:, t:]], 1)
        return ids


def distill_loss(student: DDLlamaGen, noise: Tensor, tokens: Tensor, labels: Tensor, t: Tensor,
                 conti_weight: float = 1.0) -> tuple[Tensor, dict]:
    """accel's DD1 loss (the official one is unreleased): at the noise slots (>= t), cross-entropy of the
    logits against the teacher-map token ids plus ``conti_weight`` x MSE of the continuous head against
    the codes. One t per batch (the input layout depends on it)."""
    t = int(t)
    x = torch.cat([student.codes[tokens[:, :t]], noise[:, t:]], 1)
    logits, conti = student.predict(x, labels, t)
    ce = F.cross_entropy(logits[:, t:].reshape(-1, logits.size(-1)), tokens[:, t:].reshape(-1))
    mse = F.mse_loss(conti[:, t:], student.codes[tokens[:, t:]])
    return ce + conti_weight * mse, {"ce": ce.detach(), "mse": mse.detach()}
