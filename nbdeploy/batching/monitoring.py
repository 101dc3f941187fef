"""A batch job's inputs monitored as the service's traffic is: drift and input quality.

A uniform sample of the input's feature columns (at most 20,000 rows, the same sample for
the same input: priority sampling with a fixed seed, in input order) is compared with the
version's drift profile (``drift-profile.json``, written at deploy time from the reference)
by :func:`nbdeploy.monitor.drift.compare`: per feature the drift status, the missing rate and
the share of values outside the reference's range. A version without a profile is
reported as having no reference; the job goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SAMPLE_ROWS = 20_000
SEED = 20_261_207
NO_REFERENCE = "no reference"


class Reservoir:
    """A uniform sample without replacement of at most ``size`` rows of a stream of
    DataFrames: every row gets a random key, the ``size`` smallest keys are kept."""

    def __init__(self, size: int = SAMPLE_ROWS, seed: int = SEED) -> None:
        import numpy as np

        self.size = size
        self.random = np.random.default_rng(seed)
        self.keys: Any = np.empty(0)
        self.frame: Any = None

    def add(self, rows: Any) -> None:
        """A chunk's rows (a pyarrow Table or a DataFrame). Once the sample is full, only
        the rows whose key is below the largest kept one can enter it: only those are
        converted and merged (the same sample, at a fraction of the cost)."""
        import numpy as np
        import pandas as pd

        count = 0 if rows is None else (rows.num_rows if hasattr(rows, "num_rows") else len(rows))
        if count == 0:
            return
        keys = self.random.random(count)
        if self.frame is not None and len(self.frame) >= self.size:
            entering = np.flatnonzero(keys < self.keys.max())
            if len(entering) == 0:
                return
            keys = keys[entering]
            rows = rows.take(entering) if hasattr(rows, "num_rows") else rows.iloc[entering]
        frame = rows.to_pandas() if hasattr(rows, "num_rows") else rows
        frame = frame.reset_index(drop=True)
        if self.frame is None:
            merged, all_keys = frame, keys
        else:
            merged = pd.concat([self.frame, frame], ignore_index=True)
            all_keys = np.concatenate([self.keys, keys])
        if len(merged) > self.size:
            keep = np.sort(np.argpartition(all_keys, self.size)[: self.size])
            merged, all_keys = merged.iloc[keep].reset_index(drop=True), all_keys[keep]
        self.frame, self.keys = merged, all_keys

    @property
    def rows(self) -> int:
        return 0 if self.frame is None else len(self.frame)


def load_profile(service_dir: str) -> Any:
    """The version's drift profile, or None (no reference, or an unreadable profile)."""
    from nbdeploy.monitor.drift import DriftError, ReferenceProfile
    from nbdeploy.monitor.reference import PROFILE_FILE

    path = Path(service_dir) / PROFILE_FILE
    if not path.is_file():
        return None
    try:
        return ReferenceProfile.load(path)
    except DriftError:
        return None


def drift_summary(profile: Any, sample: Any, records: bool) -> dict[str, Any]:
    """Status, drifted features and per-feature quality of the sample against the profile.
    For rows of numbers, the sample's columns are the reference's by position."""
    if profile is None:
        return {"status": NO_REFERENCE, "drifted": [], "rows": 0, "features": {}}
    if sample is None or len(sample) == 0:
        return {"status": "no-data", "drifted": [], "rows": 0, "features": {}}
    from nbdeploy.monitor.drift import compare

    if not records and len(sample.columns) == len(profile.columns):
        sample = sample.set_axis(list(profile.columns), axis=1)
    report = compare(profile, sample)
    return {
        "status": report.status,
        "drifted": report.drifted,
        "rows": report.rows,
        "features": {
            name: {
                "status": feature.status,
                "psi": feature.psi,
                "missing": feature.missing,
                "type_errors": feature.type_errors,
                "out_of_range": feature.out_of_range,
            }
            for name, feature in report.features.items()
        },
    }
