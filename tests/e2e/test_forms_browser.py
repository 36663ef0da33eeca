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
