"""A bounded asyncio + aiohttp load generator for loopback HTTP(S) targets.

Two modes:

* closed loop (``concurrency=c``): c workers each send the next request as soon as the
  previous one completes; latency is the request's own round trip. Good for throughput.
* open loop (``rate=r``): requests are scheduled at fixed times t0 + i/r whatever the server
  does, and latency is *completion time minus scheduled send time*, so a stalled server shows
  up in the percentiles and in ``sent < planned`` (coordinated-omission-safe, as wrk2).

Use it as a function (``run_load`` / ``run_load_async``) or as a command line::

    python -m bench.loadgen http://127.0.0.1:8000/score --body-file body.json \
        -H 'Authorization: Bearer …' --rate 50 --duration 10

Every run is bounded in time and request count, and only loopback targets are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import ssl as ssl_module
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import aiohttp

MAX_DURATION_S = 600.0
MAX_CONCURRENCY = 1024
MAX_RATE = 20_000.0
MAX_REQUESTS = 2_000_000
DEFAULT_TIMEOUT_S = 10.0

SslArg = ssl_module.SSLContext | bool | None


@dataclass(frozen=True)
class Sample:
    """One finished request: offset of its scheduled/actual start, outcome and latency."""

    start_offset_s: float
    status: str
    latency_ms: float


@dataclass(frozen=True)
class LoadResult:
    """Summary of one run; latencies cover every finished request, errors included."""

    mode: str
    planned: int | None
    sent: int
    ok: int
    errors: dict[str, int]
    statuses: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    duration_s: float
    rps: float
    ok_rps: float
    samples: tuple[Sample, ...] = field(default=(), repr=False)

    @property
    def failed(self) -> int:
        """Requests that finished with a non-2xx status or a transport error."""
        return sum(self.errors.values())

    @property
    def sent_ratio(self) -> float:
        """Share of planned requests actually sent (1.0 in closed-loop mode)."""
        if not self.planned:
            return 1.0
        return self.sent / self.planned

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict without the per-request samples."""
        data = asdict(self)
        data.pop("samples")
        data["failed"] = self.failed
        data["sent_ratio"] = self.sent_ratio
        return data

    def summary(self) -> str:
        """A human-readable multi-line report."""
        planned = "-" if self.planned is None else str(self.planned)
        return (
            f"mode={self.mode} planned={planned} sent={self.sent} ok={self.ok} "
            f"failed={self.failed} ({self.sent_ratio:.1%} of planned sent)\n"
            f"statuses={dict(sorted(self.statuses.items()))} errors={dict(self.errors)}\n"
            f"latency ms: p50={self.p50_ms:.2f} p90={self.p90_ms:.2f} "
            f"p99={self.p99_ms:.2f} max={self.max_ms:.2f} mean={self.mean_ms:.2f}\n"
            f"duration={self.duration_s:.2f}s rps={self.rps:.1f} ok_rps={self.ok_rps:.1f}"
        )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted sequence; 0.0 if empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def check_loopback(url: str) -> None:
    """Raise ValueError unless url is http(s) to a loopback address or localhost."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"only http/https URLs are supported, got {parts.scheme!r}")
    host = parts.hostname or ""
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"refusing non-loopback target host {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"refusing non-loopback target address {host!r}")


def _check_bounds(
    concurrency: int | None, rate: float | None, duration_s: float, count: int | None
) -> None:
    """Reject unbounded or oversized runs before any request is sent."""
    if (concurrency is None) == (rate is None):
        raise ValueError("give exactly one of concurrency (closed loop) or rate (open loop)")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration_s must be in (0, {MAX_DURATION_S}]")
    if concurrency is not None and not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be in [1, {MAX_CONCURRENCY}]")
    if rate is not None and not 0 < rate <= MAX_RATE:
        raise ValueError(f"rate must be in (0, {MAX_RATE}]")
    if rate is not None and rate * duration_s > MAX_REQUESTS:
        raise ValueError(f"rate x duration exceeds {MAX_REQUESTS} requests")
    if count is not None and not 1 <= count <= MAX_REQUESTS:
        raise ValueError(f"count must be in [1, {MAX_REQUESTS}]")


class _Recorder:
    """Collects outcomes of finished requests."""

    def __init__(self, keep_samples: bool) -> None:
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.ok = 0
        self.sent = 0
        self.keep_samples = keep_samples
        self.samples: list[Sample] = []

    def record(self, start_offset_s: float, status: str, latency_s: float, ok: bool) -> None:
        """Record one finished request."""
        latency_ms = latency_s * 1000.0
        self.latencies.append(latency_ms)
        self.statuses[status] += 1
        if ok:
            self.ok += 1
        else:
            self.errors[status] += 1
        if self.keep_samples:
            self.samples.append(Sample(start_offset_s, status, latency_ms))

    def result(self, mode: str, planned: int | None, duration_s: float) -> LoadResult:
        """Freeze the recorded outcomes into a LoadResult."""
        values = sorted(self.latencies)
        finished = len(values)
        elapsed = max(duration_s, 1e-9)
        return LoadResult(
            mode=mode,
            planned=planned,
            sent=self.sent,
            ok=self.ok,
            errors=dict(self.errors),
            statuses=dict(self.statuses),
            p50_ms=percentile(values, 50),
            p90_ms=percentile(values, 90),
            p99_ms=percentile(values, 99),
            max_ms=values[-1] if values else 0.0,
            mean_ms=sum(values) / finished if finished else 0.0,
            duration_s=duration_s,
            rps=finished / elapsed,
            ok_rps=self.ok / elapsed,
            samples=tuple(sorted(self.samples, key=lambda s: s.start_offset_s)),
        )


async def _one_request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout: aiohttp.ClientTimeout,
) -> str:
    """Send one request, read the whole body, and return its status (or an error class)."""
    try:
        async with session.request(
            method, url, data=body, headers=headers, timeout=timeout
        ) as response:
            await response.read()
            return str(response.status)
    except TimeoutError:
        return "timeout"
    except aiohttp.ClientError as exc:
        return type(exc).__name__
    except OSError as exc:
        return type(exc).__name__


async def _closed_loop(
    session: aiohttp.ClientSession,
    request: tuple[str, str, bytes, Mapping[str, str], aiohttp.ClientTimeout],
    concurrency: int,
    duration_s: float,
    count: int | None,
    recorder: _Recorder,
) -> float:
    """Run c workers back to back until the deadline or the request budget is used."""
    budget = count if count is not None else MAX_REQUESTS
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker() -> None:
        while recorder.sent < budget:
            began = time.perf_counter()
            if began >= deadline:
                return
            recorder.sent += 1
            status = await _one_request(session, *request)
            ended = time.perf_counter()
            recorder.record(began - start, status, ended - began, status.startswith("2"))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


async def _open_loop(
    session: aiohttp.ClientSession,
    request: tuple[str, str, bytes, Mapping[str, str], aiohttp.ClientTimeout],
    rate: float,
    duration_s: float,
    count: int | None,
    max_in_flight: int,
    recorder: _Recorder,
) -> tuple[int, float]:
    """Send on a fixed schedule; latency runs from the scheduled time, not the actual send."""
    planned = math.floor(rate * duration_s)
    if count is not None:
        planned = min(planned, count)
    interval = 1.0 / rate
    in_flight: set[asyncio.Task[None]] = set()
    start = time.perf_counter()

    async def fire(scheduled: float) -> None:
        status = await _one_request(session, *request)
        ended = time.perf_counter()
        recorder.record(scheduled - start, status, ended - scheduled, status.startswith("2"))

    for i in range(planned):
        scheduled = start + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_in_flight:
            # A saturated client would otherwise hide the stall; skipping keeps sent < planned.
            continue
        recorder.sent += 1
        task = asyncio.create_task(fire(scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)
    return planned, time.perf_counter() - start


async def run_load_async(
    url: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    duration_s: float,
    count: int | None = None,
    ssl: SslArg = None,
    method: str = "POST",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    warmup_requests: int = 0,
    max_in_flight: int = 512,
    keep_samples: bool = False,
) -> LoadResult:
    """Drive load at a loopback URL and return the summary (coroutine form of run_load)."""
    check_loopback(url)
    _check_bounds(concurrency, rate, duration_s, count)
    if not 0 <= warmup_requests <= 100_000:
        raise ValueError("warmup_requests must be in [0, 100000]")
    pool_size = concurrency if concurrency is not None else max(1, min(max_in_flight, 1024))
    connector = aiohttp.TCPConnector(
        limit=pool_size, ssl=ssl if ssl is not None else True, force_close=False
    )
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    request = (method, url, body, dict(headers or {}), timeout)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        if warmup_requests:
            warm = _Recorder(keep_samples=False)
            await _closed_loop(
                session, request, concurrency or 1, MAX_DURATION_S, warmup_requests, warm
            )
        recorder = _Recorder(keep_samples)
        if concurrency is not None:
            elapsed = await _closed_loop(session, request, concurrency, duration_s, count, recorder)
            return recorder.result("closed", None, elapsed)
        assert rate is not None
        planned, elapsed = await _open_loop(
            session, request, rate, duration_s, count, max_in_flight, recorder
        )
        return recorder.result("open", planned, elapsed)


def run_load(
    url: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    duration_s: float,
    count: int | None = None,
    ssl: SslArg = None,
    method: str = "POST",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    warmup_requests: int = 0,
    max_in_flight: int = 512,
    keep_samples: bool = False,
) -> LoadResult:
    """Drive load at a loopback URL in a fresh event loop and return the summary.

    Args:
        url: loopback http(s) URL; anything else raises ValueError.
        body: request body sent unchanged with every request.
        headers: request headers (e.g. Content-Type and Authorization).
        concurrency: closed-loop worker count (exclusive with rate).
        rate: open-loop requests per second on a fixed schedule (exclusive with concurrency).
        duration_s: wall-time bound of the measured phase (≤ 600 s).
        count: optional cap on requests in the measured phase.
        ssl: SSLContext for a private CA, False to skip verification, None for defaults.
        method: HTTP method.
        timeout_s: per-request total timeout; a timeout counts as error "timeout".
        warmup_requests: requests sent and discarded before measuring.
        max_in_flight: open-loop cap on outstanding requests; beyond it sends are skipped.
        keep_samples: keep one Sample per request in LoadResult.samples.

    Returns:
        LoadResult with planned/sent/ok, errors by status, p50/p90/p99/max and rps.

    Raises:
        ValueError: non-loopback URL or out-of-bounds parameters.
        RuntimeError: called from inside a running event loop (use run_load_async there).
    """
    return asyncio.run(
        run_load_async(
            url,
            body,
            headers,
            concurrency=concurrency,
            rate=rate,
            duration_s=duration_s,
            count=count,
            ssl=ssl,
            method=method,
            timeout_s=timeout_s,
            warmup_requests=warmup_requests,
            max_in_flight=max_in_flight,
            keep_samples=keep_samples,
        )
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options of the load generator."""
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--body-file", help="file with the request body ('-' for stdin)")
    parser.add_argument("--body", default="", help="request body text")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("-X", "--method", default="POST")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("-c", "--concurrency", type=int, help="closed loop with c workers")
    mode.add_argument("-r", "--rate", type=float, help="open loop at this many requests/s")
    parser.add_argument("-d", "--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("-n", "--count", type=int, help="cap on measured requests")
    parser.add_argument("--warmup", type=int, default=0, help="requests sent and discarded")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--cacert", help="CA bundle for https targets")
    parser.add_argument("--insecure", action="store_true", help="skip TLS verification")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: run once, print the result; exit 1 on any failed request."""
    args = _parse_args(argv)
    if args.body_file == "-":
        body = sys.stdin.buffer.read()
    elif args.body_file:
        with open(args.body_file, "rb") as handle:
            body = handle.read()
    else:
        body = args.body.encode()
    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep:
            raise SystemExit(f"bad header {item!r}; expected 'Name: value'")
        headers[name.strip()] = value.strip()
    if body and not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = "application/json"
    ssl_arg: SslArg = None
    if args.insecure:
        ssl_arg = False
    elif args.cacert:
        ssl_arg = ssl_module.create_default_context(cafile=args.cacert)
    result = run_load(
        args.url,
        body,
        headers,
        concurrency=args.concurrency,
        rate=args.rate,
        duration_s=args.duration,
        count=args.count,
        ssl=ssl_arg,
        method=args.method,
        timeout_s=args.timeout,
        warmup_requests=args.warmup,
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return 1 if result.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
