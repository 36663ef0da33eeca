"""Gateway metrics (Prometheus, one registry per app) and the buffered JSON-lines request log."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from app.gateway.upstream import UpstreamPool

log = logging.getLogger(__name__)

# json's own string encoder (C): quotes and escapes exactly as json.dumps does by default
_STRING: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Histogram:
    """Bucket counts and a sum for one label set (cumulated only when scraped)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are upper-inclusive: the first bound >= value
        self.counts[bisect_left(_BUCKETS, value)] += 1
        self.total += value

    def exposition(self) -> tuple[list[tuple[str, float]], float]:
        cumulative, buckets = 0, list[tuple[str, float]]()
        for bound, count in zip((*_BUCKETS, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        return buckets, self.total


class GatewayMetrics:
    """Requests by api/status, total and backend latency histograms, backend connections.

    Counted in plain dicts on the request path and turned into Prometheus families only when
    scraped: prometheus_client's labelled metrics take a lock and walk the buckets per
    observation, a measurable share of a proxy's per-request CPU.
    """

    _MAX_SERIES = 10_000

    def __init__(self, upstream: UpstreamPool | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._upstream = upstream
        self._requests: dict[tuple[str, int], int] = {}
        self._latency: dict[str, _Histogram] = {}
        self._backend: dict[str, _Histogram] = {}
        # a gauge mirroring the JWKS caches' own counter, read at scrape time
        self.jwks_fetches = Gauge("modelgate_gateway_jwks_fetch_attempts",
                                  "JWKS fetch attempts since start", registry=self.registry)
        self.registry.register(_Families(self))

    def observe(self, api: str, status: int, seconds: float, backend_s: float | None) -> None:
        """Record one request."""
        key = (api, status)
        count = self._requests.get(key)
        if count is None and len(self._requests) >= self._MAX_SERIES:
            key = ("-", status)  # bound the label space; never drop the count itself
            count = self._requests.get(key)
        self._requests[key] = (count or 0) + 1
        self._histogram(self._latency, key[0]).observe(seconds)
        if backend_s is not None:
            self._histogram(self._backend, key[0]).observe(backend_s)

    def _histogram(self, table: dict[str, _Histogram], api: str) -> _Histogram:
        found = table.get(api)
        if found is None:
            found = table[api] = _Histogram()
        return found

    def families(self) -> Iterator[Metric]:
        """The request metrics as Prometheus families (called at scrape time)."""
        requests = CounterMetricFamily("modelgate_gateway_requests", "Gateway requests",
                                       labels=["api", "status"])
        for (api, status), count in sorted(self._requests.items()):
            requests.add_metric([api, str(status)], count)
        yield requests
        for name, doc, table in (
                ("modelgate_gateway_request_seconds", "Total time in the gateway", self._latency),
                ("modelgate_gateway_backend_seconds", "Time waiting for the backend",
                 self._backend)):
            family = HistogramMetricFamily(name, doc, labels=["api"])
            for api, histogram in sorted(table.items()):
                buckets, total = histogram.exposition()
                family.add_metric([api], buckets, total)
            yield family
        if self._upstream is not None:
            refused = CounterMetricFamily(
                "modelgate_gateway_backend_busy",
                "Requests answered 503 because the backend's connection limit stayed full",
                labels=["origin"])
            for origin, count in sorted(self._upstream.busy_refusals().items()):
                refused.add_metric([origin], count)
            yield refused
            open_now = GaugeMetricFamily("modelgate_gateway_backend_connections",
                                         "Open connections per backend origin",
                                         labels=["origin"])
            for origin, count in sorted(self._upstream.open_connections().items()):
                open_now.add_metric([origin], count)
            yield open_now


class _Families(Collector):
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families()

    def describe(self) -> Iterator[Metric]:
        return iter(())


class RequestRecord(NamedTuple):
    """One line of logs/gateway-requests.jsonl (never a token or key), as measured.

    Raw values, so the request path only builds a tuple: the flusher turns ``time`` (seconds
    since the epoch) into an ISO 8601 UTC string with milliseconds and rounds the latencies.
    """

    time: float
    caller: str | None
    api: str | None
    revision: int | None
    environment: str | None
    status: int
    latency_ms: float
    backend_ms: float | None
    model_version: str | None
    request_id: str


class _Timestamps:
    """ISO 8601 UTC with milliseconds, like datetime.isoformat(timespec="milliseconds"), with
    the date and time of day formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, t: float) -> str:
        second = int(t // 1)
        if second != self._second:
            self._second = second
            self._prefix = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{int((t - second) * 1000):03d}+00:00"


def _text(value: str | None) -> str:
    return "null" if value is None else _STRING(value)


def _number(value: float | None) -> str:
    return "null" if value is None else repr(round(value, 3))


def encode_record(record: RequestRecord, stamp: Callable[[float], str]) -> str:
    """One JSON line (the keys in RequestRecord's order, as json.dumps would write them)."""
    (t, caller, api, revision, environment, status, latency_ms, backend_ms, model_version,
     request_id) = record
    return (f'{{"time":"{stamp(t)}","caller":{_text(caller)},"api":{_text(api)},'
            f'"revision":{"null" if revision is None else int(revision)},'
            f'"environment":{_text(environment)},"status":{int(status)},'
            f'"latency_ms":{_number(latency_ms)},"backend_ms":{_number(backend_ms)},'
            f'"model_version":{_text(model_version)},"request_id":{_STRING(request_id)}}}\n')


def append_block(path: Path, data: bytes) -> None:
    """Append whole lines to path with one write(2) on an O_APPEND descriptor.

    Several gateway workers (app/gateway/workers.py) append to one request log. With O_APPEND
    a local file system (ext4, xfs, tmpfs; not NFS) moves to the end and writes under the
    file's lock in one step, so one write call is never interleaved with another process's:
    lines never tear. A buffered file object would not promise one call per block (it may
    split a block at its buffer size). Only a short write (disk full, file size limit)
    writes the rest in a second call.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


class RequestLog:
    """Buffers records in memory; every interval encodes them on the loop in small slices and
    appends them from a worker thread.

    Why slices on the loop rather than encoding in the thread: a thread holds the GIL for up
    to the interpreter's switch interval (5 ms) at a time, so encoding a half-second batch
    there (thousands of records) stalled the requests in flight by milliseconds (the bench's
    p99). A slice of _SLICE records costs about half a millisecond; the write itself releases
    the GIL.
    """

    _SLICE = 256

    def __init__(self, path: Path, interval_s: float = 0.5, max_buffer: int = 10_000) -> None:
        self._path = path
        self._interval = interval_s
        self._max = max_buffer
        self._buffer: list[RequestRecord] = []
        self._task: asyncio.Task[None] | None = None
        self._stamps = _Timestamps()
        self.dropped = 0

    def add(self, record: RequestRecord) -> None:
        """Queue one record (drops, counted, if the disk cannot keep up)."""
        if len(self._buffer) >= self._max:
            self.dropped += 1
            return
        self._buffer.append(record)  # encoded by the flusher, off the request path

    def start(self) -> None:
        """Start the periodic flusher (call from the running loop)."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        """Write what is buffered, off the event loop."""
        if not self._buffer:
            return
        records, self._buffer = self._buffer, []
        stamp = self._stamps.format
        lines: list[str] = []
        try:
            for start in range(0, len(records), self._SLICE):
                if start:
                    await asyncio.sleep(0)  # let the requests in flight run between slices
                lines += [encode_record(r, stamp) for r in records[start:start + self._SLICE]]
        except asyncio.CancelledError:
            self._buffer[:0] = records  # stopped between slices: close() writes them
            raise
        try:
            await asyncio.to_thread(append_block, self._path, "".join(lines).encode("utf-8"))
        except OSError as exc:
            log.error("cannot write the request log (%s); %d records lost",
                      type(exc).__name__, len(records))

    async def close(self) -> None:
        """Stop the flusher and write the rest."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.flush()
