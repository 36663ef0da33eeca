"""`python -m app.gateway --workers N`: several gateway processes on one port (SO_REUSEPORT).

Each test starts the real command as a subprocess on port 0 (the supervisor picks one port for
every worker and reports it), in a private copy of the test stack's home, with the stack's Redis,
issuer and backend. Which worker answers a connection is read from /proc (the worker holding the
server end of that TCP connection), so the gateway exposes nothing new to its callers.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.gateway import __main__ as gateway_main
from app.gateway.config import write_gateway_config
from app.gateway.observability import append_block
from app.gateway.workers import MAX_WORKERS, WORKERS_ENV, parse_workers, workers_from_env
from app.localstack.processes import live_children
from tests.gateway.conftest import Stack

ROOT = Path(__file__).resolve().parents[2]
ANNOUNCED = re.compile(r"gateway listening on https://127\.0\.0\.1:(\d+) with (\d+) workers")


def _socket_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the server end of the loopback TCP connection from client_port."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if (int(local.rsplit(":", 1)[1], 16) == server_port
                        and int(remote.rsplit(":", 1)[1], 16) == client_port):
                    return int(fields[9])
    return None


class WorkersProcess:
    """The supervisor subprocess, its output, its port and its workers."""

    def __init__(self, home: Path, redis_url: str, ca: str, workers: int = 2) -> None:
        self.ca = ca
        # the Redis URL holds a password: the environment, never the command line
        env = dict(os.environ, PYTHONPATH=str(ROOT), MODELGATE_REDIS_URL=redis_url)
        env.pop(WORKERS_ENV, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.gateway", "--home", str(home), "--port", "0",
             "--workers", str(workers)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        match = ANNOUNCED.search(self.wait_for(ANNOUNCED.pattern))
        assert match is not None and int(match.group(2)) == workers
        self.port = int(match.group(1))
        self.context = ssl.create_default_context(cafile=ca)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace"))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> str:
        """The first output line matching pattern (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            assert self.proc.poll() is None or self._reader.is_alive(), self.output
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} in:\n{self.output}")

    def workers(self) -> list[int]:
        """The worker pids now (the supervisor's children)."""
        return live_children(self.proc.pid)

    def connect(self) -> tuple[http.client.HTTPSConnection, int]:
        """A new TLS connection and the pid of the worker that accepted it."""
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context,
                                           timeout=15)
        conn.connect()
        assert conn.sock is not None
        client_port = conn.sock.getsockname()[1]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            inode = _socket_inode(self.port, client_port)
            for pid in self.workers():
                with contextlib.suppress(OSError):
                    for fd in os.listdir(f"/proc/{pid}/fd"):
                        with contextlib.suppress(OSError):
                            if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                                return conn, pid
            time.sleep(0.02)
        raise AssertionError("no worker holds the connection")

    def connections(self, per_worker: int) -> dict[int, list[http.client.HTTPSConnection]]:
        """At least per_worker open connections to each worker (the kernel picks; retry)."""
        by_pid: dict[int, list[http.client.HTTPSConnection]] = {}
        pids = set(self.workers())
        for _ in range(40 * per_worker * len(pids)):
            conn, pid = self.connect()
            if len(by_pid.setdefault(pid, [])) < per_worker:
                by_pid[pid].append(conn)
            else:
                conn.close()
            if set(by_pid) == pids and all(len(c) >= per_worker for c in by_pid.values()):
                return by_pid
        raise AssertionError(f"connections reached only workers {sorted(by_pid)} of {pids}")

    def stop(self) -> None:
        """SIGTERM; kill what is left after 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                for pid in self.workers():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


def call(conn: http.client.HTTPSConnection, path: str, *, token: str | None = None,
         request_id: str | None = None) -> int:
    """POST a small JSON body on an open connection; the status."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if request_id:
        headers["X-Request-ID"] = request_id
    conn.request("POST", path, body=b'{"data":[{"Age":30}]}', headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status


@pytest.fixture()
def home(stack: Stack, tmp_path: Path) -> Path:
    """A private copy of the stack's home (TLS, config, named-value key), own request log."""
    target = tmp_path / "home"
    shutil.copytree(stack.home, target, ignore=shutil.ignore_patterns("logs"))
    return target


@pytest.fixture()
def gateway(stack: Stack, home: Path) -> Iterator[WorkersProcess]:
    """`python -m app.gateway --workers 2 --port 0`, stopped after the test."""
    running = WorkersProcess(home, stack.redis_url, stack.ca)
    try:
        yield running
    finally:
        running.stop()


def test_two_workers_share_one_port_and_every_limit(stack: Stack, gateway: WorkersProcess,
                                                    home: Path) -> None:
    """Both workers answer on the one reported port; a caller's limit holds across both."""
    workers = gateway.workers()
    assert len(workers) == 2
    by_pid = gateway.connections(per_worker=8)
    assert sorted(by_pid) == workers

    # "limited" allows 5 calls a minute per caller (exact below 200: leases of one permit);
    # calls alternate between the workers, so each admits some and refuses some
    token = stack.issuer.mint()
    statuses: dict[int, list[int]] = {pid: [] for pid in workers}
    for i in range(16):
        pid = workers[i % 2]
        statuses[pid].append(call(by_pid[pid][i // 2], "/limited/credit-risk/score",
                                  token=token))
    every = [s for per in statuses.values() for s in per]
    assert every.count(200) == 5 and every.count(429) == 11, statuses
    assert all(200 in per and 429 in per for per in statuses.values()), statuses

    # config hot reload: each worker re-reads gateway/config.json on its own
    assert all(call(conns[0], "/reloaded/score") == 404 for conns in by_pid.values())
    teapot = next(api for api in stack.config["apis"] if api["name"] == "teapot")
    write_gateway_config(home, dict(stack.config, apis=[
        *stack.config["apis"], dict(teapot, name="reloaded", path="reloaded")]))
    deadline = time.monotonic() + 10
    for conns in by_pid.values():
        while call(conns[0], "/reloaded/score") != 418:
            assert time.monotonic() < deadline, "a worker kept the old config"
            time.sleep(0.1)
    for conns in by_pid.values():
        for conn in conns:
            conn.close()


def test_request_log_lines_never_tear_across_workers(gateway: WorkersProcess, home: Path) -> None:
    """Two workers under load append to one log: every line parses, every call once."""
    by_pid = gateway.connections(per_worker=2)
    ids = [[f"tear-{w}-{i}" for i in range(750)] for w in range(4)]
    conns = [conn for pid in sorted(by_pid) for conn in by_pid[pid][:2]]
    errors: list[BaseException] = []

    def load(conn: http.client.HTTPSConnection, mine: list[str]) -> None:
        try:
            for rid in mine:
                assert call(conn, "/teapot/score", request_id=rid) == 418
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(c, m)) for c, m in zip(conns, ids, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    wanted = {rid for mine in ids for rid in mine}
    log_path = home / "logs" / "gateway-requests.jsonl"
    deadline = time.monotonic() + 10
    while True:
        text = log_path.read_text(encoding="utf-8") if log_path.exists() else ""
        assert text == "" or text.endswith("\n"), "a block ended mid-line"
        records = [json.loads(line) for line in text.splitlines()]  # every line parses
        seen = [r["request_id"] for r in records if r["request_id"] in wanted]
        if len(seen) >= len(wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(seen) == sorted(wanted)
    for conn in conns:
        conn.close()


def test_a_killed_worker_is_replaced(gateway: WorkersProcess) -> None:
    """SIGKILL one worker: the supervisor logs it and starts another on the same port."""
    first = gateway.workers()
    victim = first[0]
    os.kill(victim, signal.SIGKILL)
    gateway.wait_for(rf"pid {victim}\) exited unexpectedly with signal SIGKILL; restarting")
    deadline = time.monotonic() + 15
    while True:
        now = gateway.workers()
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, f"workers now {now}, before {first}"
        time.sleep(0.05)
    replacement = (set(now) - set(first)).pop()
    gateway.wait_for(rf"ready \(pid {replacement}\)")
    by_pid = gateway.connections(per_worker=1)  # both answer, the replacement included
    assert sorted(by_pid) == sorted(now)
    for conns in by_pid.values():
        assert call(conns[0], "/teapot/score") == 418
        conns[0].close()


def test_sigterm_lets_every_worker_finish_in_flight_requests(stack: Stack,
                                                              gateway: WorkersProcess) -> None:
    """SIGTERM to the supervisor: in-flight calls on both workers complete, then all exit 0."""
    workers = gateway.workers()
    by_pid = gateway.connections(per_worker=2)
    token = stack.issuer.mint()
    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def slow(n: int, conn: http.client.HTTPSConnection) -> None:
        try:
            results[n] = call(conn, "/slow/credit-risk/slow", token=token)  # backend: 3 s
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    conns = [conn for pid in sorted(by_pid) for conn in by_pid[pid]]
    threads = [threading.Thread(target=slow, args=(n, c)) for n, c in enumerate(conns)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    gateway.proc.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(15)
    assert not errors, errors
    assert results == {n: 200 for n in range(len(conns))}
    assert gateway.proc.wait(15) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    gateway.wait_for(r"SIGTERM forwarded to workers")
    for pid in workers:
        gateway.wait_for(rf"\(pid {pid}\) stopped")
    assert "Traceback" not in gateway.output
    for conn in conns:
        conn.close()


def test_a_port_held_by_another_program_fails_at_once(stack: Stack, home: Path) -> None:
    """No worker starts, the reason is logged, the exit code is 1."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "app.gateway", "--home", str(home), "--port", str(port),
             "--workers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=30,
            env=dict(os.environ, PYTHONPATH=str(ROOT), MODELGATE_REDIS_URL=stack.redis_url))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "started" not in result.stderr


# -- choosing the number of workers ------------------------------------------------------


@pytest.mark.parametrize("raw", ["0", "65", "-1", "two", "1.5", "", " ", "+2", "²"])
def test_bad_worker_counts_are_refused_by_name(raw: str) -> None:
    with pytest.raises(ValueError, match=rf"^--workers must be a whole number from 1 to "
                                         rf"{MAX_WORKERS}, not "):
        parse_workers(raw, "--workers")


def test_worker_counts() -> None:
    assert parse_workers(" 2 ", "--workers") == 2
    assert parse_workers("64", "--workers") == 64
    assert workers_from_env({}) == 1
    assert workers_from_env({WORKERS_ENV: ""}) == 1
    assert workers_from_env({WORKERS_ENV: "4"}) == 4
    with pytest.raises(ValueError, match=f"^{WORKERS_ENV} must be"):
        workers_from_env({WORKERS_ENV: "0"})


@pytest.mark.parametrize(("argv", "env", "named"), [
    (["--workers", "0"], None, "--workers must be a whole number from 1 to 64, not '0'"),
    (["--workers", "many"], "2", "--workers must be a whole number from 1 to 64, not 'many'"),
    ([], "100", f"{WORKERS_ENV} must be a whole number from 1 to 64, not '100'"),
    ([], "x", f"{WORKERS_ENV} must be a whole number from 1 to 64, not 'x'"),
])
def test_python_m_app_gateway_names_a_bad_worker_count(
        argv: list[str], env: str | None, named: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    if env is None:
        monkeypatch.delenv(WORKERS_ENV, raising=False)
    else:
        monkeypatch.setenv(WORKERS_ENV, env)
    with pytest.raises(SystemExit) as exited:
        gateway_main.main(["--redis-url", "redis://127.0.0.1:9", *argv])
    assert exited.value.code == 2
    assert named in capsys.readouterr().err


@pytest.mark.parametrize(("args", "env", "named"), [
    (["gateway", "--workers", "0"], None, "--workers must be"),
    (["gateway"], "65", f"{WORKERS_ENV} must be"),
    (["up", "--gateway-workers", "x"], None, "--gateway-workers must be"),
    (["up"], "nine", f"{WORKERS_ENV} must be"),
])
def test_modelgate_names_a_bad_worker_count(args: list[str], env: str | None, named: str,
                                            tmp_path: Path) -> None:
    from app.cli import main

    environ: dict[str, Any] = {"MODELGATE_HOME": str(tmp_path), "MODELGATE_REDIS_URL":
                               "redis://127.0.0.1:9", WORKERS_ENV: env}
    result = CliRunner().invoke(main, args, env=environ)
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert not (tmp_path / "logs").exists()  # refused before anything started


def test_modelgate_up_passes_the_count_to_its_gateway(tmp_path: Path) -> None:
    from app.localstack.stack import Stack as LocalStack
    from app.pki import ensure_tls

    local = LocalStack(tmp_path, panel_port=1, issuer_port=2, gateway_port=3, redis_url=None,
                       gateway_workers=3)
    local.tls = ensure_tls(tmp_path)
    gateway = next(s for s in local._plan() if s.name == "gateway")
    assert gateway.argv[-5:] == ["gateway", "--port", "3", "--workers", "3"]


def test_a_block_is_one_write_on_an_append_descriptor(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The request log's flush: one write(2) per block, the file opened with O_APPEND."""
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"first":1}\n')
    block = b"".join(b'{"n":%d,"pad":"%s"}\n' % (i, b"x" * 200) for i in range(2000))
    writes: list[tuple[int, int]] = []
    real_write = os.write

    def counting(fd: int, data: Any) -> int:
        writes.append((fd, len(data)))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting)
    append_block(path, block)
    monkeypatch.undo()
    assert [n for _, n in writes] == [len(block)]  # ~430 KB, far past any stdio buffer
    assert path.read_bytes() == b'{"first":1}\n' + block
