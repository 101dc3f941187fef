"""Data drift and data quality of a deployed model's inputs and predictions.

At deploy time, :func:`profile_reference` summarizes the training inputs the user names
(``--reference X_train``), and optionally the model's predictions on them, into a
:class:`ReferenceProfile`: a JSON file of a few hundred KB to a few MB (no pickle), which a
service or a container can read. Later, :func:`compare` sets a window of served inputs (and
predictions) against it and returns a :class:`DriftReport` with, for every feature:

* **data quality**, as shares of the window's rows: ``missing`` (None, NaN, +-inf or an absent
  key), ``type_errors`` (for a numeric feature, a value that is not a number; a string that
  reads as a number, ``"3.5"``, counts as the number), ``out_of_range`` (below the reference's
  minimum or above its maximum; for a categorical feature, a category the reference never had,
  or None when the reference had more categories than the profile keeps);
* **drift**: the population stability index (``psi``) and a test p-value, two-sample
  Kolmogorov-Smirnov for a numeric feature (``ks_p``), chi-square for a categorical one
  (``chi2_p``);
* a ``status``: "drift" when PSI >= 0.25, "warn" when PSI >= 0.1, else "ok" (see
  :class:`Thresholds`), or "no-data" when the window has fewer than ``min_rows`` (100) valid
  values of the feature. **The status comes from the PSI alone**; the p-values are reported but
  do not raise it: on windows of many thousand rows a test rejects for shifts far too small to
  matter, while the PSI measures how much the distribution moved, whatever the window size.

Predictions are compared the same way, with their own quality figures: the share of null
predictions (``null_rate``) and, for numbers, their ``mean`` and ``quantiles`` (p5, p50, p95),
for labels the share of each class (``classes``).

Inputs
------
The reference and the window are a pandas DataFrame (features are its columns), a 2-D numpy
array or a list of rows (features ``f0 .. fN-1``; in :func:`compare`, the columns of an array
are the reference's columns in order), a 1-D array (one feature, ``f0``), and for the window
also a list of JSON records ``{feature: value}`` as a service logs them, where keys may be
missing and values None. A window's features that the reference does not have are ignored and
listed (``unknown_features``); the reference's features that the window lacks count as
missing. A 2-D float array is read without any per-row Python work; records go through
``pandas.DataFrame.from_records`` when pandas is installed (pandas is imported only then, and
for DataFrames; scipy is not used).

A DataFrame's object, string, category and bool columns are categorical, its numeric columns
numeric, and its datetime-like columns are not monitored (``ReferenceProfile.ignored``). In an
object array or a list of rows, a column whose values are all numbers is numeric, any other is
categorical. Categories are compared as text (``True`` -> "True", ``3`` and ``3.0`` -> "3"); the
profile keeps the 50 most frequent ones and the count of the others.

Method
------
*PSI* = sum over bins of ``(c - r) * ln(c / r)``, with ``r`` and ``c`` the shares of the
reference's and of the window's valid values in each bin, each floored at 1e-4 so that an
empty bin counts without dividing by zero. Numeric bins are the reference's deciles: the cut
points are the values at the 10%, ..., 90% positions of the sorted reference, with repeated
ones merged (a column with heavy ties gets fewer, never empty, bins); the lowest and the
highest bins are open, so values outside the training range land there (and in
``out_of_range``). A constant reference column gets three bins: below, at and above its value.
Categorical bins are the kept categories and "other" (which also takes categories the
reference never had). PSI uses every row of the window. When nothing changed, the PSI is about
``(bins - 1) * (1/n + 1/N)`` for ``n`` window and ``N`` reference values by chance alone, about
0.09 for 100 rows: hence ``min_rows``, and windows of a few hundred rows or more are advisable.

*KS*: the statistic D = max |F_ref - F_cur| over the union of both samples, and the p-value of
``scipy.stats.ks_2samp(method="asymp")``: the survival function of the Kolmogorov statistic
D_en of a sample of ``en = round(m n / (m + n))`` values (Simard & L'Ecuyer, "Computing the
two-sided Kolmogorov-Smirnov distribution", J. Stat. Softw. 39(11), 2011: Durbin's matrix for
small ``en``, the Pelz-Good expansion, Smirnov's exact one-sided tail). The reference side is
the profile's sample: ``max_sample`` (10,000) evenly spaced order statistics of the sorted
reference, whose distribution function is within 1/10,000 of the full reference's; the window
side is at most 100,000 evenly spaced rows of the window's valid values (``KS_MAX_CURRENT``).
``m`` and ``n`` are these sample sizes, so the p-value is that of a 10,000-value reference.

*Chi-square*: the test of homogeneity of the 2 x K table of reference and window counts over
the bins above that have any count, without continuity correction (as
``scipy.stats.chi2_contingency(correction=False)``), df = K - 1; its p-value is the
regularized upper incomplete gamma function ``Q(df / 2, x / 2)`` (series or continued fraction,
as in Numerical Recipes, section 6.2).

Profile file
------------
``{"format": "nbdeploy-drift-profile", "version": 1, "rows": N, "columns": [...],
"features": {name: feature}, "prediction": feature or null}``, where a numeric feature is
``{"kind": "numeric", "rows", "missing", "min", "max", "edges": [...], "counts": [...],
"sample": base64 of the sorted sample as little-endian float64}`` (``counts`` has one more
entry than ``edges``: bin ``i`` holds the values in ``(edges[i-1], edges[i]]``) and a
categorical feature is ``{"kind": "categorical", "rows", "missing", "categories": {text:
count}, "other": count}``; ``missing`` is a count of rows.
"""

from __future__ import annotations

import base64
import json
import math
import numbers
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from nbdeploy.errors import NbdeployError
from nbdeploy.private_files import write_private_text

Kind: TypeAlias = Literal["numeric", "categorical"]
Status: TypeAlias = Literal["ok", "warn", "drift", "no-data"]
FloatArray: TypeAlias = "npt.NDArray[np.float64]"

NUMERIC: Final = "numeric"
CATEGORICAL: Final = "categorical"
OK: Final = "ok"
WARN: Final = "warn"
DRIFT: Final = "drift"
NO_DATA: Final = "no-data"

PSI_BINS: Final = 10
PSI_EPSILON: Final = 1e-4  # shares below this count as this much in the PSI
MAX_SAMPLE: Final = 10_000  # reference values kept (sorted) for the KS test
KS_MAX_CURRENT: Final = 100_000  # window values used by the KS test (PSI uses every row)
MAX_CATEGORIES: Final = 50  # categories kept per categorical feature; the rest is "other"
QUANTILES: Final = {"p5": 0.05, "p50": 0.5, "p95": 0.95}
PROFILE_FORMAT: Final = "nbdeploy-drift-profile"
PROFILE_VERSION: Final = 1
OTHER_CLASSES: Final = "(other)"  # key of the remaining classes in a prediction report
_TRANSPOSE_BLOCK_ROWS: Final = 16_384

_STATUS_ORDER: Final = {NO_DATA: 0, OK: 1, WARN: 2, DRIFT: 3}

__all__ = [
    "DEFAULT_THRESHOLDS",
    "CategoricalProfile",
    "DriftError",
    "DriftReport",
    "FeatureDrift",
    "FeatureProfile",
    "NumericProfile",
    "PredictionDrift",
    "ReferenceProfile",
    "Status",
    "Thresholds",
    "chi2_sf",
    "compare",
    "kolmogorov_sf",
    "ks_2samp",
    "population_stability_index",
    "profile_predictions",
    "profile_reference",
]


class DriftError(NbdeployError):
    """Data or a profile given to drift monitoring cannot be used as it is."""


# --- profiles ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NumericProfile:
    """A numeric feature of the reference: range, PSI bins and a sorted sample for KS.

    Bin ``i`` holds the values in ``(edges[i-1], edges[i]]``, the first and last bins are open;
    ``counts`` are the reference's valid values per bin. ``minimum`` and ``maximum`` are None
    when the reference has no valid value.
    """

    rows: int
    missing: int
    minimum: float | None
    maximum: float | None
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    sample: FloatArray

    kind: Kind = field(default=NUMERIC, init=False)

    @property
    def valid(self) -> int:
        """How many reference values were numbers (the others were missing)."""
        return self.rows - self.missing

    def to_dict(self) -> dict[str, Any]:
        sample = np.ascontiguousarray(self.sample, dtype="<f8").tobytes()
        return {
            "kind": NUMERIC,
            "rows": self.rows,
            "missing": self.missing,
            "min": self.minimum,
            "max": self.maximum,
            "edges": list(self.edges),
            "counts": list(self.counts),
            "sample": base64.b64encode(sample).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NumericProfile:
        sample = np.frombuffer(base64.b64decode(data["sample"]), dtype="<f8").astype(np.float64)
        edges = tuple(float(e) for e in data["edges"])
        counts = tuple(int(c) for c in data["counts"])
        if len(counts) != (len(edges) + 1 if counts else 0):
            raise ValueError("a numeric feature needs one more count than edges")
        return cls(
            rows=int(data["rows"]),
            missing=int(data["missing"]),
            minimum=None if data["min"] is None else float(data["min"]),
            maximum=None if data["max"] is None else float(data["max"]),
            edges=edges,
            counts=counts,
            sample=sample,
        )


@dataclass(frozen=True, eq=False)
class CategoricalProfile:
    """A categorical feature of the reference: counts of its most frequent categories (as
    text, most frequent first) and of all the others together (``other``)."""

    rows: int
    missing: int
    categories: dict[str, int]
    other: int

    kind: Kind = field(default=CATEGORICAL, init=False)

    @property
    def valid(self) -> int:
        """How many reference values were not missing."""
        return self.rows - self.missing

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": CATEGORICAL,
            "rows": self.rows,
            "missing": self.missing,
            "categories": dict(self.categories),
            "other": self.other,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CategoricalProfile:
        return cls(
            rows=int(data["rows"]),
            missing=int(data["missing"]),
            categories={str(k): int(v) for k, v in data["categories"].items()},
            other=int(data["other"]),
        )


FeatureProfile: TypeAlias = "NumericProfile | CategoricalProfile"


@dataclass(frozen=True, eq=False)
class ReferenceProfile:
    """What :func:`compare` needs of the training inputs (and predictions), JSON-serializable.

    ``columns`` are all the reference's columns in order (a window given as an array is read
    by position against them); ``features`` the monitored ones, ``ignored`` the others.
    """

    rows: int
    columns: tuple[str, ...]
    features: dict[str, FeatureProfile]
    prediction: FeatureProfile | None = None

    @property
    def ignored(self) -> tuple[str, ...]:
        """The reference's columns that are not monitored (datetime-like columns)."""
        return tuple(name for name in self.columns if name not in self.features)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "rows": self.rows,
            "columns": list(self.columns),
            "features": {name: feature.to_dict() for name, feature in self.features.items()},
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        if not isinstance(data, Mapping) or data.get("format") != PROFILE_FORMAT:
            raise DriftError(
                "this is not an nbdeploy drift profile",
                "build one with nbdeploy.monitor.drift.profile_reference(X_train)",
            )
        if data.get("version") != PROFILE_VERSION:
            raise DriftError(
                f"drift profile version {data.get('version')!r} is not supported "
                f"(this nbdeploy reads version {PROFILE_VERSION})",
                "build the profile again from the reference with this nbdeploy",
            )
        try:
            prediction = data["prediction"]
            return cls(
                rows=int(data["rows"]),
                columns=tuple(str(c) for c in data["columns"]),
                features={str(n): _feature_from_dict(f) for n, f in data["features"].items()},
                prediction=None if prediction is None else _feature_from_dict(prediction),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise DriftError(
                f"the drift profile is malformed ({type(error).__name__}: {error})",
                "build the profile again from the reference",
            ) from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile as a JSON file (atomically: readers never see half a file), owner-
        only: it summarises the reference data."""
        target = Path(path)
        write_private_text(target, json.dumps(self.to_dict(), allow_nan=False))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceProfile:
        """Read a profile written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DriftError(
                f"no drift profile at {path}",
                "deploy with --reference X_train so that the profile is written",
            ) from None
        except (OSError, ValueError) as error:
            raise DriftError(
                f"cannot read the drift profile {path}: {error}",
                "build the profile again from the reference",
            ) from None
        return cls.from_dict(data)


def _feature_from_dict(data: Mapping[str, Any]) -> FeatureProfile:
    if data["kind"] == NUMERIC:
        return NumericProfile.from_dict(data)
    if data["kind"] == CATEGORICAL:
        return CategoricalProfile.from_dict(data)
    raise ValueError(f"unknown feature kind {data['kind']!r}")


def profile_reference(
    reference: Any,
    *,
    predictions: Any = None,
    max_sample: int = MAX_SAMPLE,
    bins: int = PSI_BINS,
    max_categories: int = MAX_CATEGORIES,
) -> ReferenceProfile:
    """Profile the training inputs (and, if given, the model's predictions on them).

    ``reference``: a DataFrame, a 2-D array, a list of rows or a 1-D array (see the module
    docstring). ``predictions``: one prediction per row (numbers, or labels), or None.
    ``max_sample`` reference values per numeric feature are kept for the KS test, ``bins``
    quantile bins for the PSI, ``max_categories`` categories per categorical feature.
    """
    _check_profile_settings(max_sample, bins, max_categories)
    table = _read_table(reference, "the reference", names=None)
    if table.rows == 0:
        raise DriftError(
            "the reference has no rows",
            "pass the training inputs the model was fitted on, e.g. --reference X_train",
        )
    if not table.columns:
        raise DriftError(
            "the reference has no columns",
            "pass the training inputs the model was fitted on, e.g. --reference X_train",
        )
    features: dict[str, FeatureProfile] = {}
    for name, raw in table.columns.items():
        kind = table.kinds[name] if name in table.kinds else _infer_kind(raw)
        if kind is not None:
            features[name] = _profile_column(raw, kind, max_sample, bins, max_categories)
    if not features:
        raise DriftError(
            "the reference has no numeric or categorical column to monitor "
            f"(only {', '.join(table.columns)})",
            "pass the model's input features (numbers, text, categories or booleans)",
        )
    prediction = None
    if predictions is not None:
        prediction = profile_predictions(
            predictions, max_sample=max_sample, bins=bins, max_categories=max_categories
        )
    return ReferenceProfile(
        rows=table.rows, columns=tuple(table.columns), features=features, prediction=prediction
    )


def profile_predictions(
    values: Any,
    *,
    max_sample: int = MAX_SAMPLE,
    bins: int = PSI_BINS,
    max_categories: int = MAX_CATEGORIES,
) -> FeatureProfile:
    """Profile one prediction per row: numbers as a numeric feature, labels as categories.

    Integer class labels are numbers here; pass them as text (or a pandas categorical) to
    get the share of each class in reports.
    """
    _check_profile_settings(max_sample, bins, max_categories)
    raw, kind = _read_predictions(values, "the reference predictions")
    if raw.shape[0] == 0:
        raise DriftError(
            "the reference predictions are empty",
            "pass the model's predictions on the reference rows, e.g. model.predict(X_train)",
        )
    if kind is None:
        raise DriftError(
            f"predictions of dtype {raw.dtype} cannot be monitored",
            "pass numbers or labels, one per row",
        )
    return _profile_column(raw, kind, max_sample, bins, max_categories)


def _check_profile_settings(max_sample: int, bins: int, max_categories: int) -> None:
    if max_sample < 2:
        raise DriftError(f"max_sample must be at least 2, got {max_sample!r}")
    if bins < 2:
        raise DriftError(f"bins must be at least 2, got {bins!r}")
    if max_categories < 1:
        raise DriftError(f"max_categories must be at least 1, got {max_categories!r}")


def _profile_column(
    raw: npt.NDArray[Any], kind: Kind, max_sample: int, bins: int, max_categories: int
) -> FeatureProfile:
    rows = int(raw.shape[0])
    if kind == CATEGORICAL:
        counts, missing, type_errors = _category_counts(raw)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        kept = dict(ranked[:max_categories])
        other = sum(count for _, count in ranked[max_categories:])
        return CategoricalProfile(rows, missing + type_errors, categories=kept, other=other)
    values, missing, type_errors = _numeric_values(raw)
    missing += type_errors  # none in a column found numeric; values not used, in any case
    ordered = np.sort(values)
    if ordered.size == 0:
        empty = np.empty(0, dtype=np.float64)
        return NumericProfile(rows, missing, None, None, (), (), empty)
    edges = _bin_edges(ordered, bins)
    below_or_at = np.searchsorted(ordered, edges, side="right")
    per_bin = np.diff(np.concatenate(([0], below_or_at, [ordered.size])))
    return NumericProfile(
        rows=rows,
        missing=missing,
        minimum=float(ordered[0]),
        maximum=float(ordered[-1]),
        edges=tuple(float(e) for e in edges),
        counts=tuple(int(c) for c in per_bin),
        sample=_evenly_spaced(ordered, max_sample),
    )


def _bin_edges(ordered: FloatArray, bins: int) -> FloatArray:
    """Cut points of the PSI bins ``(e[i-1], e[i]]`` of sorted values: their quantiles at
    1/bins, ..., (bins-1)/bins (the value at or below each position), none repeated, and no
    bin left empty."""
    n = ordered.size
    positions = (np.arange(1, bins, dtype=np.int64) * (n - 1)) // bins
    edges = np.unique(ordered[positions])
    top = ordered[-1]
    if edges.size and edges[-1] >= top:  # the bin above the last cut would be empty
        edges = edges[:-1]
    if edges.size:
        return edges
    bottom = ordered[0]
    if bottom == top:  # constant: below, at and above the value
        return np.array([np.nextafter(top, -np.inf), top])
    # all cuts fell on the maximum (ties): everything below it, and the maximum
    return np.array([ordered[np.searchsorted(ordered, top, side="left") - 1]])


def _evenly_spaced(ordered: FloatArray, count: int) -> FloatArray:
    """At most ``count`` values at evenly spaced positions, first and last included."""
    n = ordered.size
    if n <= count:
        return ordered.copy()
    positions = (np.arange(count, dtype=np.int64) * (n - 1)) // (count - 1)
    return ordered[positions]


# --- reports -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """When a feature's status is "warn" or "drift" (PSI at or above), and the fewest valid
    values in a window for a status other than "no-data"."""

    psi_warn: float = 0.1
    psi_drift: float = 0.25
    min_rows: int = 100


DEFAULT_THRESHOLDS: Final = Thresholds()


@dataclass(frozen=True)
class FeatureDrift:
    """One feature of a window against the reference. Rates are shares of the window's rows
    (None for an empty window); ``psi`` and the p-values are None without valid values."""

    name: str
    kind: Kind
    rows: int
    missing: float | None
    type_errors: float | None
    out_of_range: float | None
    psi: float | None
    ks_p: float | None
    chi2_p: float | None
    status: Status

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rows": self.rows,
            "missing": self.missing,
            "type_errors": self.type_errors,
            "out_of_range": self.out_of_range,
            "psi": self.psi,
            "ks_p": self.ks_p,
            "chi2_p": self.chi2_p,
            "status": self.status,
        }


@dataclass(frozen=True)
class PredictionDrift(FeatureDrift):
    """The predictions of a window: drift as for a feature, and their quality.

    ``null_rate`` is the share of missing predictions; numbers have their ``mean`` and
    ``quantiles`` (p5, p50, p95), labels the share of each class (``classes``, the 50 most
    frequent and the rest as "(other)"). Without a prediction profile only these are given.
    """

    null_rate: float | None = None
    mean: float | None = None
    quantiles: dict[str, float] | None = None
    classes: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["null_rate"] = self.null_rate
        if self.kind == NUMERIC:
            data.update(mean=self.mean, quantiles=self.quantiles)
        else:
            data["classes"] = self.classes
        return data


@dataclass(frozen=True)
class DriftReport:
    """A window of served inputs (and predictions) against the reference profile.

    ``status`` is the worst of the features' and the predictions' (drift > warn > ok >
    no-data).
    """

    rows: int
    features: dict[str, FeatureDrift]
    prediction: PredictionDrift | None
    unknown_features: tuple[str, ...]
    status: Status

    @property
    def drifted(self) -> list[str]:
        """The features whose status is "drift"."""
        return [name for name, feature in self.features.items() if feature.status == DRIFT]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "features": {name: feature.to_dict() for name, feature in self.features.items()},
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
            "unknown_features": list(self.unknown_features),
            "status": self.status,
        }


def compare(
    profile: ReferenceProfile,
    current: Any,
    *,
    predictions: Any = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> DriftReport:
    """Drift and quality of a window of served inputs (and predictions) against ``profile``.

    ``current``: a DataFrame, a 2-D array or list of rows (columns are the reference's, in
    order), a 1-D array, or a list of records ``{feature: value}``. ``predictions``: one per
    row, or None. Nothing in the data raises: bad values are counted.
    """
    if not isinstance(profile, ReferenceProfile):
        raise DriftError(
            f"compare needs a ReferenceProfile, got a {type(profile).__name__}",
            "build one with profile_reference(X_train), or read one with "
            "ReferenceProfile.load(path)",
        )
    _check_thresholds(thresholds)
    table = _read_table(current, "the current window", names=profile.columns)
    features = {
        name: _compare_feature(name, feature, table.columns.get(name), table.rows, thresholds)
        for name, feature in profile.features.items()
    }
    known = set(profile.columns)
    unknown = tuple(name for name in table.columns if name not in known)
    prediction = None
    if predictions is not None:
        prediction = _compare_predictions(profile.prediction, predictions, thresholds)
    statuses = [f.status for f in features.values()]
    if prediction is not None:
        statuses.append(prediction.status)
    return DriftReport(
        rows=table.rows,
        features=features,
        prediction=prediction,
        unknown_features=unknown,
        status=_worst(statuses),
    )


def _check_thresholds(thresholds: Thresholds) -> None:
    if not 0.0 < thresholds.psi_warn <= thresholds.psi_drift:
        raise DriftError(
            f"PSI thresholds must satisfy 0 < warn <= drift, got warn {thresholds.psi_warn!r} "
            f"and drift {thresholds.psi_drift!r}",
            "the usual values are 0.1 (warn) and 0.25 (drift)",
        )
    if thresholds.min_rows < 1:
        raise DriftError(f"min_rows must be at least 1, got {thresholds.min_rows!r}")


def _worst(statuses: Iterable[Status]) -> Status:
    return max(statuses, key=_STATUS_ORDER.__getitem__, default=NO_DATA)


def _status(psi: float | None, valid: int, thresholds: Thresholds) -> Status:
    if psi is None or valid < thresholds.min_rows:
        return NO_DATA
    if psi >= thresholds.psi_drift:
        return DRIFT
    if psi >= thresholds.psi_warn:
        return WARN
    return OK


def _rate(count: int, rows: int) -> float | None:
    return count / rows if rows else None


def _compare_feature(
    name: str,
    profile: FeatureProfile,
    raw: npt.NDArray[Any] | None,
    rows: int,
    thresholds: Thresholds,
) -> FeatureDrift:
    if isinstance(profile, NumericProfile):
        values, missing, type_errors = _numeric_values(raw, rows)
        return _numeric_drift(name, profile, values, rows, missing, type_errors, thresholds)
    counts, missing, type_errors = _category_counts(raw, rows)
    return _categorical_drift(name, profile, counts, rows, missing, type_errors, thresholds)


def _numeric_drift(
    name: str,
    profile: NumericProfile,
    values: FloatArray,
    rows: int,
    missing: int,
    type_errors: int,
    thresholds: Thresholds,
) -> FeatureDrift:
    psi = ks_p = out_of_range = None
    if profile.minimum is not None and profile.maximum is not None:
        outside = np.count_nonzero(values < profile.minimum)
        outside += np.count_nonzero(values > profile.maximum)
        out_of_range = _rate(int(outside), rows)
    if values.size and profile.counts:
        # (edges[i-1], edges[i]] per bin, from how many values lie at or below each edge: a
        # comparison per edge is several times faster than np.searchsorted on 9 edges.
        at_or_below = [values.size - np.count_nonzero(values > edge) for edge in profile.edges]
        counts = np.diff(np.array([0, *at_or_below, values.size], dtype=np.int64))
        psi = population_stability_index(np.asarray(profile.counts), counts)
        current = _evenly_spaced_rows(values, KS_MAX_CURRENT)
        ks_p = _ks_sorted(profile.sample, np.sort(current))[1]
    return FeatureDrift(
        name=name,
        kind=NUMERIC,
        rows=rows,
        missing=_rate(missing, rows),
        type_errors=_rate(type_errors, rows),
        out_of_range=out_of_range,
        psi=psi,
        ks_p=ks_p,
        chi2_p=None,
        status=_status(psi, int(values.size), thresholds),
    )


def _evenly_spaced_rows(values: FloatArray, count: int) -> FloatArray:
    """At most ``count`` of the values, at evenly spaced rows (the window keeps its order)."""
    n = values.size
    if n <= count:
        return values
    return values[(np.arange(count, dtype=np.int64) * n) // count]


def _categorical_drift(
    name: str,
    profile: CategoricalProfile,
    counts: Counter[str],
    rows: int,
    missing: int,
    type_errors: int,
    thresholds: Thresholds,
) -> FeatureDrift:
    valid = sum(counts.values())
    reference = list(profile.categories.values())
    current = [counts.get(category, 0) for category in profile.categories]
    unseen = valid - sum(current)
    if profile.other or unseen:
        reference.append(profile.other)
        current.append(unseen)
    psi = chi2_p = None
    if valid and profile.valid:
        psi = population_stability_index(np.asarray(reference), np.asarray(current))
        chi2_p = _homogeneity_p_value(reference, current)
    return FeatureDrift(
        name=name,
        kind=CATEGORICAL,
        rows=rows,
        missing=_rate(missing, rows),
        type_errors=_rate(type_errors, rows),
        out_of_range=None if profile.other else _rate(unseen, rows),
        psi=psi,
        ks_p=None,
        chi2_p=chi2_p,
        status=_status(psi, valid, thresholds),
    )


def _compare_predictions(
    profile: FeatureProfile | None, predictions: Any, thresholds: Thresholds
) -> PredictionDrift:
    raw, inferred = _read_predictions(predictions, "the predictions")
    rows = int(raw.shape[0])
    kind = profile.kind if profile is not None else (inferred or CATEGORICAL)
    if kind == NUMERIC:
        values, missing, type_errors = _numeric_values(raw)
        if isinstance(profile, NumericProfile):
            drift = _numeric_drift(
                "prediction", profile, values, rows, missing, type_errors, thresholds
            )
        else:
            drift = _without_reference(NUMERIC, rows, missing, type_errors)
        quantiles = None
        if values.size:
            found = np.quantile(values, list(QUANTILES.values()))
            quantiles = {key: float(q) for key, q in zip(QUANTILES, found, strict=True)}
        return PredictionDrift(
            **_fields(drift),
            null_rate=_rate(missing, rows),
            mean=float(values.mean()) if values.size else None,
            quantiles=quantiles,
        )
    counts, missing, type_errors = _category_counts(raw)
    if isinstance(profile, CategoricalProfile):
        drift = _categorical_drift(
            "prediction", profile, counts, rows, missing, type_errors, thresholds
        )
    else:
        drift = _without_reference(CATEGORICAL, rows, missing, type_errors)
    return PredictionDrift(
        **_fields(drift), null_rate=_rate(missing, rows), classes=_class_shares(counts)
    )


def _without_reference(kind: Kind, rows: int, missing: int, type_errors: int) -> FeatureDrift:
    return FeatureDrift(
        name="prediction",
        kind=kind,
        rows=rows,
        missing=_rate(missing, rows),
        type_errors=_rate(type_errors, rows),
        out_of_range=None,
        psi=None,
        ks_p=None,
        chi2_p=None,
        status=NO_DATA,
    )


def _fields(drift: FeatureDrift) -> dict[str, Any]:
    return {name: getattr(drift, name) for name in FeatureDrift.__dataclass_fields__}


def _class_shares(counts: Counter[str]) -> dict[str, float]:
    total = sum(counts.values())
    if not total:
        return {}
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    shares = {label: count / total for label, count in ranked[:MAX_CATEGORIES]}
    rest = sum(count for _, count in ranked[MAX_CATEGORIES:])
    if rest:
        shares[OTHER_CLASSES] = rest / total
    return shares


# --- statistics ----------------------------------------------------------------------------


def population_stability_index(
    reference: npt.ArrayLike, current: npt.ArrayLike, epsilon: float = PSI_EPSILON
) -> float:
    """PSI between two histograms over the same bins (counts or shares): the sum of
    ``(c - r) * ln(c / r)`` over the bins' shares, each floored at ``epsilon``."""
    r = np.asarray(reference, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    r = np.maximum(r / r.sum(), epsilon)
    c = np.maximum(c / c.sum(), epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def ks_2samp(reference: npt.ArrayLike, current: npt.ArrayLike) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and asymptotic two-sided p-value of two
    samples (NaN left out), as ``scipy.stats.ks_2samp(a, b, method="asymp")``."""
    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(current, dtype=np.float64).ravel()
    a, b = np.sort(a[~np.isnan(a)]), np.sort(b[~np.isnan(b)])
    if a.size == 0 or b.size == 0:
        raise DriftError("the KS test needs at least one value in each sample")
    return _ks_sorted(a, b)


def _ks_sorted(a: FloatArray, b: FloatArray) -> tuple[float, float]:
    """:func:`ks_2samp` of two sorted, non-empty samples."""
    m, n = a.size, b.size
    both = np.concatenate((a, b))
    difference = np.searchsorted(a, both, side="right") / m
    difference -= np.searchsorted(b, both, side="right") / n
    statistic = float(np.max(np.abs(difference)))
    effective = max(1, round(m * n / (m + n)))
    return statistic, kolmogorov_sf(effective, statistic)


def kolmogorov_sf(n: int, d: float) -> float:
    """P(D_n >= d) for the two-sided one-sample Kolmogorov-Smirnov statistic of ``n`` values
    (as ``scipy.stats.kstwo.sf``), after Simard & L'Ecuyer (2011)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n!r}")
    if d >= 1.0:
        return 0.0
    if d <= 0.0:
        return 1.0
    t = n * d
    if t <= 1.0:  # Ruben & Gambino: exact for 1/(2n) <= d <= 1/n
        if t <= 0.5:
            return 1.0
        return _clip(1.0 - math.exp(_log_factorial_over_power(n) + n * math.log(2.0 * t - 1.0)))
    if t >= n - 1:  # Ruben & Gambino: exact for d >= 1 - 1/n
        return _clip(2.0 * (1.0 - d) ** n)
    nd2 = t * d
    if nd2 >= 370.0:
        return 0.0
    if d >= 0.5 or nd2 >= 2.2:  # twice the one-sided tail: exact beyond 0.5, close enough here
        return _clip(2.0 * _smirnov_sf(n, d))
    if n <= 140:
        return _clip(1.0 - _durbin_cdf(n, d))
    return _clip(1.0 - _pelz_good_cdf(n, d))


def _clip(probability: float) -> float:
    return min(1.0, max(0.0, probability))


def _log_factorial_over_power(n: int) -> float:
    """log(n! / n**n)."""
    return math.lgamma(n + 1) - n * math.log(n)


def _smirnov_sf(n: int, d: float) -> float:
    """P(D+_n >= d), exactly (Birnbaum & Tingey, 1951), summed in logarithms."""
    j = np.arange(0, math.floor(n * (1.0 - d)) + 1, dtype=np.float64)
    log_binomial = np.concatenate(([0.0], np.cumsum(np.log((n - j[1:] + 1.0) / j[1:]))))
    below = np.maximum(1.0 - d - j / n, 0.0)  # 0 at most once, where its term is 0
    with np.errstate(divide="ignore"):
        log_terms = log_binomial + (n - j) * np.log(below) + (j - 1.0) * np.log(d + j / n)
    return float(d * np.exp(log_terms).sum())


def _durbin_cdf(n: int, d: float) -> float:
    """P(D_n < d), exactly, by Durbin's matrix (Marsaglia, Tsang & Wang, 2003); n <= 140."""
    k = int(n * d) + 1
    size = 2 * k - 1
    h = k - n * d
    index = np.arange(size)
    lag = index[:, None] - index[None, :] + 1
    matrix = (lag >= 0).astype(np.float64)
    matrix[:, 0] -= h ** (index + 1.0)
    matrix[size - 1, :] -= h ** (size - index.astype(np.float64))
    if 2.0 * h - 1.0 > 0.0:
        matrix[size - 1, 0] += (2.0 * h - 1.0) ** size
    factorials = np.array([math.factorial(i) for i in range(size + 1)], dtype=np.float64)
    matrix /= factorials[np.clip(lag, 0, size)]
    power = np.linalg.matrix_power(matrix, n)
    return float(math.exp(_log_factorial_over_power(n)) * power[k - 1, k - 1])


def _pelz_good_cdf(n: int, d: float) -> float:
    """P(D_n <= d) by the Pelz & Good (1976) expansion to order n**-1.5."""
    z = math.sqrt(n) * d
    z2 = z * z
    if math.pi**2 / (8.0 * z2) > 708.0:
        return 0.0
    pi2 = math.pi**2
    k = np.arange(1, math.ceil(16.0 * z / math.pi) + 1, dtype=np.float64)
    odd2 = (2.0 * k - 1.0) ** 2
    w = np.exp(-pi2 * odd2 / (8.0 * z2))
    v = np.exp(-pi2 * k * k / (2.0 * z2))
    root = math.sqrt(2.0 * math.pi)
    k0 = root / z * w.sum()
    k1 = root / (6.0 * z**4) * ((pi2 * odd2 / 4.0 - z2) * w).sum()
    k2 = (
        root
        / (72.0 * z**7)
        * (
            (
                6.0 * z**6
                + 2.0 * z**4
                + (2.0 * z**4 - 5.0 * z2) * pi2 / 4.0 * odd2
                + pi2**2 * (1.0 - 2.0 * z2) / 16.0 * odd2**2
            )
            * w
        ).sum()
        - pi2 * root / (36.0 * z**3) * (k * k * v).sum()
    )
    k3 = (
        root
        / (6480.0 * z**10)
        * (
            (
                -30.0 * z**6
                - 90.0 * z**8
                + pi2 * (135.0 * z**4 - 96.0 * z**6) / 4.0 * odd2
                + pi2**2 * (212.0 * z**4 - 60.0 * z2) / 16.0 * odd2**2
                + pi2**3 * (5.0 - 30.0 * z2) / 64.0 * odd2**3
            )
            * w
        ).sum()
        + pi2 * root / (216.0 * z**6) * ((3.0 * z2 - pi2 * k * k) * k * k * v).sum()
    )
    return float(k0 + k1 / math.sqrt(n) + k2 / n + k3 / n**1.5)


def _homogeneity_p_value(reference: Sequence[int], current: Sequence[int]) -> float:
    """p-value of the chi-square test of homogeneity of two histograms over the same bins."""
    table = np.array([reference, current], dtype=np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    return chi2_sf(statistic, table.shape[1] - 1)


def chi2_sf(statistic: float, df: int | float) -> float:
    """P(X >= statistic) for a chi-square variable with ``df`` degrees of freedom (as
    ``scipy.stats.chi2.sf``): the regularized upper incomplete gamma Q(df/2, statistic/2)."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df!r}")
    if math.isnan(statistic):
        return math.nan
    if statistic <= 0.0:
        return 1.0
    return _upper_gamma_q(df / 2.0, statistic / 2.0)


def _upper_gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma function Q(a, x), for a > 0 and x > 0."""
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:  # series for P(a, x), converging fast here
        term = total = 1.0 / a
        denominator = a
        for _ in range(10_000):
            denominator += 1.0
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return _clip(1.0 - total * math.exp(log_prefix))
    # continued fraction for Q(a, x), modified Lentz
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return _clip(math.exp(log_prefix) * h)


# --- reading data --------------------------------------------------------------------------


@dataclass
class _Table:
    """Columns of data as 1-D arrays of any dtype, and the kinds a DataFrame's dtypes give
    (a kind of None: not monitored)."""

    rows: int
    columns: dict[str, npt.NDArray[Any]]
    kinds: dict[str, Kind | None] = field(default_factory=dict)


_SHAPES = "a DataFrame, a 2-D array, a list of rows, a 1-D array or a list of records"


def _read_table(data: Any, what: str, names: Sequence[str] | None) -> _Table:
    """Columns of ``data``; an array's columns are named ``names`` in order, then f<j>."""
    if _is_frame(data):
        return _frame_table(data, what)
    if hasattr(data, "to_numpy") and getattr(data, "ndim", None) == 1:  # a pandas Series
        return _array_table(_frame_column(data), what, names)
    if isinstance(data, np.ndarray):
        return _array_table(data, what, names)
    if isinstance(data, (list, tuple)):
        first = next((row for row in data if row is not None), None)
        if isinstance(first, Mapping):
            return _records_table(data, what)
        return _array_table(_rows_array(data, what), what, names)
    raise DriftError(
        f"{what} is a {type(data).__name__}, which is not a table of features",
        f"pass {_SHAPES}",
    )


def _is_frame(value: Any) -> bool:
    return hasattr(value, "columns") and hasattr(value, "dtypes") and hasattr(value, "iloc")


def _frame_table(frame: Any, what: str) -> _Table:
    names = [str(column) for column in frame.columns]
    if len(set(names)) != len(names):
        duplicated = sorted({name for name in names if names.count(name) > 1})
        raise DriftError(
            f"{what} has duplicate column names: {', '.join(duplicated)}",
            "give every column its own name",
        )
    columns: dict[str, npt.NDArray[Any]] = {}
    kinds: dict[str, Kind | None] = {}
    for position, name in enumerate(names):
        series = frame.iloc[:, position]
        columns[name] = _frame_column(series)
        kinds[name] = _dtype_kind(series.dtype)
    return _Table(rows=len(frame), columns=columns, kinds=kinds)


def _dtype_kind(dtype: Any) -> Kind | None:
    """The kind a pandas dtype gives a column; None for datetime-like and complex columns."""
    import pandas as pd

    types = pd.api.types
    if isinstance(dtype, pd.CategoricalDtype) or types.is_bool_dtype(dtype):
        return CATEGORICAL
    if types.is_complex_dtype(dtype):
        return None
    if types.is_numeric_dtype(dtype):
        return NUMERIC
    if types.is_object_dtype(dtype) or types.is_string_dtype(dtype):
        return CATEGORICAL
    return None


def _frame_column(series: Any) -> npt.NDArray[Any]:
    """A pandas Series as a 1-D array: floats (NaN for missing) for numbers, else objects."""
    import pandas as pd

    dtype = series.dtype
    if (
        pd.api.types.is_numeric_dtype(dtype)
        and not pd.api.types.is_bool_dtype(dtype)
        and not pd.api.types.is_complex_dtype(dtype)
        and not isinstance(dtype, pd.CategoricalDtype)
    ):
        return np.asarray(series.to_numpy(dtype=np.float64, na_value=np.nan))
    if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        return np.asarray(series.to_numpy())
    return np.asarray(series.to_numpy(dtype=object))


def _rows_array(rows: Sequence[Any], what: str) -> npt.NDArray[Any]:
    """A list of rows (or of values) as an array: numbers or booleans as such, anything else
    (text, None) as objects, so that every value keeps its type."""
    try:
        array = np.asarray(rows)
    except (TypeError, ValueError):  # rows of different lengths, among others
        array = np.empty(0, dtype=object)
    if array.dtype.kind in "biuf":
        return array
    try:
        array = np.array(rows, dtype=object)
    except ValueError as error:
        raise DriftError(f"{what} cannot be read as rows: {error}", f"pass {_SHAPES}") from None
    if array.ndim == 1 and any(isinstance(row, (list, tuple)) for row in rows):
        raise DriftError(
            f"the rows of {what} do not all have the same length",
            "pass one value per feature in every row",
        )
    return array


def _array_table(array: npt.NDArray[Any], what: str, names: Sequence[str] | None) -> _Table:
    if array.ndim not in (1, 2):
        raise DriftError(
            f"{what} is a {array.ndim}-D array of shape {array.shape}; expected rows of features",
            "pass a 2-D array (one row per example, one column per feature) or a 1-D array",
        )
    matrix = array.reshape(-1, 1) if array.ndim == 1 else array
    if matrix.dtype.kind in "iuf" and matrix.shape[1] > 1 and matrix.flags.c_contiguous:
        matrix = _transposed(matrix).T  # each column contiguous: the fast path
    names = names or ()
    columns = {
        (names[j] if j < len(names) else f"f{j}"): matrix[:, j] for j in range(matrix.shape[1])
    }
    return _Table(rows=int(matrix.shape[0]), columns=columns)


def _transposed(matrix: npt.NDArray[Any]) -> FloatArray:
    """The transpose of a C-ordered numeric matrix as C-ordered float64, copied in blocks of
    rows that fit in the CPU's cache: several times faster than column by column."""
    rows = matrix.shape[0]
    transposed = np.empty((matrix.shape[1], rows), dtype=np.float64)
    for start in range(0, rows, _TRANSPOSE_BLOCK_ROWS):
        stop = start + _TRANSPOSE_BLOCK_ROWS
        transposed[:, start:stop] = matrix[start:stop].T
    return transposed


def _records_table(records: Sequence[Any], what: str) -> _Table:
    """JSON records ``{feature: value}``; absent keys and None are missing values."""
    bad = next((i for i, r in enumerate(records) if not isinstance(r, Mapping)), None)
    if bad is not None:
        raise DriftError(
            f"row {bad} of {what} is a {type(records[bad]).__name__}, not a record",
            "pass records {feature: value} in every row, or rows of values",
        )
    try:
        import pandas as pd
    except ImportError:
        names = dict.fromkeys(str(key) for record in records for key in record)
        columns = {
            name: np.fromiter((r.get(name) for r in records), dtype=object, count=len(records))
            for name in names
        }
        return _Table(rows=len(records), columns=columns)
    table = _frame_table(pd.DataFrame.from_records(list(records)), what)
    table.kinds = {}
    return table


def _read_predictions(values: Any, what: str) -> tuple[npt.NDArray[Any], Kind | None]:
    """One prediction per row, as a 1-D array, and the kind its values give."""
    if _is_frame(values):
        if len(values.columns) != 1:
            raise DriftError(
                f"{what} have {len(values.columns)} columns",
                "pass one prediction per row (e.g. the class, or the positive probability)",
            )
        values = values.iloc[:, 0]
    if hasattr(values, "to_numpy") and getattr(values, "ndim", None) == 1:
        raw = _frame_column(values)
        return raw, _infer_kind(raw)
    if isinstance(values, (list, tuple)):
        raw = _rows_array(values, what)
    elif isinstance(values, np.ndarray):
        raw = values
    else:
        raise DriftError(
            f"{what} are a {type(values).__name__}", "pass a list or a 1-D array, one per row"
        )
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1:
        raise DriftError(
            f"{what} have shape {raw.shape}; expected one prediction per row",
            "pass one prediction per row (e.g. the class, or the positive probability)",
        )
    return raw, _infer_kind(raw)


def _infer_kind(raw: npt.NDArray[Any]) -> Kind | None:
    """Numbers are numeric, text and booleans categorical; objects numeric when all their
    values are numbers; None for dates, durations and complex numbers."""
    code = raw.dtype.kind
    if code in "iuf":
        return NUMERIC
    if code in "bUS":
        return CATEGORICAL
    if code != "O":
        return None
    for value in raw.tolist():
        if _is_missing(value):
            continue
        if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
            return CATEGORICAL
    return NUMERIC


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (float, np.floating)):
        return not math.isfinite(value)
    return type(value).__name__ in ("NAType", "NaTType")


def _numeric_values(
    raw: npt.NDArray[Any] | None, rows: int | None = None
) -> tuple[FloatArray, int, int]:
    """The finite numbers of a column, how many values were missing (None, NaN, +-inf, or
    the whole column when ``raw`` is None) and how many were not numbers."""
    if raw is None:
        return np.empty(0, dtype=np.float64), rows or 0, 0
    type_errors = 0
    if raw.dtype.kind in "biuf":
        numbers_ = raw.astype(np.float64, copy=False)
    elif raw.dtype.kind in "OUS":
        try:
            numbers_ = raw.astype(np.float64)
        except (TypeError, ValueError):
            numbers_, type_errors = _parse_numbers(raw)
    else:  # dates, durations, complex numbers: nothing a numeric feature can use
        return np.empty(0, dtype=np.float64), 0, int(raw.shape[0])
    numbers_ = np.ascontiguousarray(numbers_)
    finite = np.isfinite(numbers_)
    valid = int(np.count_nonzero(finite))
    missing = int(numbers_.size) - valid - type_errors
    if valid < numbers_.size:
        numbers_ = numbers_[finite]
    return numbers_, missing, type_errors


def _parse_numbers(raw: npt.NDArray[Any]) -> tuple[FloatArray, int]:
    """Objects as floats one by one: NaN for missing values and for the values that are not
    numbers, which are counted."""
    parsed = np.full(raw.shape[0], np.nan)
    errors = 0
    for i, value in enumerate(raw.tolist()):
        if _is_missing(value):
            continue
        try:
            parsed[i] = float(value)
        except (TypeError, ValueError):
            errors += 1
    return parsed, errors


def _category_counts(
    raw: npt.NDArray[Any] | None, rows: int | None = None
) -> tuple[Counter[str], int, int]:
    """Counts per category (as text) of a column, how many values were missing, and how
    many were not a category (lists, dicts)."""
    if raw is None:
        return Counter(), rows or 0, 0
    if raw.dtype.kind != "O":
        distinct, counts = np.unique(raw, return_counts=True)
        found: Counter[Any] = Counter(dict(zip(distinct.tolist(), counts.tolist(), strict=True)))
    else:
        try:
            found = Counter(raw.tolist())
        except TypeError:  # unhashable values: lists, dicts
            found = Counter(_hashable(value) for value in raw.tolist())
    categories: Counter[str] = Counter()
    missing = type_errors = 0
    for value, count in found.items():
        if _is_missing(value):
            missing += count
        elif isinstance(value, _Unhashable):
            type_errors += count
        else:
            categories[_category_key(value)] += count
    return categories, missing, type_errors


class _Unhashable:
    """Stands for a value that cannot be a category (a list, a dict)."""


_UNHASHABLE: Final = _Unhashable()


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return _UNHASHABLE
    return value


def _category_key(value: Any) -> str:
    """A category as text: "True", "3" for 3 and 3.0, "0.5", "red"."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
