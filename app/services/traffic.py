"""Traffic figures per API from the backend's gateway calls: one aggregation for every page.

The APIs page shows each API's figures over the last WINDOW_SECONDS; the dashboard adds calls
and p95 per minute; the timeline counts calls per model version. All read the calls through
``Backend.traffic`` (the local backend: the gateway's request log, only its tail).
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from app.backends.base import Backend, CallRecord
from app.services.backend import backend

WINDOW_SECONDS = 15 * 60
# Dashboard chart buckets: the last BUCKETS minutes.
BUCKETS = 15
BUCKET_SECONDS = 60


@dataclass(frozen=True)
class ApiTraffic:
    """Traffic of one API over the window."""

    api: str
    calls: int
    calls_per_minute: float
    errors: int  # 5xx: the gateway or backend failed
    rejected: int  # 4xx: the caller was refused (token, role, rate limit, schema)
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    last_call: str | None


@dataclass(frozen=True)
class SeriesPoint:
    """One minute of an API's traffic for the dashboard chart."""

    start: dt.datetime
    calls: int
    p95_ms: float | None


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def figures(calls: Iterable[CallRecord], now: dt.datetime,
            window_seconds: int = WINDOW_SECONDS) -> dict[str, ApiTraffic]:
    """Figures per API name over the last `window_seconds` before `now`."""
    since = now - dt.timedelta(seconds=window_seconds)
    by_api: dict[str, list[CallRecord]] = defaultdict(list)
    for call in calls:
        if call.api and call.time >= since:
            by_api[call.api].append(call)
    out: dict[str, ApiTraffic] = {}
    for api, rows in by_api.items():
        latencies = sorted(r.latency_ms for r in rows)
        errors = sum(1 for r in rows if r.status >= 500)
        rejected = sum(1 for r in rows if 400 <= r.status < 500)
        first = min(r.time for r in rows)
        # Rate over the part of the window that had traffic (at least one minute).
        minutes = max(1.0, (now - first).total_seconds() / 60)
        out[api] = ApiTraffic(
            api=api, calls=len(rows), calls_per_minute=round(len(rows) / minutes, 2),
            errors=errors, rejected=rejected, error_rate=round(errors / len(rows), 4),
            p50_ms=percentile(latencies, 50), p95_ms=percentile(latencies, 95),
            p99_ms=percentile(latencies, 99), last_call=max(r.time for r in rows).isoformat())
    return out


def per_api(*, now: dt.datetime | None = None, window_seconds: int = WINDOW_SECONDS,
            target: Backend | None = None) -> dict[str, ApiTraffic]:
    """Each API's figures over the window, from the backend's gateway calls."""
    now = now or dt.datetime.now(dt.UTC)
    since = now - dt.timedelta(seconds=window_seconds)
    calls = (target or backend()).traffic(None, since).calls
    return figures(calls, now, window_seconds)


def per_minute(*, now: dt.datetime | None = None, buckets: int = BUCKETS,
               target: Backend | None = None
               ) -> tuple[dict[str, ApiTraffic], dict[str, tuple[SeriesPoint, ...]]]:
    """Per API: the window's figures, and calls and p95 per minute for the last minutes."""
    now = now or dt.datetime.now(dt.UTC)
    window_start = now - dt.timedelta(seconds=WINDOW_SECONDS)
    end = now.replace(second=0, microsecond=0) + dt.timedelta(seconds=BUCKET_SECONDS)
    start = end - dt.timedelta(seconds=BUCKET_SECONDS * buckets)
    calls = (target or backend()).traffic(None, min(window_start, start)).calls
    by_api: dict[str, list[CallRecord]] = defaultdict(list)
    for call in calls:
        by_api[call.api].append(call)
    series: dict[str, tuple[SeriesPoint, ...]] = {}
    for api, rows in by_api.items():
        minute: list[list[float]] = [[] for _ in range(buckets)]
        for call in rows:
            if start <= call.time < end:
                minute[int((call.time - start).total_seconds() // BUCKET_SECONDS)].append(
                    call.latency_ms)
        series[api] = tuple(
            SeriesPoint(start + dt.timedelta(seconds=BUCKET_SECONDS * i), len(values),
                        percentile(sorted(values), 95))
            for i, values in enumerate(minute))
    return figures(calls, now), series
