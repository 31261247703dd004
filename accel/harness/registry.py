"""Which methods ``accel bench`` can run (no ``isinstance`` dispatch).

A module that offers benchmarkable methods defines ``BENCH_METHODS: list[MethodEntry]``; ``discover(modules)``
imports exactly the modules it is given (``accel.presets`` holds the zoo's explicit list; users add their
own) and collects those lists; the harness only ever calls ``entry.build(ctx) -> Method`` and
``Method.generate``. A module that fails to import is reported in ``Registry.errors`` (and by
``accel bench``), never skipped silently.

A technique entry names the baseline it is timed against (``baseline=``, the name of a baseline entry of
the same family); a baseline entry has ``baseline=None``.
"""
from __future__ import annotations

import importlib
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from accel.types import Method

@dataclass(frozen=True)
class BuildContext:
    """Everything a factory may use to build a Method: a zoo model name, device and dtype."""

    model: str
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32


@dataclass(frozen=True)
class MethodEntry:
    name: str
    family: str  # llamagen | mar | var
    build: Callable[[BuildContext], Method]
    models: tuple[str, ...]  # zoo models it runs on; the first is the default
    baseline: str | None = None  # name of the baseline entry timed as 1.0x; None: this entry is a baseline
    experiment: str = ""  # results grouping, e.g. "lantern"; empty = the family name
    params: dict[str, Any] = field(default_factory=dict)  # hyper-parameters recorded in each row
    quick: bool = True  # part of the no-argument preset
    reference_fidelity: bool = False  # lossy method: report PSNR/SSIM/token agreement vs the baseline's output
    # baseline entries only: builds ``score(tokens (B, L), cond (B,)) -> mean per-token log-lik (B,)`` of the target
    token_scorer: Callable[[BuildContext], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] | None = None
    # ``unavailable(model) -> reason or None``: e.g. zoo weights not trained in this copy
    unavailable: Callable[[str], str | None] | None = None

    def why_unavailable(self, model: str) -> str | None:
        return self.unavailable(model) if self.unavailable is not None else None

    def __post_init__(self):
        if not self.models:
            raise ValueError(f"method {self.name!r}: needs at least one model")
        if self.baseline is not None and self.token_scorer is not None:
            raise ValueError(f"method {self.name!r}: token_scorer belongs on the baseline entry")

    @property
    def group(self) -> str:
        return self.experiment or self.family


@dataclass
class Registry:
    entries: dict[str, MethodEntry] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # module -> import error
    modules: tuple[str, ...] = ()  # where the entries came from (so a subprocess can rediscover them)
    sources: dict[str, str] = field(default_factory=dict)  # method name -> module defining its BENCH_METHODS

    def add(self, entry: MethodEntry, source: str = "") -> None:
        if entry.name in self.entries:
            raise ValueError(f"method {entry.name!r} registered twice (again in {source or '?'})")
        self.entries[entry.name] = entry
        if source:
            self.sources[entry.name] = source

    def get(self, name: str) -> MethodEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise KeyError(f"unknown method {name!r}; valid: {', '.join(sorted(self.entries)) or '(none registered)'}") from None

    def models(self) -> list[str]:
        return sorted({m for e in self.entries.values() for m in e.models})

    def baseline_of(self, entry: MethodEntry) -> MethodEntry:
        if entry.baseline is None:
            return entry
        base = self.get(entry.baseline)
        if base.baseline is not None or base.family != entry.family:
            raise ValueError(f"{entry.name!r}: baseline {base.name!r} must be a baseline entry of family {entry.family}")
        return base


def discover(modules: Iterable[str]) -> Registry:
    """Collect ``BENCH_METHODS`` from each of ``modules`` (import paths), in order."""
    reg = Registry()
    used = []
    for name in dict.fromkeys(modules):
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a half-written plugin must not hide the others; reported
            reg.errors[name] = traceback.format_exc(limit=2).strip().splitlines()[-1]
            continue
        entries = getattr(mod, "BENCH_METHODS", None)
        if entries is None:
            continue
        for entry in entries:
            if not isinstance(entry, MethodEntry):
                raise TypeError(f"{name}.BENCH_METHODS must hold MethodEntry objects, got {type(entry).__name__}")
            reg.add(entry, name)
        used.append(name)
    reg.modules = tuple(used)
    return reg
