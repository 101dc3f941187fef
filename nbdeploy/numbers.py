"""Numbers as nbdeploy stores them: a metric is a finite float, or missing."""

from __future__ import annotations

import math
from typing import Any


def finite_or_none(value: Any) -> float | None:
    """A metric value as stored: a finite float, or None for NaN, infinities and non-numbers."""
    if value is None or isinstance(value, str):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None
