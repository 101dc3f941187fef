"""The always-valid A/B test: error rates under continuous peeking, power, coverage, edge cases."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from nbdeploy.monitor.abtest import (
    CONTROL_BETTER,
    NO_DECISION,
    TREATMENT_BETTER,
    ArmSummary,
    Decision,
    OutcomeKind,
    Verdict,
    group_outcomes_by_arm,
    sequential_test,
    sequential_test_from_summaries,
    summarize_arm,
    summarize_outcomes,
)

ALPHA = 0.05
MAX_PER_ARM = 2_000
BATCH = 50
LOOKS = range(BATCH, MAX_PER_ARM + 1, BATCH)  # 40 peeks per experiment
BASE_RATE = 0.10  # binary outcomes: accuracy / conversion rate of the control


def monte_carlo_tolerance(rate: float, experiments: int) -> float:
    """Three binomial standard errors of a rate estimated from independent experiments.

    An observed fraction exceeds ``rate + tolerance`` with probability about 0.1% when the true
    rate is ``rate``, so an assertion at that margin fails only if the true rate is too high
    (the seeds are fixed, so the outcome is reproducible either way).
    """
    return 3.0 * math.sqrt(rate * (1.0 - rate) / experiments)


def simulate(
    kind: OutcomeKind, experiments: int, effect: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes of ``experiments`` experiments, shape (experiments, MAX_PER_ARM) per arm.

    Binary: control rate 0.10, treatment 0.10 + effect. Continuous: N(0, 1) and N(effect, 1).
    """
    rng = np.random.default_rng(seed)
    shape = (experiments, MAX_PER_ARM)
    if kind == "binary":
        control = (rng.random(shape) < BASE_RATE).astype(float)
        treatment = (rng.random(shape) < BASE_RATE + effect).astype(float)
    else:
        control = rng.standard_normal(shape)
        treatment = rng.standard_normal(shape) + effect
    return control, treatment


@dataclass
class Monitored:
    """One experiment looked at after every batch: when it stopped, and whether CIs covered."""

    final: Decision
    stopped_at: int | None  # outcomes per arm at the first decision
    always_covered: bool  # the true difference was inside every look's interval


def monitor(
    control: np.ndarray,
    treatment: np.ndarray,
    kind: OutcomeKind,
    true_difference: float,
    stop_at_decision: bool,
) -> Monitored:
    """Peek after every batch, passing each look's decision to the next (cumulative data)."""
    decision: Decision | None = None
    stopped_at = None
    always_covered = True
    for n in LOOKS:
        decision = sequential_test(control[:n], treatment[:n], ALPHA, kind, previous=decision)
        always_covered &= decision.lower <= true_difference <= decision.upper
        if decision.decided and stopped_at is None:
            stopped_at = n
            if stop_at_decision:
                break
    assert decision is not None
    return Monitored(decision, stopped_at, always_covered)


def naive_z_test_ever_rejects(control: np.ndarray, treatment: np.ndarray) -> np.ndarray:
    """Per experiment: did a fixed-horizon two-sided z-test at ALPHA reject at any look?"""
    looks = np.asarray(LOOKS)
    z_critical = 1.959963984540054  # two-sided 5%

    def means_and_variances(outcomes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sums = np.cumsum(outcomes, axis=1)[:, looks - 1]
        squares = np.cumsum(outcomes**2, axis=1)[:, looks - 1]
        means = sums / looks
        return means, (squares - looks * means**2) / (looks - 1)

    control_mean, control_var = means_and_variances(control)
    treatment_mean, treatment_var = means_and_variances(treatment)
    standard_error = np.sqrt((control_var + treatment_var) / looks)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (treatment_mean - control_mean) / standard_error
    return np.any(np.abs(np.nan_to_num(z)) > z_critical, axis=1)


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_aa_peeking_keeps_false_positives_below_alpha_but_naive_z_test_does_not(kind):
    experiments = 500
    control, treatment = simulate(kind, experiments, effect=0.0, seed=20240501)
    runs = [
        monitor(control[i], treatment[i], kind, true_difference=0.0, stop_at_decision=True)
        for i in range(experiments)
    ]
    false_positive_rate = np.mean([run.final.decided for run in runs])
    naive_rate = np.mean(naive_z_test_ever_rejects(control, treatment))
    tolerance = monte_carlo_tolerance(ALPHA, experiments)
    print(f"{kind}: mSPRT ever decided {false_positive_rate:.3f}, naive z {naive_rate:.3f}")
    assert false_positive_rate <= ALPHA + tolerance
    # 40 peeks at a 5% z-test: the chance of ever "winning" is several times alpha.
    assert naive_rate > ALPHA + tolerance
    assert naive_rate > 2 * ALPHA


@pytest.mark.parametrize(
    ("kind", "effect", "median_stop_below", "mostly_stopped_by"),
    # Fixed-horizon z at 2,000 per arm would be about 4.8 (binary) and 9.5 (continuous).
    [("binary", 0.05, 1_000, 1_500), ("continuous", 0.3, 400, 500)],
)
@pytest.mark.parametrize("treatment_is_better", [True, False])
def test_real_effects_are_detected_early_in_the_right_direction_with_covering_intervals(
    kind, effect, median_stop_below, mostly_stopped_by, treatment_is_better
):
    experiments = 200
    control, treatment = simulate(kind, experiments, effect, seed=7 if treatment_is_better else 8)
    if not treatment_is_better:
        control, treatment = treatment, control
    true_difference = effect if treatment_is_better else -effect
    runs = [
        monitor(control[i], treatment[i], kind, true_difference, stop_at_decision=False)
        for i in range(experiments)
    ]
    expected: Verdict = TREATMENT_BETTER if treatment_is_better else CONTROL_BETTER
    verdicts = [run.final.decision for run in runs]
    stops = np.array([run.stopped_at or math.inf for run in runs])
    coverage = np.mean([run.always_covered for run in runs])
    print(f"{kind} {expected}: median stop {np.median(stops)}, coverage {coverage:.3f}")
    assert verdicts.count(expected) >= 0.9 * experiments
    assert all(verdict in (expected, NO_DECISION) for verdict in verdicts)
    assert np.median(stops) < median_stop_below
    assert np.mean(stops <= mostly_stopped_by) >= 0.8
    # Time-uniform coverage: the truth inside the interval at all 40 looks.
    assert coverage >= 1 - ALPHA - monte_carlo_tolerance(ALPHA, experiments)


def test_p_value_is_a_running_minimum_and_the_decision_sticks():
    control, treatment = simulate("continuous", 1, effect=0.3, seed=3)
    decision: Decision | None = None
    p_values, intervals, verdicts = [], [], []
    for n in LOOKS:
        decision = sequential_test(control[0, :n], treatment[0, :n], previous=decision)
        p_values.append(decision.p_value)
        intervals.append(decision.confidence_interval)
        verdicts.append(decision.decision)
    lowers, uppers = (np.array(ends) for ends in zip(*intervals, strict=True))
    assert np.all(np.diff(p_values) <= 0)
    assert np.all(np.diff(lowers) >= 0) and np.all(np.diff(uppers) <= 0)
    first = verdicts.index(TREATMENT_BETTER)
    assert set(verdicts[first:]) == {TREATMENT_BETTER}
    assert p_values[first] <= ALPHA < p_values[first - 1]
    assert lowers[first] > 0


def test_p_value_matches_the_balanced_formula_of_johari_et_al():
    rng = np.random.default_rng(11)
    n, effect_size_scale = 400, 0.1
    control, treatment = rng.normal(1.0, 2.0, n), rng.normal(1.3, 2.0, n)
    decision = sequential_test(control, treatment, effect_size_scale=effect_size_scale)
    # Balanced arms: Lambda_n = sqrt(V / (V + n tau^2)) exp(n^2 tau^2 d^2 / (2 V (V + n tau^2)))
    # with V = var_c + var_t and, here, tau^2 = scale^2 * pooled variance = scale^2 * V / 2.
    variance_sum = control.var(ddof=1) + treatment.var(ddof=1)
    tau2 = effect_size_scale**2 * variance_sum / 2
    d = treatment.mean() - control.mean()
    likelihood_ratio = math.sqrt(variance_sum / (variance_sum + n * tau2)) * math.exp(
        n**2 * tau2 * d**2 / (2 * variance_sum * (variance_sum + n * tau2))
    )
    assert decision.p_value == pytest.approx(min(1.0, 1 / likelihood_ratio), rel=1e-9)
    assert decision.difference == pytest.approx(d)


def test_interval_ends_are_where_the_shifted_test_has_p_value_alpha():
    rng = np.random.default_rng(12)
    control, treatment = rng.normal(0.0, 1.0, 300), rng.normal(0.2, 1.0, 500)
    decision = sequential_test(control, treatment)
    assert decision.lower < decision.difference < decision.upper
    for end in decision.confidence_interval:
        shifted = sequential_test(control, treatment - end)  # same variances, null at `end`
        assert shifted.p_value == pytest.approx(ALPHA, rel=1e-9)


def test_small_samples_give_no_decision_whatever_the_data():
    control, treatment = [0.0] * 19, [1.0] * 19
    decision = sequential_test(control, treatment, kind="binary")
    assert decision.decision == NO_DECISION
    assert decision.p_value == 1.0
    assert decision.confidence_interval == (-math.inf, math.inf)
    assert decision.difference == 1.0
    assert "fewer than 20" in decision.note
    decided = sequential_test([0.0] * 20, [1.0] * 20, kind="binary")
    assert decided.decision == TREATMENT_BETTER
    lenient = sequential_test(control, treatment, kind="binary", min_samples_per_arm=5)
    assert lenient.decision == TREATMENT_BETTER
    reversed_ = sequential_test([1.0] * 20, [0.0] * 20, kind="binary")
    assert reversed_.decision == CONTROL_BETTER


def test_empty_arms():
    decision = sequential_test([], [1.0, 2.0])
    assert decision.decision == NO_DECISION
    assert decision.control.n == 0 and math.isnan(decision.control.mean)
    assert math.isnan(decision.difference)
    assert decision.p_value == 1.0


def test_zero_variance():
    both_constant = sequential_test([3.0] * 50, [5.0] * 50)
    assert both_constant.decision == NO_DECISION
    assert "zero variance" in both_constant.note
    assert both_constant.difference == 2.0
    one_constant = sequential_test([3.0] * 50, [5.0, 5.2] * 25)
    assert one_constant.decision == TREATMENT_BETTER
    # Binary arms that are all 1: pseudo-counts keep the variance positive, no difference.
    all_right = sequential_test([1] * 100, [1] * 100, kind="binary")
    assert all_right.decision == NO_DECISION and all_right.p_value == 1.0
    assert all_right.lower < 0 < all_right.upper


def test_non_finite_values_are_dropped_and_counted():
    rng = np.random.default_rng(5)
    control, treatment = list(rng.normal(0, 1, 30)), list(rng.normal(0, 1, 30))
    clean = sequential_test(control, treatment)
    dirty = sequential_test(
        [*control, math.nan, math.inf, None], [-math.inf, *treatment, float("nan")]
    )
    assert (dirty.control.n, dirty.control.dropped) == (30, 3)
    assert (dirty.treatment.n, dirty.treatment.dropped) == (30, 2)
    assert (dirty.p_value, dirty.difference) == (clean.p_value, clean.difference)
    assert "dropped 5 non-finite values" in dirty.note
    assert clean.note == ""
    only_nan = summarize_arm("b", [math.nan, math.nan])
    assert (only_nan.n, only_nan.dropped) == (0, 2)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_alpha_outside_the_unit_interval_is_rejected(alpha):
    with pytest.raises(ValueError, match="alpha must be strictly between 0 and 1"):
        sequential_test([0.0, 1.0] * 20, [0.0, 1.0] * 20, alpha=alpha)


def test_other_bad_arguments_are_rejected():
    data = [0.0, 1.0] * 20
    with pytest.raises(ValueError, match="binary outcomes of arm 'control' must be 0 or 1"):
        sequential_test([0.5, *data], data, kind="binary")
    with pytest.raises(ValueError, match="kind must be"):
        sequential_test(data, data, kind="ordinal")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flat sequence"):
        sequential_test([[0.0, 1.0]], data)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="min_samples_per_arm"):
        sequential_test(data, data, min_samples_per_arm=1)
    with pytest.raises(ValueError, match="effect_size_scale"):
        sequential_test(data, data, effect_size_scale=0.0)
    earlier = sequential_test(data, data)
    with pytest.raises(ValueError, match="different test"):
        sequential_test(data, data, alpha=0.01, previous=earlier)
    with pytest.raises(ValueError, match="different test"):
        sequential_test(data, data, kind="binary", previous=earlier)
    with pytest.raises(ValueError, match="cumulative"):
        sequential_test(data[:-2], data, previous=earlier)


def test_summaries_from_arm_value_pairs():
    pairs = [("v1", 1.0), ("v2", 0.0), ("v1", 0.0), ("v2", None), ("v1", 1.0), ("v2", 1.0)]
    assert group_outcomes_by_arm(pairs) == {"v1": [1.0, 0.0, 1.0], "v2": [0.0, None, 1.0]}
    summaries = summarize_outcomes(pairs, kind="binary")
    assert list(summaries) == ["v1", "v2"]
    v1, v2 = summaries["v1"], summaries["v2"]
    assert (v1.arm, v1.n, v1.dropped) == ("v1", 3, 0)
    assert (v1.mean, v1.variance) == pytest.approx((2 / 3, 1 / 3))
    assert v2 == ArmSummary("v2", n=2, mean=0.5, variance=0.5, dropped=1)
    single = summarize_arm("v3", [2.0])
    assert (single.n, single.mean) == (1, 2.0) and math.isnan(single.variance)


def test_summaries_give_the_same_decision_as_raw_outcomes():
    rng = np.random.default_rng(9)
    outcomes = [("a", float(v)) for v in rng.random(300) < 0.2]
    outcomes += [("b", float(v)) for v in rng.random(300) < 0.3]
    by_arm = group_outcomes_by_arm(outcomes)
    summaries = summarize_outcomes(outcomes, kind="binary")
    from_raw = sequential_test(by_arm["a"], by_arm["b"], kind="binary")
    from_summaries = sequential_test_from_summaries(summaries["a"], summaries["b"], kind="binary")
    assert from_summaries.p_value == from_raw.p_value
    assert from_summaries.confidence_interval == from_raw.confidence_interval
    assert from_summaries.decision == from_raw.decision
