"""Traffic figures from the local gateway's request log: tail reading, percentiles, the APIs
page."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from app.backends.local import LocalBackend
from app.backends.local import request_log as api_metrics
from app.services import traffic
from tests.conftest import build_app, sign_in

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def _record(api: str, seconds_ago: float, status: int, latency: float) -> str:
    when = (NOW - dt.timedelta(seconds=seconds_ago)).isoformat(timespec="milliseconds")
    return json.dumps({"time": when, "caller": "oid-1", "api": api, "revision": 1,
                       "environment": "staging", "status": status, "latency_ms": latency,
                       "backend_ms": latency / 2, "model_version": "1", "request_id": "r"})


def _write_log(home: Path, lines: list[str]) -> Path:
    path = api_metrics.request_log_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_figures_per_api_over_the_window(tmp_path: Path) -> None:
    lines = [_record("credit-risk-staging", 30 + i, 200, float(i + 1)) for i in range(100)]
    lines += [_record("credit-risk-staging", 10, 502, 500.0), _record("credit-risk", 5, 401, 1.0),
              _record("credit-risk-staging", 3600, 200, 9999.0),  # outside the window
              "not json", '{"api": "credit-risk", "status": "x"}']
    _write_log(tmp_path, lines)
    figures = traffic.per_api(now=NOW, target=LocalBackend(tmp_path))
    staging = figures["credit-risk-staging"]
    assert staging.calls == 101 and staging.errors == 1 and staging.rejected == 0
    assert staging.error_rate == round(1 / 101, 4)
    assert staging.p50_ms == 51.0 and staging.p99_ms == 100.0
    # 101 calls within the ~2 minutes since the first one in the window
    assert 40 < staging.calls_per_minute < 60
    prod = figures["credit-risk"]
    assert (prod.calls, prod.rejected, prod.errors, prod.calls_per_minute) == (1, 1, 0, 1.0)


def test_only_the_tail_is_read(tmp_path: Path) -> None:
    old = [_record("credit-risk", 60, 200, 5.0) for _ in range(5000)]
    recent = [_record("credit-risk", 1, 200, 7.0) for _ in range(10)]
    path = _write_log(tmp_path, old + recent)
    size = len(recent[0]) + 1
    records = api_metrics.tail_records(path, max_bytes=size * 10 + 5)
    # the partial first line is dropped, whole lines after it are kept
    assert len(records) == 10
    assert all(r["latency_ms"] == 7.0 for r in records)
    assert api_metrics.tail_records(tmp_path / "missing.jsonl") == []


def test_apis_page_shows_traffic(tmp_path: Path, redis_server: Any, sqlite_url: str) -> None:
    from app.db import ApiRevision
    from app.extensions import db

    app = build_app(tmp_path, sqlite_url, redis_server.url)
    with app.app_context():
        db.session.add(ApiRevision(api_name="credit-risk-staging", path="staging/credit-risk",
                                   environment="staging", revision=1, policy_xml="<policies/>",
                                   created_by="alice", is_current=True))
        db.session.commit()
    now = dt.datetime.now(dt.UTC)
    lines = [json.dumps({"time": (now - dt.timedelta(seconds=i)).isoformat(), "status": s,
                         "api": "credit-risk-staging", "latency_ms": 10.0})
             for i, s in enumerate([200, 200, 200, 503])]
    _write_log(tmp_path, lines)
    client = app.test_client()
    sign_in(client, "erin")  # anyone signed in may read it
    page = client.get("/apis/").get_data(as_text=True)
    assert 'data-figure="calls">4<' in page
    assert 'data-figure="error-rate">25.0 %<' in page
    assert 'data-figure="p50">10.0 ms<' in page
    assert "Roll back" not in page and "Publish staging" not in page  # erin has no role
    assert 'href="/apis/"' in page  # nav link
