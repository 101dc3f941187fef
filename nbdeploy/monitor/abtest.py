"""A/B tests of model versions behind a router, with an always-valid sequential test.

A router sends part of the traffic to a *control* version and part to a *treatment* version,
and every request yields an outcome: binary (the prediction was right, the user converted) or a
real-valued reward. This module decides which version is better while letting you look at the
results as often as you like: the test is *always valid*, so peeking after every request does
not inflate the false-positive rate the way repeated fixed-horizon z-tests do.

Method: the mixture sequential probability ratio test (mSPRT) for the difference of means with
a normal mixing distribution and plug-in variances, and the always-valid p-value and confidence
interval obtained by inverting it, from

    R. Johari, L. Pekelis & D. Walsh, "Always valid inference: continuous monitoring of
    A/B tests", Operations Research 70(3), 2022 (arXiv:1512.04922); and
    R. Johari, P. Koomen, L. Pekelis & D. Walsh, "Peeking at A/B tests: why it matters, and
    what to do about it", KDD 2017.

With ``d`` the difference of means (treatment - control), ``s2 = var_c/n_c + var_t/n_t`` its
plug-in variance and ``tau2`` the variance of the normal mixture over the true difference,
the mixture likelihood ratio against the null "true difference = theta" is

    L(theta) = sqrt(s2 / (s2 + tau2)) * exp(tau2 * (d - theta)**2 / (2 * s2 * (s2 + tau2)))

which, under the null, is (asymptotically, by the central limit theorem) a non-negative
martingale with mean one; by Ville's inequality it exceeds ``1/alpha`` at *any* time with
probability at most ``alpha``. Hence

* the always-valid p-value is ``p_n = min(p_{n-1}, 1 / L_n(0))`` (a running minimum), and
  the test stops with a winner as soon as ``p_n <= alpha``;
* the always-valid (1 - alpha) confidence interval is ``{theta: L_n(theta) < 1/alpha}``,
  i.e. ``d +/- sqrt(s2 * (s2 + tau2) / tau2 * (log((s2 + tau2) / s2) + 2 * log(1/alpha)))``,
  intersected with the previous intervals.

``tau2`` is set in units of the data, ``tau = effect_size_scale * pooled standard deviation``:
the test is most sensitive to standardized effects of about that size, and stays valid for all.
For binary outcomes the Bernoulli variance is computed with half a pseudo-success
(``(successes + 0.5) / (n + 1)``), so arms that are all 0 or all 1 still give a usable variance.

Usage: keep the previous :class:`Decision` and pass it back with the cumulative data, so the
p-value stays a running minimum and the decision, once taken, sticks::

    decision = None
    for control, treatment in cumulative_outcomes_at_each_look():
        decision = sequential_test(control, treatment, kind="binary", previous=decision)
        if decision.decided:
            break
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

OutcomeKind: TypeAlias = Literal["binary", "continuous"]
Verdict: TypeAlias = Literal["no decision yet", "treatment better", "control better"]
Outcomes: TypeAlias = "Sequence[float | None] | npt.NDArray[Any]"

NO_DECISION: Final = "no decision yet"
TREATMENT_BETTER: Final = "treatment better"
CONTROL_BETTER: Final = "control better"

DEFAULT_ALPHA: Final = 0.05
DEFAULT_MIN_SAMPLES_PER_ARM: Final = 20
DEFAULT_EFFECT_SIZE_SCALE: Final = 0.1
BINARY_PSEUDO_SUCCESSES: Final = 0.5  # added to the successes, twice that to n, for variances

__all__ = [
    "CONTROL_BETTER",
    "NO_DECISION",
    "TREATMENT_BETTER",
    "ArmSummary",
    "Decision",
    "OutcomeKind",
    "Verdict",
    "group_outcomes_by_arm",
    "sequential_test",
    "sequential_test_from_summaries",
    "summarize_arm",
    "summarize_outcomes",
]


@dataclass(frozen=True)
class ArmSummary:
    """The finite outcomes of one arm, summarized.

    ``mean`` is NaN for an empty arm and ``variance`` (sample variance, ``n - 1`` denominator)
    is NaN below two observations; ``dropped`` counts the NaN, infinite and missing values
    that were left out.
    """

    arm: str
    n: int
    mean: float
    variance: float
    dropped: int = 0


@dataclass(frozen=True)
class Decision:
    """The state of a sequential A/B test after one look at the data.

    ``difference`` is treatment mean minus control mean; ``lower`` and ``upper`` bound it with
    an always-valid confidence interval at level ``1 - alpha`` (infinite until there is enough
    data). ``p_value`` is the always-valid p-value of "no difference"; ``decision`` is
    "treatment better" or "control better" once ``p_value <= alpha``, and stays so.
    """

    decision: Verdict
    p_value: float
    difference: float
    lower: float
    upper: float
    control: ArmSummary
    treatment: ArmSummary
    alpha: float
    kind: OutcomeKind
    method: str
    note: str = ""

    @property
    def decided(self) -> bool:
        """Whether a winner has been declared (the experiment can stop)."""
        return self.decision != NO_DECISION

    @property
    def confidence_interval(self) -> tuple[float, float]:
        """The always-valid confidence interval of the difference, as ``(lower, upper)``."""
        return (self.lower, self.upper)


def summarize_arm(arm: str, values: Outcomes, kind: OutcomeKind = "continuous") -> ArmSummary:
    """Summarize one arm's outcomes, dropping (and counting) NaN, infinite and None values.

    For ``kind="binary"`` every finite value must be 0 or 1 (booleans are fine).
    """
    _check_kind(kind)
    data = np.asarray(values, dtype=float)
    if data.ndim != 1:
        raise ValueError(f"outcomes of arm {arm!r} must be a flat sequence, got shape {data.shape}")
    finite = data[np.isfinite(data)]
    if kind == "binary" and not np.all((finite == 0.0) | (finite == 1.0)):
        raise ValueError(f"binary outcomes of arm {arm!r} must be 0 or 1")
    n = int(finite.size)
    return ArmSummary(
        arm=arm,
        n=n,
        mean=float(finite.mean()) if n else math.nan,
        variance=float(finite.var(ddof=1)) if n >= 2 else math.nan,
        dropped=int(data.size) - n,
    )


def group_outcomes_by_arm(
    outcomes: Iterable[tuple[str, float | None]],
) -> dict[str, list[float | None]]:
    """Split ``(arm, value)`` pairs into one list of values per arm, in order of appearance."""
    by_arm: dict[str, list[float | None]] = {}
    for arm, value in outcomes:
        by_arm.setdefault(arm, []).append(value)
    return by_arm


def summarize_outcomes(
    outcomes: Iterable[tuple[str, float | None]], kind: OutcomeKind = "continuous"
) -> dict[str, ArmSummary]:
    """Summaries per arm of ``(arm, value)`` pairs; non-finite values are dropped and counted."""
    return {
        arm: summarize_arm(arm, values, kind)
        for arm, values in group_outcomes_by_arm(outcomes).items()
    }


def sequential_test(
    control: Outcomes,
    treatment: Outcomes,
    alpha: float = DEFAULT_ALPHA,
    kind: OutcomeKind = "continuous",
    *,
    previous: Decision | None = None,
    min_samples_per_arm: int = DEFAULT_MIN_SAMPLES_PER_ARM,
    effect_size_scale: float = DEFAULT_EFFECT_SIZE_SCALE,
) -> Decision:
    """Always-valid test of treatment against control on all outcomes observed so far.

    Pass the *cumulative* outcomes of each arm and the :class:`Decision` of the previous look
    as ``previous``: the p-value is then the running minimum, the confidence interval the
    running intersection, and a declared winner stays declared. Call it as often as you like;
    the chance of ever declaring a winner when the arms do not differ is at most ``alpha``.

    Below ``min_samples_per_arm`` finite outcomes in either arm (or with zero variance in both
    continuous arms) there is no inference: p-value 1, infinite interval, "no decision yet".
    ``effect_size_scale`` is the standard deviation of the normal mixture over the true
    difference, in pooled standard deviations of the outcomes (see the module docstring).
    """
    return sequential_test_from_summaries(
        summarize_arm("control", control, kind),
        summarize_arm("treatment", treatment, kind),
        alpha,
        kind,
        previous=previous,
        min_samples_per_arm=min_samples_per_arm,
        effect_size_scale=effect_size_scale,
    )


def sequential_test_from_summaries(
    control: ArmSummary,
    treatment: ArmSummary,
    alpha: float = DEFAULT_ALPHA,
    kind: OutcomeKind = "continuous",
    *,
    previous: Decision | None = None,
    min_samples_per_arm: int = DEFAULT_MIN_SAMPLES_PER_ARM,
    effect_size_scale: float = DEFAULT_EFFECT_SIZE_SCALE,
) -> Decision:
    """:func:`sequential_test` on cumulative per-arm summaries instead of raw outcomes."""
    _check_settings(alpha, kind, min_samples_per_arm, effect_size_scale)
    method = f"mSPRT (normal mixture, tau = {effect_size_scale:g} pooled sd, plug-in variance)"
    if previous is not None:
        _check_previous(previous, control, treatment, alpha, kind, method)
    no_inference = _why_no_inference(control, treatment, kind, min_samples_per_arm)
    difference = treatment.mean - control.mean
    p_value, lower, upper = 1.0, -math.inf, math.inf
    if not no_inference:
        s2 = _arm_variance(control, kind) / control.n + _arm_variance(treatment, kind) / treatment.n
        tau2 = effect_size_scale**2 * _pooled_variance(control, treatment, kind)
        p_value = math.exp(-max(0.0, _mixture_log_likelihood_ratio(difference, s2, tau2)))
        half_width = _mixture_interval_half_width(s2, tau2, alpha)
        lower, upper = difference - half_width, difference + half_width
    decision: Verdict = NO_DECISION
    if p_value <= alpha:
        decision = TREATMENT_BETTER if difference > 0 else CONTROL_BETTER
    if previous is not None:
        p_value = min(p_value, previous.p_value)
        lower, upper = _intersect((lower, upper), previous.confidence_interval)
        if previous.decided:
            decision = previous.decision
    return Decision(
        decision=decision,
        p_value=p_value,
        difference=difference,
        lower=lower,
        upper=upper,
        control=control,
        treatment=treatment,
        alpha=alpha,
        kind=kind,
        method=method,
        note="; ".join(note for note in (no_inference, _dropped_note(control, treatment)) if note),
    )


def _mixture_log_likelihood_ratio(estimate_minus_null: float, s2: float, tau2: float) -> float:
    """log L(theta) of the normal-mixture SPRT, for an estimate with variance ``s2``."""
    total = s2 + tau2
    return 0.5 * math.log(s2 / total) + tau2 * estimate_minus_null**2 / (2.0 * s2 * total)


def _mixture_interval_half_width(s2: float, tau2: float, alpha: float) -> float:
    """Half the width of ``{theta: L(theta) < 1/alpha}``, centred on the estimate."""
    total = s2 + tau2
    return math.sqrt(s2 * total / tau2 * (math.log(total / s2) - 2.0 * math.log(alpha)))


def _arm_variance(summary: ArmSummary, kind: OutcomeKind) -> float:
    """Plug-in variance of one outcome: Bernoulli with a pseudo-count, or the sample variance."""
    if kind == "binary":
        rate = (summary.n * summary.mean + BINARY_PSEUDO_SUCCESSES) / (
            summary.n + 2 * BINARY_PSEUDO_SUCCESSES
        )
        return rate * (1.0 - rate)
    return summary.variance


def _pooled_variance(control: ArmSummary, treatment: ArmSummary, kind: OutcomeKind) -> float:
    """Variance of one outcome, averaged over both arms weighted by their sizes."""
    weighted = control.n * _arm_variance(control, kind) + treatment.n * _arm_variance(
        treatment, kind
    )
    return weighted / (control.n + treatment.n)


def _why_no_inference(
    control: ArmSummary, treatment: ArmSummary, kind: OutcomeKind, min_samples_per_arm: int
) -> str:
    """Why the data do not support inference yet, or "" when they do."""
    if min(control.n, treatment.n) < min_samples_per_arm:
        return (
            f"fewer than {min_samples_per_arm} valid outcomes in an arm "
            f"(control {control.n}, treatment {treatment.n})"
        )
    if kind == "continuous" and control.variance == 0.0 and treatment.variance == 0.0:
        return "zero variance in both arms: no inference possible"
    return ""


def _dropped_note(control: ArmSummary, treatment: ArmSummary) -> str:
    """How many non-finite values were left out, or "" when none were."""
    if not control.dropped and not treatment.dropped:
        return ""
    return (
        f"dropped {control.dropped + treatment.dropped} non-finite values "
        f"(control {control.dropped}, treatment {treatment.dropped})"
    )


def _intersect(current: tuple[float, float], previous: tuple[float, float]) -> tuple[float, float]:
    """Running intersection of confidence intervals; the current one if they are disjoint.

    Disjoint always-valid intervals happen with probability at most alpha, or when the
    outcomes drift over time; the current interval is then the better description.
    """
    lower, upper = max(current[0], previous[0]), min(current[1], previous[1])
    return (lower, upper) if lower <= upper else current


def _check_kind(kind: str) -> None:
    if kind not in ("binary", "continuous"):
        raise ValueError(f"kind must be 'binary' or 'continuous', got {kind!r}")


def _check_settings(
    alpha: float, kind: str, min_samples_per_arm: int, effect_size_scale: float
) -> None:
    if not 0.0 < alpha < 1.0:  # also rejects NaN
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha!r}")
    _check_kind(kind)
    if min_samples_per_arm < 2:
        raise ValueError(f"min_samples_per_arm must be at least 2, got {min_samples_per_arm!r}")
    if not 0.0 < effect_size_scale < math.inf:
        raise ValueError(f"effect_size_scale must be positive, got {effect_size_scale!r}")


def _check_previous(
    previous: Decision,
    control: ArmSummary,
    treatment: ArmSummary,
    alpha: float,
    kind: OutcomeKind,
    method: str,
) -> None:
    """The previous look must belong to the same test, on fewer or as many outcomes."""
    if (previous.alpha, previous.kind, previous.method) != (alpha, kind, method):
        raise ValueError(
            "previous decision comes from a different test: "
            f"alpha {previous.alpha} vs {alpha}, kind {previous.kind} vs {kind}, "
            f"method {previous.method!r} vs {method!r}"
        )
    if previous.control.n > control.n or previous.treatment.n > treatment.n:
        raise ValueError(
            "previous decision saw more outcomes than now: pass cumulative outcomes "
            f"(control {previous.control.n} -> {control.n}, "
            f"treatment {previous.treatment.n} -> {treatment.n})"
        )
