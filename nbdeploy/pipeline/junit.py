"""JUnit XML for CI: one test case per run (sweeps) or per step (pipelines)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TestCase:
    name: str
    classname: str
    seconds: float
    status: str  # succeeded | failed | cached | skipped
    message: str = ""
    details: str = ""


def write_junit(path: str | Path, suite: str, cases: list[TestCase]) -> Path:
    target = Path(path)
    suite_element = ET.Element(
        "testsuite",
        name=suite,
        tests=str(len(cases)),
        failures=str(sum(case.status == "failed" for case in cases)),
        skipped=str(sum(case.status == "skipped" for case in cases)),
        errors="0",
        time=f"{sum(case.seconds for case in cases):.3f}",
    )
    for case in cases:
        element = ET.SubElement(
            suite_element,
            "testcase",
            name=case.name,
            classname=case.classname,
            time=f"{case.seconds:.3f}",
        )
        if case.status == "failed":
            failure = ET.SubElement(
                element, "failure", message=case.message, type="NotebookFailure"
            )
            failure.text = case.details or case.message
        elif case.status == "skipped":
            ET.SubElement(element, "skipped", message=case.message)
        elif case.status == "cached":
            ET.SubElement(element, "system-out").text = case.message
    root = ET.Element("testsuites")
    root.append(suite_element)
    ET.indent(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(target, encoding="utf-8", xml_declaration=True)
    return target


def write_junit_for_result(path: str | Path, source: str | Path, result: Any) -> Path:
    """A JUnit report of a run, a sweep (a case per combination) or a pipeline (per step)."""
    import json

    suite = Path(source).name

    def case(name: str, status: str, record: Any, message: str | None) -> TestCase:
        details = json.dumps(record.error, indent=2) if record is not None and record.error else ""
        seconds = (record.duration_s or 0.0) if record is not None and status != "cached" else 0.0
        return TestCase(name, suite, seconds, status, message or "", details)

    if hasattr(result, "steps"):
        cases = [case(s.name, s.status, s.record, s.message) for s in result.steps]
    elif hasattr(result, "outcomes"):
        cases = []
        for index, outcome in enumerate(result.outcomes, start=1):
            label = ", ".join(f"{k}={outcome.record.parameters.get(k)}" for k in result.swept)
            cases.append(
                case(f"{index}: {label}", outcome.record.status, outcome.record, outcome.message)
            )
    else:
        cases = [case(suite, result.record.status, result.record, result.message)]
    return write_junit(path, suite, cases)
