"""Gateway metrics (Prometheus, one registry per app) and the buffered JSON-lines request log."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger(__name__)

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    """Requests by api/status, total and backend latency histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("modelgate_gateway_requests", "Gateway requests",
                                ["api", "status"], registry=self.registry)
        self.latency = Histogram("modelgate_gateway_request_seconds",
                                 "Total time in the gateway", ["api"], buckets=_BUCKETS,
                                 registry=self.registry)
        self.backend_latency = Histogram("modelgate_gateway_backend_seconds",
                                         "Time waiting for the backend", ["api"],
                                         buckets=_BUCKETS, registry=self.registry)
        self._children: dict[tuple[str, int], tuple[Any, Any, Any]] = {}
        # a gauge mirroring the JWKS caches' own counter, read at scrape time
        self.jwks_fetches = Gauge("modelgate_gateway_jwks_fetch_attempts",
                                  "JWKS fetch attempts since start", registry=self.registry)


    def observe(self, api: str, status: int, seconds: float, backend_s: float | None) -> None:
        """Record one request (label children cached: labels() is the costly part)."""
        children = self._children.get((api, status))
        if children is None:
            children = (self.requests.labels(api, str(status)), self.latency.labels(api),
                        self.backend_latency.labels(api))
            if len(self._children) < 10_000:
                self._children[(api, status)] = children
        children[0].inc()
        children[1].observe(seconds)
        if backend_s is not None:
            children[2].observe(backend_s)


@dataclass(frozen=True)
class RequestRecord:
    """One line of logs/gateway-requests.jsonl (never a token or key)."""

    time: str
    caller: str | None
    api: str | None
    revision: int | None
    environment: str | None
    status: int
    latency_ms: float
    backend_ms: float | None
    model_version: str | None
    request_id: str


class RequestLog:
    """Buffers records in memory and appends them from a worker thread every interval."""

    def __init__(self, path: Path, interval_s: float = 0.5, max_buffer: int = 10_000) -> None:
        self._path = path
        self._interval = interval_s
        self._max = max_buffer
        self._buffer: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def add(self, record: RequestRecord) -> None:
        """Queue one record (drops, counted, if the disk cannot keep up)."""
        if len(self._buffer) >= self._max:
            self.dropped += 1
            return
        # vars() instead of dataclasses.asdict: asdict deep-copies recursively (~10x slower)
        self._buffer.append(json.dumps(vars(record), separators=(",", ":")))

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
        lines, self._buffer = self._buffer, []
        try:
            await asyncio.to_thread(self._write, "\n".join(lines) + "\n")
        except OSError as exc:
            log.error("cannot write the request log (%s); %d records lost",
                      type(exc).__name__, len(lines))

    def _write(self, text: str) -> None:
        with self._path.open("a", encoding="utf-8") as fh:
            fh.write(text)

    async def close(self) -> None:
        """Stop the flusher and write the rest."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.flush()
