"""The bundled zoo's models wired into ``accel bench`` entries: an explicit list, no module discovery.

Each entry builds its Method through the public API (``accel.load`` / ``accel.speculative`` / ...) from a
``BuildContext`` (zoo model name, device, dtype). ``registry()`` is what ``accel bench``, ``accel sample`` and
the experiment scripts use; ``plugins`` are extra modules of the user's that define ``BENCH_METHODS``.
"""
from __future__ import annotations

from accel.harness.registry import Registry, discover
from accel.presets import baselines, cache, cca, cspd, disa, distill, speculative

BENCH_METHODS = [*baselines.ENTRIES, *speculative.ENTRIES, *distill.ENTRIES, *disa.ENTRIES, *cache.ENTRIES,
                 *cspd.ENTRIES, *cca.ENTRIES]


def registry(plugins=()) -> Registry:
    """Every preset entry (and those of the ``plugins`` modules)."""
    return discover(("accel.presets", *plugins))
