"""The canary analysis's measurements, read straight from the runtime pods' ``/metrics`` (no Prometheus needed).

``scrape`` reads each pod's cumulative counters once; ``measure`` turns two scrapes of a revision's pods (the start
and the end of an analysis interval) into what the analysis judges: answers, the 5xx error ratio, the p99 of the
total request duration and the mean queue delay over the interval. The metric names are the runtime's
(``kubeserve.runtime.metrics``); the tests check them against a real runtime server.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "kubeserve_requests"  # counter: samples ``kubeserve_requests_total{model,version,code}``
DURATION = "kubeserve_request_duration_seconds"  # histogram by ``stage``
QUEUE_DELAY = "kubeserve_queue_delay_seconds"  # histogram
TOTAL_STAGE = "total"  # arrival to response ready: what a client waits
P99 = 0.99
DEFAULT_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class Counters:
    """One pod's cumulative counters at one scrape, summed over label values other than the ones named."""

    answers: Mapping[str, float] = field(default_factory=dict)  # by code class: "2xx", "4xx", "5xx"
    duration_buckets: Mapping[float, float] = field(default_factory=dict)  # stage="total": upper bound -> cumulative
    queue_delay_sum: float = 0.0
    queue_delay_count: float = 0.0

    def went_down_since(self, earlier: Counters) -> bool:
        """A counter below its earlier value: the pod restarted (its process, so every counter) in between."""
        pairs = [(self.queue_delay_count, earlier.queue_delay_count), (self.queue_delay_sum, earlier.queue_delay_sum)]
        pairs += [(self.answers.get(code, 0.0), count) for code, count in earlier.answers.items()]
        pairs += [(self.duration_buckets.get(bound, 0.0), count) for bound, count in earlier.duration_buckets.items()]
        return any(now < before for now, before in pairs)

    def minus(self, earlier: Counters) -> Counters:
        return Counters(
            answers={code: count - earlier.answers.get(code, 0.0) for code, count in self.answers.items()},
            duration_buckets={
                bound: count - earlier.duration_buckets.get(bound, 0.0)
                for bound, count in self.duration_buckets.items()
            },
            queue_delay_sum=self.queue_delay_sum - earlier.queue_delay_sum,
            queue_delay_count=self.queue_delay_count - earlier.queue_delay_count,
        )


@dataclass(frozen=True)
class Scrape:
    """One pod's answer: its counters, or why there are none (a timeout, a refused connection, a bad status)."""

    target: str
    counters: Counters | None
    error: str | None = None


def code_class(code: str) -> str:
    return f"{code[:1]}xx" if code[:1].isdigit() else code


def parse(text: str) -> Counters:
    """The counters the analysis reads, from the Prometheus text exposition of one runtime pod."""
    answers: dict[str, float] = {}
    buckets: dict[float, float] = {}
    queue_sum = queue_count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name == REQUESTS and sample.name == f"{REQUESTS}_total":
                kind = code_class(sample.labels.get("code", ""))
                answers[kind] = answers.get(kind, 0.0) + sample.value
            elif family.name == DURATION and sample.name == f"{DURATION}_bucket":
                if sample.labels.get("stage") == TOTAL_STAGE:
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif family.name == QUEUE_DELAY and sample.name == f"{QUEUE_DELAY}_sum":
                queue_sum += sample.value
            elif family.name == QUEUE_DELAY and sample.name == f"{QUEUE_DELAY}_count":
                queue_count += sample.value
    return Counters(answers, buckets, queue_sum, queue_count)


async def scrape_one(session: aiohttp.ClientSession, url: str, *, within: float = DEFAULT_TIMEOUT_SECONDS) -> Scrape:
    """``url`` (a pod's ``http://IP:PORT/metrics``) read once; a failure is reported in the result, not raised."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=within)) as response:
            if response.status != 200:
                return Scrape(url, None, f"HTTP {response.status}")
            text = await response.text()
    except TimeoutError:
        return Scrape(url, None, f"no answer within {within:g}s")
    except aiohttp.ClientError as error:
        return Scrape(url, None, f"{type(error).__name__}: {error}")
    try:
        return Scrape(url, parse(text))
    except ValueError as error:  # not the Prometheus text format
        return Scrape(url, None, f"unreadable metrics: {error}")


async def scrape(
    urls: Iterable[str], *, session: aiohttp.ClientSession | None = None, within: float = DEFAULT_TIMEOUT_SECONDS
) -> dict[str, Scrape]:
    """Every pod at once, by URL; each within ``within`` seconds, so one stuck pod delays the others by that at most."""
    urls = list(urls)
    if session is None:
        async with aiohttp.ClientSession() as own:
            return await scrape(urls, session=own, within=within)
    results = await asyncio.gather(*(scrape_one(session, url, within=within) for url in urls))
    return dict(zip(urls, results, strict=True))


def metrics_url(pod_ip: str, port: int) -> str:
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip  # an IPv6 pod address
    return f"http://{host}:{port}/metrics"


@dataclass(frozen=True)
class Measurement:
    """A revision's traffic over an analysis interval, summed over its pods."""

    answers: int
    errors: int  # 5xx
    error_ratio: float | None  # None without answers
    p99_seconds: float | None  # None without a timed answer
    mean_queue_delay_seconds: float | None  # None without a queued request
    pods: int  # pods measured (scraped at the end)
    unreachable: tuple[str, ...] = ()  # "target: why", for the pods that could not be read at the end

    def values(self) -> dict[str, float]:
        """The measured values, for status and messages (those that exist)."""
        values = {"answers": float(self.answers), "errorRatio": self.error_ratio, "p99Seconds": self.p99_seconds}
        values["meanQueueDelaySeconds"] = self.mean_queue_delay_seconds
        return {name: value for name, value in values.items() if value is not None}


def measure(start: Mapping[str, Scrape], end: Mapping[str, Scrape]) -> Measurement:
    """What happened between two scrapes of the same pods.

    A pod whose counters went down restarted in between: its interval counts from 0, as PromQL's ``increase``
    does. A pod missing from ``start`` (or unreadable then) is new and counts from 0 too; one unreadable at the end
    is left out and reported in ``unreachable``.
    """
    deltas: list[Counters] = []
    unreachable: list[str] = []
    for target, last in end.items():
        if last.counters is None:
            unreachable.append(f"{target}: {last.error}")
            continue
        first = start.get(target)
        before = first.counters if first is not None and first.counters is not None else None
        if before is None or last.counters.went_down_since(before):
            deltas.append(last.counters)
        else:
            deltas.append(last.counters.minus(before))
    unreachable += [f"{target}: not scraped at the end" for target in start if target not in end]
    return _sum(deltas, unreachable)


def _sum(deltas: Sequence[Counters], unreachable: Sequence[str]) -> Measurement:
    answers: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for delta in deltas:
        for kind, count in delta.answers.items():
            answers[kind] = answers.get(kind, 0.0) + count
        for bound, count in delta.duration_buckets.items():
            buckets[bound] = buckets.get(bound, 0.0) + count
    total, errors = round(sum(answers.values())), round(answers.get("5xx", 0.0))
    queue_sum = sum(delta.queue_delay_sum for delta in deltas)
    queue_count = sum(delta.queue_delay_count for delta in deltas)
    return Measurement(
        answers=total,
        errors=errors,
        error_ratio=errors / total if total else None,
        p99_seconds=histogram_quantile(P99, buckets),
        mean_queue_delay_seconds=queue_sum / queue_count if queue_count > 0 else None,
        pods=len(deltas),
        unreachable=tuple(unreachable),
    )


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of cumulative ``buckets`` (upper bound -> count, ``+Inf`` included), as PromQL's
    ``histogram_quantile`` computes it: linear interpolation inside the bucket where the rank falls, from the
    previous bound (0 for the first bucket); a rank in the ``+Inf`` bucket answers the highest finite bound.
    None without observations."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be within 0..1, not {q}")
    ordered = sorted(buckets.items())
    if not ordered:  # no pod measured
        return None
    if not math.isinf(ordered[-1][0]):
        raise ValueError("a histogram needs its +Inf bucket")
    observations = ordered[-1][1]
    if observations <= 0:
        return None
    rank = q * observations
    lower, below = 0.0, 0.0
    for index, (upper, cumulative) in enumerate(ordered):
        if cumulative >= rank:
            if math.isinf(upper):
                return ordered[index - 1][0] if index > 0 else None
            if index == 0 and upper <= 0:
                return upper
            inside = cumulative - below
            return lower + (upper - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = upper, cumulative
    return ordered[-1][0]  # unreachable: the +Inf bucket holds every observation
