"""The promotion gate in a real browser: bob opens a request for a version trained on a skewed
sample, reads its fairness report beside prod's, cannot approve it without the override, and
approves it with one; the audit trail shows the override. The version page draws the charts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.approvals import gate_fixtures
from tests.approvals.conftest import record_deploy
from tests.conftest import build_app, sign_in
from tests.e2e.shots import screenshot_path
from tests.support import RedisServer

pytest.importorskip("playwright.sync_api")

# The fixtures of tests/approvals/gate_fixtures.py: v1 fair enough, v2 trained to fail.
gate_store = gate_fixtures.gate_store
gate_pipeline = gate_fixtures.gate_pipeline
gate_versions = gate_fixtures.gate_versions


@pytest.fixture
def served(tmp_path: Path, sqlite_url: str, redis_server: RedisServer,
           gate_versions: dict[str, Any],
           ) -> Iterator[tuple[str, Any]]:
    """The panel on a random loopback port; prod serves v1, v2 is requested for prod."""
    app = build_app(tmp_path, sqlite_url, redis_server.url)
    with app.app_context():
        from app.services import promotions

        record_deploy(tmp_path, "prod", "1", "job-prod-1")
        promotions.request("2", "prod", "retrained on the new sample", "alice",
                           roles=frozenset({"MLOps.Engineer"}))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        thread.join(timeout=10)


def _page_as(browser: Any, app: Any, base: str, user: str) -> tuple[Any, Any]:
    client = app.test_client()
    sign_in(client, user)
    cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"])
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": base}])
    return context, context.new_page()


def test_bob_reads_the_report_beside_prods_and_overrides_the_gate(
        browser: Any, served: tuple[str, Any]) -> None:
    base, app = served
    context, bob = _page_as(browser, app, base, "bob")
    errors: list[str] = []
    bob.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        bob.goto(f"{base}/approvals/")
        card = bob.locator("[data-pending]")
        assert card.count() == 1
        promotion_id = card.get_attribute("data-pending")
        assert card.locator("[data-gate-badge=failed]").is_visible()
        bob.goto(f"{base}/approvals/{promotion_id}")
        gate = bob.locator("[data-gate=failed]")
        assert gate.is_visible()
        failed = gate.locator("[data-check=min_selection_rate_ratio][data-check-passed=no]")
        assert "selection-rate ratio by sex 0.000 < 0.6" in failed.inner_text()
        # The candidate's report beside prod's: one column each, both with figures.
        summary = bob.locator("[data-fairness-summary=sex]")
        assert summary.locator("thead th").all_inner_texts()[1:] == ["V2", "V1 (PROD)"]
        ratio = summary.locator("[data-figure=selection_rate_ratio] td")
        assert ratio.nth(1).inner_text().startswith("0.000")
        assert "below 0.8" in ratio.nth(1).inner_text()
        assert ratio.nth(2).locator("[data-value]").count() == 1  # prod's own ratio
        bob.click("[data-fairness-attribute=sex] summary")
        groups = bob.locator("[data-fairness-groups=sex] tbody tr")
        assert sorted(groups.evaluate_all("rows => rows.map(r => r.dataset.group)")) == [
            "female", "male"]
        bob.screenshot(path=str(screenshot_path("approval-gate.png")), full_page=True)

        # Approving without ticking the override box is refused and changes nothing.
        bob.fill(f"[data-comment='{promotion_id}']", "pilot")
        bob.click(f"[data-approve='{promotion_id}']")
        bob.wait_for_url(f"{base}/approvals/{promotion_id}")
        assert "approving it needs an explicit override" in bob.locator(".flash").inner_text()
        assert bob.locator("[data-state=PENDING]").count() == 1

        bob.check(f"[data-override-confirm='{promotion_id}']")
        bob.fill(f"[data-override-reason='{promotion_id}']",
                 "two-week pilot; every refusal of a woman is reviewed by hand")
        bob.click(f"[data-approve='{promotion_id}']")
        bob.wait_for_url(f"{base}/jobs/*")
        bob.goto(f"{base}/audit/?action=promotion.gate-overridden")
        row = bob.locator("tr[data-action='promotion.gate-overridden']")
        assert row.count() == 1
        assert "every refusal of a woman is reviewed by hand" in row.inner_text()
        bob.goto(f"{base}/approvals/{promotion_id}")
        assert "reviewed by hand" in bob.locator("[data-field=gate_override]").inner_text()

        # The version page draws the report; its model card lists the approval.
        bob.goto(f"{base}/models/german-credit/versions/2")
        rates = bob.locator("svg[data-chart=fairness-rates]")
        assert rates.count() == 1 and rates.locator("circle.fairness-point").count() == 6
        assert bob.locator("svg[data-chart=fairness-calibration]").count() == 1
        assert bob.locator("#fairness [data-gate=failed]").is_visible()
        bob.locator("#fairness").screenshot(path=str(screenshot_path("version-fairness.png")))
        bob.click("#model-card")
        bob.wait_for_url(f"{base}/models/german-credit/versions/2/card")
        assert "reviewed by hand" in bob.locator(
            f"#card-approvals [data-promotion='{promotion_id}']").inner_text()
        bob.screenshot(path=str(screenshot_path("model-card.png")), full_page=True)
        with bob.expect_download() as download:
            bob.click("#card-download")
        assert download.value.suggested_filename == "german-credit-v2-model-card.md"
        assert errors == []
    finally:
        context.close()


WIDTH = """() => [document.documentElement.scrollWidth, document.body.scrollWidth,
                  window.innerWidth]"""


def test_the_gate_and_report_pages_fit_a_phone(browser: Any, served: tuple[str, Any]) -> None:
    base, app = served
    context, page = _page_as(browser, app, base, "bob")
    try:
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(f"{base}/approvals/")
        promotion_id = page.locator("[data-pending]").get_attribute("data-pending")
        for path in (f"/approvals/{promotion_id}", "/approvals/",
                     "/models/german-credit/versions/2", "/models/german-credit/versions/2/card"):
            page.goto(base + path)
            page.evaluate("() => document.querySelectorAll('details')"
                          ".forEach(d => { d.open = true; })")
            doc, body, window = page.evaluate(WIDTH)
            assert max(doc, body) <= window, (path, doc, body)
    finally:
        context.close()
