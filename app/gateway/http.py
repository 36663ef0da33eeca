"""The gateway's HTTP/1.1 server: asyncio protocols with llhttp (httptools) parsing.

Why not aiohttp.web: a proxy does little per request besides parsing and writing HTTP, and
aiohttp's server and client machinery cost ~0.3 ms of CPU per proxied request on our 2-core
box, several times what the backend spends (bench/README.md, "Gateway overhead"). This server
keeps only what a gateway needs: keep-alive, pipelining in order, bounded headers and bodies,
``Expect: 100-continue``, idle and slow-request timeouts, and a graceful stop.

Contract for the handler: ``async def handler(request: Request) -> Response``. It is called once
per request, in order per connection; an exception becomes a bare 500 (the gateway's own
handler already turns surprises into problem+json, so this is the last line only).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import cast
from urllib.parse import unquote

import httptools
from multidict import CIMultiDict

log = logging.getLogger(__name__)

_REASONS = {s.value: s.phrase for s in HTTPStatus}
# headers the server writes itself; a handler's values for them are ignored
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "date", "keep-alive"})
_MAX_PIPELINED = 16
# What may reach the wire (RFC 9110 §5.1, §5.5; RFC 9112 §4): a header name is a token, and no
# value or reason phrase holds CR, LF or NUL. Checked with C string scans on the joined block
# (a regex over every byte costs several times more); names are few, so valid ones are cached.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALID_NAMES: set[str] = set()
_MAX_VALID_NAMES = 4096
_LINGER_S, _LINGER_BYTES = 2.0, 8 * 1024 * 1024
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}


@dataclass(slots=True)
class Request:
    """One parsed request (body read in full, within the server's limit)."""

    method: str
    path: str
    query_string: str
    headers: CIMultiDict[str]
    body: bytes
    remote: str
    scheme: str
    keep_alive: bool = True


@dataclass(slots=True)
class Response:
    """What a handler returns; Content-Length, Date and Connection are added on the wire."""

    status: int
    body: bytes = b""
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    reason: str | None = None


Handler = Callable[[Request], Coroutine[object, object, Response]]


@dataclass(frozen=True)
class ServerLimits:
    """Bounds that protect the server from oversized or slow clients."""

    max_header_bytes: int = 16384
    max_body_bytes: int = 1024 * 1024
    keepalive_timeout_s: float = 75.0
    request_timeout_s: float = 30.0


class _Date:
    """The Date header value, formatted once per second."""

    second = -1
    value = ""

    @classmethod
    def now(cls) -> str:
        current = int(time.time())
        if current != cls.second:
            cls.second, cls.value = current, formatdate(current, usegmt=True)
        return cls.value


class InvalidMessage(ValueError):
    """A message would not be valid HTTP on the wire (e.g. CR/LF in a header value).

    The message never names the offending value: it may be a secret injected by a policy.
    """


def _checked_line(name: str, value: str) -> str:
    """The header line for a name not seen before, once the name is known to be a token."""
    if not _TOKEN.fullmatch(name):
        raise InvalidMessage("a header name is not a token")
    if len(_VALID_NAMES) < _MAX_VALID_NAMES:
        _VALID_NAMES.add(name)
    return f"{name}: {value}\r\n"


def encode_fields(fields: Iterable[tuple[str, str]]) -> str:
    """Header lines for the wire (each name: value CR LF).

    Raises InvalidMessage if a name is not a token or a value holds CR, LF or NUL (which would
    end the line early and let the rest be read as more headers: response splitting).
    """
    lines = [f"{name}: {value}\r\n" if name in _VALID_NAMES else _checked_line(name, value)
             for name, value in fields]
    block = "".join(lines)
    expected = len(lines)
    if block.count("\n") != expected or block.count("\r") != expected or "\x00" in block:
        raise InvalidMessage("a header value contains CR, LF or NUL")
    return block


def encode_response(response: Response, *, keep_alive: bool, head: bool = False) -> bytes:
    """Serialize a response for HTTP/1.1 (Content-Length framing, never chunked).

    Raises InvalidMessage (nothing is written) for a header or reason phrase that would break
    the framing: CR, LF or NUL in a value or the reason, a name that is not a token, or a
    character that latin-1 cannot carry.
    """
    status = response.status
    reason = response.reason
    if not reason:
        reason = _REASONS.get(status, "Unknown")
    elif "\r" in reason or "\n" in reason or "\x00" in reason:
        raise InvalidMessage("the reason phrase contains CR, LF or NUL")
    if not 100 <= status <= 999:
        raise InvalidMessage("the status code is not three digits")
    headers = response.headers
    # the handler's framing headers are dropped (five case-insensitive lookups in C cost less
    # than lower-casing every name)
    fields = encode_fields(
        [(name, value) for name, value in headers.items() if name.lower() not in _FRAMING]
        if ("Content-Length" in headers or "Transfer-Encoding" in headers
            or "Connection" in headers or "Date" in headers or "Keep-Alive" in headers)
        else headers.items())
    body = response.body
    if status == 204 or status == 304:
        body = b""
        length = ""
    else:
        length = f"Content-Length: {len(body)}\r\n"
    close = "" if keep_alive else "Connection: close\r\n"
    try:
        head_bytes = (f"HTTP/1.1 {status} {reason}\r\n{fields}{length}Date: {_Date.now()}\r\n"
                      f"{close}\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise InvalidMessage("a header value is not latin-1") from None
    return head_bytes if head or not body else head_bytes + body


class _Rejected(Exception):
    """Raised inside a parser callback to answer with an error and close the connection."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def problem(status: int, detail: str | None = None,
            headers: Iterable[tuple[str, str]] = ()) -> Response:
    """An RFC 9457 problem+json response with a generic, safe detail."""
    body: dict[str, object] = {"type": "about:blank", "title": _REASONS.get(status, "Error"),
                               "status": status}
    if detail:
        body["detail"] = detail
    out: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/problem+json"})
    out.extend(headers)
    return Response(status, json.dumps(body).encode(), out)


class _Connection(asyncio.Protocol):
    """One client connection: parse requests, run the handler in order, write responses."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = server.loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._remote = ""
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._header_map: CIMultiDict[str] = CIMultiDict()
        self._header_bytes = 0
        self._head_done = False
        self._head_raw = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._pending: collections.deque[Request] = collections.deque()
        self._current: Request | None = None
        self._task: asyncio.Task[None] | None = None
        self._reading = True
        self._discard_left: int | None = None
        self.in_message = False
        self.last_active = self._loop.time()
        self.message_started = 0.0

    # -- connection events -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if peer else ""
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._pending.clear()
        self._server.connections.discard(self)
        self._server.connection_closed()

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        if self._discard_left is not None:
            self._discard(len(data))
            return
        # httptools reports a header only once its line has ended and buffers it until then, so
        # on_header alone cannot bound one endless header line: also count the raw bytes that
        # arrive while a request head is unfinished (this skips the read that began it, and
        # line framing is in it, hence the cut-off at twice the limit).
        head_open = self.in_message and not self._head_done
        if head_open:
            self._head_raw += len(data)
        try:
            self._parser.feed_data(data)
            if head_open and self.in_message and not self._head_done and (
                    self._head_raw > 2 * self._limits.max_header_bytes):
                self.reject(431, "The request headers are too large.")
        except httptools.HttpParserCallbackError as exc:
            rejected = exc.__context__
            if isinstance(rejected, _Rejected):
                self.reject(rejected.status, str(rejected))
            else:  # a bug in a callback: never leave the client hanging
                log.error("HTTP parser callback failed: %r", rejected)
                self.reject(500, "The gateway failed to process the request.")
        except httptools.HttpParserUpgrade:
            self.reject(400, "Protocol upgrades are not supported.")
        except httptools.HttpParserError:
            self.reject(400, "The request is not valid HTTP/1.1.")

    # -- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = True
        self.message_started = self._loop.time()
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._head_done = False
        self._head_raw = 0
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._limits.max_header_bytes:
            raise _Rejected(431, "The request headers are too large.")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._limits.max_header_bytes:
            raise _Rejected(431, "The request headers are too large.")
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._head_done = True
        self._header_map = headers = CIMultiDict(self._headers)
        # llhttp refuses the smuggling shapes (CL with TE, two lengths, obs-fold, bare LF, bad
        # chunk sizes, names with spaces) but lets these framing faults through (RFC 9112)
        version = self._parser.get_http_version()
        if version == "1.1":
            if len(headers.getall("Host", ())) != 1:  # §3.2: exactly one Host, else 400
                raise _Rejected(400, "The request needs exactly one Host header.")
        elif version != "1.0":
            raise _Rejected(400, "The request is not valid HTTP/1.1.")
        elif "Transfer-Encoding" in headers:  # §6.1: TE in HTTP/1.0 is faulty framing
            raise _Rejected(400, "The request is not valid HTTP/1.1.")
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self._limits.max_body_bytes:
            raise _Rejected(413, "The request body is too large.")
        expect = headers.get("Expect")
        if expect is not None and expect.lower() == "100-continue" and self._transport:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._limits.max_body_bytes:
            raise _Rejected(413, "The request body is too large.")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        if self._parser.should_upgrade():
            # llhttp completes an upgrade request (websocket, CONNECT) before it raises
            # HttpParserUpgrade, so refuse it here or the handler would run and answer it
            raise _Rejected(400, "Protocol upgrades are not supported.")
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            raise _Rejected(400, "The request target is not valid.") from None
        raw_path = url.path.decode("latin-1")
        method = self._parser.get_method()
        request = Request(
            _METHODS.get(method) or method.decode("ascii"),
            unquote(raw_path) if "%" in raw_path else raw_path,
            url.query.decode("latin-1") if url.query else "",
            self._header_map,
            b"".join(self._body) if len(self._body) != 1 else self._body[0],
            self._remote,
            self._server.scheme,
            self._parser.should_keep_alive(),
        )
        if self._current is None:
            self._start(request)
        else:
            self._pending.append(request)
            if len(self._pending) >= _MAX_PIPELINED and self._reading and self._transport:
                self._transport.pause_reading()
                self._reading = False

    # -- running the handler -----------------------------------------------------------

    def _start(self, request: Request) -> None:
        self._current = request
        self._task = self._loop.create_task(self._respond(request))
        self._server.in_flight += 1

    async def _respond(self, request: Request) -> None:
        """Run the handler and write its answer from the same task (no extra loop pass)."""
        try:
            response = await self._server.handler(request)
        except asyncio.CancelledError:
            self._done()
            self.close()
            raise
        except Exception as exc:  # noqa: BLE001 - last line: the client still gets an answer
            log.error("gateway handler failed: %r", exc)
            response = problem(500, "The gateway failed to process the request.")
        self._done()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        keep_alive = request.keep_alive and not self._server.stopping
        head = request.method == "HEAD"
        try:
            data = encode_response(response, keep_alive=keep_alive, head=head)
        except InvalidMessage as exc:
            # never write a header or status line that would split into more (response
            # splitting, RFC 9112 §11.1): answer 502, as aiohttp, h11 and uvicorn refuse too
            log.error("handler response for %s not sent: %s", request.path, exc)
            data = encode_response(problem(502, "The gateway could not forward the answer."),
                                   keep_alive=keep_alive, head=head)
        transport.write(data)
        self.last_active = self._loop.time()
        if not keep_alive:
            transport.close()
            return
        if self._pending:
            self._start(self._pending.popleft())
        if not self._reading and len(self._pending) < _MAX_PIPELINED // 2:
            transport.resume_reading()
            self._reading = True

    def _done(self) -> None:
        self._current = self._task = None
        self._server.in_flight -= 1

    # -- closing -----------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No request being read, run or waiting."""
        return self._current is None and not self._pending and not self.in_message

    def reject(self, status: int, detail: str) -> None:
        """Answer an error the client caused (or a timeout) and close the connection."""
        transport = self._transport
        # _discard_left set: an error was already answered and the connection is lingering
        # (the sweeper would otherwise send another 408 on each tick until it closes)
        if transport is None or transport.is_closing() or self._discard_left is not None:
            return
        self._pending.clear()
        if self._current is None:
            transport.write(encode_response(problem(status, detail), keep_alive=False))
            # Closing while the client still sends makes its TCP stack see a reset instead of
            # this answer (e.g. a 413 for a large body): read and drop its bytes for a moment.
            self._discard_left = _LINGER_BYTES
            self._loop.call_later(_LINGER_S, self.close)
        else:
            # a response is still owed for an earlier request: stop reading, close after it
            transport.pause_reading()
            self._current.keep_alive = False

    def _discard(self, n: int) -> None:
        assert self._discard_left is not None
        self._discard_left -= n
        if self._discard_left <= 0:
            self.close()

    def close(self) -> None:
        """Close now (idle connections at shutdown or after the keep-alive timeout)."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection without finishing (shutdown grace period exceeded)."""
        if self._task is not None:
            # stop the handler too: it would otherwise run on after stop() returned, using
            # resources the caller releases next (its answer could not be sent anyway)
            self._task.cancel()
        if self._transport is not None:
            self._transport.abort()


class HttpServer:
    """Listen on host:port (TLS if given a context) and serve requests with one handler."""

    def __init__(self, handler: Handler, limits: ServerLimits | None = None) -> None:
        self.handler = handler
        self.limits = limits or ServerLimits()
        self.connections: set[_Connection] = set()
        self.in_flight = 0
        self.stopping = False
        self.scheme = "http"
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._drained: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                    backlog: int = 1024, reuse_port: bool = False) -> int:
        """Start listening; returns the bound port (port 0 picks a free one).

        reuse_port binds with SO_REUSEPORT: several processes then listen on one port and the
        kernel spreads new connections among them (app/gateway/workers.py).
        """
        self.loop = asyncio.get_running_loop()
        self.scheme = "https" if ssl_context is not None else "http"
        self._server = await self.loop.create_server(
            lambda: _Connection(self), host, port, ssl=ssl_context, backlog=backlog,
            reuse_address=True, reuse_port=reuse_port)
        self._sweeper = self.loop.create_task(self._sweep())
        return int(self._server.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        """Once a second: close idle keep-alive connections and too-slow requests."""
        limits = self.limits
        while True:
            await asyncio.sleep(1.0)
            now = self.loop.time()
            for conn in list(self.connections):
                if conn.in_message and now - conn.message_started > limits.request_timeout_s:
                    conn.reject(408, "The request was not received in time.")
                elif conn.idle and now - conn.last_active > limits.keepalive_timeout_s:
                    conn.close()

    def connection_closed(self) -> None:
        """Called by a connection when it goes away (wakes a waiting stop)."""
        if self._drained is not None and not self.connections:
            self._drained.set()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop listening, finish in-flight requests (up to grace_s), then close everything."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._drained = asyncio.Event()
        for conn in list(self.connections):
            if conn.idle:
                conn.close()
        if self.connections:
            try:
                await asyncio.wait_for(self._drained.wait(), grace_s)
            except TimeoutError:
                log.warning("%d connections still busy after %.0f s; closing them",
                            len(self.connections), grace_s)
                for conn in list(self.connections):
                    conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
