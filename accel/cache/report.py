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


def goal_check(rows: list[dict], budget: float = 0.1, ours: str = "scalekv",
               rivals: tuple[str, ...] = ("snapkv", "pyramidkv", "streamingllm")) -> str:
    """The issue's goal at ``budget``: higher PSNR and lower FID-vs-full than each rival, kept bytes <= budget."""
    at = {r["method"]: r for r in rows if r["experiment"] == "scalekv" and abs(r["params"]["budget"] - budget) < 1e-9}
    if ours not in at:
        return f"goal: no {ours} row at {budget:.0%}"
    o, lines = at[ours], []
    for m in rivals:
        if m not in at:
            continue
        r = at[m]
        p = o["psnr"] is not None and r["psnr"] is not None and o["psnr"] > r["psnr"]
        f = o["fid"] is not None and r["fid"] is not None and o["fid"] < r["fid"]
        lines.append(f"vs {m}: PSNR {_fmt(o['psnr'], '.2f')} vs {_fmt(r['psnr'], '.2f')} ({'met' if p else 'missed'}), "
                     f"FID vs full {_fmt(o['fid'], '.3f')} vs {_fmt(r['fid'], '.3f')} ({'met' if f else 'missed'})")
    kb = o["detail"]["kv_max_kept_ratio"]
    lines.append(f"kept bytes at the worst compressed scale = {kb:.3f} of full ({'met' if kb <= budget else 'missed'}: <= {budget:.0%})")
    return "\n".join(f"- {x}" for x in lines)
