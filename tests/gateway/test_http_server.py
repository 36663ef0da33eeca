"""app.gateway.http.HttpServer against real loopback sockets, driven byte by byte.

Every test runs on asyncio's loop and on uvloop (what the gateway uses in production).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

import pytest
from multidict import CIMultiDict

from app.gateway import http
from app.gateway.app import server_ssl_context
from app.gateway.http import HttpServer, Request, Response, ServerLimits
from app.pki import ensure_tls

T = TypeVar("T")
LOOPS = ["asyncio", "uvloop"]
INJECTED = "Set-Cookie: session=attacker"
# answers a handler may build (e.g. from a policy) that must never reach the wire as they are
BAD_ANSWERS: dict[str, Response] = {
    "crlf-in-value": Response(200, b"x", CIMultiDict({"X-Note": f"a\r\n{INJECTED}"})),
    "lf-in-value": Response(200, b"x", CIMultiDict({"X-Note": f"a\n{INJECTED}"})),
    "cr-in-value": Response(200, b"x", CIMultiDict({"X-Note": "a\rb"})),
    "nul-in-value": Response(200, b"x", CIMultiDict({"X-Note": "a\x00b"})),
    "space-in-name": Response(200, b"x", CIMultiDict({"X Note": "1"})),
    "crlf-in-name": Response(200, b"x", CIMultiDict({f"{INJECTED}\r\nX-Note": "1"})),
    "empty-name": Response(200, b"x", CIMultiDict({"": "1"})),
    "crlf-in-reason": Response(200, b"x", reason=f"OK\r\n{INJECTED}"),
    "lf-in-reason": Response(418, b"x", reason=f"teapot\n{INJECTED}"),
    "not-latin-1": Response(200, b"x", CIMultiDict({"X-Note": "\u20ac"})),
}


def _loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


@dataclass
class Recorder:
    """The test handler: echoes the request, and has slow, failing and fixed routes."""

    started: list[str] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)

    async def handle(self, request: Request) -> Response:
        """Route by path; the default echoes the request as JSON."""
        self.started.append(request.path)
        params = parse_qs(request.query_string)
        if request.path == "/slow":
            try:
                await asyncio.sleep(float(params["s"][0]))
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        elif request.path == "/raise":
            raise RuntimeError("handler bug")
        elif request.path == "/empty":
            return Response(204, b"dropped", CIMultiDict({"X-Empty": "1"}))
        elif request.path == "/fixed":
            return Response(200, b"0123456789", CIMultiDict({"Content-Type": "text/plain"}))
        elif request.path == "/bad-answer":
            return BAD_ANSWERS[params["kind"][0]]
        echo = {"method": request.method, "path": request.path, "query": request.query_string,
                "body": request.body.decode("latin-1"), "scheme": request.scheme,
                "keep_alive": request.keep_alive,
                "headers": {k: request.headers[k] for k in ("X-Echo", "Host", "Expect")
                            if k in request.headers}}
        # framing headers from a handler must be replaced by the server's own
        return Response(200, json.dumps(echo).encode(), CIMultiDict(
            {"Content-Type": "application/json", "Content-Length": "999",
             "Connection": "keep-alive"}))

    def wait_started(self, path: str, timeout: float = 2) -> None:
        """Block until the handler has started on path."""
        deadline = time.monotonic() + timeout
        while path not in self.started:
            assert time.monotonic() < deadline, f"{path} never reached the handler"
            time.sleep(0.005)


class Served:
    """An HttpServer listening on 127.0.0.1:0 on its own event loop thread."""

    def __init__(self, kind: str, limits: ServerLimits | None,
                 ssl_ctx: ssl.SSLContext | None) -> None:
        self.recorder = Recorder()
        self.loop = _loop_factory(kind)()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = HttpServer(self.recorder.handle, limits)
        self.clients: list[Client] = []
        self.port = self.run(self.server.start("127.0.0.1", 0, ssl_ctx))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Close the test's client sockets, stop the server (if a test did not) and the loop."""
        for client in self.clients:
            client.close()
        try:
            self.run(self.server.stop(1.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()


@dataclass
class Reply:
    """One parsed response."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


class Client:
    """A blocking socket to the server with a buffer, so the test controls every byte."""

    def __init__(self, port: int, ctx: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=3)
        self.sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1") if ctx else sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        """Send raw bytes."""
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"server closed the connection; unparsed: {self.buf!r}")
        self.buf += chunk

    def reply(self, *, head: bool = False) -> Reply:
        """Read exactly one response (no body after HEAD, 1xx, 204 or 304)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        version, status, reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers: dict[str, str] = {}
        for line in lines:
            name, value = line.split(":", 1)
            assert name.lower() not in headers, f"duplicate header {name}"
            headers[name.lower()] = value.strip()
        code = int(status)
        length = 0 if head or code < 200 or code in (204, 304) else int(
            headers["content-length"])
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return Reply(code, reason, headers, body)

    def closed_within(self, seconds: float) -> float:
        """Wait for the server to close (EOF or reset) with no further bytes; return the wait."""
        assert self.buf == b"", f"unexpected bytes {self.buf!r}"
        started = time.monotonic()
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        except TimeoutError:
            raise AssertionError(f"still open after {seconds} s") from None
        assert data == b"", f"unexpected bytes {data!r}"
        return time.monotonic() - started

    def silent_for(self, seconds: float) -> None:
        """Assert that nothing arrives (and the connection stays open) for a while."""
        self.sock.settimeout(seconds)
        with pytest.raises(TimeoutError):
            data = self.sock.recv(65536)
            raise AssertionError(f"unexpected {data!r}")

    def close(self) -> None:
        """Close the client socket."""
        self.sock.close()


ServeFactory = Callable[..., Served]


@pytest.fixture(params=LOOPS)
def serve(request: pytest.FixtureRequest) -> Iterator[ServeFactory]:
    """Start servers (limits and TLS per test) on the parametrized loop; stop them after."""
    started: list[Served] = []

    def factory(limits: ServerLimits | None = None,
                ssl_ctx: ssl.SSLContext | None = None) -> Served:
        served = Served(request.param, limits, ssl_ctx)
        started.append(served)
        return served

    yield factory
    for served in started:
        served.close()


@pytest.fixture
def served(serve: ServeFactory) -> Served:
    """A server with default limits."""
    return serve()


def connect(served: Served, ctx: ssl.SSLContext | None = None) -> Client:
    """A client connection to the server (closed at teardown)."""
    client = Client(served.port, ctx)
    served.clients.append(client)
    return client


def get(path: str, extra: str = "") -> bytes:
    """A minimal GET request."""
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def test_keep_alive_serves_two_requests_on_one_connection(served: Served) -> None:
    """Two requests on one connection get two complete answers; the connection stays open."""
    c = connect(served)
    c.send(get("/a?x=1", "X-Echo: one\r\n"))
    first = c.reply()
    body = b'{"k": "v"}'
    c.send(b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    second = c.reply()
    assert (first.status, second.status) == (200, 200)
    assert first.json() == {"method": "GET", "path": "/a", "query": "x=1", "body": "",
                            "scheme": "http", "keep_alive": True,
                            "headers": {"X-Echo": "one", "Host": "t"}}
    assert second.json()["method"] == "POST" and second.json()["body"] == body.decode()
    # the server's own framing: exact Content-Length, a Date, no Connection header
    assert first.headers["content-length"] == str(len(first.body))
    assert "date" in first.headers and "connection" not in first.headers
    c.silent_for(0.1)
    c.close()


def test_pipelined_requests_answered_in_order(served: Served) -> None:
    """Two requests in one send: the slow first one is answered before the fast second one."""
    c = connect(served)
    c.send(get("/slow?s=0.3") + get("/fast"))
    first, second = c.reply(), c.reply()
    assert (first.status, first.json()["path"]) == (200, "/slow")
    assert (second.status, second.json()["path"]) == (200, "/fast")
    assert served.recorder.started == ["/slow", "/fast"]
    c.close()


def test_many_pipelined_requests_pause_and_resume_reading(served: Served) -> None:
    """40 requests in one send (beyond the 16 queued before reading pauses) all come back."""
    c = connect(served)
    c.send(b"".join(get(f"/p{i}") for i in range(40)))
    paths = [c.reply().json()["path"] for _ in range(40)]
    assert paths == [f"/p{i}" for i in range(40)]
    c.send(get("/after"))
    assert c.reply().json()["path"] == "/after"
    c.close()


def test_connection_close_request_closes_after_the_answer(served: Served) -> None:
    """A request with Connection: close gets its answer marked close, then the server closes."""
    c = connect(served)
    c.send(get("/bye", "Connection: close\r\n") + get("/never"))
    reply = c.reply()
    assert reply.status == 200 and reply.json()["keep_alive"] is False
    assert reply.headers["connection"] == "close"
    c.closed_within(2)
    assert served.recorder.started == ["/bye"]


def test_http10_request_closes_after_the_answer(served: Served) -> None:
    """An HTTP/1.0 request (no keep-alive) is answered with Connection: close, then closed."""
    c = connect(served)
    c.send(b"GET /old HTTP/1.0\r\n\r\n")
    reply = c.reply()
    assert reply.status == 200 and reply.json()["path"] == "/old"
    assert reply.headers["connection"] == "close"
    c.closed_within(2)


def test_chunked_request_body_is_reassembled(served: Served) -> None:
    """A chunked body sent in pieces reaches the handler whole; the connection stays usable."""
    c = connect(served)
    c.send(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for piece in (b"3\r\nhel\r\n", b"3\r\nlo \r\n", b"5\r\nworld\r\n", b"0\r\n\r\n"):
        c.send(piece)
        time.sleep(0.01)
    reply = c.reply()
    assert reply.status == 200 and reply.json()["body"] == "hello world"
    c.send(get("/next"))
    assert c.reply().json()["path"] == "/next"
    c.close()


def test_expect_100_continue_is_answered_before_the_body(served: Served) -> None:
    """With Expect: 100-continue the server sends 100 Continue first, then the final answer."""
    c = connect(served)
    c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    interim = c.reply()
    assert (interim.status, interim.reason, interim.headers) == (100, "Continue", {})
    assert c.buf == b""
    c.send(b"hello")
    reply = c.reply()
    assert reply.status == 200 and reply.json()["body"] == "hello"
    c.close()


def test_expect_100_with_too_large_length_gets_413_not_100(serve: ServeFactory) -> None:
    """Expect: 100-continue with a Content-Length over the limit is answered 413, never 100."""
    served = serve(ServerLimits(max_body_bytes=1024))
    c = connect(served)
    c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2048\r\n\r\n")
    reply = c.reply()
    assert reply.status == 413 and reply.headers["connection"] == "close"
    assert served.recorder.started == []
    c.close()


def test_headers_over_the_limit_get_431_and_the_connection_closes(
        serve: ServeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Headers larger than max_header_bytes are answered 431 problem+json, then closed."""
    monkeypatch.setattr(http, "_LINGER_S", 0.3)
    served = serve(ServerLimits(max_header_bytes=1024))
    c = connect(served)
    c.send(get("/big", "X-Big: " + "a" * 2000 + "\r\n"))
    reply = c.reply()
    assert reply.status == 431 and reply.headers["connection"] == "close"
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json()["status"] == 431
    c.closed_within(2)
    assert served.recorder.started == []


def test_unterminated_header_line_over_the_limit_gets_431(serve: ServeFactory) -> None:
    """A header line that never ends is cut off at the limit (431), not buffered until 408."""
    served = serve(ServerLimits(max_header_bytes=1024))
    c = connect(served)
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
    started = time.monotonic()
    for _ in range(6):  # separate sends: the line grows across reads, well past the limit
        c.send(b"X-Big: " + b"a" * 1000)
        time.sleep(0.02)
    reply = c.reply()
    assert reply.status == 431
    assert time.monotonic() - started < 0.9  # answered at once, not by the 1 s sweeper
    c.close()


def test_body_over_limit_gets_413_while_the_client_still_sends(serve: ServeFactory) -> None:
    """A too-large Content-Length is answered 413 at once; the rest of the body is discarded."""
    served = serve(ServerLimits(max_body_bytes=64 * 1024))
    total = 4 * 1024 * 1024
    c = connect(served)
    c.send(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % total)
    c.send(b"x" * 128 * 1024)
    reply = c.reply()  # read while the body is far from complete
    assert reply.status == 413 and reply.headers["connection"] == "close"
    assert reply.json()["detail"] == "The request body is too large."
    # the server reads and drops the rest instead of resetting the connection under the client
    c.send(b"x" * (total - 128 * 1024))
    assert served.recorder.started == []
    c.close()


def test_chunked_body_over_limit_gets_413(serve: ServeFactory) -> None:
    """A chunked body (no Content-Length) is cut off with 413 once it passes the limit."""
    served = serve(ServerLimits(max_body_bytes=1024))
    c = connect(served)
    c.send(b"POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    c.send(b"400\r\n" + b"a" * 1024 + b"\r\n")  # exactly the limit: still accepted
    c.send(b"1\r\nb\r\n")
    reply = c.reply()
    assert reply.status == 413 and reply.headers["connection"] == "close"
    assert served.recorder.started == []
    c.close()


def test_garbage_gets_400_problem_json(served: Served) -> None:
    """Bytes that are not HTTP get a 400 problem+json and the connection is closed."""
    c = connect(served)
    c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
    reply = c.reply()
    assert reply.status == 400 and reply.headers["connection"] == "close"
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json() == {"type": "about:blank", "title": "Bad Request", "status": 400,
                            "detail": "The request is not valid HTTP/1.1."}
    assert served.recorder.started == []
    c.close()


@pytest.mark.parametrize("request_bytes", [
    get("/ws", "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
], ids=["websocket", "connect"])
def test_protocol_upgrade_gets_400_and_never_reaches_the_handler(
        served: Served, request_bytes: bytes) -> None:
    """A protocol upgrade (websocket, CONNECT) is refused with 400; the handler never runs."""
    c = connect(served)
    c.send(request_bytes)
    reply = c.reply()
    assert reply.status == 400 and reply.headers["connection"] == "close"
    assert reply.json()["detail"] == "Protocol upgrades are not supported."
    assert served.recorder.started == []
    c.close()


def test_slow_request_gets_408_after_request_timeout(serve: ServeFactory) -> None:
    """Headers not finished within request_timeout_s (1 s) get a 408, swept within ~1 s more."""
    served = serve(ServerLimits(request_timeout_s=1))
    c = connect(served)
    started = time.monotonic()
    c.send(b"GET /slowloris HTTP/1.1\r\nHost: t\r\n")
    reply = c.reply()
    waited = time.monotonic() - started
    assert reply.status == 408 and reply.headers["connection"] == "close"
    assert reply.json()["status"] == 408
    assert 1.0 <= waited < 2.5
    assert served.recorder.started == []
    c.close()


def test_slow_request_gets_one_408_then_the_connection_closes(
        serve: ServeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweeper answers a timed-out request once, not again on every tick while lingering."""
    monkeypatch.setattr(http, "_LINGER_S", 1.2)  # longer than a sweeper tick
    served = serve(ServerLimits(request_timeout_s=0.1))
    c = connect(served)
    c.send(b"GET /slowloris HTTP/1.1\r\n")
    assert c.reply().status == 408
    c.closed_within(2)


def test_idle_keep_alive_connection_is_closed_after_the_timeout(serve: ServeFactory) -> None:
    """An idle keep-alive connection is closed between keepalive_timeout_s (1 s) and a tick more."""
    served = serve(ServerLimits(keepalive_timeout_s=1))
    c = connect(served)
    c.send(get("/once"))
    assert c.reply().status == 200
    assert 0.9 <= c.closed_within(3) < 2.5


def test_head_gets_content_length_but_no_body(served: Served) -> None:
    """HEAD gets the GET's Content-Length and no body: the next answer starts right after."""
    c = connect(served)
    c.send(b"HEAD /fixed HTTP/1.1\r\nHost: t\r\n\r\n" + get("/fixed"))
    head = c.reply(head=True)
    assert head.status == 200 and head.headers["content-length"] == "10" and head.body == b""
    assert c.buf == b"" or c.buf.startswith(b"HTTP/1.1 200 OK\r\n")
    after = c.reply()
    assert after.body == b"0123456789"
    c.close()


def test_204_has_no_body_and_no_content_length(served: Served) -> None:
    """A 204 is sent without Content-Length or body even if the handler gave one."""
    c = connect(served)
    c.send(get("/empty") + get("/fixed"))
    empty = c.reply()
    assert empty.status == 204 and empty.headers["x-empty"] == "1"
    assert "content-length" not in empty.headers and empty.body == b""
    assert c.reply().body == b"0123456789"  # nothing stray between the two answers
    c.close()


def test_handler_exception_gets_500_and_the_server_keeps_serving(served: Served) -> None:
    """A handler that raises yields a 500 problem+json; that and other connections still work."""
    c = connect(served)
    c.send(get("/raise"))
    reply = c.reply()
    assert reply.status == 500
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json()["status"] == 500
    c.send(get("/same"))
    assert c.reply().json()["path"] == "/same"
    other = connect(served)
    other.send(get("/other"))
    assert other.reply().status == 200
    c.close()
    other.close()


def test_path_is_percent_decoded_and_query_kept_raw(served: Served) -> None:
    """Request.path is percent-decoded (UTF-8); Request.query_string keeps the raw bytes."""
    c = connect(served)
    c.send(get("/a%20b/caf%C3%A9?q=%20x&y=a%2Bb"))
    echo = c.reply().json()
    assert echo["path"] == "/a b/café"
    assert echo["query"] == "q=%20x&y=a%2Bb"
    c.close()


def test_tls_serves_keep_alive_requests(serve: ServeFactory, tmp_path: Path) -> None:
    """Over TLS with the local CA the server answers two requests on one connection as https."""
    tls = ensure_tls(tmp_path)
    served = serve(ssl_ctx=server_ssl_context(tmp_path))
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    c = connect(served, ctx)
    c.send(get("/one"))
    first = c.reply()
    c.send(get("/two"))
    second = c.reply()
    assert first.json()["scheme"] == "https" and first.json()["path"] == "/one"
    assert second.status == 200 and second.json()["path"] == "/two"
    c.close()


def test_graceful_stop_finishes_in_flight_and_refuses_new(served: Served) -> None:
    """stop(): listening ends, idle connections close, the in-flight answer is sent with close."""
    idle = connect(served)
    idle.send(get("/idle"))
    assert idle.reply().status == 200
    busy = connect(served)
    busy.send(get("/slow?s=0.5"))
    served.recorder.wait_started("/slow")
    started = time.monotonic()
    stopping = asyncio.run_coroutine_threadsafe(served.server.stop(5.0), served.loop)
    served.run(asyncio.sleep(0))  # runs after stop()'s first step: the listener is closed
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", served.port), timeout=1).close()
    idle.closed_within(1)
    reply = busy.reply()
    assert reply.status == 200 and reply.json()["path"] == "/slow"
    assert reply.headers["connection"] == "close"
    busy.closed_within(1)
    stopping.result(2)
    assert time.monotonic() - started < 1.5  # it did not wait for the 5 s grace
    assert served.server.connections == set() and served.server.in_flight == 0


def test_stop_past_grace_aborts_the_request_and_returns(served: Served) -> None:
    """A request longer than grace_s is dropped (no answer, handler cancelled) at ~grace_s."""
    busy = connect(served)
    busy.send(get("/slow?s=30"))
    served.recorder.wait_started("/slow")
    started = time.monotonic()
    served.run(served.server.stop(0.5))
    assert 0.45 <= time.monotonic() - started < 1.2
    busy.closed_within(1)
    assert served.recorder.cancelled.wait(1)
    deadline = time.monotonic() + 1
    while served.server.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served.server.in_flight == 0 and served.server.connections == set()


@pytest.mark.parametrize("kind", sorted(BAD_ANSWERS))
def test_header_or_reason_that_would_split_the_answer_gets_502(served: Served,
                                                               kind: str) -> None:
    """CR/LF/NUL in a header value or reason, or a name that is no token, is never written.

    The client gets a 502 problem+json instead (no injected Set-Cookie), and the connection
    keeps working.
    """
    c = connect(served)
    c.send(get(f"/bad-answer?kind={kind}"))
    reply = c.reply()
    assert reply.status == 502, (reply.reason, reply.headers)
    assert reply.reason == "Bad Gateway"
    assert "set-cookie" not in reply.headers and "x-note" not in reply.headers
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.json()["status"] == 502
    assert c.buf == b""
    c.send(get("/after"))
    assert c.reply().json()["path"] == "/after"
    c.close()
