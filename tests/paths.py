"""Where the parity fixtures are: ``$ACCEL_FIXTURES``, else ``shared/fixtures`` beside the checkout (the
layout of CI and of a developer's work tree), else /work/shared/fixtures."""
import os
from pathlib import Path


def fixtures(family: str) -> Path:
    for root in (os.environ.get("ACCEL_FIXTURES"), Path(__file__).resolve().parents[2] / "shared" / "fixtures",
                 "/work/shared/fixtures"):
        if root and (Path(root) / family).is_dir():
            return Path(root) / family
    return Path("/nonexistent/shared/fixtures") / family
