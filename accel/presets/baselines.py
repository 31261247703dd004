"""The three families' unaccelerated baselines on the bundled zoo. Every speed-up in ``accel bench`` is
measured against one of these, in the same run; they are the public generators of ``accel.load``.

- ``llamagen-ar``: LlamaGen next-token AR with a static KV cache and batched CFG, then VQ decoding.
- ``mar-default``: MAR's masked-AR loop with the diffusion head at the model card's step count, then KL-VAE.
- ``var-default``: VAR next-scale sampling with CFG and a full KV cache.

Under ``--dtype bfloat16|float16`` the harness runs every ``generate`` in ``torch.autocast``; LlamaGen also
casts its GPT weights (as its official sampler does), MAR and VAR keep fp32 weights (as theirs do).
``kv_bytes`` is the exact byte count of the KV cache: LlamaGen's static buffers (``2 · layers · rows ·
kv_heads · L_max · head_dim · element_size``, rows = 2B under CFG, L_max rounded up to 8) and VAR's peak
attended cache (``KVCache.peak_attended_bytes``).
"""
from __future__ import annotations

import torch

from accel.harness.registry import BuildContext, MethodEntry
from accel.presets.zoo_models import generator, zoo_missing
from accel.sampling import logits_to_probs
from accel.models.llamagen_generate import cfg_batch, guided_logits


def llamagen_ar(ctx: BuildContext):
    return generator(ctx, name="llamagen-ar")


def mar_default(ctx: BuildContext):
    return generator(ctx, name="mar-default", cast=False)


def var_default(ctx: BuildContext):
    return generator(ctx, name="var-default", cast=False)


def llamagen_scorer(ctx: BuildContext):
    """Mean per-token log-likelihood of token sequences under the target's own sampling distribution
    (CFG, temperature and top-k/p exactly as the baseline samples), by one teacher-forced pass."""
    g = generator(ctx)
    model, sc = g.model, g.config
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


ENTRIES = [
    MethodEntry("llamagen-ar", "llamagen", llamagen_ar, models=("fmnist-llamagen",), token_scorer=llamagen_scorer,
                unavailable=zoo_missing, params={"decode": "AR, static KV cache, batched CFG"}),
    MethodEntry("mar-default", "mar", mar_default, models=("fmnist-mar",), unavailable=zoo_missing,
                params={"decode": "masked AR + diffusion head, model-card steps"}),
    MethodEntry("var-default", "var", var_default, models=("fmnist-var",), unavailable=zoo_missing,
                params={"decode": "next-scale, full KV cache, CFG"}),
]
