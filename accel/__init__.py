"""accel: faster decoding for pretrained autoregressive image generators, measured honestly."""

__version__ = "0.1.0"
