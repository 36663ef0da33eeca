"""Every page works on a phone: each persona walks every page at 390 px and at 1440 px.

On every page the document is no wider than the window (no sideways scroll), the browser logs
no console error, and the visible text holds no raw state enum, metric key or Python repr.
A finished job's log opens on its newest line. One `python -m app up` for the whole module;
the pipeline runs once so the pages have content.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from app.labels import METRICS, STATES
from tests.e2e.shots import screenshot_path
from tests.e2e.test_panel_browser import Stack, ensure_deployed, sign_in
from tests.e2e.test_panel_browser import stack as stack  # noqa: F401  (module fixture)

pytestmark = pytest.mark.e2e
pytest.importorskip("playwright.sync_api")

WIDTHS = (390, 1440)
# Each persona's landing page after signing in.
LANDINGS = {"alice": "/", "bob": "/**", "carol": "/score/", "dave": "/**", "erin": "/**"}
# Raw keys people must never read: the upper-case state enums, every metric key of the label
# table, a problem count that was not made plural, a Python dict or list repr.
RAW_STATES = [s for s in STATES if s.isupper()]
RAW = re.compile("|".join(
    [rf"\b{re.escape(s)}\b" for s in RAW_STATES]
    + [rf"\b{re.escape(k)}\b" for k in METRICS if "_" in k]
    + [r"problem\(s\)", r"\{'", r"\['"]))
WIDTH = """() => [document.documentElement.scrollWidth, document.body.scrollWidth,
                  window.innerWidth]"""
# The innermost elements that reach past the window's right edge (what to fix).
TOO_WIDE = """() => [...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5
               && ![...e.children].some(c => c.getBoundingClientRect().right
                                              > window.innerWidth + 0.5))
  .slice(0, 5).map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
                        + (e.className && e.className.baseVal === undefined
                           ? '.' + e.className.split(' ').join('.') : ''))"""


def expected(message: Any, page_url: str) -> bool:
    """Console errors that are not the page's fault.

    The browser logs a refusal page's own 403 as "Failed to load resource"; the walk checks
    that page like any other. A live-update stream over the per-user cap answers 429 and the
    page polls instead (app/services/streams): walking pages faster than the server notices
    the previous pages' streams closed meets that cap.
    """
    if not message.text.startswith("Failed to load resource"):
        return False
    resource = str(message.location.get("url") or "")
    if resource == page_url and "status of 403" in message.text:
        return True
    return resource.split("?")[0].endswith("/events") and "status of 429" in message.text


def raw_keys(text: str) -> list[str]:
    """Each raw key in the text, with a little of the text around it."""
    return [text[max(0, m.start() - 30):m.end() + 30].replace("\n", " | ")
            for m in RAW.finditer(text)]


@pytest.fixture(scope="module")
def content(stack: Stack, browser: Any) -> dict[str, str]:  # noqa: F811
    """Run the pipeline once and file a promotion request; the paths that need content."""
    ensure_deployed(stack)
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(30_000)
    try:
        page = sign_in(ctx, stack, "alice", "/")
        job = page.evaluate(
            "async () => (await (await fetch('/api/v1/jobs')).json()).jobs"
            ".find(j => String(j.status).toUpperCase() === 'SUCCEEDED'"
            " && String(j.kind).toLowerCase() === 'pipeline').id")
        promotion = page.evaluate(
            """async () => {
                const token = document.querySelector('meta[name="csrf-token"]').content;
                const r = await fetch('/api/v1/promotions', {method: 'POST',
                    headers: {'X-CSRFToken': token, 'Content-Type': 'application/json'},
                    body: JSON.stringify({version: '1', reason: 'walk the pages on a phone'})});
                return (await r.json()).id;
            }""")
        assert job and promotion
        return {"job": f"/jobs/{job}", "approval": f"/approvals/{promotion}"}
    finally:
        ctx.close()


def pages(content: dict[str, str]) -> list[str]:
    """Every page of the panel (a persona without the role sees its refusal page)."""
    return ["/", "/jobs/", content["job"], "/models/", "/models/german-credit",
            "/models/german-credit/versions/1", "/deployments/", "/apis/", "/score/",
            "/approvals/", "/approvals/mine", "/approvals/new", content["approval"], "/audit/",
            "/audit/timeline?environment=prod", "/audit/timeline?environment=staging"]


@pytest.fixture
def phone(stack: Stack, browser: Any) -> Iterator[Any]:  # noqa: F811
    """A fresh browser profile; the test sets the width."""
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 390, "height": 844})
    ctx.set_default_timeout(30_000)
    yield ctx
    ctx.close()


@pytest.mark.parametrize("user", sorted(LANDINGS))
def test_every_page_fits_a_phone_and_a_desktop(user: str, phone: Any, stack: Stack,  # noqa: F811
                                               content: dict[str, str]) -> None:
    page = sign_in(phone, stack, user, LANDINGS[user])
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and not expected(m, page.url)
            and errors.append(f"{page.url}: {m.text} ({m.location.get('url')})"))
    page.on("pageerror", lambda e: errors.append(f"{page.url}: {e}"))
    problems: list[str] = []
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        for path in pages(content):
            page.goto(stack.panel + path)
            page.wait_for_load_state("load")
            doc, body, window = page.evaluate(WIDTH)
            if max(doc, body) > window:
                problems.append(f"{path} at {width} px is {max(doc, body)} px wide: "
                                f"{page.evaluate(TOO_WIDE)}")
                page.screenshot(path=str(screenshot_path(
                    f"overflow-{user}-{width}-{path.strip('/').replace('/', '-')}.png")),
                    full_page=True)
            # Column headers are upper-cased by CSS ("Queued" reads QUEUED): read the words.
            page.evaluate("() => document.querySelectorAll('body *')"
                          ".forEach(e => { e.style.textTransform = 'none'; })")
            raw = raw_keys(page.inner_text("body"))
            if raw:
                problems.append(f"{path} shows raw keys {raw}")
    assert not problems, problems
    assert not errors, errors


def test_a_narrow_phone_fits_the_busiest_pages(phone: Any, stack: Stack,  # noqa: F811
                                               content: dict[str, str]) -> None:
    page = sign_in(phone, stack, "dave", "/**")
    page.set_viewport_size({"width": 360, "height": 780})
    for path in ("/", content["job"], "/models/german-credit/versions/1", "/score/",
                 content["approval"], "/audit/"):
        page.goto(stack.panel + path)
        doc, body, window = page.evaluate(WIDTH)
        assert max(doc, body) <= window, (path, doc, body, page.evaluate(TOO_WIDE))


def test_a_finished_jobs_log_opens_on_its_last_line(phone: Any, stack: Stack,  # noqa: F811
                                                   content: dict[str, str]) -> None:
    page = sign_in(phone, stack, "alice", "/")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(stack.panel + content["job"])
    page.wait_for_selector("[data-log] li")
    scroll_height, client_height = page.eval_on_selector(
        "[data-log]", "l => [l.scrollHeight, l.clientHeight]")
    assert scroll_height > client_height, "the pipeline's log should be longer than its box"
    page.wait_for_function(
        "() => { const l = document.querySelector('[data-log]');"
        " return l.scrollHeight - l.scrollTop - l.clientHeight < 2; }")
    last = page.locator("[data-log] li").last
    box, line = page.eval_on_selector("[data-log]", "l => l.getBoundingClientRect().bottom"), \
        last.evaluate("li => li.getBoundingClientRect().bottom")
    assert line <= box + 1, "the log's last line is below its box"
