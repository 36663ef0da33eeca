"""The floor for any proxy on this box: TLS in, one pooled keep-alive connection out, nothing else.

    BENCH_BACKEND_KEY=... python -m bench.passthrough_proxy PORT BACKEND_PORT CERT KEY

No validation, no policy, no log, no metrics, no timeouts, no error handling: it terminates
TLS, swaps Authorization for the backend key and relays the answer. bench/gateway_bench.py runs
it next to the gateway so the gateway's throughput can be read against what a do-nothing
Python proxy reaches on the same cores. It is a measuring stick, never a server to deploy.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys

import httptools
import uvloop

_SKIP_REQUEST = {b"authorization", b"host", b"content-length", b"connection"}
_SKIP_RESPONSE = {b"content-length", b"server", b"date", b"connection"}


Message = tuple[list[tuple[bytes, bytes]], bytes]


class _Peer(asyncio.Protocol):
    """One side of the relay: feeds the parser and collects one message at a time."""

    def __init__(self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser) -> None:
        self.parser = parser
        self.transport: asyncio.Transport | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def take(self) -> Message:
        message = self.headers, b"".join(self.body)
        self.headers, self.body = [], []
        return message


class _Backend(_Peer):
    def __init__(self) -> None:
        super().__init__(httptools.HttpResponseParser(self))
        self.waiter: asyncio.Future[tuple[int, Message]] | None = None

    def on_message_complete(self) -> None:
        assert self.waiter is not None
        self.waiter.set_result((self.parser.get_status_code(), self.take()))  # type: ignore[union-attr]

    def send(self, data: bytes) -> asyncio.Future[tuple[int, Message]]:
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(data)
        return self.waiter


class _Client(_Peer):
    def __init__(self, backend_port: int, key: bytes, idle: list[_Backend]) -> None:
        super().__init__(httptools.HttpRequestParser(self))
        self.backend_port, self.key, self.idle = backend_port, key, idle

    def on_message_complete(self) -> None:
        asyncio.get_running_loop().create_task(self.relay(*self.take()))

    async def relay(self, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        out = [b"POST /score HTTP/1.1\r\nHost: backend\r\n"]
        out += [n + b": " + v + b"\r\n" for n, v in headers if n.lower() not in _SKIP_REQUEST]
        out.append(b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n" % (self.key,
                                                                                   len(body)))
        out.append(body)
        backend = self.idle.pop() if self.idle else (await asyncio.get_running_loop()
                                                     .create_connection(_Backend, "127.0.0.1",
                                                                        self.backend_port))[1]
        status, (answer_headers, answer) = await backend.send(b"".join(out))
        self.idle.append(backend)
        reply = [b"HTTP/1.1 %d OK\r\n" % status]
        reply += [n + b": " + v + b"\r\n" for n, v in answer_headers
                  if n.lower() not in _SKIP_RESPONSE]
        reply.append(b"Content-Length: %d\r\n\r\n" % len(answer))
        reply.append(answer)
        assert self.transport is not None
        self.transport.write(b"".join(reply))


async def _main(port: int, backend_port: int, key: bytes, cert: str, keyfile: str) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, keyfile)
    idle: list[_Backend] = []
    await asyncio.get_running_loop().create_server(
        lambda: _Client(backend_port, key, idle), "127.0.0.1", port, ssl=ctx, backlog=1024)
    await asyncio.Event().wait()


if __name__ == "__main__":
    a = sys.argv[1:]
    # the key comes from the environment: process arguments are visible to every local user
    uvloop.run(_main(int(a[0]), int(a[1]), os.environ["BENCH_BACKEND_KEY"].encode(), a[2], a[3]))
