"""bench/loadgen.py: bounds, loopback-only targets, and both modes against a real replica."""

from __future__ import annotations

import json

import pytest

from bench.loadgen import LoadResult, check_loopback, percentile, run_load
from tests.serving.conftest import Replica
from tests.serving.modelpkg import EXAMPLE


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/",
        "https://example.com/",
        "http://0.0.0.0:1/",
        "ftp://127.0.0.1/",
        "http://127.0.0.1.evil.com/",
        "http://[::2]/",
    ],
)
def test_refuses_non_loopback(url: str) -> None:
    with pytest.raises(ValueError):
        check_loopback(url)


def test_accepts_loopback() -> None:
    for url in (
        "http://127.0.0.1:8000/x",
        "https://localhost/",
        "http://[::1]:1/",
        "http://127.1.2.3/",
    ):
        check_loopback(url)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"concurrency": 1, "rate": 1.0},
        {"concurrency": 0},
        {"concurrency": 5000},
        {"rate": 0.0},
        {"rate": 1e9},
        {"concurrency": 1, "count": 0},
    ],
)
def test_refuses_unbounded_runs(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        run_load("http://127.0.0.1:9/", b"", duration_s=1.0, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        run_load("http://127.0.0.1:9/", b"", concurrency=1, duration_s=10_000)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0 and percentile([], 50) == 0.0


def test_open_and_closed_loop_against_replica(replica: Replica) -> None:
    body = json.dumps({"data": [EXAMPLE]}).encode()
    open_loop = run_load(
        f"{replica.url}/score",
        body,
        replica.headers(),
        rate=100.0,
        duration_s=1.0,
        keep_samples=True,
    )
    assert isinstance(open_loop, LoadResult)
    assert open_loop.planned == 100 and open_loop.sent == 100 and open_loop.ok == 100
    assert open_loop.failed == 0 and open_loop.statuses == {"200": 100}
    assert len(open_loop.samples) == 100
    assert open_loop.p50_ms <= open_loop.p90_ms <= open_loop.p99_ms <= open_loop.max_ms
    closed = run_load(
        f"{replica.url}/score",
        body,
        replica.headers(),
        concurrency=4,
        duration_s=5.0,
        count=200,
        warmup_requests=10,
    )
    assert closed.sent == 200 and closed.ok == 200 and closed.planned is None
    denied = run_load(
        f"{replica.url}/score",
        body,
        {"Content-Type": "application/json"},
        concurrency=1,
        duration_s=5.0,
        count=5,
    )
    assert denied.ok == 0 and denied.errors == {"401": 5}
    assert "401" in denied.summary() and denied.to_dict()["failed"] == 5


def test_unreachable_target_counts_errors() -> None:
    result = run_load("http://127.0.0.1:9/", b"{}", rate=20.0, duration_s=0.5, timeout_s=2.0)
    assert result.planned == 10 and result.sent == 10 and result.ok == 0
    assert sum(result.errors.values()) == 10
