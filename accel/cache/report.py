"""Table and plot of a ScaleKV experiment's JSONL rows (quality vs budget per policy)."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def _fmt(x, spec):
    return "—" if x is None else format(x, spec)


def fidelity_table(rows: list[dict]) -> str:
    out = ["| budget | policy | PSNR dB ↑ | SSIM ↑ | token agreement ↑ | FID vs full ↓ | kept bytes / full "
           "(compressed scales) | worst scale | peak attended / full |", "|---|---|---|---|---|---|---|---|---|"]
    fid_name = next((r["fid_feature"] for r in rows if r.get("fid_feature")), None)
    for r in sorted((r for r in rows if r["experiment"] == "scalekv"), key=lambda r: (r["params"]["budget"], r["method"])):
        d = r["detail"]
        out.append(f"| {r['params']['budget']:.0%} | {r['method']} | {_fmt(r['psnr'], '.2f')} | {_fmt(r['ssim'], '.4f')} | "
                   f"{_fmt(r['token_agreement'], '.3f')} | {_fmt(r['fid'], '.3f')} | {_fmt(d['kv_kept_ratio'], '.3f')} | "
                   f"{_fmt(d['kv_max_kept_ratio'], '.3f')} | {_fmt(d['kv_peak_attended_ratio'], '.3f')} |")
    if fid_name:
        out.append(f"\nFID column: {fid_name}.")
    return "\n".join(out)


def peak_table(rows: list[dict]) -> str:
    out = ["| policy (10%) | max RSS after decode MB | max RSS before decode MB |", "|---|---|---|"]
    for r in rows:
        if r["experiment"] == "scalekv-peak-rss":
            d = r["detail"]
            out.append(f"| {r['method']} | {_fmt(d.get('after') and d['after'] / 1e6, '.1f')} | "
                       f"{_fmt(d.get('before') and d['before'] / 1e6, '.1f')} |")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> Path:
    rows = [r for r in rows if r["experiment"] == "scalekv"]
    fig = Figure(figsize=(10, 4))
    for i, (key, label) in enumerate((("psnr", "PSNR vs full (dB, higher better)"), ("fid", "FID vs full (lower better)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for m in sorted({r["method"] for r in rows}):
            pts = sorted((r["params"]["budget"], r[key]) for r in rows if r["method"] == m and r[key] is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=m)
        ax.set_xlabel("KV budget (kept tokens / full history, compressed scales)")
        ax.set_ylabel(label)
        ax.set_xscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
