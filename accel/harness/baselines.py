"""The three families' unaccelerated baselines on the bundled zoo, and the zoo classifier as the harness's
feature reference. Every speed-up in ``accel bench`` is measured against one of these, in the same run.

- ``llamagen-ar``: LlamaGen next-token AR with a static KV cache and batched CFG
  (``accel.models.llamagen_generate.generate``), then VQ decoding.
- ``mar-default``: MAR's masked-AR loop with the diffusion head at the model card's step count
  (``accel.models.mar.sample_tokens``), then KL-VAE decoding.
- ``var-default``: VAR next-scale sampling with CFG and a full KV cache (``VAR.autoregressive_infer_cfg``).

Under ``--dtype bfloat16|float16`` the harness runs every ``generate`` in ``torch.autocast``; LlamaGen
also casts its GPT weights (as its official sampler does), MAR and VAR keep fp32 weights (as theirs do).

Sampling settings come from ``accel.zoo.sample.DEFAULTS`` (the settings each model card reports quality
for), so the baseline is the model as documented. ``kv_bytes`` is the exact byte count of the KV cache:
LlamaGen's static buffers (``2 · layers · rows · kv_heads · L_max · head_dim · element_size``, rows = 2B
under CFG, ``L_max`` rounded up to 8 as allocated) and VAR's peak attended cache (``KVCache.peak_attended_bytes``).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from accel.harness.quality import FeatureReference
from accel.harness.registry import BuildContext, MethodEntry
from accel.types import Sample

CLASSIFIER = "fmnist-cnn"


def load_reference(device: torch.device | str = "cpu") -> FeatureReference:
    """The zoo classifier's features and the shipped real test-set statistics (never the dataset itself)."""
    from accel import zoo

    clf = zoo.classifier(device=device)
    ref = zoo.reference_stats(CLASSIFIER)

    def extract(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return clf.features_logits(images.float().clamp(0, 1))

    stats = (ref["ref_mean"].double().numpy(), ref["ref_cov"].double().numpy())
    return FeatureReference(CLASSIFIER, extract, stats, ref["ref_bank"].double().numpy())


def _defaults(model: str) -> dict:
    from accel.zoo.sample import DEFAULTS

    return dict(DEFAULTS.get(model, {}))


def zoo_missing(model: str, *extra: str) -> str | None:
    """Why ``model`` cannot run from the zoo here (its weights, its tokenizer's, or ``extra`` zoo names are not
    trained in this copy), or None. Every bench entry's ``unavailable`` builds on this."""
    try:
        from accel import zoo

        need = [model, zoo.TOKENIZER[model], *extra]
        missing = [n for n in need if not zoo.is_available(n)]
    except (ImportError, AttributeError, KeyError) as e:
        return f"the zoo cannot provide {model!r} ({type(e).__name__}: {e})"
    return f"zoo weights not trained in this copy: {', '.join(missing)} (see `accel train`)" if missing else None


def _load_pair(ctx: BuildContext, *, cast: bool):
    """Generator and tokenizer on ``ctx.device``. ``cast``: weights in ``ctx.dtype`` (LlamaGen's official
    sampling casts the GPT); otherwise fp32 weights and the harness's autocast (MAR/VAR official practice)."""
    from accel import zoo

    model = zoo.load(ctx.model, device=ctx.device, dtype=ctx.dtype if cast else None)
    tokenizer = zoo.load(zoo.TOKENIZER[ctx.model], device=ctx.device)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------- LlamaGen
def llamagen_kv_bytes(cfg, rows: int, n_tokens: int, element_size: int) -> int:
    """Bytes of LlamaGen's static KV cache (accel.models.llamagen.KVCache) for ``rows`` sequences."""
    max_len = -(-(cfg.cls_token_num + n_tokens) // 8) * 8
    return 2 * cfg.n_layer * rows * cfg.kv_heads * max_len * cfg.head_dim * element_size


class LlamaGenAR:
    name = "llamagen-ar"

    def __init__(self, ctx: BuildContext):
        from accel.models.llamagen_generate import SamplingConfig

        self.model, self.tokenizer = _load_pair(ctx, cast=True)
        self.sc = replace(SamplingConfig(), **_defaults(ctx.model))
        self.params = {k: getattr(self.sc, k) for k in ("cfg_scale", "cfg_interval", "temperature", "top_k", "top_p")}

    def generate(self, cond: torch.Tensor, *, generator: torch.Generator) -> Sample:
        from accel.models.llamagen_generate import generate

        cfg = self.model.config
        codes = generate(self.model, cond, sc=self.sc, generator=generator)  # (B, L)
        g = cfg.grid_size
        x = self.tokenizer.decode_code(codes, hw=(g, g))
        rows = cond.shape[0] * (2 if self.sc.uses_cfg else 1)
        elt = self.model.tok_embeddings.weight.element_size()
        stats = {"nfe_target": codes.shape[1], "kv_bytes": llamagen_kv_bytes(cfg, rows, codes.shape[1], elt), "tokens": codes}
        return Sample(((x.float() + 1) / 2).clamp(0, 1), stats)

    def work_model(self, batch_size: int, bytes_per_element: int):
        from accel.harness.floor import llamagen_work

        return llamagen_work(self.model.config, batch_size, cfg_guidance=self.sc.uses_cfg,
                             bytes_per_element=bytes_per_element)


def llamagen_scorer(ctx: BuildContext):
    """Mean per-token log-likelihood of token sequences under the target's own sampling distribution
    (CFG, temperature and top-k/p exactly as the baseline samples), by one teacher-forced pass."""
    from accel.models.llamagen_generate import SamplingConfig, cfg_batch, guided_logits
    from accel.sampling import logits_to_probs

    model, _ = _load_pair(ctx, cast=True)
    sc = replace(SamplingConfig(), **_defaults(ctx.model))
    cls = model.config.cls_token_num

    def score(tokens: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        B, L = tokens.shape
        labels = cfg_batch(model, cond, sc.uses_cfg)
        idx = torch.cat([tokens, tokens]) if sc.uses_cfg else tokens
        logits = model(idx[:, :-1], labels, input_pos=torch.arange(cls + L - 1, device=tokens.device))  # (B', cls+L-1, V)
        logits = logits[:, cls - 1:]  # row t predicts token t
        lp = []
        for t in range(L):
            probs = logits_to_probs(guided_logits(logits[:, t], B, sc, t), sc.temperature, sc.top_k, sc.top_p)
            lp.append(probs.gather(-1, tokens[:, t:t + 1]).clamp_min(1e-30).log())  # 1e-30: token outside top-k/p
        return torch.cat(lp, dim=1).mean(dim=1)

    return score


# ---------------------------------------------------------------------------------------------------- MAR
class MARDefault:
    name = "mar-default"

    def __init__(self, ctx: BuildContext):
        self.model, self.vae = _load_pair(ctx, cast=False)
        self.settings = self.params = _defaults(ctx.model)

    def generate(self, cond: torch.Tensor, *, generator: torch.Generator) -> Sample:
        from accel.models.mar import decode_tokens, sample_tokens

        out = sample_tokens(self.model, cond, generator=generator, **self.settings)
        stats = {k: v for k, v in out.stats.items() if k in ("nfe_target", "head_steps", "head_rows")}
        return Sample(decode_tokens(self.vae, out.tokens).float(), stats)

    def work_model(self, batch_size: int, bytes_per_element: int):
        from accel.harness.floor import mar_work

        s = self.settings
        return mar_work(self.model.cfg, batch_size, num_iter=s.get("num_iter", 64), head_steps=s.get("head_steps"),
                        cfg_guidance=float(s.get("cfg", 1.0)) != 1.0, bytes_per_element=bytes_per_element)


# ---------------------------------------------------------------------------------------------------- VAR
class VARDefault:
    name = "var-default"

    def __init__(self, ctx: BuildContext):
        self.model, self.vae = _load_pair(ctx, cast=False)
        self.settings = self.params = _defaults(ctx.model)

    def generate(self, cond: torch.Tensor, *, generator: torch.Generator) -> Sample:
        out = self.model.autoregressive_infer_cfg(self.vae, cond.shape[0], cond, generator=generator, **self.settings)
        stats = {"nfe_target": len(out.idx_Bl), "kv_bytes": out.cache.peak_attended_bytes(),
                 "tokens": torch.cat(out.idx_Bl, dim=1)}
        return Sample(out.images.float(), stats)

    def work_model(self, batch_size: int, bytes_per_element: int):
        from accel.harness.floor import var_work

        return var_work(self.model.cfg, batch_size, vocab_size=self.model.V, Cvae=self.model.Cvae,
                        bytes_per_element=bytes_per_element)


BENCH_METHODS = [
    MethodEntry("llamagen-ar", "llamagen", LlamaGenAR, models=("fmnist-llamagen",), token_scorer=llamagen_scorer,
                unavailable=zoo_missing, params={"decode": "AR, static KV cache, batched CFG"}),
    MethodEntry("mar-default", "mar", MARDefault, models=("fmnist-mar",), unavailable=zoo_missing,
                params={"decode": "masked AR + diffusion head, model-card steps"}),
    MethodEntry("var-default", "var", VARDefault, models=("fmnist-var",), unavailable=zoo_missing,
                params={"decode": "next-scale, full KV cache, CFG"}),
]
