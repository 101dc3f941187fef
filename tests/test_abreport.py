"""The A/B report read from the router's logs: arms, decisions, replayed looks, bad lines."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nbdeploy.deployment.traffic.router.proxy import AB_LOG, FEEDBACK_LOG
from nbdeploy.monitor.abreport import AbReport, ab_report, format_ab_report, read_ab_log
from nbdeploy.monitor.abtest import (
    CONTROL_BETTER,
    NO_DECISION,
    TREATMENT_BETTER,
    Decision,
    sequential_test,
)

START = 1_700_000_000.0
PER_ARM = 3_000


def simulate(
    effects: dict[str, float], per_arm: int, seed: int, kind: str = "label"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Request and feedback log records of an experiment, as the router writes them.

    Requests are split at random over the arms (``per_arm`` each on average); every request
    gets one feedback a little later: a label with probability ``effects[arm]`` of being 1,
    or a reward drawn from N(effects[arm], 1). Feedback records are in time order.
    """
    rng = np.random.default_rng(seed)
    arms = list(effects)
    total = per_arm * len(arms)
    chosen = rng.integers(len(arms), size=total)
    requests, feedback = [], []
    for index in range(total):
        arm = arms[chosen[index]]
        t = START + index * 0.01
        requests.append(
            {
                "request_id": f"req{index:06d}",
                "arm": arm,
                "t": t,
                "status": 503 if rng.random() < 0.01 else 200,
                "ms": round(float(rng.lognormal(2.0, 0.5)), 3),
            }
        )
        if kind == "label":
            outcome = float(rng.random() < effects[arm])
        else:
            outcome = float(rng.normal(effects[arm], 1.0))
        feedback.append(
            {
                "request_id": f"req{index:06d}",
                "arm": arm,
                "t": t + 0.5,
                "outcome": outcome,
                "kind": kind,
            }
        )
    return requests, feedback


def append_lines(path: Path, records: list[Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record)) + "\n")


def write_experiment(
    folder: Path, effects: dict[str, float], per_arm: int = PER_ARM, seed: int = 0, **kwargs: Any
) -> None:
    requests, feedback = simulate(effects, per_arm, seed, **kwargs)
    append_lines(folder / AB_LOG, requests)
    append_lines(folder / FEEDBACK_LOG, feedback)


def only_decision(report: AbReport) -> Decision:
    assert len(report.comparisons) == 1
    return report.comparisons[0].decision


# -- decisions ---------------------------------------------------------------------------------


def test_a_real_difference_declares_the_treatment_better(tmp_path: Path) -> None:
    write_experiment(tmp_path, {"v1": 0.10, "v2": 0.20})
    report = ab_report(tmp_path)
    comparison = report.comparisons[0]
    decision = only_decision(report)
    assert (comparison.control, comparison.treatment) == ("v1", "v2")
    assert decision.decision == TREATMENT_BETTER
    assert decision.kind == "binary" and report.outcome_kind == "label"
    assert decision.p_value <= 0.05
    assert 0.0 < decision.lower < 0.10 < decision.upper
    assert comparison.looks == math.ceil(2 * PER_ARM / 50)
    rates = {arm.arm: arm.outcome_mean for arm in report.arms}
    assert rates["v1"] == pytest.approx(0.10, abs=0.02)
    assert rates["v2"] == pytest.approx(0.20, abs=0.02)


def test_identical_arms_give_no_decision(tmp_path: Path) -> None:
    write_experiment(tmp_path, {"v1": 0.15, "v2": 0.15}, seed=1)
    decision = only_decision(ab_report(tmp_path))
    assert decision.decision == NO_DECISION
    assert decision.p_value > 0.05
    assert decision.lower < 0.0 < decision.upper


def test_a_worse_treatment_declares_the_control_better(tmp_path: Path) -> None:
    write_experiment(tmp_path, {"v1": 0.20, "v2": 0.10}, seed=2)
    report = ab_report(tmp_path)
    assert (report.comparisons[0].control, report.comparisons[0].treatment) == ("v1", "v2")
    assert only_decision(report).decision == CONTROL_BETTER
    assert only_decision(report).upper < 0.0


def test_rewards_are_tested_as_continuous_outcomes(tmp_path: Path) -> None:
    write_experiment(tmp_path, {"v1": 0.0, "v2": 0.2}, per_arm=2_000, seed=3, kind="reward")
    report = ab_report(tmp_path)
    decision = only_decision(report)
    assert report.outcome_kind == "reward" and decision.kind == "continuous"
    assert decision.decision == TREATMENT_BETTER
    assert decision.difference == pytest.approx(0.2, abs=0.1)
    assert "mean" in format_ab_report(report).splitlines()[0]


def test_labels_mixed_with_rewards_are_all_rewards(tmp_path: Path) -> None:
    requests, feedback = simulate({"v1": 0.3, "v2": 0.3}, 100, seed=4)
    feedback[-1] = {**feedback[-1], "outcome": 2.5, "kind": "reward"}
    append_lines(tmp_path / AB_LOG, requests)
    append_lines(tmp_path / FEEDBACK_LOG, feedback)
    assert read_ab_log(tmp_path).outcome_kind == "reward"
    assert only_decision(ab_report(tmp_path)).kind == "continuous"


def test_control_and_treatment_can_be_named(tmp_path: Path) -> None:
    write_experiment(tmp_path, {"v1": 0.10, "v2": 0.20})
    report = ab_report(tmp_path, control="v2", treatment="v1")
    assert (report.comparisons[0].control, report.comparisons[0].treatment) == ("v2", "v1")
    assert only_decision(report).decision == CONTROL_BETTER
    named_treatment = ab_report(tmp_path, treatment="v1")
    assert (named_treatment.comparisons[0].control, named_treatment.comparisons[0].treatment) == (
        "v2",
        "v1",
    )


def test_three_arms_compare_each_treatment_with_the_control(tmp_path: Path) -> None:
    write_experiment(tmp_path, {"v3": 0.20, "v1": 0.10, "v2": 0.10}, per_arm=2_500, seed=5)
    report = ab_report(tmp_path)
    assert [arm.arm for arm in report.arms] == ["v1", "v2", "v3"]
    pairs = [(c.control, c.treatment) for c in report.comparisons]
    assert pairs == [("v1", "v2"), ("v1", "v3")]
    verdicts = {c.treatment: c.decision.decision for c in report.comparisons}
    assert verdicts == {"v2": NO_DECISION, "v3": TREATMENT_BETTER}
    text = format_ab_report(report)
    assert "v2 vs v1: no decision yet (p = " in text
    assert "v3 vs v1: treatment better (p = " in text
    only_v3 = ab_report(tmp_path, control="v1", treatment="v3")
    assert [c.treatment for c in only_v3.comparisons] == ["v3"]


def test_the_control_is_the_lowest_version_number(tmp_path: Path) -> None:
    write_experiment(tmp_path, {"v10": 0.1, "v9": 0.1}, per_arm=50)
    report = ab_report(tmp_path)
    assert [arm.arm for arm in report.arms] == ["v9", "v10"]
    assert (report.comparisons[0].control, report.comparisons[0].treatment) == ("v9", "v10")


# -- replayed looks ------------------------------------------------------------------------------


def test_the_replay_evaluates_every_look_every_outcomes_and_at_the_end(tmp_path: Path) -> None:
    requests, feedback = simulate({"v1": 0.2, "v2": 0.4}, 115, seed=6)
    append_lines(tmp_path / AB_LOG, requests)
    append_lines(tmp_path / FEEDBACK_LOG, feedback)
    comparison = ab_report(tmp_path, look_every=50).comparisons[0]
    decision: Decision | None = None
    for seen in (50, 100, 150, 200, 230):
        window = feedback[:seen]
        decision = sequential_test(
            [f["outcome"] for f in window if f["arm"] == "v1"],
            [f["outcome"] for f in window if f["arm"] == "v2"],
            0.05,
            "binary",
            previous=decision,
        )
    assert comparison.looks == 5
    assert comparison.decision == decision


def test_the_replayed_p_value_does_not_depend_on_how_often_the_report_ran(
    tmp_path: Path,
) -> None:
    requests, feedback = simulate({"v1": 0.10, "v2": 0.13}, 2_000, seed=7)
    all_at_once, in_batches = tmp_path / "all-at-once", tmp_path / "in-batches"
    for folder in (all_at_once, in_batches):
        folder.mkdir()
        append_lines(folder / AB_LOG, requests)
    append_lines(all_at_once / FEEDBACK_LOG, feedback)
    final = ab_report(all_at_once)
    assert ab_report(all_at_once).to_dict() == final.to_dict()

    p_values = []
    for start in range(0, len(feedback), 500):  # batches on the look grid (multiples of 50)
        append_lines(in_batches / FEEDBACK_LOG, feedback[start : start + 500])
        p_values.append(only_decision(ab_report(in_batches)).p_value)
    assert p_values == sorted(p_values, reverse=True)  # a running minimum: never goes up
    assert p_values[0] > p_values[-1]
    assert p_values[-1] == only_decision(final).p_value
    assert ab_report(in_batches).comparisons == final.comparisons

    single_look = sequential_test(
        [f["outcome"] for f in feedback if f["arm"] == "v1"],
        [f["outcome"] for f in feedback if f["arm"] == "v2"],
        kind="binary",
    )
    assert only_decision(final).p_value <= single_look.p_value


# -- reading the logs ----------------------------------------------------------------------------


def test_only_the_last_feedback_of_a_request_counts(tmp_path: Path) -> None:
    requests, feedback = simulate({"v1": 0.5, "v2": 0.5}, 30, seed=8)
    first = feedback[0]
    corrected = {**first, "t": feedback[-1]["t"] + 1.0, "outcome": 1.0 - first["outcome"]}
    append_lines(tmp_path / AB_LOG, requests)
    append_lines(tmp_path / FEEDBACK_LOG, [*feedback, corrected])
    data = read_ab_log(tmp_path)
    assert len(data.outcome_sequence) == len(feedback)
    assert data.outcome_sequence[0] == (first["arm"], corrected["outcome"])  # first place
    expected = [f["outcome"] for f in [corrected, *feedback[1:]] if f["arm"] == first["arm"]]
    assert data.outcomes[first["arm"]] == expected
    report = ab_report(tmp_path)
    assert sum(arm.outcomes for arm in report.arms) == len(feedback)


def test_feedback_is_taken_in_time_order(tmp_path: Path) -> None:
    records = [
        {"request_id": "b", "arm": "v1", "t": START + 2, "outcome": 0.0, "kind": "label"},
        {"request_id": "a", "arm": "v1", "t": START + 1, "outcome": 1.0, "kind": "label"},
    ]
    append_lines(tmp_path / FEEDBACK_LOG, records)
    assert read_ab_log(tmp_path).outcomes == {"v1": [1.0, 0.0]}


def test_requests_are_counted_per_arm(tmp_path: Path) -> None:
    requests, _ = simulate({"v1": 0.1, "v2": 0.1}, 500, seed=9)
    append_lines(tmp_path / AB_LOG, requests)
    data = read_ab_log(tmp_path)
    report = ab_report(tmp_path)
    for arm in report.arms:
        mine = [r for r in requests if r["arm"] == arm.arm]
        assert arm.requests == data.requests[arm.arm] == len(mine)
        assert arm.errors == sum(r["status"] >= 500 for r in mine)
        assert arm.error_rate == pytest.approx(arm.errors / arm.requests)
        assert arm.p50_ms == pytest.approx(np.percentile([r["ms"] for r in mine], 50))
        assert arm.p99_ms == pytest.approx(np.percentile([r["ms"] for r in mine], 99))
    assert data.arm_by_request == {r["request_id"]: r["arm"] for r in requests}


def test_malformed_and_truncated_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    requests, feedback = simulate({"v1": 0.1, "v2": 0.3}, 400, seed=10)
    good = {"request_id": "x1", "arm": "v1", "t": START, "status": 200, "ms": 3.0}
    bad_requests = [
        "not json",
        "[1, 2]",
        json.dumps({**good, "status": "200"}),
        json.dumps({**good, "status": True}),
        json.dumps({**good, "ms": None}),
        json.dumps({**good, "arm": 2}),
        "",  # blank lines are not counted
    ]
    label = {"request_id": "x1", "arm": "v1", "t": START, "outcome": 1.0, "kind": "label"}
    bad_feedback = [
        json.dumps({**label, "outcome": 0.5}),  # a label must be 0 or 1
        json.dumps({**label, "outcome": "1"}),
        json.dumps({**label, "kind": "vote"}),
        json.dumps({**label, "request_id": None}),
        json.dumps({**label, "t": "yesterday"}),
        '{"request_id": "x1", "arm": NaN, "t": 1, "outcome": 1.0, "kind": "label"}',
    ]
    append_lines(tmp_path / AB_LOG, [*requests[:200], *bad_requests, *requests[200:]])
    append_lines(tmp_path / FEEDBACK_LOG, [*feedback[:100], *bad_feedback, *feedback[100:]])
    with (tmp_path / AB_LOG).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(good)[:25])  # the router crashed mid-write
    with (tmp_path / FEEDBACK_LOG).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(label)[:30])
    data = read_ab_log(tmp_path)
    assert data.skipped_request_lines == 7
    assert data.skipped_feedback_lines == 7
    assert data.skipped_lines == 14
    assert sum(data.requests.values()) == len(requests)
    assert len(data.outcome_sequence) == len(feedback)
    report = ab_report(tmp_path)
    assert report.skipped_lines == 14
    assert "skipped 14 malformed lines (7 in ab-requests.jsonl, 7 in ab-feedback.jsonl)" in (
        format_ab_report(report)
    )


def test_missing_logs_give_an_empty_report_that_says_so(tmp_path: Path) -> None:
    report = ab_report(tmp_path)
    assert report.arms == [] and report.comparisons == []
    assert report.missing_files == [AB_LOG, FEEDBACK_LOG]
    assert report.outcome_kind is None
    text = format_ab_report(report)
    assert "no A/B logs" in text
    assert "no outcomes yet: POST {request_id, label|reward} to <router>/feedback" in text
    json.dumps(report.to_dict(), allow_nan=False)
    assert ab_report(tmp_path / "no-such-deployment").missing_files == [AB_LOG, FEEDBACK_LOG]


def test_requests_without_feedback_point_at_the_feedback_endpoint(tmp_path: Path) -> None:
    requests, _ = simulate({"v1": 0.1, "v2": 0.1}, 40, seed=11)
    append_lines(tmp_path / AB_LOG, requests)
    (tmp_path / "router.json").write_text(
        json.dumps({"listen": {"host": "127.0.0.1", "port": 8123}}), encoding="utf-8"
    )
    report = ab_report(tmp_path)
    comparison = report.comparisons[0]
    assert comparison.looks == 0 and comparison.decision.decision == NO_DECISION
    assert [arm.outcomes for arm in report.arms] == [0, 0]
    assert all(arm.outcome_mean is None for arm in report.arms)
    text = format_ab_report(report)
    assert "no outcomes yet: POST {request_id, label|reward} to http://127.0.0.1:8123/feedback" in (
        text
    )
    assert "v2 vs v1: no decision yet (p = 1," in text
    encoded = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert encoded["comparisons"][0]["lower"] is None
    assert encoded["comparisons"][0]["difference"] is None


def test_unknown_arms_are_refused_with_the_arms_that_exist(tmp_path: Path) -> None:
    write_experiment(tmp_path, {"v1": 0.1, "v2": 0.1}, per_arm=30)
    with pytest.raises(ValueError, match=r"control arm 'v7' is not in the A/B logs; arms: v1, v2"):
        ab_report(tmp_path, control="v7")
    with pytest.raises(ValueError, match=r"treatment arm 'v3'.*arms: v1, v2"):
        ab_report(tmp_path, treatment="v3")
    with pytest.raises(ValueError, match="same arm"):
        ab_report(tmp_path, control="v1", treatment="v1")
    with pytest.raises(ValueError, match="look_every"):
        ab_report(tmp_path, look_every=0)


# -- output --------------------------------------------------------------------------------------


def test_the_text_has_the_table_and_the_decision_line(tmp_path: Path) -> None:
    write_experiment(tmp_path, {"v1": 0.10, "v2": 0.20})
    report = ab_report(tmp_path)
    lines = format_ab_report(report).splitlines()
    header = "arm requests errors outcomes rate p50 ms p99 ms"
    assert lines[0].split() == header.split()
    for row, arm in zip(lines[1:3], report.arms, strict=True):
        cells = row.split()
        assert cells[:4] == [arm.arm, str(arm.requests), str(arm.errors), str(arm.outcomes)]
        assert cells[4] == f"{arm.outcome_mean:.3f}"
    assert re.fullmatch(
        r"v2 vs v1: treatment better \(p = \S+, difference \+0\.\d{3} "
        r"\[0\.\d{3}, 0\.\d{3}\], alpha 0\.05, 120 looks\)",
        lines[3],
    ), lines[3]


def test_the_json_has_the_arms_and_the_comparisons(tmp_path: Path) -> None:
    write_experiment(tmp_path, {"v1": 0.10, "v2": 0.20}, per_arm=500)
    encoded = json.loads(json.dumps(ab_report(tmp_path).to_dict(), allow_nan=False))
    assert [arm["arm"] for arm in encoded["arms"]] == ["v1", "v2"]
    assert set(encoded["arms"][0]) == {
        "arm",
        "requests",
        "errors",
        "error_rate",
        "outcomes",
        "outcome_mean",
        "p50_ms",
        "p99_ms",
    }
    comparison = encoded["comparisons"][0]
    assert comparison["control"] == "v1" and comparison["treatment"] == "v2"
    assert comparison["decision"] in (NO_DECISION, TREATMENT_BETTER)
    assert comparison["method"].startswith("mSPRT")
    assert comparison["lower"] <= comparison["difference"] <= comparison["upper"]
