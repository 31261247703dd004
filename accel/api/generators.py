"""Family generators: a network, its tokenizer and one :class:`~accel.api.sampling.Sampling`, behind
``generate(cond, *, generator) -> Sample`` (images in [0, 1], ``stats["tokens"]`` the generated tokens).

These are the unaccelerated baselines every technique is measured against (and what the techniques of
``accel.api.techniques`` wrap): LlamaGen with a static KV cache and batched CFG, MAR's masked-AR loop with its
diffusion head, VAR's KV-cached next-scale loop.

``generate`` (here and in every technique) runs under ``torch.inference_mode``: no version counters or view
bookkeeping on the cache writes, which is 1.16x on LlamaGen's batch-1 loop on the 2-core CPU (16% of its time
was autograd bookkeeping that ``no_grad`` keeps). Its tensors are inference tensors (``clone()`` to modify).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from accel.api.sampling import Sampling, llamagen_config, mar_kwargs, var_kwargs
from accel.distill.var_map import split_scales
from accel.harness.floor import Work, llamagen_work, mar_work, var_work
from accel.models.llamagen_generate import generate as llamagen_generate
from accel.models.mar import decode_tokens, sample_tokens
from accel.types import Sample
from accel.validate import check_labels


def labels(cond, num_classes: int, model: str) -> Tensor:
    """``cond`` as a (B,) long tensor, checked by the samplers' own rule (``accel.validate.check_labels``) under the
    API's argument name."""
    cond = torch.as_tensor(cond)
    check_labels(cond, num_classes, name="cond", model=model)
    return cond.long()


def llamagen_kv_bytes(cfg, rows: int, n_tokens: int, element_size: int) -> int:
    """Bytes of LlamaGen's static KV cache (``accel.models.llamagen.KVCache``) for ``rows`` sequences:
    ``2 · layers · rows · kv_heads · L_max · head_dim · element_size`` with L_max rounded up to 8."""
    max_len = -(-(cfg.cls_token_num + n_tokens) // 8) * 8
    return 2 * cfg.n_layer * rows * cfg.kv_heads * max_len * cfg.head_dim * element_size


@dataclass
class LlamaGenGenerator:
    """LlamaGen GPT + VQ tokenizer: next-token AR decoding (static KV cache, batched CFG)."""

    model: nn.Module  # accel.models.llamagen.Transformer
    tokenizer: nn.Module  # accel.models.llamagen_vq.VQModel
    sampling: Sampling = Sampling()
    cfg_interval: int = -1  # LlamaGen's: guidance for tokens t <= cfg_interval + 1 only; -1 = every token
    name: str = "llamagen-ar"
    defaults_from: str = "accel defaults"
    family = "llamagen"

    def __post_init__(self):
        self.config = llamagen_config(self.sampling, cfg_interval=self.cfg_interval)

    @property
    def params(self) -> dict:
        return {k: getattr(self.config, k) for k in ("cfg_scale", "cfg_interval", "temperature", "top_k", "top_p")}

    def with_sampling(self, **changes) -> "LlamaGenGenerator":
        extra = {k: changes.pop(k) for k in ("cfg_interval",) if k in changes}
        return replace(self, sampling=self.sampling.replace(**changes), **extra)

    @torch.no_grad()
    def tokens(self, cond: Tensor, *, generator: torch.Generator) -> Tensor:
        cond = labels(cond, self.model.config.num_classes, "LlamaGen")
        return llamagen_generate(self.model, cond, sc=self.config, generator=generator)

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        g = self.model.config.grid_size
        return ((self.tokenizer.decode_code(tokens, hw=(g, g)).float() + 1) / 2).clamp(0, 1)

    @torch.inference_mode()
    def generate(self, cond: Tensor, *, generator: torch.Generator) -> Sample:
        codes = self.tokens(cond, generator=generator)  # (B, L)
        rows = codes.size(0) * (2 if self.config.uses_cfg else 1)
        elt = self.model.tok_embeddings.weight.element_size()
        kv = llamagen_kv_bytes(self.model.config, rows, codes.size(1), elt)
        return Sample(self.decode(codes), {"nfe_target": codes.size(1), "kv_bytes": kv, "tokens": codes})

    def work_model(self, batch_size: int, bytes_per_element: int) -> Work:
        """FLOPs and bytes of one ``tokens`` call (the harness's hardware floor, accel/harness/README.md)."""
        return llamagen_work(self.model.config, batch_size, cfg_guidance=self.config.uses_cfg,
                             bytes_per_element=bytes_per_element)


@dataclass
class MARGenerator:
    """MAR + KL-VAE: masked AR over continuous tokens, each drawn by the diffusion head."""

    model: nn.Module  # accel.models.mar.MAR
    tokenizer: nn.Module  # accel.models.kl_vae.AutoencoderKL
    sampling: Sampling = Sampling()
    num_iter: int = 64  # masked-AR iterations (MAR's evaluation default)
    head_steps: int | str | None = None  # diffusion steps per token; None = the config's num_sampling_steps
    cfg_schedule: str = "linear"  # MAR's: guidance grows with the number of known tokens ("linear") or not
    name: str = "mar-default"
    defaults_from: str = "accel defaults"
    family = "mar"

    def __post_init__(self):
        if isinstance(self.num_iter, bool) or not isinstance(self.num_iter, int) or self.num_iter < 1:
            raise ValueError(f"num_iter={self.num_iter!r}: must be an int >= 1")
        if self.cfg_schedule not in ("linear", "constant"):
            raise ValueError(f"cfg_schedule={self.cfg_schedule!r}: must be 'linear' or 'constant'")
        self.kwargs = dict(num_iter=self.num_iter, cfg_schedule=self.cfg_schedule, **mar_kwargs(self.sampling))
        if self.head_steps is not None:
            self.kwargs["head_steps"] = self.head_steps

    @property
    def params(self) -> dict:
        return dict(self.kwargs)

    def with_sampling(self, **changes) -> "MARGenerator":
        extra = {k: changes.pop(k) for k in ("num_iter", "head_steps", "cfg_schedule") if k in changes}
        return replace(self, sampling=self.sampling.replace(**changes), **extra)

    @torch.no_grad()
    def tokens(self, cond: Tensor, *, generator: torch.Generator) -> Tensor:
        return self.sample(cond, generator=generator).tokens

    @torch.no_grad()
    def sample(self, cond: Tensor, *, generator: torch.Generator):
        cond = labels(cond, self.model.cfg.class_num, "MAR")
        return sample_tokens(self.model, cond, generator=generator, **self.kwargs)

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        return decode_tokens(self.tokenizer, tokens).float()

    @torch.inference_mode()
    def generate(self, cond: Tensor, *, generator: torch.Generator) -> Sample:
        out = self.sample(cond, generator=generator)
        stats = {k: v for k, v in out.stats.items() if k in ("nfe_target", "head_steps", "head_rows")}
        return Sample(self.decode(out.tokens), {**stats, "tokens": out.tokens})

    def work_model(self, batch_size: int, bytes_per_element: int) -> Work:
        """FLOPs and bytes of one ``sample`` call (the harness's hardware floor)."""
        return mar_work(self.model.cfg, batch_size, num_iter=self.num_iter, head_steps=self.head_steps,
                        cfg_guidance=self.sampling.cfg_scale != 1.0, bytes_per_element=bytes_per_element)


@dataclass
class VARGenerator:
    """VAR + multi-scale VQVAE: next-scale prediction, KV-cached, CFG on the doubled batch."""

    model: nn.Module  # accel.models.var.VAR
    tokenizer: nn.Module  # accel.models.var_vqvae.VQVAE
    sampling: Sampling = Sampling()
    more_smooth: bool = False  # VAR's Gumbel smoothing of the visuals (official demo option)
    name: str = "var-default"
    defaults_from: str = "accel defaults"
    family = "var"
    kwargs: dict = field(init=False, repr=False)

    def __post_init__(self):
        self.kwargs = dict(**var_kwargs(self.sampling), more_smooth=self.more_smooth)

    @property
    def params(self) -> dict:
        return dict(self.kwargs)

    def with_sampling(self, **changes) -> "VARGenerator":
        extra = {k: changes.pop(k) for k in ("more_smooth",) if k in changes}
        return replace(self, sampling=self.sampling.replace(**changes), **extra)

    @torch.no_grad()
    def sample(self, cond: Tensor, *, generator: torch.Generator):
        cond = labels(cond, self.model.num_classes, "VAR")
        return self.model.autoregressive_infer_cfg(self.tokenizer, cond.shape[0], cond, generator=generator,
                                                   **self.kwargs)

    @torch.no_grad()
    def tokens(self, cond: Tensor, *, generator: torch.Generator) -> Tensor:
        return torch.cat(self.sample(cond, generator=generator).idx_Bl, dim=1)

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        ids = split_scales(tokens, self.model.patch_nums)
        return ((self.tokenizer.idxBl_to_img(ids, last_one=True).float() + 1) / 2).clamp(0, 1)

    @torch.inference_mode()
    def generate(self, cond: Tensor, *, generator: torch.Generator) -> Sample:
        out = self.sample(cond, generator=generator)
        stats = {"nfe_target": len(out.idx_Bl), "kv_bytes": out.cache.peak_attended_bytes(),
                 "tokens": torch.cat(out.idx_Bl, dim=1)}
        return Sample(out.images.float(), stats)

    def work_model(self, batch_size: int, bytes_per_element: int) -> Work:
        """FLOPs and bytes of one ``sample`` call (the harness's hardware floor)."""
        return var_work(self.model.cfg, batch_size, vocab_size=self.model.V, Cvae=self.model.Cvae,
                        bytes_per_element=bytes_per_element, cfg_guidance=self.kwargs["cfg"] != 0)


GENERATORS = {"llamagen": LlamaGenGenerator, "mar": MARGenerator, "var": VARGenerator}
