"""The reference a version's traffic is compared with, profiled at deploy time.

``--reference X_train`` names the training inputs in the kernel. When a version is written,
they are summarized into ``drift-profile.json`` in its folder (see
:mod:`nbdeploy.monitor.drift`): per feature the bins, a sorted sample, the range and the
missing rate; and the model's predictions on a sample of them, so that prediction drift
has a baseline too. The profile is JSON, never a pickle: a container reads it as it is.
A reference that cannot be profiled, or a model that fails on it, costs the deploy
nothing but a notice: monitoring then reports what it can.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROFILE_FILE = "drift-profile.json"
MAX_PROFILE_ROWS = 200_000  # quantiles of a larger reference come from an even sample
MAX_PREDICTED_ROWS = 2_000  # rows scored for the predictions' baseline


def write_profile(
    reference: Any,
    version_dir: Path,
    *,
    answer: Callable[..., Any] | None,
    manifest: dict[str, Any],
    notify: Callable[[str], None],
) -> Path | None:
    """Profile ``reference`` (and ``answer``'s predictions on a sample of it) into
    ``version_dir``; the path written, or None (with a notice) when it could not be."""
    if reference is None:
        return None
    from nbdeploy.monitor.drift import DriftError, profile_predictions, profile_reference

    try:
        profile = profile_reference(_even_sample(reference, MAX_PROFILE_ROWS))
    except DriftError as error:
        notify(f"drift monitoring is off for this version: the reference {error}")
        return None
    if answer is not None and manifest["schema"].get("mode") != "hints":
        try:
            predictions = _predict(answer, manifest, _even_sample(reference, MAX_PREDICTED_ROWS))
            profile = dataclasses.replace(profile, prediction=profile_predictions(predictions))
        except Exception as error:  # the user's model on the user's data: report, go on
            notify(
                "prediction drift is off for this version: the model failed on the "
                f"reference ({type(error).__name__}: {str(error)[:200]})"
            )
    path = version_dir / PROFILE_FILE
    profile.save(path)
    return path


def _even_sample(data: Any, limit: int) -> Any:
    """At most ``limit`` rows of ``data``, evenly spaced (deterministic, order kept)."""
    length = len(data)
    if length <= limit:
        return data
    import numpy as np

    positions = np.linspace(0, length - 1, limit).round().astype(int)
    if hasattr(data, "iloc"):
        return data.iloc[positions]
    if isinstance(data, np.ndarray):
        return data[positions]
    return [data[int(i)] for i in positions]


def _predict(answer: Callable[..., Any], manifest: dict[str, Any], rows: Any) -> list[Any]:
    """One prediction per row, called as the service calls the version."""
    from nbdeploy.service.runtime import score_frame

    result = score_frame(answer, manifest, rows)
    predictions = list(result) if isinstance(result, list | tuple) else [result]
    if len(predictions) != len(rows):
        raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows")
    return predictions
