"""The Drift page in chromium, on a laptop and on a phone: the alert, a chart per field, and
Retrain queueing a train job. The browser's requests are answered by the panel app itself
(Playwright routes them to Flask's test client, signed in as the user), so the page, its CSS
and its form post are the real ones without a server process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import sign_in
from tests.drift.conftest import applicants, shifted, store_samples
from tests.e2e.shots import screenshot_path
from tests.support import RedisServer

pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ORIGIN = "http://panel.test"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: apt-get install -y chromium")
        pytest.skip("apt-get install -y chromium")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    return sqlite_url  # the page's database behaviour is covered by test_pages.py


@pytest.fixture
def contexts(panel: Any) -> Iterator[list[Any]]:
    """Browser contexts to close before the panel's Redis and database go away."""
    opened: list[Any] = []
    yield opened
    for context in opened:
        context.close()


def open_as(browser: Any, panel: Any, contexts: list[Any], user: str,
            viewport: dict[str, int]) -> Any:
    """A browser page whose requests to ORIGIN are served by the panel's test client."""
    client = panel.test_client()
    sign_in(client, user)

    def serve(route: Any) -> None:
        request = route.request
        if "text/event-stream" in request.headers.get("accept", ""):
            # Live updates would hold this (single) thread; 204 tells EventSource to stop.
            route.fulfill(status=204)
            return
        parts = urlsplit(request.url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "accept", "x-csrftoken")}
        response = client.open(path, method=request.method, headers=headers,
                               data=request.post_data_buffer)
        route.fulfill(status=response.status_code, body=response.get_data(),
                      headers={k: v for k, v in response.headers.items()
                               if k.lower() != "content-length"})

    context = browser.new_context(viewport=viewport)
    contexts.append(context)
    context.set_default_timeout(15_000)
    context.route(f"{ORIGIN}/**", serve)
    return context.new_page()


def test_the_page_on_a_laptop_and_a_phone(browser: Any, panel: Any, contexts: list[Any],
                                          home: Path, redis_server: RedisServer) -> None:
    from app.services import drift

    with panel.app_context():
        store_samples(home, redis_server.url, "staging", applicants()[:300])
        drift.check_environment("staging")
        store_samples(home, redis_server.url, "staging", shifted(applicants()[300:600]))
        drift.check_environment("staging")

    page = open_as(browser, panel, contexts, "alice", {"width": 1280, "height": 900})
    page.goto(f"{ORIGIN}/")
    page.click("nav[aria-label=Main] >> text=Drift")
    page.wait_for_url(f"{ORIGIN}/drift/prod")
    page.click("nav[aria-label=Environments] >> text=staging")
    page.wait_for_url(f"{ORIGIN}/drift/staging")
    alert = page.locator("#drift-alert")
    assert alert.is_visible() and alert.get_attribute("data-band") == "act"
    assert "Age" in alert.inner_text() and "Act" in alert.inner_text()
    charts = page.locator("svg.drift-chart")
    assert charts.count() == 10
    for i in range(charts.count()):
        box = charts.nth(i).bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 60
    # Charts sit side by side on a laptop.
    first, second = charts.nth(0).bounding_box(), charts.nth(1).bounding_box()
    assert first is not None and second is not None and first["y"] == second["y"]
    page.screenshot(path=str(screenshot_path("drift.png")), full_page=True)

    phone = open_as(browser, panel, contexts, "alice", {"width": 390, "height": 844})
    phone.goto(f"{ORIGIN}/drift/staging")
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
    box = phone.locator("svg.drift-chart").first.bounding_box()
    assert box is not None and box["width"] <= 390 and box["width"] > 250
    assert phone.locator("#retrain").is_visible()
    phone.screenshot(path=str(screenshot_path("drift-phone.png")), full_page=True)

    # Retrain queues the train job and shows it.
    phone.click("#retrain")
    phone.wait_for_url(f"{ORIGIN}/jobs/*")
    assert "Retraining queued after the drift in staging" in phone.content()
    from app.db import Job
    from app.extensions import db

    with panel.app_context():
        [job] = db.session.query(Job).all()
    assert (job.kind, job.requested_by) == ("train", "alice")
    assert phone.url.endswith(f"/jobs/{job.id}")


def test_an_approver_sees_no_retrain_button(browser: Any, panel: Any, contexts: list[Any],
                                            home: Path, redis_server: RedisServer) -> None:
    from app.services import drift

    with panel.app_context():
        store_samples(home, redis_server.url, "prod", shifted(applicants()[:300]))
        drift.check_environment("prod")
    page = open_as(browser, panel, contexts, "bob", {"width": 1280, "height": 900})
    page.goto(f"{ORIGIN}/drift/prod")
    assert page.locator("#drift-alert").is_visible()
    assert page.locator("#retrain").count() == 0
    assert page.locator("#retrain-note").is_visible()
