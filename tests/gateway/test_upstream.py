"""app.gateway.upstream.UpstreamPool against real loopback servers that send exact bytes.

The servers are plain sockets in threads, scripted per connection; the pool runs on asyncio's
loop and on uvloop (what the gateway uses in production).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from app.gateway.app import client_ssl_context, server_ssl_context
from app.gateway.upstream import (
    UpstreamBusy,
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamRequestInvalid,
    UpstreamResponse,
    UpstreamTimeout,
)
from app.pki import ensure_tls
from tests.gateway.conftest import free_port

T = TypeVar("T")
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Run(Protocol):
    """Runs a coroutine to completion on the test's event loop."""

    def __call__(self, coro: Coroutine[Any, Any, T]) -> T: ...


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Run]:
    """A fresh event loop of the parametrized kind."""
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if request.param == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        yield runner.run


class Peer:
    """One accepted connection, as seen by a server script."""

    def __init__(self, server: RawServer, sock: socket.socket, number: int) -> None:
        self.server = server
        self.sock = sock
        self.number = number  # 1 for the first connection the server accepted
        self.served = 0  # requests read on this connection
        self._buf = b""

    def read_request(self) -> bytes | None:
        """Read one request (head and Content-Length body); None if the client closed."""
        while b"\r\n\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buf += chunk
        head, rest = self._buf.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            rest += chunk
        request, self._buf = head + b"\r\n\r\n" + rest[:length], rest[length:]
        self.served += 1
        self.server.requests.append((self.number, request))
        return request

    def send(self, *parts: bytes, pause: float = 0.0) -> None:
        """Send bytes, optionally in pieces with a pause between them."""
        for part in parts:
            self.sock.sendall(part)
            if pause:
                time.sleep(pause)

    def reset(self) -> None:
        """Abort the connection with a TCP reset."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def hold(self) -> None:
        """Keep the connection open, silent, until the server is closed."""
        self.server.closing.wait(10)


Script = Callable[[Peer], None]


class RawServer:
    """A loopback TCP (or TLS) server running a script per accepted connection in a thread."""

    def __init__(self, script: Script, tls: ssl.SSLContext | None = None) -> None:
        self._script = script
        self._tls = tls
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self.requests: list[tuple[int, bytes]] = []  # (connection number, raw request)
        self.errors: list[BaseException] = []
        self.closing = threading.Event()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._spawn(self._accept)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                number = self.accepted
                self._socks.append(sock)
            self._spawn(self._serve, sock, number)

    def _serve(self, sock: socket.socket, number: int) -> None:
        try:
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_side=True)
            self._script(Peer(self, sock, number))
        except OSError as exc:  # includes ssl.SSLError
            self.errors.append(exc)
        finally:
            sock.close()

    def bodies(self) -> list[bytes]:
        """The raw requests received, in order."""
        return [raw for _, raw in self.requests]

    def close(self) -> None:
        """Stop accepting, wake every script, close every connection."""
        self.closing.set()
        with self._lock:
            socks = [self._sock, *self._socks]
        for sock in socks:  # shutdown, unlike close, wakes a thread blocked in accept or recv
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(2)
            assert not thread.is_alive(), "a server thread did not finish"


@pytest.fixture
def serve() -> Iterator[Callable[..., RawServer]]:
    """Start raw servers for a test and close them after it."""
    servers: list[RawServer] = []

    def factory(script: Script, tls: ssl.SSLContext | None = None) -> RawServer:
        server = RawServer(script, tls)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.close()


def pool(**kw: Any) -> UpstreamPool:
    """A pool with a default TLS context (plain http tests never use it)."""
    return UpstreamPool(ssl_context=kw.pop("ssl_context", ssl.create_default_context()), **kw)


async def call(p: UpstreamPool, base_url: str, target: str = "/", *, method: str = "GET",
               body: bytes = b"", headers: tuple[tuple[str, str], ...] = (),
               timeout_s: float = 2.0) -> UpstreamResponse:
    """One request through the pool."""
    return await p.request(method, p.origin(base_url), target, headers, body,
                           timeout_s=timeout_s)


def keep_alive(answer: bytes) -> Script:
    """A script answering every request on the connection with the same bytes."""
    def script(peer: Peer) -> None:
        while peer.read_request() is not None:
            peer.send(answer)
    return script


def test_sequential_requests_reuse_one_connection(run: Run, serve: Callable[..., RawServer]
                                                  ) -> None:
    """Three requests in a row travel over one accepted connection; close() releases it."""
    srv = serve(keep_alive(OK))
    p = pool()

    async def go() -> list[UpstreamResponse]:
        return [await call(p, srv.url, f"/r{i}") for i in range(3)]

    answers = run(go())
    assert [(a.status, a.body) for a in answers] == [(200, b"ok")] * 3
    assert answers[0].headers["Content-Length"] == "2"
    assert srv.accepted == 1
    assert [raw.split(b" ")[1] for raw in srv.bodies()] == [b"/r0", b"/r1", b"/r2"]
    p.close()


def test_request_line_host_prefix_and_content_length(run: Run, serve: Callable[..., RawServer]
                                                     ) -> None:
    """The base URL's path prefixes the target, Host names the origin, POST has Content-Length."""
    srv = serve(keep_alive(OK))
    p = pool()

    async def go() -> None:
        await call(p, f"{srv.url}/prefix/", "/score?x=1", method="POST", body=b'{"a":1}',
                   headers=(("X-Trace", "t1"),))
        await call(p, f"{srv.url}/prefix", "/score", method="POST")
        await call(p, f"{srv.url}/prefix", "/health")

    run(go())
    host = f"127.0.0.1:{srv.port}".encode()
    assert srv.bodies() == [
        b"POST /prefix/score?x=1 HTTP/1.1\r\nHost: " + host
        + b'\r\nX-Trace: t1\r\nContent-Length: 7\r\n\r\n{"a":1}',
        b"POST /prefix/score HTTP/1.1\r\nHost: " + host + b"\r\nContent-Length: 0\r\n\r\n",
        b"GET /prefix/health HTTP/1.1\r\nHost: " + host + b"\r\n\r\n",
    ]
    p.close()


def test_origin_host_header_defaults_and_ipv6() -> None:
    """origin(): default ports are left out of Host, IPv6 literals are bracketed, junk refused."""
    p = pool()
    assert p.origin("http://example.org:80/a/").host_header == "example.org"
    assert p.origin("https://example.org/b").port == 443
    assert p.origin("https://example.org:8443").host_header == "example.org:8443"
    six = p.origin("http://[::1]:8080/v1")
    assert (six.host, six.port, six.host_header, six.prefix) == ("::1", 8080, "[::1]:8080", "/v1")
    with pytest.raises(ValueError):
        p.origin("ftp://example.org/")


def test_chunked_answer_is_reassembled_and_connection_reused(
        run: Run, serve: Callable[..., RawServer]) -> None:
    """A chunked answer arriving in pieces is joined; the connection is reused afterwards."""
    def script(peer: Peer) -> None:
        while peer.read_request() is not None:
            peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                      b"lo\r\n6\r\n world\r\n", b"0\r\n\r\n", pause=0.01)

    srv = serve(script)
    p = pool()

    async def go() -> list[UpstreamResponse]:
        return [await call(p, srv.url), await call(p, srv.url)]

    answers = run(go())
    assert [a.body for a in answers] == [b"hello world", b"hello world"]
    assert srv.accepted == 1
    p.close()


def test_close_delimited_answer_ends_at_close_and_is_not_reused(
        run: Run, serve: Callable[..., RawServer]) -> None:
    """An answer without Content-Length ends when the server closes; the next uses a new one."""
    def script(peer: Peer) -> None:
        peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nX-Kind: eof\r\n\r\npart1-", b"part2", pause=0.02)

    srv = serve(script)
    p = pool()

    async def go() -> list[UpstreamResponse]:
        return [await call(p, srv.url), await call(p, srv.url)]

    answers = run(go())
    assert [(a.status, a.body, a.headers["X-Kind"]) for a in answers] == [
        (200, b"part1-part2", "eof")] * 2
    assert srv.accepted == 2
    p.close()


def test_interim_1xx_answers_are_skipped(run: Run, serve: Callable[..., RawServer]) -> None:
    """100 Continue and 103 Early Hints are skipped; the final answer's headers only."""
    def script(peer: Peer) -> None:
        while peer.read_request() is not None:
            peer.send(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n",
                      b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
                      b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\nX-Final: 1\r\n\r\ndone",
                      pause=0.01)

    srv = serve(script)
    p = pool()

    async def go() -> list[UpstreamResponse]:
        return [await call(p, srv.url, method="POST", body=b"x") for _ in range(2)]

    for answer in run(go()):
        assert (answer.status, answer.body) == (201, b"done")
        assert sorted(answer.headers) == ["Content-Length", "X-Final"]
    assert srv.accepted == 1
    p.close()


def test_204_and_304_without_length_complete_and_keep_the_connection(
        run: Run, serve: Callable[..., RawServer]) -> None:
    """204 and 304 carry no body: they complete at once and the connection is reused."""
    answers = iter([b"HTTP/1.1 204 No Content\r\nX-N: 1\r\n\r\n",
                    b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n", OK])

    def script(peer: Peer) -> None:
        while peer.read_request() is not None:
            peer.send(next(answers))

    srv = serve(script)
    p = pool()

    async def go() -> list[UpstreamResponse]:
        return [await call(p, srv.url, timeout_s=1) for _ in range(3)]

    assert [(a.status, a.body) for a in run(go())] == [(204, b""), (304, b""), (200, b"ok")]
    assert srv.accepted == 1
    p.close()


def test_refused_port_is_a_connect_error_after_two_attempts(
        run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listening: UpstreamConnectError after exactly two connection attempts."""
    port = free_port()
    attempts: list[tuple[Any, ...]] = []

    async def go() -> None:
        loop = asyncio.get_running_loop()
        real = loop.create_connection

        async def counting(*args: Any, **kw: Any) -> Any:  # a spy on the loop, not the pool
            attempts.append(args[1:3])
            return await real(*args, **kw)

        monkeypatch.setattr(loop, "create_connection", counting)
        await call(pool(), f"http://127.0.0.1:{port}")

    started = time.monotonic()
    with pytest.raises(UpstreamConnectError):
        run(go())
    assert attempts == [("127.0.0.1", port)] * 2
    assert time.monotonic() - started < 1


def test_no_answer_times_out_at_the_deadline(run: Run, serve: Callable[..., RawServer]) -> None:
    """A server that never answers: UpstreamTimeout at ~timeout_s; that connection is dropped."""
    def script(peer: Peer) -> None:
        while peer.read_request() is not None:
            if peer.number == 1:
                peer.hold()
                return
            peer.send(OK)

    srv = serve(script)
    p = pool()

    async def go() -> tuple[float, UpstreamResponse]:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await call(p, srv.url, timeout_s=0.3)
        waited = time.monotonic() - started
        return waited, await call(p, srv.url)

    waited, answer = run(go())
    assert 0.29 <= waited < 0.8
    assert answer.body == b"ok" and srv.accepted == 2 and len(srv.requests) == 2
    p.close()


def test_connect_that_hangs_times_out(run: Run) -> None:
    """A listener whose backlog is full never completes a connect: UpstreamTimeout in time."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        while True:  # fill the accept queue until a connect no longer completes
            filler = socket.socket()
            fillers.append(filler)
            filler.settimeout(0.2)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                break
            assert len(fillers) < 16, "the listener's backlog did not fill"
        p = pool(connect_timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            run(call(p, f"http://127.0.0.1:{port}", timeout_s=5))
        assert 0.29 <= time.monotonic() - started < 0.8
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_garbage_answer_is_a_protocol_error(run: Run, serve: Callable[..., RawServer]) -> None:
    """Bytes that are not an HTTP answer: UpstreamProtocolError, and the request is sent once."""
    def script(peer: Peer) -> None:
        peer.read_request()
        peer.send(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        peer.hold()

    srv = serve(script)
    with pytest.raises(UpstreamProtocolError):
        run(call(pool(), srv.url))
    assert srv.accepted == 1 and len(srv.requests) == 1


@pytest.mark.parametrize("ending", ["reset", "close"])
def test_connection_lost_mid_body_is_a_protocol_error(
        run: Run, serve: Callable[..., RawServer], ending: str) -> None:
    """A reset or close after part of a Content-Length body: UpstreamProtocolError, sent once."""
    def script(peer: Peer) -> None:
        peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        time.sleep(0.05)
        if ending == "reset":
            peer.reset()

    srv = serve(script)
    with pytest.raises(UpstreamProtocolError):
        run(call(pool(), srv.url, method="POST", body=b"{}"))
    assert srv.accepted == 1 and len(srv.requests) == 1


@pytest.mark.parametrize("framing", [b"Content-Length: 4096\r\n", b"Transfer-Encoding: chunked\r\n",
                                     b""], ids=["content-length", "chunked", "close-delimited"])
def test_answer_over_max_body_is_a_protocol_error(
        run: Run, serve: Callable[..., RawServer], framing: bytes) -> None:
    """A body larger than max_body_bytes fails with UpstreamProtocolError, whatever the framing."""
    body = b"b" * 4096
    if framing.startswith(b"Transfer"):
        body = b"1000\r\n" + body + b"\r\n0\r\n\r\n"

    def script(peer: Peer) -> None:
        peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n" + body)
        peer.hold()

    srv = serve(script)
    with pytest.raises(UpstreamProtocolError, match="too large"):
        run(call(pool(max_body_bytes=1024), srv.url))
    assert len(srv.requests) == 1


def test_server_closing_the_idle_connection_is_invisible(
        run: Run, serve: Callable[..., RawServer]) -> None:
    """The server closes a pooled connection after answering; later requests still succeed."""
    def script(peer: Peer) -> None:
        peer.read_request()
        peer.send(OK)  # keep-alive answer, then the server drops the connection anyway

    srv = serve(script)
    p = pool()

    async def go() -> list[UpstreamResponse]:
        first = await call(p, srv.url, "/1")
        await asyncio.sleep(0.05)  # the loop sees the close: the connection leaves the pool
        second = await call(p, srv.url, "/2")
        # here the close is not seen before the next send (the loop is kept busy): the request
        # goes out on the dead connection, fails before any answer byte and is sent again
        time.sleep(0.05)
        third = await call(p, srv.url, "/3")
        return [first, second, third]

    assert [a.body for a in run(go())] == [b"ok"] * 3
    assert [raw.split(b" ")[1] for raw in srv.bodies()] == [b"/1", b"/2", b"/3"]
    assert srv.accepted == 3


@pytest.mark.parametrize("pooled", [1, 2])
def test_stale_pooled_connection_is_retried_once_on_a_fresh_one(
        run: Run, serve: Callable[..., RawServer], pooled: int) -> None:
    """A reused connection closed on the next request (no answer) is retried on a new one."""
    def script(peer: Peer) -> None:
        while peer.read_request() is not None:
            if peer.number <= pooled and peer.served > 1:
                return  # the keep-alive race: the server closes as the request arrives
            time.sleep(0.05)  # so that concurrent first requests need separate connections
            peer.send(OK)

    srv = serve(script)
    p = pool()

    async def go() -> UpstreamResponse:
        await asyncio.gather(*(call(p, srv.url, "/warm") for _ in range(pooled)))
        return await call(p, srv.url, "/score", method="POST", body=b"{}")

    answer = run(go())
    assert answer.body == b"ok"
    assert srv.accepted == pooled + 1
    # sent on one stale connection, then once on the new one (never on another pooled one)
    score = [n for n, raw in srv.requests if b"/score" in raw]
    assert len(score) == 2 and score[0] <= pooled and score[1] == pooled + 1


def test_fresh_connection_closed_before_the_answer_is_not_resent(
        run: Run, serve: Callable[..., RawServer]) -> None:
    """A new connection closed with no answer is a protocol error; the POST is not sent twice."""
    def script(peer: Peer) -> None:
        peer.read_request()  # e.g. the backend crashed while scoring: close, no answer

    srv = serve(script)
    with pytest.raises(UpstreamProtocolError):
        run(call(pool(), srv.url, "/score", method="POST", body=b"{}"))
    assert srv.accepted == 1 and len(srv.requests) == 1


def test_connection_close_answer_is_not_reused(run: Run, serve: Callable[..., RawServer]) -> None:
    """An answer with Connection: close makes the pool close that connection and open another."""
    seen_close: list[int] = []

    def script(peer: Peer) -> None:
        peer.read_request()
        peer.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        if peer.read_request() is None:  # the server keeps it open; the client must close
            seen_close.append(peer.number)

    srv = serve(script)
    p = pool()

    async def go() -> list[UpstreamResponse]:
        return [await call(p, srv.url), await call(p, srv.url)]

    assert [a.body for a in run(go())] == [b"ok", b"ok"]
    assert srv.accepted == 2 and len(srv.requests) == 2
    deadline = time.monotonic() + 1
    while len(seen_close) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(seen_close) == [1, 2]  # the pool closed each one


def test_https_origin_with_the_local_ca(run: Run, serve: Callable[..., RawServer],
                                        tmp_path: Path) -> None:
    """An https origin served with the local CA's certificate works and is reused."""
    tls = ensure_tls(tmp_path)
    srv = serve(keep_alive(OK), tls=server_ssl_context(tmp_path))
    p = pool(ssl_context=client_ssl_context(tls.ca_cert))
    base = f"https://127.0.0.1:{srv.port}/tls"

    async def go() -> list[UpstreamResponse]:
        return [await call(p, base, "/a"), await call(p, base, "/b")]

    assert [a.body for a in run(go())] == [b"ok", b"ok"]
    assert srv.accepted == 1
    assert srv.bodies()[0].startswith(
        f"GET /tls/a HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n".encode())
    p.close()


def test_untrusted_tls_certificate_is_a_connect_error(
        run: Run, serve: Callable[..., RawServer], tmp_path: Path) -> None:
    """A TLS server whose CA the pool does not trust: UpstreamConnectError, nothing sent."""
    ensure_tls(tmp_path)
    srv = serve(keep_alive(OK), tls=server_ssl_context(tmp_path))
    p = pool()  # system CAs only
    with pytest.raises(UpstreamConnectError, match="TLS failed"):
        run(call(p, f"https://127.0.0.1:{srv.port}"))
    assert srv.accepted == 1 and srv.requests == []


@pytest.mark.parametrize(("method", "target", "headers"), [
    ("GET", "/", (("X-Key", "k\r\nX-Injected: 1"),)),
    ("GET", "/", (("X-Key", "k\nX-Injected: 1"),)),
    ("GET", "/", (("X-Key", "k\rX"),)),
    ("GET", "/", (("X-Key", "k\x00"),)),
    ("GET", "/", (("X Key", "k"),)),
    ("GET", "/", (("X-Key:", "k"),)),
    ("GET", "/", (("X-Key", "\u20ac"),)),
    ("GET", "/a b", ()),
    ("GET", "/a\r\nX-Injected: 1", ()),
    ("GET /x HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET", "/", ()),
], ids=["crlf-value", "lf-value", "cr-value", "nul-value", "space-name", "colon-name",
        "not-latin-1", "space-target", "crlf-target", "crlf-method"])
def test_request_that_would_not_be_valid_http_is_refused_before_sending(
        run: Run, serve: Callable[..., RawServer], method: str, target: str,
        headers: tuple[tuple[str, str], ...]) -> None:
    """A header with CR/LF/NUL, a name that is no token or a bad request line is never sent."""
    srv = serve(keep_alive(OK))
    p = pool()

    async def go() -> None:
        with pytest.raises(UpstreamRequestInvalid):
            await call(p, srv.url, target, method=method, headers=headers)
        answer = await call(p, srv.url, "/fine", headers=(("X-Key", "k"),))
        assert answer.status == 200

    run(go())
    assert [raw.split(b"\r\n")[0] for raw in srv.bodies()] == [b"GET /fine HTTP/1.1"]
    p.close()


def gated(answer: bytes, gate: threading.Event) -> Script:
    """A keep-alive script that holds each answer until the test opens the gate."""
    def script(peer: Peer) -> None:
        while peer.read_request() is not None:
            gate.wait(10)
            peer.send(answer)
    return script


def test_connection_limit_refuses_a_burst_beyond_it_after_the_wait(
        run: Run, serve: Callable[..., RawServer]) -> None:
    """With 2 connections allowed, a third concurrent request waits, then is refused unsent."""
    gate = threading.Event()
    srv = serve(gated(OK, gate))
    p = pool(max_connections_per_origin=2, queue_timeout_s=0.2)

    async def go() -> list[UpstreamResponse | BaseException]:
        calls = [asyncio.create_task(call(p, srv.url, f"/r{i}")) for i in range(3)]
        done, _ = await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
        assert done == {calls[2]}  # refused while the other two still hold their connections
        gate.set()
        return await asyncio.gather(*calls, return_exceptions=True)

    results = run(go())
    assert isinstance(results[2], UpstreamBusy)
    assert [(r.status, r.body) for r in results[:2]] == [(200, b"ok")] * 2  # type: ignore[union-attr]
    assert srv.accepted == 2 and len(srv.requests) == 2
    assert p.busy_refusals() == {f"http://127.0.0.1:{srv.port}": 1}
    assert p.open_connections() == {f"http://127.0.0.1:{srv.port}": 2}
    p.close()


def test_waiting_request_gets_the_first_connection_freed(
        run: Run, serve: Callable[..., RawServer]) -> None:
    """A request over the limit waits for a connection that comes back, and reuses it."""
    srv = serve(keep_alive(OK))
    gate = threading.Event()
    slow = serve(gated(OK, gate))
    p = pool(max_connections_per_origin=1, queue_timeout_s=5)

    async def go() -> list[UpstreamResponse]:
        first = asyncio.create_task(call(p, slow.url, "/first"))
        second = asyncio.create_task(call(p, slow.url, "/second"))
        other = await call(p, srv.url, "/other")  # another origin is not held up
        assert not first.done() and not second.done()
        gate.set()
        return [await first, await second, other]

    answers = run(go())
    assert [a.status for a in answers] == [200, 200, 200]
    assert slow.accepted == 1
    assert [raw.split(b" ")[1] for raw in slow.bodies()] == [b"/first", b"/second"]
    assert p.busy_refusals() == {}
    p.close()


def test_failed_connects_free_their_slots(run: Run) -> None:
    """Connections that could not be opened do not count against the limit afterwards."""
    p = pool(max_connections_per_origin=1, queue_timeout_s=0.1)
    url = f"http://127.0.0.1:{free_port()}"

    async def go() -> list[BaseException]:
        return [exc for exc in await asyncio.gather(
            *(call(p, url) for _ in range(3)), return_exceptions=True)
                if isinstance(exc, BaseException)]

    errors = run(go())
    assert errors and all(isinstance(e, (UpstreamConnectError, UpstreamBusy)) for e in errors)
    assert p.open_connections() == {url: 0}
    p.close()
