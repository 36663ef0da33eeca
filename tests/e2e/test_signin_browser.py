"""Real browser (Debian's chromium via Playwright) against a real issuer and a real panel process.

Chromium treats http://127.0.0.1 as a secure context, so it stores and sends the panel's
`__Host-session` cookie (Secure, Path=/, no Domain) over plain http on loopback: the test runs
the panel with its production cookie settings.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from app.config import ensure_instance_secret_key
from app.migrate import upgrade
from tests.e2e.shots import screenshot_path
from tests.identity_support import Issuer, free_port, start_issuer
from tests.support import ROOT, RedisServer, child_env, wait_for

pytestmark = pytest.mark.e2e
pytest.importorskip("playwright.sync_api")
#: Engineer actions on the dashboard: the forms that queue jobs.
ACTIONS = "form[method=post][action='/jobs/']"


@dataclass
class Stack:
    """The issuer, the panel process and what the tests need to reach them."""

    issuer: Issuer
    panel: str
    panel_log: Path
    home: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Issuer + Redis + `python -m app panel` on free ports in a fresh MODELGATE_HOME."""
    home = tmp_path_factory.mktemp("instance")
    with start_issuer(home) as issuer:
        redis = RedisServer(home / "redis").start()
        ensure_instance_secret_key(home)
        database = f"sqlite:///{home / 'modelgate.db'}"
        upgrade(database)
        port = free_port()
        panel = f"http://127.0.0.1:{port}"
        env = child_env(home, database, redis.url, ISSUER_URL=issuer.url, PANEL_URL=panel,
                        CA_BUNDLE=issuer.ca, DEBUG="false",
                        # The dashboard's live stream holds a worker thread for this long;
                        # short streams let the panel stop quickly at the end of the module.
                        SSE_MAX_SECONDS=2)
        log = home / "panel.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "app", "panel", "--port", str(port), "--workers", "1"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: process.poll() is not None or _up(panel), 30, "the panel")
            assert process.poll() is None, log.read_text()
            yield Stack(issuer=issuer, panel=panel, panel_log=log, home=home)
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            redis.stop()


def _up(panel: str) -> bool:
    session = requests.Session()
    session.trust_env = False
    try:
        return session.get(f"{panel}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture
def page(stack: Stack, browser: Any) -> Iterator[Any]:
    """A fresh browser profile per test; callback URLs are recorded for the log scan.

    `stack` comes first so that it is torn down after the browser: open keep-alive
    connections would otherwise hold the panel's graceful shutdown for its full timeout.
    """
    context = browser.new_context(ignore_https_errors=True)
    context.set_default_timeout(10_000)
    opened = context.new_page()
    opened.callbacks = []  # type: ignore[attr-defined]
    opened.on("request", lambda r: "/auth/callback?" in r.url
              and opened.callbacks.append(r.url))  # type: ignore[attr-defined]
    yield opened
    context.close()


def _to_issuer_form(page: Any, stack: Stack) -> None:
    page.goto(f"{stack.panel}/")
    assert "/auth/login" in page.url
    page.click("#sign-in")
    page.wait_for_url(f"{stack.issuer.url}/authorize*")


def _submit(page: Any, username: str, password: str) -> None:
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit]")


def _sign_in(page: Any, stack: Stack, username: str) -> None:
    _to_issuer_form(page, stack)
    _submit(page, username, stack.issuer.password(username))
    page.wait_for_url(f"{stack.panel}/**")  # each role lands on its own page


def _post(page: Any, url: str, form: bool) -> int:
    """A forged request from the page itself, with the page's own CSRF token."""
    status: int = page.evaluate(
        """async ([url, form]) => {
            const token = document.querySelector('meta[name="csrf-token"]').content;
            const init = {method: 'POST', headers: {'X-CSRFToken': token}};
            if (form) { init.body = new URLSearchParams({kind: 'selfcheck'}); }
            else { init.body = JSON.stringify({kind: 'selfcheck'});
                   init.headers['Content-Type'] = 'application/json'; }
            return (await fetch(url, init)).status;
        }""", [url, form])
    return status


def test_alice_signs_in_sees_her_dashboard_and_signs_out(page: Any, stack: Stack) -> None:
    _sign_in(page, stack, "alice")
    assert page.text_content(".who .name") == "Alice"
    assert page.text_content(".who .roles") == "MLOps.Engineer, Score.Invoke"
    assert page.locator(ACTIONS).count() >= 1  # engineer actions are offered
    cookie = next(c for c in page.context.cookies() if c["name"] == "__Host-session")
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert cookie["path"] == "/" and cookie["domain"] == "127.0.0.1"
    page.screenshot(path=str(screenshot_path("dashboard.png")), full_page=True)

    page.click("#sign-out")
    page.wait_for_url(f"{stack.panel}/auth/login*")
    assert "You have signed out" in page.content()
    # The issuer session ended too: signing in again asks for the password.
    _to_issuer_form(page, stack)
    assert page.is_visible("#password")


def test_carol_cannot_reach_engineer_actions(page: Any, stack: Stack) -> None:
    _sign_in(page, stack, "carol")
    assert page.text_content(".who .roles") == "Score.Invoke"
    assert page.locator(ACTIONS).count() == 0
    assert _post(page, "/jobs/", form=True) == 403
    assert _post(page, "/api/v1/jobs", form=False) == 403
    jobs = page.evaluate("async () => (await (await fetch('/api/v1/jobs')).json()).jobs")
    assert jobs == []


def test_wrong_password_is_refused_then_throttled(page: Any, stack: Stack) -> None:
    _to_issuer_form(page, stack)
    statuses = []
    page.on("response", lambda r: r.request.method == "POST"
            and "/authorize" in r.url and statuses.append(r.status))
    for _ in range(3):
        _submit(page, "erin", "not-erins-password")
        page.wait_for_selector("#signin-error")
    assert "Incorrect username or password" in page.text_content("#signin-error")
    _submit(page, "erin", stack.issuer.password("erin"))  # right password, but locked out
    page.wait_for_selector("#signin-error")
    assert "Too many failed sign-ins" in page.text_content("#signin-error")
    assert statuses == [401, 401, 429, 429]
    assert stack.issuer.url in page.url  # never reached the panel


def test_logs_hold_no_secrets(page: Any, stack: Stack) -> None:
    _sign_in(page, stack, "dave")
    codes = [parse_qs(urlsplit(u).query)["code"][0] for u in page.callbacks]
    assert codes
    creds = stack.issuer.creds
    secrets = [u["password"] for u in creds["users"].values()]
    secrets += [c["secret"] for c in creds["clients"].values()]
    secrets += codes + [(stack.home / "secret_key").read_text().strip()]
    logs = stack.panel_log.read_text(errors="replace") + stack.issuer.log.read_text(
        errors="replace")
    assert "signed in: user=alice" in logs  # the logs are the right ones
    leaked = [s[:4] + "…" for s in secrets if s in logs]
    assert not leaked, f"secrets in logs: {leaked}"
