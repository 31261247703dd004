"""accel's public API (re-exported by ``accel``): ``load`` a family generator, then one constructor per technique."""
from accel.api.compile import compile, warm_up
from accel.api.generators import LlamaGenGenerator, MARGenerator, VARGenerator
from accel.api.load import load, wrap
from accel.api.sampling import Sampling
from accel.api.techniques import (adaptive, constant, cosine, cspd, disa, distilled, exact, kv_compress, lantern, linear,
                                  pyramidkv, scalekv, size_gamma, size_tree, sliding, snapkv, speculative,
                                  streamingllm, two_stage)

__all__ = ["load", "wrap", "Sampling", "LlamaGenGenerator", "MARGenerator", "VARGenerator", "speculative", "exact",
           "lantern", "cspd", "disa", "linear", "cosine", "two_stage", "constant", "adaptive", "distilled",
           "kv_compress", "scalekv", "snapkv", "pyramidkv", "streamingllm", "sliding", "compile", "warm_up",
           "size_gamma", "size_tree"]
