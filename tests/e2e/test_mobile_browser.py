"""Every page works on a phone: each persona walks every page at 390 px and at 1440 px.

A persona walks what the panel offers it: from its landing page, every link it is shown, page
after page (one page per kind: one job, one model version). Every link leads to a page it may
see (a link to a refusal is a bug), and on every page the document is no wider than the window
(no sideways scroll), the browser logs no console error at all, and the visible text holds no
raw state enum, metric key or Python repr. The walk must reach every page the persona's roles
allow. Refusal pages, reached by typing their address, are checked on their own. A finished
job's log opens on its newest line. One `python -m app up` for the whole module; the pipeline
runs once so the pages have content.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

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
    """Every page of the panel."""
    return ["/", "/jobs/", content["job"], "/models/", "/models/german-credit",
            "/models/german-credit/versions/1", "/deployments/", "/apis/", "/score/",
            "/approvals/", "/approvals/mine", "/approvals/new", content["approval"], "/audit/",
            "/audit/timeline?environment=prod"]


# The pages a role is needed for (app/*/routes.py); every other page is any signed-in user's.
NEEDS = {"/score/": {"alice", "bob", "carol", "dave"}, "/approvals/new": {"alice", "dave"},
         "/audit/": {"bob", "dave"}}
# Links the walk does not follow: the REST API, downloads, assets, sign-in and sign-out.
NOT_PAGES = re.compile(r"^/(api|static|auth|health)\b|\.(csv|jsonl|json|yaml|md)$")
# A path segment that is an id: a number, or hex of 8 or more with a digit (jobs, promotions).
ID = re.compile(r"^([0-9]+|(?=[0-9a-f-]*[0-9])[0-9a-f-]{8,})$")
MAX_PAGES = 60
HIDDEN_COLUMNS = """() => [...document.querySelectorAll('main th')]
  .filter(c => getComputedStyle(c).display === 'none' && !c.closest('table.jobs'))
  .map(c => c.closest('table').className + ': ' + c.textContent.trim())"""
LINKS = "() => [...document.querySelectorAll('a[href]')].map(a => a.href)"


def kind(path: str) -> str:
    """A page's kind: its path with ids as `*`, and its query's names without their values."""
    parts = urlsplit(path)
    segments = ["*" if ID.match(s) else s for s in parts.path.split("/")]
    names = sorted({name for name, _ in parse_qsl(parts.query)})
    return "/".join(segments) + ("?" + "&".join(names) if names else "")


def allowed(user: str, content: dict[str, str]) -> set[str]:
    """The kinds of page the persona's roles let it see."""
    return {kind(p) for p in pages(content) if user in NEEDS.get(p, {user})}
@pytest.fixture
def phone(stack: Stack, browser: Any) -> Iterator[Any]:  # noqa: F811
    """A fresh browser profile; the test sets the width."""
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 390, "height": 844})
    ctx.set_default_timeout(30_000)
    yield ctx
    ctx.close()


class Walk:
    """One persona's page, the console errors it logs, and what is wrong on the pages seen."""

    def __init__(self, page: Any, panel: str) -> None:
        self.page = page
        self.panel = panel
        self.errors: list[str] = []
        self.problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(
            f"{page.url}: {m.text} ({m.location.get('url')})"))
        page.on("pageerror", lambda e: self.errors.append(f"{page.url}: {e}"))

    def visit(self, path: str, width: int, user: str) -> int:
        """Open the page, check it, and return its HTTP status."""
        response = self.page.goto(self.panel + path)
        self.page.wait_for_load_state("load")
        status = response.status if response is not None else 0
        doc, body, window = self.page.evaluate(WIDTH)
        if max(doc, body) > window:
            self.problems.append(f"{path} at {width} px is {max(doc, body)} px wide: "
                                 f"{self.page.evaluate(TOO_WIDE)}")
            self.page.screenshot(path=str(screenshot_path(
                f"overflow-{user}-{width}-{path.strip('/').replace('/', '-')}.png")),
                full_page=True)
        # Tables scroll inside their box rather than drop columns (only the jobs tables
        # leave out who queued a job and when).
        hidden = self.page.evaluate(HIDDEN_COLUMNS)
        if hidden:
            self.problems.append(f"{path} at {width} px hides the columns {hidden}")
        # Column headers are upper-cased by CSS ("Queued" reads QUEUED): read the words.
        self.page.evaluate("() => document.querySelectorAll('body *')"
                           ".forEach(e => { e.style.textTransform = 'none'; })")
        raw = raw_keys(self.page.inner_text("body"))
        if raw:
            self.problems.append(f"{path} shows raw keys {raw}")
        return int(status)

    def links(self) -> list[str]:
        """The panel pages this page links to (path and query, no fragment)."""
        found = []
        for href in self.page.evaluate(LINKS):
            parts = urlsplit(href)
            if f"{parts.scheme}://{parts.netloc}" != self.panel or NOT_PAGES.search(parts.path):
                continue
            found.append(parts.path + (f"?{parts.query}" if parts.query else ""))
        return found


@pytest.mark.parametrize("user", sorted(LANDINGS))
def test_every_page_fits_a_phone_and_a_desktop(user: str, phone: Any, stack: Stack,  # noqa: F811
                                               content: dict[str, str]) -> None:
    page = sign_in(phone, stack, user, LANDINGS[user])
    walk = Walk(page, stack.panel)
    # At the first width, follow every link the persona is shown, one page of each kind.
    start = urlsplit(page.url)
    queue = [start.path + (f"?{start.query}" if start.query else "")]
    seen: dict[str, str] = {}  # kind → the page walked
    refused: list[str] = []
    while queue and len(seen) < MAX_PAGES:
        path = queue.pop(0)
        if kind(path) in seen:
            continue
        # Of the pages of one kind, the richest (the pipeline's job) is walked when linked.
        path = next((p for p in queue if p in content.values() and kind(p) == kind(path)), path)
        seen[kind(path)] = path
        status = walk.visit(path, WIDTHS[0], user)
        if status != 200:
            refused.append(f"{path} answers {status} (linked for {user})")
            continue
        queue.extend(link for link in walk.links() if kind(link) not in seen)
    assert not refused, refused
    missing = allowed(user, content) - set(seen)
    assert not missing, f"{user}'s links never lead to {sorted(missing)}; walked {sorted(seen)}"
    # The same pages at the other widths.
    for width in WIDTHS[1:]:
        page.set_viewport_size({"width": width, "height": 900})
        for path in seen.values():
            walk.visit(path, width, user)
    assert not walk.problems, walk.problems
    assert not walk.errors, walk.errors


@pytest.mark.parametrize(("user", "path"), [("carol", "/audit/"), ("erin", "/approvals/new"),
                                            ("erin", "/score/")])
def test_a_refusal_page_fits_a_phone_and_says_what_is_needed(user: str, path: str, phone: Any,
                                                            stack: Stack) -> None:  # noqa: F811
    """Typed in by hand: the 403 page reads well at 390 px; the browser's only console error
    is the page's own status."""
    page = sign_in(phone, stack, user, LANDINGS[user])
    walk = Walk(page, stack.panel)
    assert walk.visit(path, 390, user) == 403
    assert not walk.problems, walk.problems
    assert "this needs the" in page.inner_text("main")
    assert walk.errors == [f"{page.url}: Failed to load resource: the server responded with a "
                           f"status of 403 (FORBIDDEN) ({page.url})"], walk.errors


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


def _open_dashboard(ctx: Any, stack: Stack) -> tuple[Any, Any]:  # noqa: F811
    """A new tab on the dashboard; the page and the answer to its live-update stream."""
    page = ctx.new_page()
    with page.expect_response(lambda r: urlsplit(r.url).path == "/jobs/events") as answer:
        page.goto(stack.panel + "/")
    return page, answer.value


def test_a_page_over_the_stream_cap_polls_without_a_console_error(phone: Any, stack: Stack,
                                                                  ) -> None:  # noqa: F811
    """Two tabs hold alice's two live streams; a third tab's stream is capped (one event, no
    error status), and that page polls the dashboard's state instead, logging no error."""
    sign_in(phone, stack, "alice", "/").close()
    held = []
    # Streams of the earlier tests' pages are freed when the server next writes to them
    # (within the keep-alive interval): open tabs until two hold a stream.
    deadline = time.monotonic() + 60
    while len(held) < 2:
        assert time.monotonic() < deadline, "two streams were never admitted"
        page, answer = _open_dashboard(phone, stack)
        if "retry-after" in answer.headers:
            page.close()
            time.sleep(1)
        else:
            held.append(page)
    third = phone.new_page()
    errors: list[str] = []
    third.on("console", lambda m: m.type == "error" and errors.append(m.text))
    third.on("pageerror", lambda e: errors.append(str(e)))
    polls: list[str] = []
    third.on("request", lambda r: urlsplit(r.url).path == "/dashboard/state"
             and polls.append(r.url))
    with third.expect_response(lambda r: urlsplit(r.url).path == "/jobs/events") as answer:
        third.goto(stack.panel + "/")
    capped = answer.value
    # (Chromium keeps no body of an event stream; tests/test_streams.py reads the event.)
    assert capped.status == 200 and capped.headers["content-type"].startswith(
        "text/event-stream") and "retry-after" in capped.headers
    # Polling: the state is fetched at once and then every 3 s (a page with a stream fetches
    # it once, when the stream opens).
    # (Playwright delivers the page's events only while it is called: wait in the page.)
    for _ in range(150):
        if len(polls) >= 3:
            break
        third.wait_for_timeout(100)
    assert len(polls) >= 3, f"the capped page did not poll: {polls}"
    assert not errors, errors
    for page in held:
        page.close()


def test_live_log_lines_read_as_they_do_after_a_reload(phone: Any, stack: Stack,  # noqa: F811
                                                      ) -> None:
    """A job followed live: the lines the stream brings have their time and the same markup
    as the lines the server renders after a reload."""
    page = sign_in(phone, stack, "alice", "/")
    job = page.evaluate(
        """async () => {
            const token = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch('/api/v1/jobs', {method: 'POST',
                headers: {'X-CSRFToken': token, 'Content-Type': 'application/json'},
                body: JSON.stringify({kind: 'selfcheck',
                                      params: {steps: 6, step_seconds: 1}})});
            return (await r.json()).id;
        }""")
    page.goto(f"{stack.panel}/jobs/{job}")
    rendered = page.locator("[data-log] li").count()
    page.wait_for_selector('[data-field="status"] .badge-succeeded', timeout=90_000)
    total = len(page.evaluate(
        f"async () => (await (await fetch('/api/v1/jobs/{job}?log=1')).json()).log"))
    page.wait_for_function(f"() => document.querySelectorAll('[data-log] li').length >= {total}")
    live = page.eval_on_selector_all("[data-log] li", "ls => ls.map(l => l.outerHTML)")
    assert len(live) == total and total > rendered, "no line arrived live"
    assert all(t.strip() for t in page.eval_on_selector_all(
        "[data-log] li time", "ts => ts.map(t => t.textContent)")), "a line has no time"
    page.reload()
    assert page.eval_on_selector_all("[data-log] li", "ls => ls.map(l => l.outerHTML)") == live


def test_sign_ins_and_sign_outs_are_audited_without_a_secret(phone: Any, stack: Stack,  # noqa: F811
                                                            ) -> None:
    page = sign_in(phone, stack, "bob", LANDINGS["bob"])
    session = [c["value"] for c in phone.cookies() if c["name"].endswith("session")]
    page.click("#sign-out")
    page.wait_for_load_state("load")
    page = sign_in(phone, stack, "bob", LANDINGS["bob"])
    page.goto(f"{stack.panel}/audit/?actor=bob&action=auth.")
    actions = page.locator("tbody tr").evaluate_all("rs => rs.map(r => r.dataset.action)")
    assert actions[:3] == ["auth.sign-in", "auth.sign-out", "auth.sign-in"], actions
    # What happened reads on a phone too: the details column is shown (the table scrolls).
    assert "MLOps.Approver, Score.Invoke" in page.locator("tbody tr").first.inner_text()
    html = page.content()
    for secret in [stack.password("bob"), *session]:
        assert secret not in html
    assert "eyJ" not in html, "a token reached the audit page"
    # The time column stays on one line, even on a phone.
    lines = page.eval_on_selector_all("tbody time", "ts => ts.map(t => t.getClientRects().length)")
    assert lines and set(lines) == {1}, lines
