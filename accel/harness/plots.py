"""Plots from results rows only (DESIGN.md §4): quality vs speed-up per experiment, with the Pareto frontier
marked and the baseline at 1.0x, and quality vs KV budget for cache compression. PNG files.

Speed-ups are only comparable within one run, so each figure uses the latest run (``run_id``) of its
(experiment, model); one series per batch size. Uses matplotlib's object API (no pyplot global state).
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

LOWER_IS_BETTER = {"fid": True, "kid": True, "precision": False, "recall": False, "class_acc": False,
                   "psnr": False, "ssim": False, "token_agreement": False, "loglik_per_token": False}
_MARKERS = "osD^v<>p*"


def pareto_front(points: list[tuple[float, float]], *, lower_is_better: bool) -> list[int]:
    """Indices of points not dominated in (higher speed-up, better quality), sorted by speed-up."""
    def better_or_equal(a, b):
        return a <= b if lower_is_better else a >= b

    front = []
    for i, (s, q) in enumerate(points):
        dominated = any(
            s2 >= s and better_or_equal(q2, q) and (s2 > s or q2 != q) for j, (s2, q2) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _label(metric: str, rows: list[dict]) -> str:
    if metric == "fid":
        names = {r.get("fid_feature") for r in rows if r.get("fid_feature")}
        if len(names) == 1:
            return names.pop()
    return metric


def _latest_run(rows: list[dict]) -> list[dict]:
    runs = {r.get("run_id") for r in rows}
    if len(runs) <= 1:
        return rows
    latest = max(runs, key=lambda x: x or "")
    return [r for r in rows if r.get("run_id") == latest]


def experiment_groups(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict]]:
    """(experiment, model) -> that experiment's rows plus its baseline's rows from the same run."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("method") != r.get("baseline"):
            groups[(r.get("experiment") or "?", r.get("model") or "?")].append(r)
    out = {}
    for (exp, model), members in groups.items():
        members = _latest_run(members)
        keys = {(r.get("baseline"), r.get("run_id")) for r in members}
        base = [r for r in rows if r.get("model") == model and r.get("method") == r.get("baseline")
                and (r.get("method"), r.get("run_id")) in keys]
        out[(exp, model)] = base + members
    return out


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120)
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_quality_vs_speed(rows: list[dict], out_dir: str | Path, metric: str = "fid") -> list[Path]:
    lower = LOWER_IS_BETTER[metric]
    paths = []
    for (exp, model), grp in sorted(experiment_groups(rows).items()):
        grp = [r for r in grp if r.get(metric) is not None and r.get("speedup") is not None]
        if not grp:
            continue
        fig = Figure(figsize=(6.4, 4.4))
        ax = fig.add_subplot()
        for k, bs in enumerate(sorted({r["batch_size"] for r in grp})):
            sub = [r for r in grp if r["batch_size"] == bs]
            pts = [(r["speedup"], r[metric]) for r in sub]
            sc = ax.scatter(*zip(*pts), marker=_MARKERS[k % len(_MARKERS)], s=40, label=f"batch {bs}", zorder=3)
            front = pareto_front(pts, lower_is_better=lower)
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color=sc.get_facecolor()[0],
                    alpha=0.7, label=f"Pareto frontier (batch {bs})")
            for r, (x, y) in zip(sub, pts):
                ax.annotate(r["method"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.axvline(1.0, color="gray", lw=1, label="baseline (1.0x)")
        floors = [r["fid_floor"] for r in grp if metric == "fid" and r.get("fid_floor") is not None]
        if floors:
            ax.axhline(min(floors), color="black", ls=":", lw=1, label="real-vs-real floor")
        ax.set_xlabel("speed-up vs baseline (ratio of medians, same run)")
        ax.set_ylabel(f"{_label(metric, grp)} ({'lower' if lower else 'higher'} is better)")
        ax.set_title(f"{exp} on {model}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(_save(fig, Path(out_dir) / f"{_safe(exp)}_{_safe(model)}_{metric}_vs_speedup.png"))
    return paths


def kv_series(rows: list[dict], metric: str) -> dict[str, list[tuple[float, float]]]:
    """method -> sorted (kv_fraction, metric) points at the largest batch size; the baseline sits at 1.0."""
    rows = [r for r in rows if r.get(metric) is not None]
    bs = max((r["batch_size"] for r in rows), default=None)  # quality is per configuration; one batch size
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if r["batch_size"] == bs:
            frac = 1.0 if r.get("method") == r.get("baseline") else r.get("kv_fraction")
            if frac is not None:
                series[r["method"]].append((frac, r[metric]))
    return {k: sorted(v) for k, v in series.items()}


def plot_quality_vs_kv(rows: list[dict], out_dir: str | Path, metric: str = "fid") -> list[Path]:
    lower = LOWER_IS_BETTER[metric]
    paths = []
    for (exp, model), grp in sorted(experiment_groups(rows).items()):
        if not any((r.get("kv_fraction") or 1.0) < 1.0 and r.get("method") != r.get("baseline") for r in grp):
            continue
        series = kv_series(grp, metric)
        if not series:
            continue
        fig = Figure(figsize=(6.4, 4.4))
        ax = fig.add_subplot()
        for k, (name, pts) in enumerate(sorted(series.items())):
            is_base = any(r["method"] == name and r.get("method") == r.get("baseline") for r in grp)
            ax.plot(*zip(*pts), marker="*" if is_base else _MARKERS[k % len(_MARKERS)], ms=10 if is_base else 6,
                    label=f"{name} (full cache)" if is_base else name)
        ax.legend(fontsize=7)
        ax.set_xlabel("KV cache budget (fraction of the full cache's bytes)")
        ax.set_ylabel(f"{_label(metric, grp)} ({'lower' if lower else 'higher'} is better)")
        ax.set_title(f"{exp} on {model}: quality vs KV budget")
        fig.tight_layout()
        paths.append(_save(fig, Path(out_dir) / f"{_safe(exp)}_{_safe(model)}_{metric}_vs_kv.png"))
    return paths


def plot_all(rows: list[dict], out_dir: str | Path, metrics: tuple[str, ...] = ("fid",)) -> list[Path]:
    for m in metrics:
        if m not in LOWER_IS_BETTER:
            raise KeyError(f"unknown metric {m!r}; valid: {', '.join(LOWER_IS_BETTER)}")
    paths = []
    for m in metrics:
        paths += plot_quality_vs_speed(rows, out_dir, m)
        paths += plot_quality_vs_kv(rows, out_dir, m)
    return paths
