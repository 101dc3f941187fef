"""The report of a shadow deployment, read from its router's ``shadow.jsonl``: how often the
candidate agreed with the live version, how much slower or faster it was, and how often it
failed, over the requests mirrored to it (one JSON line each, written by the router)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nbdeploy.deployment.traffic.router.proxy import SHADOW_LOG


@dataclass
class ShadowReport:
    mirrored: int  # requests also sent to the candidate
    compared: int  # of those, with a successful live answer to compare with
    agreed: int
    candidate_errors: int  # no answer, or 5xx
    live_p50_ms: float | None
    candidate_p50_ms: float | None
    added_p50_ms: float | None  # the median of (candidate - live) per request
    added_p99_ms: float | None
    skipped_lines: int

    @property
    def agreement_rate(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agreement_rate": self.agreement_rate}


def shadow_report(folder: Path) -> ShadowReport:
    records, skipped = [], 0
    path = folder / SHADOW_LOG
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    for line in lines:
        try:
            record = json.loads(line)
            records.append(
                (
                    record.get("agree"),
                    record.get("shadow_status"),
                    float(record["live_ms"]),
                    float(record["shadow_ms"]),
                )
            )
        except (ValueError, KeyError, TypeError):
            skipped += 1
    live = np.array([r[2] for r in records], dtype=float)
    candidate = np.array([r[3] for r in records], dtype=float)
    added = candidate - live

    def quantile(values: np.ndarray, q: float) -> float | None:
        return round(float(np.quantile(values, q)), 3) if values.size else None

    return ShadowReport(
        mirrored=len(records),
        compared=sum(1 for r in records if r[0] is not None),
        agreed=sum(1 for r in records if r[0] is True),
        candidate_errors=sum(1 for r in records if r[1] is None or r[1] >= 500),
        live_p50_ms=quantile(live, 0.5),
        candidate_p50_ms=quantile(candidate, 0.5),
        added_p50_ms=quantile(added, 0.5),
        added_p99_ms=quantile(added, 0.99),
        skipped_lines=skipped,
    )


def format_shadow_report(name: str, report: ShadowReport) -> str:
    if not report.mirrored:
        return f"{name}: no request has been mirrored yet"
    rate = report.agreement_rate
    agreement = f"{rate:.1%} of {report.compared}" if rate is not None else "nothing compared"
    return "\n".join(
        [
            f"{name}: {report.mirrored} requests mirrored to the candidate",
            f"  agreement with the live answers: {agreement}",
            f"  candidate errors: {report.candidate_errors}",
            f"  latency p50: live {report.live_p50_ms} ms, candidate {report.candidate_p50_ms} ms"
            f" (candidate - live per request: p50 {report.added_p50_ms} ms, "
            f"p99 {report.added_p99_ms} ms)",
        ]
    )
