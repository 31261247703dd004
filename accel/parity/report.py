"""Shared reporting for `accel parity`: one line per check, unknown tensors are failures."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Check:
    name: str
    max_err: float
    tol: float
    ok: bool
    note: str = ""

    def line(self) -> str:
        status = "ok  " if self.ok else "FAIL"
        note = f"  ({self.note})" if self.note else ""
        return f"{status} {self.name:<48} max_err={self.max_err:.3g}  tol={self.tol:.3g}{note}"


@dataclass
class Report:
    """Checks of one fixture folder. ``unknown`` = tensors nobody checked (failures); ``skipped`` = whole
    files deliberately left to another component, listed by name."""

    checks: list[Check] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks) and not self.unknown

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def lines(self) -> list[str]:
        out = [c.line() for c in self.checks]
        out += [f"FAIL {k:<48} (tensor in fixture that accel does not know how to check)" for k in self.unknown]
        out += [f"skip {s}" for s in self.skipped]
        n_fail = sum(not c.ok for c in self.checks)
        unknown = f", {len(self.unknown)} unchecked tensors/files (failures)" if self.unknown else ""
        out.append(f"{len(self.checks)} checks, {n_fail} failed{unknown}, {len(self.skipped)} skipped: "
                   + ("PASS" if self.ok else "FAIL"))
        return out


def close(name: str, got: torch.Tensor, want: torch.Tensor, tol: float, note: str = "") -> Check:
    """Max absolute error check (shapes must match exactly; integer tensors need tol=0)."""
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    if tuple(got.shape) != tuple(want.shape):
        return Check(name, float("inf"), tol, False, f"shape {tuple(got.shape)} vs fixture {tuple(want.shape)}")
    if got.numel() == 0:
        return Check(name, 0.0, tol, True, note)
    err = (got.double() - want.double()).abs().max().item()
    ok = err <= tol and err == err  # NaN fails
    return Check(name, err, tol, ok, note)


def exact(name: str, got: torch.Tensor, want: torch.Tensor, note: str = "") -> Check:
    """Integer equality check; max_err is the number of mismatching entries."""
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    if tuple(got.shape) != tuple(want.shape):
        return Check(name, float("inf"), 0, False, f"shape {tuple(got.shape)} vs fixture {tuple(want.shape)}")
    n_bad = int((got.long() != want.long()).sum().item())
    return Check(name, float(n_bad), 0, n_bad == 0, note or "mismatching entries")


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return dict(load_file(str(path), device="cpu"))


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


class Tracker:
    """Tracks which tensors of a fixture file were consumed, so the rest are reported as unknown."""

    def __init__(self, tensors: dict[str, torch.Tensor], file: str):
        self.tensors, self.file, self.used = tensors, file, set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.used.add(key)
        return self.tensors[key]

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def keys(self):
        return self.tensors.keys()

    def unused(self) -> list[str]:
        return [f"{self.file}:{k}" for k in sorted(self.tensors) if k not in self.used]
