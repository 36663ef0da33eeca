"""Per-API traffic figures from the gateway's request log (logs/gateway-requests.jsonl).

Only the tail of the file is read (at most TAIL_BYTES from the end), so the page stays fast
however long the gateway has been running; the window is the last WINDOW_SECONDS.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TAIL_BYTES = 4 * 1024 * 1024
WINDOW_SECONDS = 15 * 60


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


def request_log_path(home: Path) -> Path:
    """Where the gateway writes its request log."""
    return Path(home) / "logs" / "gateway-requests.jsonl"


def tail_records(path: Path, max_bytes: int = TAIL_BYTES) -> list[dict[str, Any]]:
    """Parse the JSON lines in the last `max_bytes` of the file (a cut first line is skipped)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read(size - start)
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # starts mid-line
    out: list[dict[str, Any]] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being appended right now
        if isinstance(record, dict):
            out.append(record)
    return out


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def traffic(home: Path, *, now: dt.datetime | None = None,
            window_seconds: int = WINDOW_SECONDS) -> dict[str, ApiTraffic]:
    """Figures per API name over the last `window_seconds` of the request log."""
    now = now or dt.datetime.now(dt.UTC)
    since = now - dt.timedelta(seconds=window_seconds)
    by_api: dict[str, list[tuple[dt.datetime, int, float]]] = defaultdict(list)
    for record in tail_records(request_log_path(home)):
        api = record.get("api")
        try:
            when = dt.datetime.fromisoformat(str(record["time"]))
            status = int(record["status"])
            latency = float(record["latency_ms"])
        except (KeyError, TypeError, ValueError):
            continue
        if not api or when < since:
            continue
        by_api[str(api)].append((when, status, latency))
    out: dict[str, ApiTraffic] = {}
    for api, rows in by_api.items():
        latencies = sorted(r[2] for r in rows)
        errors = sum(1 for r in rows if r[1] >= 500)
        rejected = sum(1 for r in rows if 400 <= r[1] < 500)
        first = min(r[0] for r in rows)
        # Rate over the part of the window that had traffic (at least one minute).
        minutes = max(1.0, (now - first).total_seconds() / 60)
        out[api] = ApiTraffic(
            api=api, calls=len(rows), calls_per_minute=round(len(rows) / minutes, 2),
            errors=errors, rejected=rejected, error_rate=round(errors / len(rows), 4),
            p50_ms=percentile(latencies, 50), p95_ms=percentile(latencies, 95),
            p99_ms=percentile(latencies, 99), last_call=max(r[0] for r in rows).isoformat())
    return out
