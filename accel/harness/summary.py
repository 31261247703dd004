"""Markdown summary table of results rows (the table ``accel bench`` prints and writes to summary.md)."""
from __future__ import annotations

from typing import Any

COLUMNS = (  # (header, field, format)
    ("experiment", "experiment", "{}"),
    ("model", "model", "{}"),
    ("method", "method", "{}"),
    ("batch", "batch_size", "{}"),
    ("latency s", "latency_s", "{:.4g}"),
    ("± (IQR/2)", "latency_spread_s", "{:.2g}"),
    ("floor s", "floor_s", "{:.3g}"),
    ("fraction of floor", "frac_floor", "{:.3g}"),
    ("img/s", "images_per_s", "{:.3g}"),
    ("speed-up", "speedup", "{:.2f}x"),
    ("NFE target", "nfe_target", "{:.4g}"),
    ("NFE draft", "nfe_draft", "{:.4g}"),
    ("mean acc. len", "mean_accept_len", "{:.2f}"),
    ("acc. rate", "acceptance_rate", "{:.2f}"),
    ("head steps", "head_steps", "{:.4g}"),
    ("KV bytes", "kv_bytes", "{:,}"),
    ("KV frac", "kv_fraction", "{:.2f}"),
    ("peak mem MiB", "peak_mem_bytes", "mib"),
    ("of which before generate", "peak_mem_before_generate_bytes", "mib"),
    ("FID", "fid", "{:.2f}"),
    ("FID 95% CI", "fid_ci", "ci"),
    ("floor", "fid_floor", "{:.2f}"),
    ("KID", "kid", "{:.4f}"),
    ("prec.", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("class acc", "class_acc", "{:.3f}"),
    ("loglik/token", "loglik_per_token", "{:.3f}"),
    ("PSNR", "psnr", "{:.2f}"),
    ("SSIM", "ssim", "{:.3f}"),
)


def _fmt(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    if fmt == "mib":
        return f"{value / 2**20:.0f}"
    if fmt == "ci":
        return f"[{value[0]:.2f}, {value[1]:.2f}]"
    return fmt.format(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per row; columns that are empty in every row are dropped."""
    cols = [c for c in COLUMNS if any(r.get(c[1]) is not None for r in rows)]
    lines = ["| " + " | ".join(h for h, _, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(f), fmt) for _, f, fmt in cols) + " |")
    return "\n".join(lines)


def summary_markdown(rows: list[dict[str, Any]], *, command: str, plots: list[str] = (), notes: list[str] = ()) -> str:
    """summary.md: the command, the environment, the quality metric's honest name, the table, the plots."""
    env = rows[0].get("env", {}) if rows else {}
    feats = sorted({r["fid_feature"].split("[", 1)[1].split(",")[0] for r in rows if "[" in (r.get("fid_feature") or "")})
    parts = [
        "# accel bench results",
        "",
        f"Command: `{command}`",
        "",
        "Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()),
        "",
        "Speed-up = median latency of the baseline / median latency of the method, both timed in this run, "
        "interleaved, warm-up excluded. Peak memory kind: "
        + ", ".join(sorted({r["peak_mem_kind"] for r in rows if r.get("peak_mem_kind")}) or ["not measured"]) + ".",
    ]
    if any(r.get("frac_floor") is not None for r in rows):
        parts += ["", "`floor s` = the roofline floor of the generator's steps, max(FLOPs / matmul peak, bytes / "
                      "bandwidth) per step with the device's measured peak (accel/harness/README.md, \"Limit model\"); "
                      "`fraction of floor` = floor / median latency (1 = at the hardware limit)."]
    if feats:
        parts += ["", f"FID/KID/precision/recall use the penultimate features of the classifier {', '.join(feats)}, "
                      "not Inception: they are not comparable with published ImageNet numbers. `floor` is the FID of "
                      "the same number of real images; the FID interval is a normal bootstrap interval."]
    parts += ["", markdown_table(rows)]
    if notes:
        parts += ["", "Not run:", "", *[f"- {n}" for n in notes]]
    if plots:
        parts += ["", *[f"![{p}]({p})" for p in plots]]
    return "\n".join(parts) + "\n"
