"""Webhooks: delivered by a real worker to a loopback server, HMAC-signed, retried on 500."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from app.services import notifications, promotions
from tests.conftest import USERS, build_app
from tests.support import RedisServer, WorkerProcess, child_env, wait_for

SECRET = "whsec-" + "k" * 32


class Hook:
    """A loopback HTTP server that answers the scripted statuses and records what it got."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bytes]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.received.append((dict(self.headers), body))
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Hook:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    with Hook([500]) as server:
        yield server


def test_signed_delivery_retried_after_500(tmp_path: Path, sqlite_url: str,
                                           redis_server: RedisServer, hook: Hook,
                                           registered_versions: dict[str, Any]) -> None:
    hooks = {"promotion.requested": hook.url}
    settings = {"WEBHOOKS": json.dumps(hooks), "WEBHOOK_SECRET": SECRET,
                "WEBHOOK_RETRY_BASE_SECONDS": "0.5"}
    app = build_app(tmp_path, sqlite_url, redis_server.url, WEBHOOKS=hooks,
                    WEBHOOK_SECRET=SECRET)
    worker = WorkerProcess(tmp_path, child_env(tmp_path, sqlite_url, redis_server.url,
                                               **settings), concurrency=1).start()
    try:
        with app.app_context():
            row = promotions.request("2", "prod", "webhook test", "alice",
                                     roles=frozenset(USERS["alice"]))
        wait_for(lambda: len(hook.received) >= 2, 30, "a retried webhook delivery")
    finally:
        worker.stop()
    (first_headers, first), (headers, body) = hook.received[:2]
    assert body == first and len(hook.received) == 2  # the same event, then no more
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Modelgate-Signature"] == expected
    assert hmac.compare_digest(first_headers["X-Modelgate-Signature"], expected)
    event = json.loads(body)
    assert event["type"] == "promotion.requested" and headers["X-Modelgate-Event"] == event["type"]
    assert event["data"]["id"] == row.id and event["data"]["model"]["version"] == "2"
    assert SECRET not in worker.log()


@pytest.mark.parametrize("url,allowed", [
    ("http://127.0.0.1:9999/hook", True), ("http://localhost/hook", True),
    ("http://[::1]:80/x", True), ("https://hooks.example.com/x", True),
    ("http://example.com/hook", False), ("http://10.0.0.1/hook", False),
    ("ftp://127.0.0.1/x", False), ("https://user:pw@example.com/x", False), ("nonsense", False)])
def test_only_https_or_loopback_urls(url: str, allowed: bool) -> None:
    assert notifications.allowed_url(url) is allowed


def test_no_webhook_configured_sends_nothing(tmp_path: Path, sqlite_url: str) -> None:
    app = build_app(tmp_path, sqlite_url, "redis://127.0.0.1:1/0",
                    WEBHOOKS={"promotion.requested": "http://example.com/x"})
    with app.app_context():
        assert notifications.webhook_for("promotion.requested") is None
        assert notifications.webhook_for("promotion.approved") is None
        notifications.notify("promotion.requested", {"id": "x"})  # refused URL: no queue call
        assert notifications.sign("s", b"{}") == "sha256=" + hmac.new(
            b"s", b"{}", hashlib.sha256).hexdigest()


def test_break_glass_rollback_is_sent_to_its_webhook(tmp_path: Path, sqlite_url: str,
                                                     redis_server: RedisServer,
                                                     registered_versions: dict[str, Any]) -> None:
    from app.services import rollbacks
    from tests.approvals.conftest import record_deploy

    with Hook([]) as server:
        hooks = {"deployment.rolled-back": server.url}
        app = build_app(tmp_path, sqlite_url, redis_server.url, WEBHOOKS=hooks,
                        WEBHOOK_SECRET=SECRET)
        worker = WorkerProcess(tmp_path, child_env(
            tmp_path, sqlite_url, redis_server.url, WEBHOOKS=json.dumps(hooks),
            WEBHOOK_SECRET=SECRET), concurrency=2).start()  # one slot runs the deploy job
        try:
            with app.app_context():
                record_deploy(tmp_path, "prod", "1", "job-1")
                record_deploy(tmp_path, "prod", "2", "job-2")
                job = rollbacks.rollback("prod", "1", "v2 answers slowly", "alice",
                                         roles=frozenset(USERS["alice"]))
            wait_for(lambda: server.received, 30, "the rollback webhook")
        finally:
            worker.stop()
    headers, body = server.received[0]
    event = json.loads(body)
    assert event["type"] == headers["X-Modelgate-Event"] == "deployment.rolled-back"
    assert event["data"] == {"environment": "prod", "model_version": "1", "from_version": "2",
                             "reason": "v2 answers slowly", "phase": "queued",
                             "deploy_job_id": job.id, "rolled_back_by": "alice"}
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Modelgate-Signature"] == expected
