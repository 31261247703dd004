"""``accel.compile``: ``torch.compile`` the networks a method runs at every decoding step, in place.

An explicit option, never a global setting: ``accel.compile(method, mode=...)`` (or ``accel.load(...,
compile=...)``) calls ``nn.Module.compile`` on the step networks it finds in ``method`` (the generator itself
or any technique wrapping generators), so attribute access, ``isinstance`` checks and state dicts are
unchanged and every object sharing a network (a technique and its baseline) runs the compiled one.

Which modules are compiled, per network (the ones called through ``module(...)`` once or more per step):

- LlamaGen ``Transformer`` (target or draft model): the whole network (one graph per forward; the decode
  loop passes ``kv_len`` as an int and keeps its buffers, ``accel.models.llamagen_generate``);
- EAGLE head: its decoder layer; Distilled Decoding students (LlamaGen and VAR): the whole network, since a
  student pass is one fixed-shape call (``predict`` and ``dd_step`` call ``forward``); compiling the whole pass
  measured 1.27x on the LlamaGen student at batch 1 on CPU where compiling its layers one by one gave 0.92-0.98x;
- VAR: each block and the head (``head_nm``, ``head``), whose forward the scale loop calls;
- MAR: each encoder and decoder block and the diffusion head's residual blocks and final layer (the head's
  sampler calls those, not ``net.forward``).

``parts`` chooses what is compiled: ``"networks"`` (default, the step networks above; tokenizers stay eager),
``"decoders"`` (only the tokenizers' image decoders, ``decoder_modules``: the decode every method pays once per
image, a student and its teacher alike) or ``"all"`` (both). The decoder switch is the shared fast decode of
issue #19: one explicit option that a baseline and the method it is compared with both receive (the harness
compiles every method of a group alike), so a speed-up ratio never credits a method with a faster decoder.
Compiled decoders give the eager images up to float rounding (tests/test_compile.py). Compilation happens at
the first call;
:func:`warm_up` runs that call and returns its wall time, so compile time is reported apart from the
steady-state latency. ``dynamic=None`` (default) traces the step networks with symbolic sizes (LlamaGen's
``kv_len`` grows by one per token, batch sizes vary), so one graph serves every step, and the fixed-shape
passes (DD students, image decoders) with static ones (:func:`static_shapes`).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from accel.distill.student_llamagen import DDLlamaGen
from accel.distill.student_var import DDVAR
from accel.models import kl_vae, llamagen_vq, var_vqvae
from accel.models.kl_vae import AutoencoderKL
from accel.models.llamagen import Transformer
from accel.models.llamagen_vq import VQModel
from accel.models.mar import MAR
from accel.models.var import VAR
from accel.models.var_vqvae import VQVAE
from accel.speculative.drafters import EagleHead

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PARTS = ("networks", "decoders", "all")
TOKENIZERS = (VQModel, AutoencoderKL, VQVAE)
STATIC = (DDLlamaGen, DDVAR, llamagen_vq.Decoder, kl_vae.Decoder, var_vqvae.Decoder)  # see static_shapes


def step_modules(net: nn.Module) -> list[nn.Module]:
    """The submodules of ``net`` that one decoding step calls through ``module(...)`` (see the module docstring);
    empty for a network accel does not know (it is then left eager)."""
    if isinstance(net, (Transformer, DDVAR)):  # DDLlamaGen is a Transformer; both students' passes call forward
        return [net]
    if isinstance(net, VAR):
        return [*net.blocks, net.head_nm, net.head]
    if isinstance(net, MAR):
        head = net.diffloss.net
        return [*net.encoder_blocks, *net.decoder_blocks, *head.res_blocks, head.final_layer]
    if isinstance(net, EagleHead):
        return [net.layer]
    return []


def decoder_modules(tokenizer: nn.Module) -> list[nn.Module]:
    """The image decoder of a tokenizer (LlamaGen ``decode_code``/``decode_vectors``, VAR ``fhat_to_img``, MAR
    ``decode`` all run ``self.decoder(self.post_quant_conv(z))``; the 1x1 ``post_quant_conv`` stays eager)."""
    return [tokenizer.decoder] if isinstance(tokenizer, TOKENIZERS) else []


def networks(method, depth: int = 3) -> list[nn.Module]:
    """The networks (not tokenizers) held by ``method``: its ``nn.Module`` attributes and those of the accel
    objects it holds (a drafter's model, ...), ``depth`` levels down, each once. ``method`` itself may be of
    any class (a plugin's); below it only accel objects are searched."""
    return [m for m in _held_modules(method, depth) if not isinstance(m, TOKENIZERS)]


def tokenizers(method, depth: int = 3) -> list[nn.Module]:
    """The tokenizers held by ``method``, found as :func:`networks` finds networks."""
    return [m for m in _held_modules(method, depth) if isinstance(m, TOKENIZERS)]


def _held_modules(method, depth: int) -> list[nn.Module]:
    found: dict[int, nn.Module] = {}
    seen: set[int] = set()

    def visit(obj, level):
        if id(obj) in seen or level > depth:
            return
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            found.setdefault(id(obj), obj)
            return
        if isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v, level)
            return
        if (level == 0 or type(obj).__module__.startswith("accel.")) and hasattr(obj, "__dict__"):
            for v in vars(obj).values():
                visit(v, level + 1)

    visit(method, 0)
    return list(found.values())


def compile(method, mode: str | bool | None = True, *, parts: str = "networks", dynamic: bool | None = None,  # noqa: A001
            fullgraph: bool = False):
    """Compile, in place, the step networks of ``method`` (a generator from ``accel.load`` or any technique)
    with ``torch.compile``; returns ``method``.

    ``mode``: ``True`` or ``"default"``, ``"reduce-overhead"`` (CUDA graphs on GPU), ``"max-autotune"``,
    ``"max-autotune-no-cudagraphs"``; ``False``/``None`` leaves ``method`` eager. ``parts``: ``"networks"``,
    ``"decoders"`` (the tokenizers' image decoders only) or ``"all"`` (see the module docstring). ``dynamic``:
    passed to ``torch.compile`` for every compiled module (True: symbolic sizes, one graph for every step;
    False: one graph per shape); ``None`` (default) chooses per module with :func:`static_shapes`. Compilation
    runs at the first call (see :func:`warm_up`)."""
    if mode is None or mode is False:
        return method
    if mode is True:
        mode = "default"
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: must be True, False, None or one of {list(MODES)}")
    if parts not in PARTS:
        raise ValueError(f"parts={parts!r}: must be one of {list(PARTS)}")
    modules = compiled_parts(method, parts)
    if not modules:
        what = {"networks": "network", "decoders": "tokenizer decoder", "all": "network or tokenizer decoder"}[parts]
        raise ValueError(f"method: found no {what} to compile in {type(method).__name__} (expected LlamaGen, MAR, "
                         "VAR, EAGLE or Distilled Decoding networks, or their tokenizers, among its attributes)")
    for m in modules:
        dyn = (not static_shapes(m)) if dynamic is None else dynamic
        m.compile(mode=None if mode == "default" else mode, dynamic=dyn, fullgraph=fullgraph)
    return method


def static_shapes(module: nn.Module) -> bool:
    """Whether ``module`` runs on one shape per batch size, so that static-shape graphs serve it (what
    ``compile(dynamic=None)`` picks): the Distilled Decoding students (one fixed-length pass, at most one graph
    per read-out step) and the tokenizers' image decoders (one image size). The step networks of LlamaGen
    (``kv_len`` grows by one per token), VAR (a new scale per step) and MAR (masks of varying counts) get
    symbolic sizes, one graph for every step. Batch 1, one CPU thread, interleaved, same run (session 10):
    static over symbolic was 1.06x for the LlamaGen student's whole ``generate`` (1.14x vs 1.08x over eager),
    and the VQ decoder 1.23x vs 1.06x over eager."""
    return isinstance(module, STATIC)


def compiled_parts(method, parts: str = "networks") -> list[nn.Module]:
    """The modules :func:`compile` would compile in ``method`` for ``parts`` (each once)."""
    found = []
    if parts in ("networks", "all"):
        found += [m for net in networks(method) for m in step_modules(net)]
    if parts in ("decoders", "all"):
        found += [m for tok in tokenizers(method) for m in decoder_modules(tok)]
    return list({id(m): m for m in found}.values())


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` was compiled in place (``nn.Module.compile``)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def warm_up(method, cond: torch.Tensor, *, generator: torch.Generator | None = None) -> float:
    """Run ``method.generate(cond)`` once and return its wall time in seconds: for a freshly compiled method,
    compilation plus one call (the compile time to report next to the steady-state latency)."""
    generator = generator or torch.Generator(cond.device).manual_seed(0)
    if cond.device.type == "cuda":
        torch.cuda.synchronize(cond.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        method.generate(cond, generator=generator)
    if cond.device.type == "cuda":
        torch.cuda.synchronize(cond.device)
    return time.perf_counter() - t0
