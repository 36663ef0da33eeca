"""Live-update streams cannot take the panel's request threads from other users.

The real `modelgate panel` (gunicorn, 2 workers × 8 threads) on a real Redis: one user opens
many `GET /jobs/events` streams at once, and another user's API call still answers.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from app.localstack.redis_server import free_port
from app.services import events
from tests.conftest import build_app, sign_in
from tests.support import ROOT, child_env, wait_for

STREAMS = 40  # more than the panel's 16 request threads, so the old code had none left
PANEL_COOKIE = "__Host-session"  # the production cookie name the panel process uses


class Panel:
    """A real `python -m app panel` process and session cookies it accepts."""

    def __init__(self, tmp_path: Path, redis_url: str, **config: Any) -> None:
        self.home = tmp_path / "home"
        self.home.mkdir()
        db_url = f"sqlite:///{tmp_path / 'panel.db'}"
        secret = secrets.token_urlsafe(48)
        self.app = build_app(self.home, db_url, redis_url, SECRET_KEY=secret)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = child_env(self.home, db_url, redis_url, SECRET_KEY=secret, **config)
        self.log = tmp_path / "panel.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app", "panel", "--port", str(self.port)],
                cwd=str(ROOT), env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        wait_for(self._healthy, 60, f"the panel (log: {self.log})")

    def _healthy(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        try:
            return requests.get(self.url + "/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def cookie(self, username: str) -> str:
        """The signed session cookie of a signed-in user, as the sign-in callback sets it."""
        client = self.app.test_client()
        sign_in(client, username)
        cookie = client.get_cookie(self.app.config["SESSION_COOKIE_NAME"])
        assert cookie is not None
        return f"{PANEL_COOKIE}={cookie.value}"

    def open_stream(self, cookie: str) -> socket.socket:
        """Send GET /jobs/events and leave the connection open, without reading."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.sendall(f"GET /jobs/events HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                     f"Accept: text/event-stream\r\nCookie: {cookie}\r\n\r\n".encode())
        return sock

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class Answer:
    """What the panel sent on one stream's connection, read as it arrives."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.received = b""

    def read_until(self, done: Callable[[bytes], bool], deadline: float) -> bool:
        """Read until done(everything received), the response ends or the deadline passes."""
        while not done(self.received):
            if self.ended or time.monotonic() >= deadline:
                return False
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(4096)
            except OSError:
                return False
            if not chunk:
                return False
            self.received += chunk
        return True

    @property
    def ended(self) -> bool:
        """The whole response arrived (its Content-Length, or a chunked body's last chunk).

        (The connection stays open: the test keeps it alive, as browsers do.)
        """
        head, sep, body = self.received.partition(b"\r\n\r\n")
        if not sep:
            return False
        length = re.search(rb"^content-length: *(\d+)\r?$", head, re.IGNORECASE | re.MULTILINE)
        if length:
            return len(body) >= int(length.group(1))
        return body.endswith(b"\r\n0\r\n\r\n") or body.startswith(b"0\r\n\r\n")

    def read_first_block(self, deadline: float) -> None:
        """The head and the stream's first block ("retry: 2000", or a refusal's event)."""
        self.read_until(lambda r: b"\n\n" in r.partition(b"\r\n\r\n")[2], deadline)

    @property
    def status(self) -> int | None:
        head = self.received.partition(b"\r\n\r\n")[0]
        return int(head.split(b" ", 2)[1]) if b" " in head else None

    @property
    def events(self) -> list[str]:
        """The names of the events received so far, in order."""
        body = self.received.partition(b"\r\n\r\n")[2].decode()
        return re.findall(r"^event: (\S+)$", body, flags=re.MULTILINE)

    @property
    def cap(self) -> str | None:
        """The cap a refused stream names in its `capped` event (None when admitted)."""
        body = self.received.partition(b"\r\n\r\n")[2].decode()
        found = re.search(r"^event: capped\ndata: (.*)$", body, flags=re.MULTILINE)
        return json.loads(found.group(1))["cap"] if found else None

    @property
    def admitted(self) -> bool:
        return self.status == 200 and self.cap is None and b"retry: 2000" in self.received


def _flood(panel: Panel, redis_url: str) -> tuple[list[Answer], requests.Response | None]:
    """Open STREAMS streams as erin (no role), alice lists jobs, then a job event is published.

    Returns alice's answer (None if it timed out) and every stream's answer, read to its end
    (refused streams end at once) or until the job event arrived (admitted streams).
    """
    erin, alice = panel.cookie("erin"), panel.cookie("alice")
    answers = [Answer(panel.open_stream(erin)) for _ in range(STREAMS)]
    try:
        time.sleep(1.0)  # let both gunicorn workers take their connections
        try:
            answer: requests.Response | None = requests.get(
                panel.url + "/api/v1/jobs", headers={"Cookie": alice}, timeout=10)
        except requests.Timeout:
            answer = None
        deadline = time.monotonic() + 5
        for stream in answers:
            stream.read_first_block(deadline)
        admitted = [a for a in answers if a.admitted]
        # An admitted stream subscribes right after its first block: publish once all have.
        client = redis.Redis.from_url(redis_url)
        wait_for(lambda: client.pubsub_numsub(events.CHANNEL)[0][1] >= len(admitted), 10,
                 "the admitted streams to subscribe")
        events.publish(client, {"type": "job", "job": {"id": "job-during-the-flood"}})
        client.close()
        deadline = time.monotonic() + 5
        for stream in answers:
            if stream in admitted:
                stream.read_until(lambda r: b"job-during-the-flood" in r, deadline)
            else:
                stream.read_until(lambda r: False, deadline)  # to its end
        return answers, answer
    finally:
        for stream in answers:
            stream.sock.close()


def _assert_refusals(answers: list[Answer], cap: str) -> None:
    """Every stream not admitted is a 200 stream holding one `capped` event that names `cap`,
    and ends without a job event; every admitted stream got the job event."""
    for stream in answers:
        if stream.admitted:
            assert stream.events == ["job"], stream.received
        else:
            assert stream.status == 200, stream.received
            assert stream.events == ["capped"] and stream.cap == cap, stream.received
            assert stream.ended, "a refused stream stays open"


@pytest.fixture
def panel(tmp_path: Path, redis_server: Any, request: pytest.FixtureRequest) -> Iterator[Panel]:
    running = Panel(tmp_path, redis_server.url, **getattr(request, "param", {}))
    yield running
    running.stop()


def test_one_users_streams_leave_other_users_calls_answering(panel: Panel,
                                                              redis_server: Any) -> None:
    answers, answer = _flood(panel, redis_server.url)
    assert answer is not None, "another user's API call timed out behind the streams"
    assert answer.status_code == 200
    # Two streams per user; the rest are refused at once, so the page polls instead.
    assert sum(a.admitted for a in answers) == 2, [a.received[-300:] for a in answers]
    assert sum(a.cap == "user" for a in answers) == STREAMS - 2
    _assert_refusals(answers, "user")


@pytest.mark.parametrize("panel", [{"SSE_STREAMS_PER_USER": 1000}], indirect=True)
def test_streams_never_take_a_process_s_last_request_threads(panel: Panel,
                                                             redis_server: Any) -> None:
    """Many users' streams (here one user without a per-user cap) leave threads for pages."""
    answers, answer = _flood(panel, redis_server.url)
    assert answer is not None, "another user's API call timed out behind the streams"
    assert answer.status_code == 200
    # 2 worker processes × (8 threads − 2 kept for ordinary requests).
    admitted = sum(a.admitted for a in answers)
    assert 0 < admitted <= 12, [a.received[-300:] for a in answers]
    assert admitted + sum(a.cap == "server" for a in answers) == STREAMS
    _assert_refusals(answers, "server")


def test_a_refused_stream_says_why_and_when_to_retry(tmp_path: Path, redis_server: Any) -> None:
    """A 200 stream with one `capped` event and a retry delay; closing a stream gives its
    user's slot back."""
    app = build_app(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", redis_server.url)
    client = app.test_client()
    sign_in(client, "erin")
    first, second = (client.get("/jobs/events", buffered=False) for _ in range(2))
    assert [next(iter(r.response)) for r in (first, second)] == [b"retry: 2000\n\n"] * 2
    refused = client.get("/jobs/events")
    max_seconds = round(app.config["SSE_MAX_SECONDS"])
    assert (refused.status_code, refused.mimetype) == (200, "text/event-stream")
    assert refused.headers["Retry-After"] == str(max_seconds)
    head, data = refused.get_data(as_text=True).split("data: ")
    assert head == f"retry: {max_seconds * 1000}\nevent: capped\n"
    assert data.endswith("\n\n") and data.count("\n") == 2, "one event, then the end"
    event = json.loads(data)
    assert event["cap"] == "user" and event["retry_after"] == max_seconds
    assert "2 live streams per user" in event["detail"]
    first.close()
    again = client.get("/jobs/events", buffered=False)
    assert next(iter(again.response)) == b"retry: 2000\n\n"
    again.close()
    second.close()
