"""accel: faster decoding for pretrained autoregressive image generators (LlamaGen, MAR, VAR), measured honestly.

Load a generator (a bundled zoo model, an ``accel train`` run, or official checkpoint files), then wrap it
with one technique; every object has ``generate(cond, *, generator) -> Sample`` (images in [0, 1] and work
counters in ``stats``, tokens in ``stats["tokens"]``)::

    import torch, accel
    g = accel.load("fmnist-llamagen")                                   # card defaults: cfg_scale 2.0
    labels, seed = torch.tensor([0, 7]), torch.Generator().manual_seed(0)
    s = accel.speculative(g, accel.load("fmnist-llamagen-draft"), rule=accel.lantern(delta=0.1)).generate(labels, generator=seed)

Loading:
    load(name_or_path, *, tokenizer=None, family=None, config=None, device=None, dtype=None, **settings)
    wrap(network, tokenizer, **settings)
    Sampling(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0, greedy=False)  # the same meaning in every family

Techniques (each returns an object with ``generate``):
    speculative(target, draft, rule=exact() | lantern(delta, k=...), gamma=3 | "auto", tree=None)   LlamaGen
      tree: a static tree name, or an EAGLE-2 dynamic tree "dyn16-k8-d4" / "dynauto-k8-d4" (budget measured)
    size_gamma(speculative_method, batch_size=1)   the chain's γ measured on its device (what gamma="auto" does)
    size_tree(speculative_method, batch_size=1)    the dynamic tree's node budget measured (what "dynauto" does)
    cspd(target, draft, gamma=32, verify="left_to_right", schedule=None, relaxed=False, conditioning="released")    MAR
    (a draft or a DD student may be given by zoo name or file: "fmnist-llamagen-eagle-cfg", "fmnist-mar-draft-aligned")
    disa(mar, linear(50, 5) | cosine(...) | two_stage(...) | adaptive(...) | constant(n))  MAR
    distilled(teacher, student, steps=1 | 2, teacher_involved=None)                        LlamaGen, VAR
    kv_compress(model, policy=scalekv(0.1) | snapkv(...) | pyramidkv(...) | streamingllm(...) | sliding(...))  VAR, LlamaGen

Compilation (explicit, in place, of the networks a method runs per step; compile time = first call):
    compile(method, mode=True | "reduce-overhead" | "max-autotune", dynamic=None)   every generator and technique
    load(..., compile=True)                                                         the same, at loading
    warm_up(method, cond) -> seconds of the first (compiling) call

Compositions: ``cspd(..., schedule=linear(50, 5))`` (DiSA inside CSpD), ``distilled(..., teacher_involved=(a, b))``.
"""

__version__ = "0.1.0"

# Imported eagerly: the API's ``speculative`` function must shadow the ``accel.speculative`` package here.
from accel.api import (LlamaGenGenerator, MARGenerator, Sampling, VARGenerator, adaptive, compile, constant, cosine,  # noqa: E402
                       cspd, disa, distilled, exact, kv_compress, lantern, linear, load, pyramidkv, scalekv, sliding, snapkv,
                       size_gamma, size_tree, speculative, streamingllm, two_stage, warm_up, wrap)

__all__ = ["load", "wrap", "Sampling", "LlamaGenGenerator", "MARGenerator", "VARGenerator", "speculative", "exact",
           "lantern", "cspd", "disa", "linear", "cosine", "two_stage", "constant", "adaptive", "distilled",
           "kv_compress", "scalekv", "snapkv", "pyramidkv", "streamingllm", "sliding", "compile", "warm_up",
           "size_gamma", "size_tree"]
