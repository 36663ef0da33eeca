"""HTTP/1.1 conformance of the gateway's server and upstream pool, judged by h11.

h11 is an independent parser: every answer the server writes must parse with it as a client,
and every request the pool writes must parse with it as a server. Request smuggling shapes
(RFC 9112 §6, §11.2) sent to the server are answered 400 with Connection: close, the
connection is closed and the handler never sees them; malformed answers from a backend fail
the exchange (the proxy's 502) and the connection is never used again. Each test runs on
asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import h11
import pytest
from multidict import CIMultiDict

from app.gateway import http
from app.gateway.http import Response
from app.gateway.upstream import UpstreamPool, UpstreamProtocolError
from tests.gateway.test_http_server import BAD_ANSWERS, LOOPS, Served
from tests.gateway.test_upstream import Peer, RawServer, Run, Script

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# -- the server --------------------------------------------------------------------------------

@pytest.fixture(params=LOOPS)
def served(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """A server with default limits; after an error answer it closes within 0.2 s."""
    monkeypatch.setattr(http, "_LINGER_S", 0.2)
    server = Served(request.param, None, None)
    yield server
    server.close()


def exchange(served: Served, data: bytes, *, timeout: float = 3.0) -> tuple[bytes, bool]:
    """Send raw bytes; read until the server closes or goes quiet. Returns (bytes, closed)."""
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=timeout)
    received, closed = b"", False
    try:
        sock.sendall(data)
        sock.settimeout(0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break  # quiet and still open
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    finally:
        sock.close()
    return received, closed


def h11_answers(data: bytes, methods: list[str], closed: bool) -> list[dict[str, Any]]:
    """Parse the server's bytes with h11 as the client that sent requests with these methods.

    Fails the test if h11 finds the bytes invalid (our output must be valid HTTP/1.1).
    """
    client = h11.Connection(h11.CLIENT)
    answers: list[dict[str, Any]] = []
    pending = list(methods)
    client.send(h11.Request(method=pending[0], target="/", headers=[("Host", "t")]))
    client.send(h11.EndOfMessage())
    client.receive_data(data)
    if closed:
        client.receive_data(b"")
    current: dict[str, Any] = {}
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as exc:
            pytest.fail(f"h11 refused the server's output ({exc}): {data!r}")
        if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            break
        if isinstance(event, h11.InformationalResponse):
            answers.append({"status": event.status_code, "headers": dict(event.headers)})
        elif isinstance(event, h11.Response):
            current = {"status": event.status_code, "reason": event.reason,
                       "headers": {k.decode(): v.decode() for k, v in event.headers},
                       "body": b""}
        elif isinstance(event, h11.Data):
            current["body"] += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            answers.append(current)
            pending.pop(0)
            if not pending or client.their_state is not h11.DONE:
                break
            client.start_next_cycle()
            client.send(h11.Request(method=pending[0], target="/", headers=[("Host", "t")]))
            client.send(h11.EndOfMessage())
    return answers


HEAD_POST = b"POST /smuggle HTTP/1.1\r\nHost: t\r\n"
SMUGGLING: dict[str, bytes] = {
    "cl-then-te": HEAD_POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-then-cl": HEAD_POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "te-and-cl-zero": HEAD_POST + b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"
                      b"5\r\nGET /\r\n0\r\n\r\n",
    "two-lengths": HEAD_POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "two-equal-lengths": HEAD_POST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "length-list": HEAD_POST + b"Content-Length: 5, 5\r\n\r\nhello",
    "length-signed": HEAD_POST + b"Content-Length: +5\r\n\r\nhello",
    "length-hex": HEAD_POST + b"Content-Length: 0x5\r\n\r\nhello",
    "obs-fold": b"GET /smuggle HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n",
    "obs-fold-te": HEAD_POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "bare-lf-everywhere": b"GET /smuggle HTTP/1.1\nHost: t\n\n",
    "bare-lf-one-line": b"GET /smuggle HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n",
    "bare-cr": b"GET /smuggle HTTP/1.1\r\nHost: t\rX-A: b\r\n\r\n",
    "chunk-size-not-hex": HEAD_POST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk-size-negative": HEAD_POST + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n"
                           b"0\r\n\r\n",
    "chunk-size-overflow": HEAD_POST + b"Transfer-Encoding: chunked\r\n\r\n"
                           b"fffffffffffffffff5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-0x": HEAD_POST + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-space": HEAD_POST + b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    "chunk-data-overrun": HEAD_POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    "chunk-bare-lf": HEAD_POST + b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
    "name-space-before-colon": HEAD_POST + b"Content-Length : 5\r\n\r\nhello",
    "name-tab-before-colon": HEAD_POST + b"Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n",
    "name-with-space": b"GET /smuggle HTTP/1.1\r\nHost: t\r\nX A: b\r\n\r\n",
    "name-leading-space": b"GET /smuggle HTTP/1.1\r\nHost: t\r\n X-A: b\r\n\r\n",
    "te-not-chunked": HEAD_POST + b"Transfer-Encoding: gzip\r\n\r\nhello",
    "te-chunked-not-last": HEAD_POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-xchunked": HEAD_POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-twice": HEAD_POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"0\r\n\r\n",
    "te-in-http10": b"POST /smuggle HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"0\r\n\r\n",
    "nul-in-value": b"GET /smuggle HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n",
    "no-host": b"GET /smuggle HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET /smuggle HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "version-2": b"GET /smuggle HTTP/2.0\r\nHost: t\r\n\r\n",
    "version-1.2": b"GET /smuggle HTTP/1.2\r\nHost: t\r\n\r\n",
}


@pytest.mark.parametrize("data", list(SMUGGLING.values()), ids=list(SMUGGLING))
def test_smuggling_request_gets_400_close_and_never_reaches_the_handler(
        served: Served, data: bytes) -> None:
    """Each ambiguous or malformed request: one 400 (valid by h11), Connection: close, closed."""
    received, closed = exchange(served, data + b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
    assert closed, f"connection left open after {received!r}"
    answers = h11_answers(received, ["POST", "GET"], closed)
    assert [a["status"] for a in answers] == [400], received
    assert answers[0]["headers"]["connection"] == "close"
    assert answers[0]["headers"]["content-type"] == "application/problem+json"
    assert served.recorder.started == []


@pytest.mark.parametrize("smuggled", ["cl-then-te", "two-lengths", "obs-fold-te", "no-host"])
def test_smuggling_request_behind_a_valid_one_is_never_handled(served: Served,
                                                               smuggled: str) -> None:
    """Pipelined behind a valid request, the bad one stops the connection: the valid one is
    answered (Connection: close), the bad one never reaches the handler."""
    received, closed = exchange(served, b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n"
                                + SMUGGLING[smuggled])
    answers = h11_answers(received, ["GET", "POST"], closed)
    assert [a["status"] for a in answers] == [200] and closed
    assert answers[0]["headers"]["connection"] == "close"
    assert served.recorder.started == ["/first"]


def test_server_output_is_valid_http_by_h11(served: Served) -> None:
    """Pipelined answers of every shape the server writes parse with h11, in order."""
    requests = [
        ("GET", b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("HEAD", b"HEAD /fixed HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("GET", b"GET /empty HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("GET", b"GET /raise HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("GET", b"GET /bad-answer?kind=crlf-in-value HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("GET", b"GET /bad-answer?kind=crlf-in-reason HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("POST", b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n0\r\n\r\n"),
        ("GET", b"GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    ]
    received, closed = exchange(served, b"".join(data for _, data in requests))
    answers = h11_answers(received, [method for method, _ in requests], closed)
    assert [a["status"] for a in answers] == [200, 200, 204, 500, 502, 502, 200, 200]
    assert answers[1]["body"] == b"" and answers[1]["headers"]["content-length"] == "10"
    assert answers[-1]["headers"]["connection"] == "close" and closed


def test_interim_100_continue_is_valid_http_by_h11(served: Served) -> None:
    """The 100 Continue and the final answer parse with h11 as one exchange."""
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=3)
    try:
        sock.sendall(b"POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 5\r\n\r\n")
        interim = sock.recv(65536)
        sock.sendall(b"hello")
        final = b""
        while not final.endswith(b"}"):
            final += sock.recv(65536)
    finally:
        sock.close()
    answers = h11_answers(interim + final, ["POST"], False)
    assert [a["status"] for a in answers] == [100, 200]


@pytest.mark.parametrize("kind", sorted(BAD_ANSWERS))
def test_refused_handler_answer_is_replaced_by_valid_http(served: Served, kind: str) -> None:
    """What the encoder refuses is replaced by a 502 that h11 parses (nothing injected)."""
    received, closed = exchange(served, f"GET /bad-answer?kind={kind} HTTP/1.1\r\nHost: t\r\n"
                                        "Connection: close\r\n\r\n".encode())
    answers = h11_answers(received, ["GET"], closed)
    assert [a["status"] for a in answers] == [502]
    assert "set-cookie" not in answers[0]["headers"]


# -- the pool ----------------------------------------------------------------------------------

@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Iterator[Run]:
    """A fresh event loop of the parametrized kind."""
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if request.param == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        yield runner.run


@pytest.fixture
def serve() -> Iterator[Callable[[Script], RawServer]]:
    """Raw backends for a test, closed after it."""
    servers: list[RawServer] = []

    def factory(script: Script) -> RawServer:
        servers.append(RawServer(script))
        return servers[-1]

    yield factory
    for server in servers:
        server.close()


def first_then_ok(first: bytes, *, pause: float = 0.0, extra: bytes = b"") -> Script:
    """Connection 1 answers its first request with `first` (then `extra` after a pause);
    every other answer is a plain OK."""
    def script(peer: Peer) -> None:
        while peer.read_request() is not None:
            if peer.number == 1 and peer.served == 1:
                peer.send(first)
                if extra:
                    time.sleep(pause)
                    peer.send(extra)
            else:
                peer.send(OK)
    return script


def pool() -> UpstreamPool:
    """A pool for plain-http backends."""
    return UpstreamPool(ssl_context=ssl.create_default_context())


MALFORMED: dict[str, bytes] = {
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\n",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
    "two-equal-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    "length-list": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
    "length-signed": b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
    "obs-fold": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\r\n b\r\n\r\nok",
    "bare-lf-everywhere": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "bare-lf-one-line": b"HTTP/1.1 200 OK\r\nContent-Length: 2\nX-A: b\r\n\r\nok",
    "bare-cr": b"HTTP/1.1 200 OK\r\nContent-Length: 2\rX-A: b\r\n\r\nok",
    "chunk-size-not-hex": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n"
                          b"0\r\n\r\n",
    "chunk-size-negative": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nok\r\n"
                           b"0\r\n\r\n",
    "chunk-size-overflow": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"fffffffffffffffff2\r\nok\r\n0\r\n\r\n",
    "chunk-size-0x": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nok\r\n"
                     b"0\r\n\r\n",
    "chunk-data-overrun": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n"
                          b"\r\n",
    "name-with-space": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX A: b\r\n\r\nok",
    "name-space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    "name-leading-space": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n X-A: b\r\n\r\nok",
    "nul-in-value": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: a\x00b\r\n\r\nok",
    "te-not-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
    "te-chunked-not-last": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\nok",
    "te-in-http10": b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive"
                    b"\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "status-four-digits": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    "version-2": b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("answer", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_answer_fails_and_the_connection_is_never_reused(
        run: Run, serve: Callable[[Script], RawServer], answer: bytes) -> None:
    """A malformed or ambiguous answer is a protocol error (the proxy's 502); the next
    request goes on a new connection and gets its own answer."""
    srv = serve(first_then_ok(answer))
    p = pool()

    async def go() -> bytes:
        origin = p.origin(srv.url)
        with pytest.raises(UpstreamProtocolError):
            await p.request("GET", origin, "/first", (), b"", timeout_s=2)
        return (await p.request("GET", origin, "/second", (), b"", timeout_s=2)).body

    assert run(go()) == b"ok"
    assert srv.accepted == 2
    assert [number for number, _ in srv.requests] == [1, 2]
    p.close()


@pytest.mark.parametrize(("extra", "pause"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil", 0.0),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nevil", 0.0),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nevil", 0.2),
    (b"GARBAGE", 0.2),
], ids=["second-answer", "partial-second-answer", "answer-while-idle", "garbage-while-idle"])
def test_bytes_beyond_the_answer_retire_the_connection(
        run: Run, serve: Callable[[Script], RawServer], extra: bytes, pause: float) -> None:
    """A backend that answers twice (or sends bytes while idle) is never asked again on that
    connection: its extra bytes would be read as the next request's answer (desync)."""
    srv = serve(first_then_ok(OK, pause=pause, extra=extra))
    p = pool()

    async def go() -> list[bytes]:
        origin = p.origin(srv.url)
        first = await p.request("GET", origin, "/first", (), b"", timeout_s=2)
        await asyncio.sleep(pause + 0.1)  # the extra bytes have arrived
        second = await p.request("GET", origin, "/second", (), b"", timeout_s=2)
        return [first.body, second.body]

    assert run(go()) == [b"ok", b"ok"]
    assert srv.accepted == 2
    p.close()


def test_requests_from_the_pool_are_valid_http_by_h11(
        run: Run, serve: Callable[[Script], RawServer]) -> None:
    """What the pool writes parses with h11 as a server: line, Host, headers, body framing."""
    srv = serve(first_then_ok(OK))
    p = pool()

    async def go() -> None:
        base = p.origin(f"{srv.url}/prefix/")
        await p.request("POST", base, "/score?x=1&y=%20", (("X-Trace", "t1"),
                        ("Content-Type", "application/json")), b'{"a": 1}', timeout_s=2)
        await p.request("GET", base, "/health", (("Accept", "*/*"),), b"", timeout_s=2)
        await p.request("PUT", base, "/empty", (), b"", timeout_s=2)
        await p.request("DELETE", base, "/item", (("X-Empty", ""),), b"", timeout_s=2)

    run(go())
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(b"".join(srv.bodies()))
    seen: list[tuple[str, str, dict[str, str], bytes]] = []
    body = b""
    while len(seen) < 4:
        event = parser.next_event()
        assert event is not h11.NEED_DATA, f"h11 wanted more after {seen}"
        if isinstance(event, h11.Request):
            request = event
            body = b""
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            seen.append((request.method.decode(), request.target.decode(),
                         {k.decode(): v.decode() for k, v in request.headers}, body))
            parser.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
            parser.send(h11.EndOfMessage())
            parser.start_next_cycle()
    host = f"127.0.0.1:{srv.port}"
    assert [(m, t, b) for m, t, _, b in seen] == [
        ("POST", "/prefix/score?x=1&y=%20", b'{"a": 1}'), ("GET", "/prefix/health", b""),
        ("PUT", "/prefix/empty", b""), ("DELETE", "/prefix/item", b"")]
    assert all(headers["host"] == host for _, _, headers, _ in seen)
    assert seen[0][2]["content-length"] == "8" and seen[0][2]["x-trace"] == "t1"
    assert seen[2][2]["content-length"] == "0" and "content-length" not in seen[1][2]
    assert seen[3][2]["x-empty"] == ""
    p.close()


def test_status_code_that_is_not_three_digits_is_refused() -> None:
    """encode_response refuses a bad status code instead of writing an invalid status line."""
    with pytest.raises(http.InvalidMessage):
        http.encode_response(Response(20, b"x", CIMultiDict()), keep_alive=True)
