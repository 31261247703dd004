"""The bundled model zoo: small models trained by accel on Fashion-MNIST (DESIGN.md §2)."""
from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
CARDS_DIR = Path(__file__).parent / "cards"
