"""Live-update streams cannot take the panel's request threads from other users.

The real `modelgate panel` (gunicorn, 2 workers × 8 threads) on a real Redis: one user opens
many `GET /jobs/events` streams at once, and another user's API call still answers.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app.localstack.redis_server import free_port
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


def _status(sock: socket.socket, deadline: float) -> int | None:
    """The HTTP status a stream was answered with, or None if it got no answer in time."""
    sock.settimeout(max(0.05, deadline - time.monotonic()))
    received = b""
    try:
        while b"\r\n" not in received:
            chunk = sock.recv(256)
            if not chunk:
                return None
            received += chunk
    except OSError:
        return None
    return int(received.split(b" ", 2)[1])


def _flood_then_call(panel: Panel) -> tuple[list[int | None], requests.Response | None]:
    """Open STREAMS streams as erin (no role); then alice lists jobs. Return both outcomes."""
    erin, alice = panel.cookie("erin"), panel.cookie("alice")
    streams = [panel.open_stream(erin) for _ in range(STREAMS)]
    try:
        time.sleep(1.0)  # let both gunicorn workers take their connections
        try:
            answer: requests.Response | None = requests.get(
                panel.url + "/api/v1/jobs", headers={"Cookie": alice}, timeout=10)
        except requests.Timeout:
            answer = None
        deadline = time.monotonic() + 5
        return [_status(s, deadline) for s in streams], answer
    finally:
        for sock in streams:
            sock.close()


@pytest.fixture
def panel(tmp_path: Path, redis_server: Any, request: pytest.FixtureRequest) -> Iterator[Panel]:
    running = Panel(tmp_path, redis_server.url, **getattr(request, "param", {}))
    yield running
    running.stop()


def test_one_users_streams_leave_other_users_calls_answering(panel: Panel) -> None:
    statuses, answer = _flood_then_call(panel)
    assert answer is not None, "another user's API call timed out behind the streams"
    assert answer.status_code == 200
    # Two streams per user; the rest are refused at once, so the page polls instead.
    assert statuses.count(200) == 2, statuses
    assert statuses.count(429) == STREAMS - 2, statuses


@pytest.mark.parametrize("panel", [{"SSE_STREAMS_PER_USER": 1000}], indirect=True)
def test_streams_never_take_a_process_s_last_request_threads(panel: Panel) -> None:
    """Many users' streams (here one user without a per-user cap) leave threads for pages."""
    statuses, answer = _flood_then_call(panel)
    assert answer is not None, "another user's API call timed out behind the streams"
    assert answer.status_code == 200
    # 2 worker processes × (8 threads − 2 kept for ordinary requests).
    assert 0 < statuses.count(200) <= 12, statuses
    assert statuses.count(200) + statuses.count(503) == STREAMS, statuses


def test_a_refused_stream_says_why_and_when_to_retry(tmp_path: Path, redis_server: Any) -> None:
    """429 problem+json with Retry-After; closing a stream gives its user's slot back."""
    app = build_app(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", redis_server.url)
    client = app.test_client()
    sign_in(client, "erin")
    first, second = (client.get("/jobs/events", buffered=False) for _ in range(2))
    assert (first.status_code, second.status_code) == (200, 200)
    refused = client.get("/jobs/events", headers={"Accept": "application/json"})
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == str(round(app.config["SSE_MAX_SECONDS"]))
    assert refused.mimetype == "application/problem+json"
    assert "2 live streams per user" in refused.get_json()["detail"]
    first.close()
    again = client.get("/jobs/events", buffered=False)
    assert again.status_code == 200
    again.close()
    second.close()
