"""The forms of the timeline, the audit trail, an approval's comment, the promotion request and
the Deployments page look like the score tester's: the same computed style in a real browser."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.approvals.conftest import (  # noqa: F401  (fixtures: v1-v3 in a registry)
    client_for,
    registered_versions,
    registry_store,
)
from tests.conftest import build_app, csrf_headers, sign_in
from tests.support import RedisServer

pytest.importorskip("playwright.sync_api")

# What makes a control look like the score tester's.
STYLE = """el => { const s = getComputedStyle(el);
  return [s.borderTopLeftRadius, s.borderTopColor, s.paddingTop, s.paddingLeft, s.fontSize,
          s.backgroundColor]; }"""


@pytest.fixture
def served(tmp_path: Path, sqlite_url: str, redis_server: RedisServer,
           registered_versions: dict[str, Any],  # noqa: F811
           ) -> Iterator[tuple[str, Any]]:
    """The panel on a random loopback port, with v1-v3 registered."""
    app = build_app(tmp_path, sqlite_url, redis_server.url)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_every_form_control_takes_the_score_testers_style(browser: Any,
                                                          served: tuple[str, Any]) -> None:
    base, app = served
    alice = client_for(app, "alice")
    pid = alice.post("/api/v1/promotions", headers=csrf_headers(alice),
                     json={"version": "2", "reason": "r"}).get_json()["id"]
    dave = app.test_client()
    sign_in(dave, "dave")  # MLOps.Admin and Score.Invoke: every page and form
    cookie = dave.get_cookie(app.config["SESSION_COOKIE_NAME"])
    context = browser.new_context()
    context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": base}])
    page = context.new_page()
    try:
        page.goto(f"{base}/score/")
        reference = page.eval_on_selector("#environment-choice", STYLE)
        assert reference[0] == "8px", reference
        controls = {
            "/audit/": ["input[name=action]", "input[name=actor]", "input[name=target]"],
            "/audit/timeline": ["select[name=environment]", "select[name=model_version]",
                                "#served-at"],
            f"/approvals/{pid}": [f"[data-comment='{pid}']"],
            "/approvals/new": ["#promotion-version", "#promotion-reason", "#api-reason"],
            "/deployments/": ["#deploy-version-staging"],
        }
        for path, selectors in controls.items():
            page.goto(base + path)
            for selector in selectors:
                assert page.eval_on_selector(selector, STYLE) == reference, (path, selector)
    finally:
        context.close()


def _signed_in_page(browser: Any, base: str, app: Any, user: str) -> tuple[Any, Any]:
    """A browser context holding `user`'s panel session, and a page in it."""
    client = app.test_client()
    sign_in(client, user)
    cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"])
    context = browser.new_context(viewport={"width": 390, "height": 844})
    context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": base}])
    return context, context.new_page()


def _beside(page: Any, control: str, error: str) -> bool:
    """The error is shown right below or beside the control (within one line of it)."""
    box, message = (page.locator(s).bounding_box() for s in (control, error))
    return bool(box and message and message["y"] < box["y"] + box["height"] + 40
                and message["y"] + message["height"] > box["y"] - 4)


def test_the_deployments_form_offers_registered_versions_and_answers_beside_the_field(
        browser: Any, served: tuple[str, Any]) -> None:
    base, app = served
    context, page = _signed_in_page(browser, base, app, "alice")
    try:
        page.goto(f"{base}/deployments/")
        options = page.eval_on_selector_all(
            "#deploy-version-staging option", "os => os.map(o => [o.value, o.textContent])")
        assert options == [["", "latest (v3)"], ["3", "v3"], ["2", "v2"], ["1", "v1"]]
        # Only a tampered page can send a version that is not offered: the answer is the
        # Deployments page again, the message beside the select, and nothing queued.
        page.eval_on_selector("#deploy-version-staging",
                              "s => { s.add(new Option('v99', '99')); s.value = '99'; }")
        page.click("#env-staging button[data-action=deploy]")
        page.wait_for_selector("#deploy-error-staging")
        assert page.is_visible("#deploy-error-staging")
        assert page.text_content("#deploy-error-staging") == "no version 99 is registered"
        assert page.get_attribute("#deploy-version-staging", "aria-invalid") == "true"
        assert _beside(page, "#deploy-version-staging", "#deploy-error-staging")
        assert page.locator("h1").first.text_content().strip() == "Deployments"
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        alice = client_for(app, "alice")
        assert alice.get("/api/v1/jobs").get_json()["jobs"] == []
    finally:
        context.close()


def test_the_timeline_filters_offer_the_real_environments_and_versions(
        browser: Any, served: tuple[str, Any]) -> None:
    base, app = served
    context, page = _signed_in_page(browser, base, app, "erin")
    try:
        page.goto(f"{base}/audit/timeline")
        environments = page.eval_on_selector_all("#timeline-environment option",
                                                 "os => os.map(o => o.value)")
        versions = page.eval_on_selector_all("#timeline-version option",
                                             "os => os.map(o => o.value)")
        assert environments == ["", "staging", "prod"]
        assert versions == ["", "3", "2", "1"]
        # Choosing from the boxes filters; an address typed by hand with a name that does not
        # exist gets its answer beside the box, not a "Timeline of nonsense".
        page.select_option("#timeline-environment", "prod")
        page.click("#timeline-filter button[type=submit]")
        page.wait_for_url("**environment=prod**")
        assert page.locator("h1").first.text_content().strip() == "Timeline of prod"
        page.goto(f"{base}/audit/timeline?environment=nonsense")
        assert "nonsense" not in page.locator("h1").first.text_content()
        error = "[data-error=environment]"
        assert page.is_visible(error) and "no environment is called" in page.text_content(error)
        assert _beside(page, "#timeline-environment", error)
    finally:
        context.close()
