"""Results rows: one JSON object per line (JSONL), appended atomically (DESIGN.md §4).

Every row has all ``FIELDS`` (absent = ``null``) plus the environment and the exact command. A batch of rows
is appended by writing the whole new file beside the old one and renaming it over (``append_rows``), so an
interrupted run, even a SIGKILL, leaves either the whole batch or nothing, never half a line. The reader
refuses a broken line (with its line number) instead of skipping it.
"""
from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

import torch

FIELDS = (
    "experiment", "family", "model", "method", "params", "batch_size", "n_images", "seed",
    "latency_s", "latency_spread_s", "floor_s", "frac_floor", "images_per_s", "speedup", "baseline", "repeats",
    "nfe_target", "nfe_draft", "mean_accept_len", "acceptance_rate", "head_steps", "kv_bytes", "kv_fraction",
    "peak_mem_bytes", "peak_mem_kind",
    "fid", "fid_ci", "fid_floor", "fid_feature", "kid", "precision", "recall", "class_acc",
    "loglik_per_token", "psnr", "ssim", "token_agreement",
    "env", "command",
)  # DESIGN.md §4 lists the required subset; the rest are the harness's extras


def git_sha(cwd: str | Path | None = None) -> str | None:
    """``HEAD`` sha, suffixed ``-dirty`` when tracked files differ; None outside a git checkout."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    device = torch.device(device)
    env = {
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "git_sha": git_sha(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def current_command() -> str:
    """The command line of this process (``python -m accel ...`` when run as a module)."""
    prog = Path(sys.argv[0])
    head = f"python -m {prog.parent.name}" if prog.name == "__main__.py" else shlex.quote(prog.name)
    return " ".join([head, *(shlex.quote(a) for a in sys.argv[1:])])


def _clean(value: Any, key: str, nonfinite: list[str]) -> Any:
    """JSON-safe copy: tensors/numpy scalars to Python, non-finite floats to null (listed in ``nonfinite``)."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        nonfinite.append(f"{key}={value}")
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v, f"{key}.{k}", nonfinite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, f"{key}[{i}]", nonfinite) for i, v in enumerate(value)]
    return value


def make_row(**fields: Any) -> dict[str, Any]:
    """A row with every field of ``FIELDS`` (missing -> None); extra keys are kept after them.

    Non-finite floats (e.g. PSNR of identical images = inf) become null and are listed under ``nonfinite``.
    """
    nonfinite: list[str] = []
    row = {k: _clean(fields.get(k), k, nonfinite) for k in FIELDS}
    row.update({k: _clean(v, k, nonfinite) for k, v in fields.items() if k not in row})
    if nonfinite:
        row["nonfinite"] = nonfinite
    json.dumps(row, allow_nan=False)  # raises TypeError on anything not JSON-serialisable
    return row


def append_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Append rows to a JSONL file atomically: readers see the old file or the old file plus all new rows.

    The old content plus the new rows go to a temp file in the same folder (fsync), which then replaces the
    file. A single ``os.write`` is NOT all-or-nothing: a SIGKILL during a large write stops the kernel's page
    copy loop, leaving a torn last line (2 of 60 kills of a 100 kB-per-append writer did, before this).
    One writer per file (rank 0 in distributed runs): concurrent appenders would overwrite each other.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows).encode()
    if not data:
        return path
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        raise ValueError(f"{path} does not end with a newline (a torn line from another writer?); refusing to append")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(old + data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)  # the rename itself is durable
    finally:
        os.close(dfd)
    return path


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a JSONL file; a line that is not a JSON object raises ``ValueError`` naming file and line."""
    rows = []
    path = Path(path)
    text = path.read_text()
    if text and not text.endswith("\n"):
        raise ValueError(f"{path}: last line is not terminated (interrupted write?)")
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: broken JSON line ({e})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows
