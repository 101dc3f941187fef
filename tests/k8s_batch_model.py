"""The function tests/test_k8s_batch.py deploys: a module of its own that imports only
pandas, so that the version's snapshot of it loads in the batch image (which has no
pytest)."""

from __future__ import annotations

import pandas as pd


def frame_score(frame: pd.DataFrame) -> list[float]:
    if (frame["a"] > 1000).any():
        raise ValueError("a is above 1000")
    return (2 * frame["a"] + frame["b"] + frame["color"].cat.codes).round(6).tolist()
