"""Summaries of the exact cache bytes recorded by ``KVCache`` (accel/models/kv_cache.py), full cache vs compressed.

Budget % (tokens) and memory (bytes) are reported separately. For one decode:

* ``kept_bytes[k][l]``: bytes of k+v layer l keeps after scale k (what later scales attend to);
* ``attended_bytes[k][l]``: bytes of k+v scale k attended to (kept history + this scale's fresh entries);

and ``full_bytes(H_k)`` = what the full cache would hold, from the same per-token size.
"""
from __future__ import annotations


def memory_summary(kept: list[list[int]], attended: list[list[int]], full_kept: list[list[int]],
                   full_attended: list[list[int]], compressed_scales) -> dict:
    """Ratios of a compressed decode's cache bytes to the full-cache decode's (same model, batch, dtype).

    ``kept_ratio``: kept bytes summed over layers and compressed scales / the full cache's there.
    ``max_kept_ratio``: the worst single compressed scale. ``peak_attended_ratio``: largest bytes attended
    at any scale (the peak the attention needs) over the full cache's peak.
    """
    S = list(compressed_scales)
    tot = lambda t, ks: sum(sum(t[k]) for k in ks)  # noqa: E731
    kept_ratio = tot(kept, S) / tot(full_kept, S) if S else 1.0  # nothing compressed: all kept (never NaN)
    max_kept = max((sum(kept[k]) / sum(full_kept[k]) for k in S), default=1.0)
    peak = max(sum(r) for r in attended)
    full_peak = max(sum(r) for r in full_attended)
    return {"kv_kept_bytes": tot(kept, S), "kv_full_kept_bytes": tot(full_kept, S), "kv_kept_ratio": kept_ratio,
            "kv_max_kept_ratio": max_kept, "kv_peak_attended_bytes": peak, "kv_full_peak_attended_bytes": full_peak,
            "kv_peak_attended_ratio": peak / full_peak}
