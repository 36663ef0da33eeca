"""The request log's lines, formatted by the flusher off the request path, are exactly the JSON
that json.dumps writes for the same record, with an ISO 8601 UTC time in milliseconds."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.gateway.observability import RequestLog, RequestRecord, _Timestamps, encode_record

_TEXT = st.none() | st.text(max_size=40)
_MS = st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False)


@given(t=st.floats(min_value=1.6e9, max_value=2.2e9, allow_nan=False),
       caller=_TEXT, api=_TEXT, revision=st.none() | st.integers(0, 10**6),
       environment=_TEXT, status=st.integers(100, 599),
       latency=st.floats(min_value=0, max_value=1e6, allow_nan=False), backend=_MS,
       version=_TEXT, request_id=st.text(min_size=1, max_size=64))
def test_a_line_is_what_json_dumps_writes(t: float, caller: str | None, api: str | None,
                                          revision: int | None, environment: str | None,
                                          status: int, latency: float, backend: float | None,
                                          version: str | None, request_id: str) -> None:
    stamps = _Timestamps()
    record = RequestRecord(t, caller, api, revision, environment, status, latency, backend,
                           version, request_id)
    line = encode_record(record, stamps.format)
    expected = {"time": stamps.format(t), "caller": caller, "api": api, "revision": revision,
                "environment": environment, "status": status,
                "latency_ms": round(latency, 3),
                "backend_ms": None if backend is None else round(backend, 3),
                "model_version": version, "request_id": request_id}
    assert line == json.dumps(expected, separators=(",", ":")) + "\n"
    assert json.loads(line) == expected


@given(st.floats(min_value=1.6e9, max_value=2.2e9, allow_nan=False))
def test_the_time_is_iso_utc_in_milliseconds_not_after_the_instant(t: float) -> None:
    stamps = _Timestamps()
    text = stamps.format(t)
    parsed = dt.datetime.fromisoformat(text)
    assert text.endswith("+00:00") and len(text) == len("2026-12-07T01:02:03.456+00:00")
    assert parsed.utcoffset() == dt.timedelta(0)
    # the milliseconds are truncated, as isoformat(timespec="milliseconds") does
    assert 0 <= t - parsed.timestamp() < 0.001 + 1e-6
    assert stamps.format(t) == text  # the per-second prefix cache gives the same answer


def test_a_flush_stopped_between_slices_loses_no_record(tmp_path: Path) -> None:
    """Records are encoded on the loop in slices; a flush cancelled between two slices (the
    gateway stopping) puts its records back, and close() writes every one exactly once."""

    async def scenario() -> None:
        path = tmp_path / "logs" / "gateway-requests.jsonl"
        request_log = RequestLog(path, interval_s=3600)
        request_log.start()
        total = 3 * RequestLog._SLICE + 5
        for i in range(total):
            request_log.add(RequestRecord(1.8e9 + i, None, "api", 1, "prod", 200, 1.0, None,
                                          None, f"id-{i}"))
        flushing = asyncio.ensure_future(request_log.flush())
        await asyncio.sleep(0)  # the first slice is encoded; the flush waits to go on
        assert not flushing.done()
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        assert not path.exists() or path.read_text() == ""
        await request_log.close()
        ids = [json.loads(line)["request_id"] for line in path.read_text().splitlines()]
        assert ids == [f"id-{i}" for i in range(total)]

    asyncio.run(scenario())
