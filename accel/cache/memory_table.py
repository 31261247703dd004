"""On-paper KV memory of full vs compressed caches for full-size configs (VAR calculator, no weights).

For each config, batch size and budget fraction f (uniform budget B_u(k) = floor(f H_k) at the compressed
scales, see ``budgets``; ScaleKV, PyramidKV and SnapKV keep the same per-scale totals, so the same bytes):

* ``full peak``: KV bytes the last scale attends to with the full cache (all L tokens, every layer);
* ``history into the last scale``: bytes held between the last two scales (full: H_{K-2} tokens; compressed:
  B_u(K-2)), i.e. the largest cache held between scales;
* ``kept %``: kept over full bytes summed over all compressed scales (the budget %, <= f, in bytes);
* ``peak attended``: the largest bytes any scale attends to under compression = kept history + that scale's
  fresh k/v. The last scale's own tokens are never evicted before it attends to them, which bounds how far
  the peak can fall (e.g. 4096 of 10,521 tokens at Infinity 1024 px);

fp16 (2 bytes), CFG doubles the rows (conditional + unconditional), as the official samplers.
"""
from __future__ import annotations

from accel.cache.budgets import uniform
from accel.models.var import VARConfig, var_config
from accel.models.var_calc import kv_bytes, var_cost

INFINITY_1M = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)  # Infinity's 1024 px schedule, 10,521 tokens


def configs() -> dict[str, VARConfig]:
    """Official VAR presets + Infinity-like self-attention stacks (2B: 32 x 2048, 8B: 40 x 3584; only the
    self-attention KV shape is modelled, not Infinity's text cross-attention)."""
    return {
        "VAR-d16 (256 px)": var_config("var-d16"),
        "VAR-d30 (256 px)": var_config("var-d30"),
        "VAR-d36-s (512 px)": var_config("var-d36-512"),
        "Infinity-2B-like (1024 px)": VARConfig(depth=32, embed_dim=2048, num_heads=16, patch_nums=INFINITY_1M),
        "Infinity-8B-like (1024 px)": VARConfig(depth=40, embed_dim=3584, num_heads=28, patch_nums=INFINITY_1M),
    }


def memory_rows(fractions=(0.04, 0.1, 0.2), batches=(1, 8), window: int = 16, bytes_per_element: int = 2) -> list[dict]:
    rows = []
    for name, cfg in configs().items():
        full = var_cost(cfg, bytes_per_element=bytes_per_element)
        for f in fractions:
            budget = uniform(cfg.patch_nums, cfg.depth, f, min_keep=window)
            S = budget.compressed_scales
            kept_tok = budget.kept_tokens()  # tokens kept after every scale
            comp = var_cost(cfg, bytes_per_element=bytes_per_element, kept=kept_tok)
            per_tok = kv_bytes(1, 1, cfg.embed_dim, bytes_per_element, 2)  # one layer, one token, CFG rows
            kept_c = sum(sum(kept_tok[k]) for k in S) * per_tok
            full_c = sum(budget.history[k] * cfg.depth for k in S) * per_tok
            K2 = len(cfg.patch_nums) - 2
            hist_kept, hist_full_b = sum(kept_tok[K2]) * per_tok, budget.history[K2] * cfg.depth * per_tok
            for bs in batches:
                rows.append({"config": name, "batch": bs, "fraction": f, "tokens": full.tokens,
                             "compressed_scales": f"{S[0]}-{S[-1]}" if S else "none",
                             "full_peak_bytes": full.kv_bytes_peak * bs,
                             "history_full_bytes": hist_full_b * bs, "history_kept_bytes": hist_kept * bs,
                             "kept_ratio": kept_c / full_c if full_c else None,
                             "peak_bytes": comp.kv_bytes_peak * bs,
                             "peak_ratio": comp.kv_bytes_peak / full.kv_bytes_peak})
    return rows


def markdown(rows: list[dict]) -> str:
    mb = lambda b: f"{b / 1e6:,.1f}"  # noqa: E731
    out = ["| config | batch | budget | compressed scales | full-cache peak MB | history into last scale MB: "
           "full -> kept | kept % (compressed scales) | compressed peak attended MB | peak % of full |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['config']} | {r['batch']} | {r['fraction']:.0%} | {r['compressed_scales']} | "
                   f"{mb(r['full_peak_bytes'])} | {mb(r['history_full_bytes'])} -> {mb(r['history_kept_bytes'])} | "
                   f"{100 * r['kept_ratio']:.1f} | {mb(r['peak_bytes'])} | {100 * r['peak_ratio']:.1f} |")
    return "\n".join(out)
