"""A canary's analysis interval judged against the spec's thresholds (``spec.rollout.analysis``): pure.

``canary_analysis`` measures the intervals; ``judge`` turns one into an ``AnalysisResult``, which the rollout
(``rollout.decide``) counts and keeps in ``status.rollout.lastAnalysis``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from kubeserve.operator.spec import Analysis
from kubeserve.operator.timestamps import format_time, parse_time

if TYPE_CHECKING:  # measurements come from the scraping client; judging only reads them
    from kubeserve.operator.canary_metrics import Measurement


class Verdict(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class AnalysisResult:
    """One analysis interval of ``revision`` (the canary), judged: ``judge`` makes it from the measurements."""

    revision: str
    verdict: Verdict
    started: datetime
    ended: datetime
    measured: Mapping[str, float] = field(default_factory=dict)
    message: str = ""

    def to_status(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "verdict": str(self.verdict),
            "startedAt": format_time(self.started),
            "endedAt": format_time(self.ended),
            "measured": dict(self.measured),
            "message": self.message,
        }

    @classmethod
    def from_status(cls, data: Mapping[str, Any]) -> AnalysisResult:
        return cls(
            revision=data["revision"],
            verdict=Verdict(data["verdict"]),
            started=parse_time(data["startedAt"]),
            ended=parse_time(data["endedAt"]),
            measured=dict(data.get("measured") or {}),
            message=data.get("message") or "",
        )


@dataclass(frozen=True)
class _NoMeasurement:
    error_ratio: None = None
    p99_seconds: None = None
    mean_queue_delay_seconds: None = None


_NOTHING = _NoMeasurement()


def judge(
    analysis: Analysis,
    canary: Measurement,
    stable: Measurement | None,
    *,
    revision: str,
    started: datetime,
    ended: datetime,
) -> AnalysisResult:
    """The canary's interval against the thresholds: inconclusive below ``minRequests`` answers (or when a
    relative threshold has no stable value to compare with), failed when any measured value is over its limit.

    A value the canary has none of (no answer was timed, none queued) is not judged: the error ratio covers a
    canary that only fails.
    """
    measured = canary.values()
    result = AnalysisResult(revision, Verdict.PASS, started, ended, measured)
    if canary.answers < analysis.min_requests:
        message = (
            f"too little traffic to judge: {canary.answers} answers, fewer than minRequests {analysis.min_requests}"
        )
        return replace(result, verdict=Verdict.INCONCLUSIVE, message=message)
    base = stable or _NOTHING
    checks = (
        ("error ratio", analysis.error_ratio, canary.error_ratio, base.error_ratio),
        ("p99", analysis.p99_seconds, canary.p99_seconds, base.p99_seconds),
        (
            "mean queue delay",
            analysis.mean_queue_delay_seconds,
            canary.mean_queue_delay_seconds,
            base.mean_queue_delay_seconds,
        ),
    )
    over, unknown = [], []
    for what, threshold, value, baseline in checks:
        if threshold is None or value is None:
            continue
        if threshold.relative_to_stable and baseline is None:
            unknown.append(f"{what} {value:.4g} (no stable value to compare with)")
            continue
        relative = threshold.relative_to_stable and baseline is not None
        limit = threshold.max * baseline if relative and baseline is not None else threshold.max
        if value > limit:
            times = f" ({threshold.max:g} x stable {baseline:.4g})" if relative else ""
            over.append(f"{what} {value:.4g} > {limit:.4g}{times}")
    if over:
        return replace(result, verdict=Verdict.FAIL, message=f"{canary.answers} answers; " + "; ".join(over))
    if unknown:
        return replace(result, verdict=Verdict.INCONCLUSIVE, message="; ".join(unknown))
    return replace(result, message=f"{canary.answers} answers; within every threshold")
