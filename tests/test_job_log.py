"""A job's log lines look the same live (pushed over Redis) as after a reload."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from app.services import events, jobs
from app.services.kinds import JobKind
from tests.conftest import build_app
from tests.support import RedisServer


@pytest.fixture
def app(tmp_path: Path, sqlite_url: str, redis_server: RedisServer) -> Any:
    return build_app(tmp_path, sqlite_url, redis_server.url)


def test_a_live_log_line_carries_the_time_a_reload_shows(app: Any,
                                                          redis_server: RedisServer) -> None:
    listener = redis.Redis.from_url(redis_server.url).pubsub()
    listener.subscribe(events.CHANNEL)
    listener.get_message(timeout=2)  # the subscribe confirmation
    with app.app_context():
        job = jobs.submit(JobKind.SELFCHECK, {}, "alice")
        jobs.append_log(job.id, "halfway there")
        stored = jobs.log_to_dict(jobs.logs(job.id)[-1])
    pushed = None
    deadline = time.monotonic() + 5
    while pushed is None and time.monotonic() < deadline:
        message = listener.get_message(timeout=1)
        if message and message["type"] == "message":
            event = json.loads(message["data"])
            if event["type"] == "log" and event["line"]["message"] == "halfway there":
                pushed = event["line"]
    listener.close()
    assert pushed is not None, "the log line was not pushed"
    assert stored["message"] == "halfway there"
    assert pushed == stored
    assert pushed["time"]
