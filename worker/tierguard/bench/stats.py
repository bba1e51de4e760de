"""Statistics the benchmarks share."""

from __future__ import annotations

import numpy as np


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (numpy's linear interpolation)."""
    return float(np.percentile(np.array(values), q))
