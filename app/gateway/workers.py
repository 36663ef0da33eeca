"""Several gateway processes on one port: ``python -m app.gateway --workers N``.

One gateway process is one event loop, so at most one core's worth of work. On a machine with
spare cores, N worker processes listen on the same host:port with SO_REUSEPORT and the kernel
spreads new connections among them (a connection stays with the worker that accepted it).

Each worker is a whole gateway: its own uvloop loop, upstream pool, JWKS and verified-token
caches, config watcher and request-log flusher. What they must agree on lives outside them:

- rate-limit counters in Redis (app/gateway/ratelimit.py): permits are counted in Redis before
  use, so workers, like replicas, together never admit more than a caller's limit;
- gateway/config.json, which every worker re-reads on its own after each atomic replace;
- logs/gateway-requests.jsonl, appended by each worker in blocks of whole lines with one
  write(2) on an O_APPEND descriptor (observability.append_block), so lines never tear.

The supervisor is the main process. It reserves the port (a socket bound with SO_REUSEPORT that
never listens, so the kernel hands it no connections; port 0 picks one port for every worker),
forks the workers, forwards SIGTERM/SIGINT to them for the graceful stop (each finishes its
in-flight requests), restarts a worker that dies unexpectedly after a backoff, and exits once
they all have. It stays single-threaded and never runs an event loop, so it can fork safely at
any time, and the workers start without importing anything again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn

from app.gateway.app import serve
from app.gateway.state import GatewaySettings
from app.localstack.processes import die_with_parent, name_this_process
from app.pki import ensure_tls

log = logging.getLogger(__name__)

WORKERS_ENV = "MODELGATE_GATEWAY_WORKERS"
MAX_WORKERS = 64
#: first restart delay, doubled on each quick failure of the same worker, up to the maximum
BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
#: a worker that ran this long before dying restarts after the first delay again
STABLE_S = 30.0
#: after forwarding the stop: each worker's own grace is 10 s, then it aborts what is left
KILL_AFTER_S = 20.0
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}

#: a worker's body: serve on the given port, call on_ready(port) once accepting, return when
#: stopped (it runs in the forked process)
WorkerMain = Callable[[int, Callable[[int], None]], None]


def parse_workers(raw: str, source: str) -> int:
    """A worker count (1..MAX_WORKERS) from text; ValueError naming `source` otherwise."""
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_WORKERS:
        raise ValueError(f"{source} must be a whole number from 1 to {MAX_WORKERS}, "
                         f"not {raw!r}")
    return int(text)


def workers_from_env(environ: Mapping[str, str]) -> int:
    """MODELGATE_GATEWAY_WORKERS (unset or empty: 1); ValueError naming it if invalid."""
    raw = environ.get(WORKERS_ENV, "")
    return parse_workers(raw, WORKERS_ENV) if raw.strip() else 1


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT that never listens.

    It holds the port for the workers, also while one restarts (port 0 picks a free one), and
    makes a port held by another program fail at once, here. The kernel hands connections only
    to listening sockets, so this one never receives any.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:  # as asyncio's create_server binds IPv6 sockets
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


@dataclass
class _Slot:
    """One worker position: the process now in it, and its restart state."""

    index: int
    pid: int = 0
    started: float = 0.0
    ready: bool = False
    failures: int = 0
    restart_at: float | None = None


class Supervisor:
    """Runs `count` copies of a worker on one port; see the module docstring."""

    def __init__(self, count: int, worker: WorkerMain, host: str, port: int, *,
                 on_ready: Callable[[int], None] | None = None) -> None:
        if not 1 <= count <= MAX_WORKERS:
            raise ValueError(f"workers must be from 1 to {MAX_WORKERS}, not {count}")
        self.host = host
        self.port = port
        self._worker = worker
        self._on_ready = on_ready
        self._slots = [_Slot(i) for i in range(count)]
        self._stop_signal: int | None = None
        self._stopping = False
        self._kill_at = 0.0
        self._killed = False
        self._announced = False
        self._exit_code = 0
        self._pid = os.getpid()
        self._reservation: socket.socket | None = None
        self._wake_r = self._wake_w = self._ready_r = self._ready_w = -1

    # -- the supervisor ------------------------------------------------------------------

    def pids(self) -> list[int]:
        """The live workers' process ids."""
        return [slot.pid for slot in self._slots if slot.pid]

    def run(self) -> int:
        """Start the workers, supervise them until SIGTERM/SIGINT; return the exit code."""
        try:
            self._reservation = reserve_port(self.host, self.port)
        except OSError as exc:
            log.error("gateway cannot listen on %s:%d: %s", self.host, self.port, exc)
            return 1
        self.port = int(self._reservation.getsockname()[1])
        self._ready_r, self._ready_w = os.pipe()
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._ready_r, self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        # a Python handler, so that SIGCHLD too writes to the wakeup fd and ends the select
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        previous_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            for slot in self._slots:
                self._spawn(slot)
            return self._supervise()
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for fd in (self._ready_r, self._ready_w, self._wake_r, self._wake_w):
                os.close(fd)
            self._reservation.close()

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum

    def _supervise(self) -> int:
        pending = b""
        while True:
            now = time.monotonic()
            self._reap(now)
            if self._stop_signal is not None and not self._stopping:
                self._begin_stop(self._stop_signal)
            if self._stopping:
                if not self.pids():
                    return self._exit_code
                if now >= self._kill_at and not self._killed:
                    log.error("gateway workers %s still running %.0f s after the stop; killing "
                              "them", self.pids(), KILL_AFTER_S)
                    self._killed = True
                    self._exit_code = 1
                    self._signal_all(signal.SIGKILL)
            else:
                for slot in self._slots:
                    if not slot.pid and slot.restart_at is not None and now >= slot.restart_at:
                        self._spawn(slot)
            readable, _, _ = select.select([self._wake_r, self._ready_r], [], [],
                                           self._timeout(time.monotonic()))
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
            if self._ready_r in readable:
                pending = self._read_ready(pending)

    def _timeout(self, now: float) -> float | None:
        """How long the select may sleep: until the next due restart or the kill deadline."""
        if self._stopping:
            return None if self._killed else max(0.0, self._kill_at - now)
        due = [slot.restart_at for slot in self._slots
               if not slot.pid and slot.restart_at is not None]
        return max(0.0, min(due) - now) if due else None

    def _spawn(self, slot: _Slot) -> None:
        # signals blocked across fork: the child must not run the supervisor's handlers
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._child(slot)
        except OSError as exc:  # out of processes or memory: try again later
            self._schedule_restart(slot, time.monotonic(), f"could not be forked ({exc})")
            return
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        slot.pid, slot.started, slot.ready, slot.restart_at = pid, time.monotonic(), False, None
        log.info("gateway worker %d started (pid %d)", slot.index, pid)

    def _reap(self, now: float) -> None:
        for slot in self._slots:
            if not slot.pid:
                continue
            try:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: its status is unknown
                pid, status = slot.pid, 1 << 8
            if pid:
                self._exited(slot, os.waitstatus_to_exitcode(status), now)

    def _exited(self, slot: _Slot, code: int, now: float) -> None:
        pid, slot.pid = slot.pid, 0
        if self._stopping:
            # a worker still starting when the stop came may die of the signal itself
            if code in (0, -signal.SIGTERM, -signal.SIGINT):
                log.info("gateway worker %d (pid %d) stopped", slot.index, pid)
            else:
                log.warning("gateway worker %d (pid %d) exited with %s while stopping",
                            slot.index, pid, _describe(code))
                self._exit_code = 1
            return
        if not slot.ready and not self._announced:
            # dying before it could listen, at the first start, is a setup fault (port, TLS
            # material, settings) that restarting would only repeat
            log.error("gateway worker %d (pid %d) exited with %s before it was ready; "
                      "stopping", slot.index, pid, _describe(code))
            self._exit_code = 1
            self._begin_stop(signal.SIGTERM)
            return
        if now - slot.started >= STABLE_S:
            slot.failures = 0
        self._schedule_restart(slot, now, f"(pid {pid}) exited unexpectedly with "
                                          f"{_describe(code)}")

    def _schedule_restart(self, slot: _Slot, now: float, what: str) -> None:
        delay = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** slot.failures)
        slot.failures += 1
        slot.restart_at = now + delay
        log.warning("gateway worker %d %s; restarting it in %.1f s", slot.index, what, delay)

    def _begin_stop(self, signum: int) -> None:
        self._stopping = True
        self._kill_at = time.monotonic() + KILL_AFTER_S
        for slot in self._slots:
            slot.restart_at = None
        log.info("gateway stopping: %s forwarded to workers %s", signal.Signals(signum).name,
                 self.pids())
        self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _read_ready(self, pending: bytes) -> bytes:
        """Mark the workers whose ready lines ("PID\\n") arrived; announce once all are."""
        try:
            pending += os.read(self._ready_r, 4096)
        except BlockingIOError:
            return pending
        *lines, pending = pending.split(b"\n")
        for line in lines:
            for slot in self._slots:
                if line.isdigit() and slot.pid == int(line):
                    slot.ready = True
                    if self._announced:
                        log.info("gateway worker %d ready (pid %d)", slot.index, slot.pid)
        if not self._announced and not self._stopping and all(s.ready for s in self._slots):
            self._announced = True
            log.info("gateway listening on https://%s:%d with %d workers (pids %s)",
                     self.host, self.port, len(self._slots), self.pids())
            if self._on_ready is not None:
                self._on_ready(self.port)
        return pending

    # -- a worker ------------------------------------------------------------------------

    def _child(self, slot: _Slot) -> NoReturn:
        """The forked worker: serve until stopped, then exit without returning to the caller."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in _SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            for fd in (self._wake_r, self._wake_w, self._ready_r):
                os.close(fd)
            if self._reservation is not None:
                self._reservation.close()
            die_with_parent()  # SIGTERM, hence the graceful stop, if the supervisor is killed
            if os.getppid() != self._pid:
                os._exit(0)  # it died before prctl: nobody would supervise this worker
            name_this_process(f"gateway-w{slot.index}")
            ready_w = self._ready_w

            def ready(port: int) -> None:
                os.write(ready_w, b"%d\n" % os.getpid())

            self._worker(self.port, ready)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - the worker's last line: log, exit non-zero
            log.exception("gateway worker %d failed", slot.index)
        finally:
            with contextlib.suppress(Exception):
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


def serve_workers(home: Path, host: str = "127.0.0.1", port: int = 8000,
                  redis_url: str | None = None, *, workers: int,
                  settings: GatewaySettings | None = None,
                  on_ready: Callable[[int], None] | None = None) -> int:
    """Serve over HTTPS with `workers` processes sharing host:port, until SIGINT/SIGTERM.

    Arguments as app.gateway.app.serve; on_ready gets the port once every worker accepts
    connections. Returns the exit code: 0 after a clean stop, 1 if the port cannot be bound,
    a worker could not start, or one had to be killed at the stop.
    """
    url = redis_url or os.environ.get("MODELGATE_REDIS_URL")
    if not url:
        raise ValueError("the gateway needs a Redis URL (--redis-url or MODELGATE_REDIS_URL)")
    settings = settings or GatewaySettings.from_env(os.environ)
    home = Path(home)
    ensure_tls(home)  # made once here, not by workers racing on a first start

    def worker(bound: int, ready: Callable[[int], None]) -> None:
        serve(home, host, bound, url, settings=settings, on_ready=ready, reuse_port=True)

    return Supervisor(workers, worker, host, port, on_ready=on_ready).run()
