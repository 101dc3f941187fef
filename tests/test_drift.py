"""Data drift and data quality of served inputs and predictions (nbdeploy/monitor/drift.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nbdeploy.errors import NbdeployError
from nbdeploy.monitor import drift
from nbdeploy.monitor.drift import (
    DriftError,
    ReferenceProfile,
    Thresholds,
    compare,
    profile_reference,
)


def normal(seed: int, rows: int, features: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, features))


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return normal(0, 20_000, 5)


@pytest.fixture(scope="module")
def profile(reference: np.ndarray) -> ReferenceProfile:
    predictions = reference @ np.array([1.0, -0.5, 0.2, 0.0, 0.3])
    return profile_reference(reference, predictions=predictions)


# --- drift ---------------------------------------------------------------------------------


def test_only_the_shifted_feature_drifts(profile: ReferenceProfile) -> None:
    current = normal(1, 5_000, 5)
    current[:, 2] += 1.0  # one standard deviation
    report = compare(profile, current)
    statuses = {name: feature.status for name, feature in report.features.items()}
    assert statuses == {"f0": "ok", "f1": "ok", "f2": "drift", "f3": "ok", "f4": "ok"}
    assert report.drifted == ["f2"]
    assert report.status == "drift"
    shifted = report.features["f2"]
    assert shifted.psi is not None and shifted.psi > 0.5
    assert shifted.ks_p is not None and shifted.ks_p < 1e-12
    for name in ("f0", "f1", "f3", "f4"):
        feature = report.features[name]
        assert feature.psi is not None and feature.psi < 0.02, name
        assert feature.ks_p is not None and feature.ks_p > 1e-4, name
        assert feature.chi2_p is None and feature.kind == "numeric"


def test_an_unchanged_window_is_ok_everywhere(profile: ReferenceProfile) -> None:
    report = compare(profile, normal(2, 3_000, 5))
    assert report.status == "ok"
    assert report.drifted == []
    assert all(f.missing == 0 and f.type_errors == 0 for f in report.features.values())


def test_psi_thresholds_and_min_rows_are_configurable(profile: ReferenceProfile) -> None:
    current = normal(3, 5_000, 5)
    current[:, 0] += 0.25  # PSI about 0.07
    default = compare(profile, current).features["f0"]
    assert default.psi is not None and 0.05 < default.psi < 0.1 and default.status == "ok"
    strict = compare(profile, current, thresholds=Thresholds(psi_warn=0.02, psi_drift=0.05))
    assert strict.features["f0"].status == "drift"
    assert strict.features["f1"].status == "ok"
    lenient = Thresholds(psi_warn=0.05, psi_drift=0.5)
    assert compare(profile, current, thresholds=lenient).features["f0"].status == "warn"
    few = compare(profile, current[:50])  # fewer than min_rows (100) valid values
    assert {f.status for f in few.features.values()} == {"no-data"}
    assert few.features["f0"].psi is not None  # still computed, just not judged
    judged = compare(profile, current[:50], thresholds=Thresholds(min_rows=10))
    assert {f.status for f in judged.features.values()} != {"no-data"}
    with pytest.raises(DriftError, match="warn <= drift"):
        compare(profile, current, thresholds=Thresholds(psi_warn=0.3, psi_drift=0.2))


def test_shifted_predictions_are_flagged_with_their_quality(profile: ReferenceProfile) -> None:
    current = normal(4, 4_000, 5)
    unchanged = current @ np.array([1.0, -0.5, 0.2, 0.0, 0.3])
    report = compare(profile, current, predictions=unchanged)
    assert report.prediction is not None and report.prediction.status == "ok"
    shifted = [*(unchanged + 1.5).tolist()[:3_990], *[None] * 10]
    report = compare(profile, current, predictions=shifted)
    prediction = report.prediction
    assert prediction is not None
    assert prediction.status == "drift" and report.status == "drift"
    assert report.drifted == []  # the inputs did not move
    assert prediction.null_rate == pytest.approx(10 / 4_000)
    assert prediction.missing == pytest.approx(10 / 4_000)
    valid = np.asarray(shifted[:3_990], dtype=float)
    assert prediction.mean == pytest.approx(valid.mean())
    assert prediction.quantiles == pytest.approx(
        dict(zip(("p5", "p50", "p95"), np.quantile(valid, [0.05, 0.5, 0.95]), strict=True))
    )
    data = report.to_dict()["prediction"]
    assert set(data) >= {"null_rate", "mean", "quantiles", "psi", "ks_p", "status"}
    assert "classes" not in data


def test_label_predictions_report_their_classes_and_flag_a_changed_mix() -> None:
    rng = np.random.default_rng(5)
    rows = normal(5, 5_000, 2)
    labels = rng.choice(["cat", "dog", "bird"], size=5_000, p=[0.6, 0.3, 0.1])
    profile = profile_reference(rows, predictions=labels)
    assert isinstance(profile.prediction, drift.CategoricalProfile)
    same = compare(profile, rows[:2_000], predictions=labels[:2_000].tolist())
    assert same.prediction is not None and same.prediction.status == "ok"
    changed = rng.choice(["cat", "dog", "bird"], size=2_000, p=[0.2, 0.3, 0.5])
    report = compare(profile, rows[:2_000], predictions=changed)
    prediction = report.prediction
    assert prediction is not None and prediction.status == "drift"
    assert prediction.chi2_p is not None and prediction.chi2_p < 1e-12
    assert prediction.classes is not None
    assert prediction.classes == pytest.approx(
        {label: float(np.mean(changed == label)) for label in ("cat", "dog", "bird")}
    )
    assert list(prediction.classes) == ["bird", "dog", "cat"]  # most frequent first
    assert "quantiles" not in report.to_dict()["prediction"]


def test_boolean_predictions_are_labels() -> None:
    flags = [True, False, False, True] * 100
    profile = profile_reference(np.zeros((400, 1)), predictions=flags)
    assert isinstance(profile.prediction, drift.CategoricalProfile)
    report = compare(profile, np.zeros((400, 1)), predictions=[True] * 300 + [None] * 100)
    prediction = report.prediction
    assert prediction is not None and prediction.classes == {"True": 1.0}
    assert prediction.null_rate == 0.25 and prediction.status == "drift"


def test_predictions_without_a_prediction_profile_give_quality_only(
    reference: np.ndarray,
) -> None:
    profile = profile_reference(reference)
    report = compare(profile, reference[:500], predictions=[1.0, None, 3.0, float("nan")])
    prediction = report.prediction
    assert prediction is not None
    assert prediction.status == "no-data" and prediction.psi is None
    assert prediction.null_rate == 0.5 and prediction.mean == 2.0
    assert report.status == "ok"  # from the features


# --- data quality --------------------------------------------------------------------------


def test_missing_values_in_records_are_counted_exactly() -> None:
    profile = profile_reference(
        pd.DataFrame({"age": np.arange(1_000.0), "city": ["paris", "rome"] * 500})
    )
    records = [
        {"age": 30, "city": "paris"},
        {"age": None, "city": "rome"},
        {"age": float("nan"), "city": None},
        {"city": "rome"},  # age absent
        {"age": 12.5},  # city absent
        {"age": 40, "city": "paris", "colour": "red"},  # an unknown feature
        {"age": 41, "city": float("nan"), "zip": 75001},
        {"age": 42, "city": "rome"},
    ]
    report = compare(profile, records)
    assert report.rows == 8
    age, city = report.features["age"], report.features["city"]
    assert age.missing == 3 / 8 and city.missing == 3 / 8
    assert age.type_errors == 0 and city.type_errors == 0
    assert age.rows == city.rows == 8
    assert report.unknown_features == ("colour", "zip")
    assert report.to_dict()["unknown_features"] == ["colour", "zip"]


def test_records_are_read_the_same_without_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = profile_reference([[float(i), "ab"[i % 2]] for i in range(400)])
    records = [
        {"f0": 1.0, "f1": "a"},
        {"f0": "oops", "f1": None},
        {"f1": "b", "extra": 1},
        {"f0": None, "f1": ["not", "a", "category"]},
    ] * 50
    with_pandas = compare(profile, records).to_dict()
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    without = compare(profile, records).to_dict()
    assert without == with_pandas
    assert without["features"]["f0"]["missing"] == 0.5
    assert without["features"]["f0"]["type_errors"] == 0.25
    assert without["features"]["f1"]["missing"] == 0.25
    assert without["features"]["f1"]["type_errors"] == 0.25
    assert without["unknown_features"] == ["extra"]


def test_features_absent_from_the_window_count_as_missing() -> None:
    profile = profile_reference(pd.DataFrame({"a": np.arange(500.0), "b": np.arange(500.0)}))
    report = compare(profile, pd.DataFrame({"a": np.arange(200.0)}))
    assert report.features["b"].missing == 1.0
    assert report.features["b"].status == "no-data" and report.features["b"].psi is None
    assert report.features["a"].missing == 0.0


def test_non_numeric_values_of_a_numeric_feature_are_type_errors() -> None:
    profile = profile_reference(pd.DataFrame({"x": np.linspace(0.0, 1.0, 1_000)}))
    records = [
        {"x": 0.5},
        {"x": "abc"},
        {"x": "0.25"},  # a number written as text is the number
        {"x": [1, 2]},
        {"x": None},
        {"x": {"nested": 1}},
        {"x": 0.75},
        {"x": True},  # a boolean is a number (1)
    ]
    feature = compare(profile, records).features["x"]
    assert feature.type_errors == 3 / 8
    assert feature.missing == 1 / 8
    assert feature.out_of_range == 0.0


def test_nan_and_infinite_values_of_an_array_are_missing() -> None:
    reference = np.linspace(-1.0, 1.0, 1_000).reshape(-1, 2)
    profile = profile_reference(reference)
    current = np.zeros((10, 2))
    current[0, 0] = np.nan
    current[1, 0] = np.inf
    current[2, 0] = -np.inf
    current[3, 1] = 5.0  # above the training maximum
    current[4, 1] = -5.0  # below the minimum
    report = compare(profile, current)
    assert report.features["f0"].missing == 3 / 10
    assert report.features["f0"].out_of_range == 0.0
    assert report.features["f1"].missing == 0.0
    assert report.features["f1"].out_of_range == 2 / 10


def test_values_outside_the_training_range_are_counted() -> None:
    profile = profile_reference(np.linspace(0.0, 1.0, 2_001))
    assert isinstance(profile.features["f0"], drift.NumericProfile)
    current = np.concatenate([np.linspace(0.0, 1.0, 990), [1.5] * 6, [-0.2] * 4])
    feature = compare(profile, current).features["f0"]
    assert feature.out_of_range == 10 / 1_000
    assert feature.status == "ok"  # 1% outside the range is not drift


# --- categorical features ------------------------------------------------------------------


def test_a_changed_category_mix_is_flagged_by_psi_and_chi_square() -> None:
    rng = np.random.default_rng(6)
    colours = rng.choice(["red", "green", "blue"], size=10_000, p=[0.5, 0.3, 0.2])
    profile = profile_reference(pd.DataFrame({"colour": colours}))
    feature_profile = profile.features["colour"]
    assert isinstance(feature_profile, drift.CategoricalProfile)
    assert list(feature_profile.categories) == ["red", "green", "blue"]

    same = compare(profile, pd.DataFrame({"colour": colours[:3_000]})).features["colour"]
    assert same.status == "ok" and same.kind == "categorical"
    assert same.chi2_p is not None and same.chi2_p > 0.01 and same.ks_p is None

    mixed = rng.choice(["red", "green", "blue"], size=3_000, p=[0.2, 0.3, 0.5])
    changed = compare(profile, pd.DataFrame({"colour": mixed})).features["colour"]
    assert changed.status == "drift"
    assert changed.chi2_p is not None and changed.chi2_p < 1e-12

    # the p-value is that of the chi-square test of homogeneity of the two histograms
    table = [
        [int(np.sum(colours == c)) for c in ("red", "green", "blue")],
        [int(np.sum(mixed == c)) for c in ("red", "green", "blue")],
    ]
    slightly = rng.choice(["red", "green", "blue"], size=3_000, p=[0.47, 0.31, 0.22])
    table[1] = [int(np.sum(slightly == c)) for c in ("red", "green", "blue")]
    expected = stats.chi2_contingency(table, correction=False).pvalue
    found = compare(profile, [{"colour": c} for c in slightly]).features["colour"]
    assert found.chi2_p == pytest.approx(expected, abs=1e-9)
    assert found.psi == pytest.approx(
        drift.population_stability_index(table[0], table[1]), abs=1e-12
    )


def test_unseen_categories_are_out_of_range_and_drift() -> None:
    profile = profile_reference([["a"], ["b"]] * 500)
    current = [["a"]] * 450 + [["b"]] * 450 + [["z"]] * 100
    feature = compare(profile, current).features["f0"]
    assert feature.out_of_range == 0.1
    assert feature.status == "drift"  # 10% in a bin the reference never had


def test_categories_beyond_the_cap_are_kept_as_other() -> None:
    values = [f"c{i}" for i in range(60) for _ in range(100 - i)]
    profile = profile_reference(pd.DataFrame({"c": values}), max_categories=50)
    feature = profile.features["c"]
    assert isinstance(feature, drift.CategoricalProfile)
    assert len(feature.categories) == 50 and next(iter(feature.categories)) == "c0"
    assert feature.other == sum(100 - i for i in range(50, 60))
    report = compare(profile, pd.DataFrame({"c": values}))
    assert report.features["c"].psi == pytest.approx(0.0, abs=1e-12)
    assert report.features["c"].out_of_range is None  # unknowable: not all categories kept


def test_categories_compare_as_text_across_types() -> None:
    frame = pd.DataFrame(
        {"flag": [True, False] * 300, "code": pd.Categorical([3, 7, 7] * 200)},
    )
    profile = profile_reference(frame)
    assert {name: f.kind for name, f in profile.features.items()} == {
        "flag": "categorical",
        "code": "categorical",
    }
    records = [{"flag": True, "code": 3}, {"flag": False, "code": 7.0}, {"flag": "True"}]
    report = compare(profile, records * 100)
    assert report.features["flag"].out_of_range == 0.0
    assert report.features["code"].out_of_range == 0.0
    assert report.features["code"].missing == pytest.approx(1 / 3)


# --- statistics against scipy --------------------------------------------------------------


@pytest.mark.parametrize(
    ("m", "n", "shift", "seed"),
    [(200, 300, 0.1, 0), (1_000, 800, 0.15, 1), (5_000, 3_000, 0.05, 2), (40, 25, 0.5, 3)],
)
def test_ks_p_value_matches_scipy_asymp(m: int, n: int, shift: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=m), rng.normal(shift, 1.0, size=n)
    statistic, p_value = drift.ks_2samp(a, b)
    expected = stats.ks_2samp(a, b, method="asymp")
    assert statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert p_value == pytest.approx(expected.pvalue, abs=1e-3)


def test_ks_p_value_with_ties_matches_scipy() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.integers(0, 5, size=700), rng.integers(0, 6, size=900)
    statistic, p_value = drift.ks_2samp(a, b)
    expected = stats.ks_2samp(a, b, method="asymp")
    assert statistic == pytest.approx(expected.statistic, abs=1e-12)
    assert p_value == pytest.approx(expected.pvalue, abs=1e-3)


def test_compare_ks_p_value_is_scipys_on_the_same_samples() -> None:
    rng = np.random.default_rng(8)
    reference, current = rng.normal(size=3_000), rng.normal(0.08, 1.0, size=2_000)
    profile = profile_reference(reference)  # all 3,000 values kept (below max_sample)
    feature = compare(profile, current).features["f0"]
    expected = stats.ks_2samp(reference, current, method="asymp").pvalue
    assert feature.ks_p == pytest.approx(expected, abs=1e-3)


def test_kolmogorov_distribution_matches_scipy_kstwo() -> None:
    grid = [(n, np.linspace(0.001, 0.999, 100)) for n in (1, 3, 10, 50, 140, 141, 500, 2_000)]
    grid.append((10_000, np.linspace(0.002, 0.04, 20)))  # where D of 10,000 values lies
    worst = 0.0
    for n, distances in grid:
        for d in distances:
            worst = max(worst, abs(drift.kolmogorov_sf(n, float(d)) - stats.kstwo.sf(d, n)))
    assert worst < 1e-5


@pytest.mark.parametrize("df", [1, 2, 3, 5, 10, 49, 200])
def test_chi_square_p_value_matches_scipy(df: int) -> None:
    for statistic in (0.0, 1e-6, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 80.0, 250.0, 400.0):
        assert drift.chi2_sf(statistic, df) == pytest.approx(
            stats.chi2.sf(statistic, df), abs=1e-6, rel=1e-6
        ), (statistic, df)


def test_psi_of_known_histograms() -> None:
    reference, current = [0.5, 0.3, 0.2], [0.3, 0.3, 0.4]
    expected = sum((c - r) * math.log(c / r) for r, c in zip(reference, current, strict=True))
    assert drift.population_stability_index(reference, current) == pytest.approx(expected)
    assert drift.population_stability_index([10, 0], [5, 5]) == pytest.approx(
        (0.5 - 1.0) * math.log(0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    )


# --- profiles ------------------------------------------------------------------------------


def test_profile_json_round_trip_gives_an_identical_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    frame = pd.DataFrame(
        {
            "x": rng.normal(size=15_000),
            "k": rng.integers(0, 3, size=15_000),
            "c": rng.choice(["u", "v"], size=15_000),
        }
    )
    profile = profile_reference(frame, predictions=rng.random(15_000))
    path = profile.save(tmp_path / "profile.json")
    loaded = ReferenceProfile.load(path)
    assert loaded.to_dict() == profile.to_dict()
    assert json.loads(path.read_text()) == profile.to_dict()
    assert path.stat().st_size < 400_000  # 10,000 floats (107 KB) per numeric feature
    current = frame.sample(3_000, random_state=1).assign(x=lambda f: f.x + 0.3)
    predictions = rng.random(3_000) ** 2
    before = compare(profile, current, predictions=predictions).to_dict()
    after = compare(loaded, current, predictions=predictions).to_dict()
    assert before == after
    assert json.loads(json.dumps(before, allow_nan=False)) == before


def test_dataframe_columns_name_the_features_and_arrays_are_f0_fn() -> None:
    rng = np.random.default_rng(10)
    frame = pd.DataFrame(rng.normal(size=(1_000, 3)), columns=["height", "weight", "age"])
    named = profile_reference(frame)
    assert list(named.features) == ["height", "weight", "age"]
    assert list(profile_reference(frame.to_numpy()).features) == ["f0", "f1", "f2"]
    assert list(profile_reference(frame.to_numpy().tolist()).features) == ["f0", "f1", "f2"]
    assert list(profile_reference(frame["age"].to_numpy()).features) == ["f0"]
    # a window given as an array is read by position against the reference's columns
    current = frame.to_numpy()[:400].copy()
    current[:, 2] += 2.0
    report = compare(named, current)
    assert list(report.features) == ["height", "weight", "age"]
    assert report.drifted == ["age"] and report.unknown_features == ()
    assert compare(named, frame.iloc[:400]).status == "ok"


def test_dataframe_dtypes_decide_the_kinds() -> None:
    frame = pd.DataFrame(
        {
            "n": np.arange(300.0),
            "i": pd.array([*range(299), None], dtype="Int64"),
            "s": ["a", "b", "c"] * 100,
            "o": pd.Series([1, "x", 2.5] * 100, dtype=object),
            "b": [True, False, True] * 100,
            "when": pd.date_range("2024-01-01", periods=300),
        }
    )
    profile = profile_reference(frame)
    kinds = {name: feature.kind for name, feature in profile.features.items()}
    assert kinds == {
        "n": "numeric",
        "i": "numeric",
        "s": "categorical",
        "o": "categorical",
        "b": "categorical",
    }
    assert profile.ignored == ("when",)
    assert profile.features["i"].missing == 1
    report = compare(profile, frame)
    assert "when" not in report.features and report.unknown_features == ()
    assert report.status == "ok"


def test_rows_of_mixed_values_infer_a_kind_per_column() -> None:
    rows = [[float(i), "red" if i % 2 else "blue", None if i % 10 == 0 else i] for i in range(500)]
    profile = profile_reference(rows)
    kinds = {name: feature.kind for name, feature in profile.features.items()}
    assert kinds == {"f0": "numeric", "f1": "categorical", "f2": "numeric"}
    assert profile.features["f2"].missing == 50
    report = compare(profile, rows)
    assert report.status == "ok" and report.features["f2"].missing == 0.1


def test_an_empty_window_has_no_data_and_does_not_crash(profile: ReferenceProfile) -> None:
    frame_profile = profile_reference(pd.DataFrame({"a": np.arange(200.0), "b": ["x"] * 200}))
    for window, target in (
        ([], profile),
        (np.empty((0, 5)), profile),
        (pd.DataFrame({"a": [], "b": []}), frame_profile),
    ):
        report = compare(target, window, predictions=[])
        assert report.rows == 0 and report.status == "no-data"
        for feature in report.features.values():
            assert feature.status == "no-data"
            assert feature.missing is None and feature.psi is None
        assert report.prediction is not None and report.prediction.null_rate is None
        json.dumps(report.to_dict(), allow_nan=False)


def test_a_constant_reference_column_gets_three_bins() -> None:
    reference = np.column_stack([np.full(1_000, 7.0), np.arange(1_000.0)])
    profile = profile_reference(reference)
    constant = profile.features["f0"]
    assert isinstance(constant, drift.NumericProfile)
    assert constant.counts == (0, 1_000, 0) and constant.edges[1] == 7.0
    window = reference[:500].copy()
    assert compare(profile, window).features["f0"].psi == pytest.approx(0.0)
    assert compare(profile, window).features["f0"].status == "ok"
    window[:100, 0] = 6.0  # 20% below the constant
    feature = compare(profile, window).features["f0"]
    assert feature.status == "drift" and feature.out_of_range == 0.2


def test_heavy_ties_give_fewer_bins_none_empty() -> None:
    rng = np.random.default_rng(11)
    zero_one = (rng.random(10_000) < 0.3).astype(float)  # 70% zeros
    skewed = np.where(rng.random(10_000) < 0.95, 1.0, rng.random(10_000))  # 95% at the max
    mostly_zero = np.where(rng.random(10_000) < 0.7, 0.0, rng.exponential(size=10_000))
    profile = profile_reference(np.column_stack([zero_one, skewed, mostly_zero]))
    for name in ("f0", "f1", "f2"):
        feature = profile.features[name]
        assert isinstance(feature, drift.NumericProfile)
        assert all(count > 0 for count in feature.counts), (name, feature.counts)
        assert len(feature.counts) >= 2
    zero_one_profile = profile.features["f0"]
    assert isinstance(zero_one_profile, drift.NumericProfile)
    assert zero_one_profile.edges == (0.0,)
    assert compare(profile, np.column_stack([zero_one, skewed, mostly_zero])).status == "ok"


def test_the_sample_is_capped_sorted_and_keeps_the_extremes() -> None:
    values = np.random.default_rng(12).normal(size=50_000)
    feature = profile_reference(values, max_sample=1_000).features["f0"]
    assert isinstance(feature, drift.NumericProfile)
    assert feature.sample.size == 1_000
    assert np.all(np.diff(feature.sample) >= 0)
    assert feature.sample[0] == values.min() and feature.sample[-1] == values.max()
    assert feature.minimum == values.min() and feature.maximum == values.max()
    assert sum(feature.counts) == 50_000 and len(feature.counts) == 10


# --- errors and import cost ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ([], "has no rows"),
        (np.empty((0, 3)), "has no rows"),
        (np.zeros((4, 0)), "has no columns"),
        (np.zeros((2, 3, 4)), "3-D array"),
        ("X_train", "str, which is not a table"),
        ([[1.0, 2.0], [3.0]], "do not all have the same length"),
        (pd.DataFrame({"when": pd.date_range("2024-01-01", periods=3)}), "no numeric or"),
        (pd.DataFrame([[1, 2]], columns=["a", "a"]), "duplicate column names: a"),
    ],
)
def test_bad_references_are_refused_with_a_hint(reference: object, message: str) -> None:
    with pytest.raises(DriftError, match=message) as caught:
        profile_reference(reference)
    assert isinstance(caught.value, NbdeployError)
    assert caught.value.hint


def test_bad_windows_predictions_and_profiles_are_refused(
    profile: ReferenceProfile, tmp_path: Path
) -> None:
    with pytest.raises(DriftError, match="3-D array"):
        compare(profile, np.zeros((2, 5, 2)))
    with pytest.raises(DriftError, match="one prediction per row"):
        compare(profile, np.zeros((3, 5)), predictions=np.zeros((3, 2)))
    with pytest.raises(DriftError, match="row 1 of the current window is a list"):
        compare(profile, [{"f0": 1.0}, [1.0]])
    with pytest.raises(DriftError, match="needs a ReferenceProfile, got a dict"):
        compare(profile.to_dict(), np.zeros((3, 5)))  # type: ignore[arg-type]
    with pytest.raises(DriftError, match="not an nbdeploy drift profile"):
        ReferenceProfile.from_dict({"features": {}})
    with pytest.raises(DriftError, match="version 99"):
        ReferenceProfile.from_dict({"format": "nbdeploy-drift-profile", "version": 99})
    broken = {**profile.to_dict(), "features": {"f0": {"kind": "numeric"}}}
    with pytest.raises(DriftError, match="malformed"):
        ReferenceProfile.from_dict(broken)
    with pytest.raises(DriftError, match="no drift profile at") as caught:
        ReferenceProfile.load(tmp_path / "missing.json")
    assert caught.value.hint and "--reference" in caught.value.hint
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DriftError, match="cannot read the drift profile"):
        ReferenceProfile.load(tmp_path / "bad.json")


def test_importing_the_module_imports_neither_pandas_nor_scipy() -> None:
    script = (
        "import sys\n"
        "import numpy, nbdeploy.errors\n"
        "before = set(sys.modules)\n"
        "import nbdeploy.monitor.drift\n"
        "new = set(sys.modules) - before\n"
        "print(sorted(m for m in new if m.split('.')[0] in ('pandas', 'scipy')))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert completed.stdout.strip() == "[]"
