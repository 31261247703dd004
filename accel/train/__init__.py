"""Resumable zoo training on ``accelerate``: the loop (``loop.fit``), EMA, and one recipe per zoo model."""
