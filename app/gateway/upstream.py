"""The gateway's client to backends and issuers: pooled keep-alive HTTP/1.1 on asyncio protocols.

One request at a time per connection; idle connections are reused per origin (scheme, host,
port). At most ``max_connections_per_origin`` connections (in use, idle or being opened) exist
per origin: a request that finds none free waits for one up to ``queue_timeout_s``, in order.
Errors are classified for the caller's status codes:

- UpstreamBusy: every connection to the origin stayed busy for the whole wait (not sent);
- UpstreamConnectError: the request never reached the backend (refused, unreachable);
- UpstreamTimeout: no complete answer within the deadline (connect included);
- UpstreamProtocolError: the backend broke the exchange (reset mid-answer, malformed, too big).

A pooled connection the backend closed while idle fails before any byte of the answer; such a
request is sent again once on a fresh connection (the usual rule for stale keep-alive sockets).
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

from app.gateway.http import InvalidMessage, encode_fields

# RFC 9112 §3: method is a token; the target has no whitespace or control characters
_REQUEST_LINE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^\x00-\x20\x7f]+")
_VALID_LINES: set[str] = set()


class UpstreamError(Exception):
    """The upstream exchange failed (see the subclasses)."""


class UpstreamConnectError(UpstreamError):
    """No connection could be made: the request was not sent."""


class UpstreamTimeout(UpstreamError):
    """No complete answer before the deadline."""


class UpstreamProtocolError(UpstreamError):
    """The upstream answered badly or went away mid-answer."""


class UpstreamBusy(UpstreamError):
    """The origin's connection limit stayed reached for the whole wait: the request was not sent."""


class UpstreamRequestInvalid(UpstreamError):
    """The request would not be valid HTTP (CR/LF in a header, bad name): it was not sent."""


class _Stale(UpstreamError):
    """A reused connection closed before any answer byte (safe to send again)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where to connect, and the Host header and path prefix of a base URL."""

    scheme: str
    host: str
    port: int
    host_header: str
    prefix: str
    #: (scheme, host, port): what the connection limit counts by
    key: tuple[str, str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.scheme, self.host, self.port))


OriginKey = tuple[str, str, int]  # (scheme, host, port): what the connection limit counts by


@dataclass(slots=True)
class _Slots:
    """One origin's connections: idle ones, how many exist, requests waiting for one."""

    idle: list[_UpstreamConnection] = field(default_factory=list)
    open: int = 0  # in use, idle or being opened
    # each waiter gets an idle connection, or None: the right to open one in a freed slot
    waiters: collections.deque[asyncio.Future[_UpstreamConnection | None]] = field(
        default_factory=collections.deque)
    refused: int = 0  # requests answered UpstreamBusy


@dataclass(slots=True)
class UpstreamResponse:
    """A complete upstream answer."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    #: the same headers as received, in order (what a proxy copies on in one pass)
    fields: list[tuple[str, str]]


class _UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_body_bytes: int) -> None:
        self._loop = loop
        self._max_body = max_body_bytes
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._headers: list[tuple[str, str]] = []
        self._header_map: CIMultiDict[str] = CIMultiDict()
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._received = False
        self._headers_done = False
        self._framed = False
        self.reusable = True
        self.used = False  # an exchange completed before: a close before any answer is stale

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.reusable = False
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._framed:
            # no Content-Length and not chunked: the body runs until the connection closes
            self._complete()
        elif not self._received and self.used:
            self._fail(_Stale("connection closed before the answer"))
        else:
            self._fail(UpstreamProtocolError("connection lost mid-answer"))

    def data_received(self, data: bytes) -> None:
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, UpstreamError)
                       else UpstreamProtocolError("bad answer"))
        except httptools.HttpParserError:
            self._fail(UpstreamProtocolError("malformed answer"))

    # parser callbacks
    def on_message_begin(self) -> None:
        if self._waiter is None or self._waiter.done():
            # bytes after the answer, or while idle: a second answer to one request. Were the
            # connection reused, they would be read as the next request's answer (desync).
            raise UpstreamProtocolError("unsolicited answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        # trailers of a chunked answer arrive after this and are left out on purpose
        self._header_map = headers = CIMultiDict(self._headers)
        status = self._parser.get_status_code()
        version = self._parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise UpstreamProtocolError("not an HTTP/1.x answer")
        if "Transfer-Encoding" in headers and (
                version == "1.0" or [c.strip().lower() for v in headers.getall(
                    "Transfer-Encoding") for c in v.split(",")] != ["chunked"]):
            # RFC 9112 §6.1/6.3: TE in HTTP/1.0 is faulty framing; a coding other than plain
            # chunked would reach the caller still encoded (the gateway decodes none)
            raise UpstreamProtocolError("unsupported transfer coding")
        self._framed = ("Content-Length" in headers or "Transfer-Encoding" in headers
                        or status in (204, 304) or 100 <= status < 200)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._max_body:
            raise UpstreamProtocolError("answer too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._parser.get_status_code() < 200:  # an interim answer: wait for the real one
            self._headers, self._headers_done = [], False
            return
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._complete()

    def _complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        self._cancel_timer()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        waiter.set_result(UpstreamResponse(self._parser.get_status_code(), self._header_map,
                                           body, self._headers))
        if not self.reusable and self._transport is not None:
            self._transport.close()

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        self._cancel_timer()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(UpstreamTimeout("no answer in time"))

    async def exchange(self, data: bytes, timeout_s: float) -> UpstreamResponse:
        """Send one request and wait for its whole answer."""
        if self._transport is None or self._transport.is_closing():
            raise _Stale("connection closed")
        self._headers, self._body, self._body_bytes = [], [], 0
        self._received = self._headers_done = False
        self._waiter = self._loop.create_future()
        self._timer = self._loop.call_later(timeout_s, self._timed_out)
        self._transport.write(data)
        try:
            answer = await self._waiter
        except asyncio.CancelledError:
            self._fail(UpstreamProtocolError("cancelled"))
            raise
        finally:
            self._waiter = None
        # Only from now on is a close before any answer byte the stale keep-alive race; on a
        # fresh connection it means the backend dropped this very request (maybe after acting
        # on it), and sending it again would duplicate a POST.
        self.used = True
        return answer

    def close(self) -> None:
        """Close (pool shutdown)."""
        self.reusable = False
        if self._transport is not None:
            self._transport.close()


def encode_request(method: str, target: str, host: str, headers: Iterable[tuple[str, str]],
                   body: bytes) -> bytes:
    """Serialize a request with Content-Length framing; UpstreamRequestInvalid if it would not
    be valid HTTP (a header with CR/LF/NUL, a name that is no token, a bad request line)."""
    request_line = f"{method} {target}"
    if request_line not in _VALID_LINES:
        if not _REQUEST_LINE.fullmatch(request_line):
            raise UpstreamRequestInvalid("request not sent: the method or target is not valid")
        if len(_VALID_LINES) < 4096:  # an API's operations, mostly: a few lines serve all
            _VALID_LINES.add(request_line)
    fields = [("Host", host), *headers]
    if body or method in ("POST", "PUT", "PATCH"):
        fields.append(("Content-Length", str(len(body))))
    try:
        head = f"{request_line} HTTP/1.1\r\n{encode_fields(fields)}\r\n".encode("latin-1")
    except InvalidMessage as exc:
        raise UpstreamRequestInvalid(f"request not sent: {exc}") from None
    except UnicodeEncodeError:
        raise UpstreamRequestInvalid("request not sent: a header value is not latin-1") from None
    return head + body


class UpstreamPool:
    """Bounded keep-alive connections per origin, a deadline per request, one stale retry."""

    def __init__(self, *, ssl_context: ssl.SSLContext, connect_timeout_s: float = 2.0,
                 max_idle_per_origin: int = 100, max_connections_per_origin: int = 256,
                 queue_timeout_s: float = 1.0, max_body_bytes: int = 16 * 1024 * 1024) -> None:
        if max_connections_per_origin < 1:
            raise ValueError("max_connections_per_origin must be at least 1")
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout_s
        self._max_idle = max_idle_per_origin
        self._max_open = max_connections_per_origin
        self._queue_timeout = queue_timeout_s
        self._max_body = max_body_bytes
        self._slots: dict[OriginKey, _Slots] = {}
        self._origins: dict[str, Origin] = {}

    def origin(self, base_url: str) -> Origin:
        """Parse (once, cached) an http(s) base URL."""
        found = self._origins.get(base_url)
        if found is None:
            parts = urlsplit(base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an absolute http(s) URL: {base_url!r}")
            default = 443 if parts.scheme == "https" else 80
            port = parts.port or default
            host_header = parts.hostname if port == default else f"{parts.hostname}:{port}"
            if ":" in parts.hostname:  # IPv6 literal
                host_header = f"[{parts.hostname}]" + ("" if port == default else f":{port}")
            found = Origin(parts.scheme, parts.hostname, port, host_header,
                           parts.path.rstrip("/"))
            if len(self._origins) < 1024:
                self._origins[base_url] = found
        return found

    async def request(self, method: str, origin: Origin, target: str,
                      headers: Iterable[tuple[str, str]], body: bytes, *,
                      timeout_s: float) -> UpstreamResponse:
        """Send method origin.prefix+target with these headers and body; return the answer.

        Args:
            target: path (and query) under the origin's prefix, starting with "/".
            headers: end-to-end headers (no Host, Content-Length or hop-by-hop ones).
            timeout_s: deadline for connect + answer.
        """
        data = encode_request(method, f"{origin.prefix}{target}", origin.host_header, headers,
                              body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        slots = self._slots.get(origin.key)
        if slots is None:
            slots = self._slots[origin.key] = _Slots()
        conn = self._take_idle(slots)
        if conn is None:
            conn = await self._acquire(loop, slots, deadline)
        try:
            for attempt in (1, 2):
                if conn is None:
                    conn = await self._connect(loop, origin, deadline, retry=attempt == 1)
                try:
                    return await conn.exchange(data, max(deadline - loop.time(), 0.001))
                except _Stale:
                    if attempt == 2:
                        raise UpstreamProtocolError(
                            "connection closed before the answer") from None
                    # the retry keeps this slot but goes on a new connection: other pooled
                    # ones may be just as stale (e.g. the backend restarted), and would fail it
                    conn = None
            raise AssertionError("unreachable")  # pragma: no cover
        finally:
            self._release(slots, conn)

    @staticmethod
    def _take_idle(slots: _Slots) -> _UpstreamConnection | None:
        """A reusable idle connection (the common case, without waiting), or None."""
        idle = slots.idle
        while idle:
            conn = idle.pop()
            if conn.reusable:
                return conn
            slots.open -= 1  # the backend closed it while idle
        return None

    async def _acquire(self, loop: asyncio.AbstractEventLoop, slots: _Slots,
                       deadline: float) -> _UpstreamConnection | None:
        """An idle connection, or None with a slot reserved to open one; waits when full."""
        conn = self._take_idle(slots)
        if conn is not None:
            return conn
        if slots.open < self._max_open:
            slots.open += 1
            return None
        waiter: asyncio.Future[_UpstreamConnection | None] = loop.create_future()
        slots.waiters.append(waiter)
        budget = min(self._queue_timeout, deadline - loop.time())
        timer = loop.call_later(max(budget, 0.0), _refuse_busy, waiter)
        try:
            return await waiter
        except UpstreamBusy:
            slots.refused += 1
            raise
        except asyncio.CancelledError:
            # cancelled just after a connection or slot was handed over: pass it on
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(slots, waiter.result())
            raise
        finally:
            timer.cancel()

    def _release(self, slots: _Slots, conn: _UpstreamConnection | None) -> None:
        """Hand a finished connection (or its freed slot) to the next waiter, else keep it idle."""
        if conn is not None and not conn.reusable:
            conn = None
        while slots.waiters:
            waiter = slots.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)  # None: the waiter opens a connection in this slot
                return
        if conn is None:
            slots.open -= 1
        elif len(slots.idle) < self._max_idle:
            slots.idle.append(conn)
        else:
            slots.open -= 1
            conn.close()

    def busy_refusals(self) -> dict[str, int]:
        """Requests refused per origin ("scheme://host:port") because its limit stayed full."""
        return {f"{scheme}://{host}:{port}": slots.refused
                for (scheme, host, port), slots in self._slots.items() if slots.refused}

    def open_connections(self) -> dict[str, int]:
        """Connections per origin (in use, idle or being opened)."""
        return {f"{scheme}://{host}:{port}": slots.open
                for (scheme, host, port), slots in self._slots.items()}

    async def _connect(self, loop: asyncio.AbstractEventLoop, origin: Origin, deadline: float,
                       *, retry: bool) -> _UpstreamConnection:
        """Open a connection; a refused or failed connect is tried once more if retry."""
        for attempt in (1, 2):
            budget = min(self._connect_timeout, deadline - loop.time())
            if budget <= 0:
                raise UpstreamTimeout("no time left to connect")
            tls = self._ssl if origin.scheme == "https" else None
            try:
                _, conn = await asyncio.wait_for(loop.create_connection(
                    lambda: _UpstreamConnection(loop, self._max_body), origin.host, origin.port,
                    ssl=tls, server_hostname=origin.host if tls else None), budget)
                return conn
            except TimeoutError:
                raise UpstreamTimeout("connect timed out") from None
            except ssl.SSLError as exc:
                raise UpstreamConnectError(f"TLS failed: {exc.reason}") from None
            except OSError as exc:
                if attempt == 2 or not retry:
                    raise UpstreamConnectError(type(exc).__name__) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close every idle connection."""
        for slots in self._slots.values():
            for conn in slots.idle:
                conn.close()
            slots.open -= len(slots.idle)
            slots.idle.clear()


def _refuse_busy(waiter: asyncio.Future[_UpstreamConnection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamBusy("every connection to the backend stayed busy"))
