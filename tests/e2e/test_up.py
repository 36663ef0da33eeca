"""`modelgate up` on a fresh MODELGATE_HOME: ready, endpoints.json, restarts, clean Ctrl-C.

One `up` serves the whole module; the last test stops it with Ctrl-C (SIGINT).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from app.cli import BEAT_PROCESS_NAME
from tests.support import ROOT, wait_for


@dataclass
class Up:
    """A running `modelgate up` on a fresh home, its endpoints and its output file."""

    process: subprocess.Popen[bytes]
    home: Path
    endpoints: dict[str, Any]
    log: Path

    def stop(self) -> int:
        """Ctrl-C, as a person would; return the exit code (idempotent)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise
        return self.process.returncode


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    tmp_path = tmp_path_factory.mktemp("up")
    home = tmp_path / "instance"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    env["MODELGATE_HOME"] = str(home)
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "up", "--panel-port", "0", "--issuer-port", "0",
             "--gateway-port", "0"],
            cwd=str(ROOT), env=env, stdout=out, stderr=subprocess.STDOUT)
    running = Up(process, home, {}, log)
    try:
        endpoints_file = home / "endpoints.json"
        wait_for(lambda: endpoints_file.exists() or process.poll() is not None, 90,
                 "endpoints.json")
        assert process.poll() is None, log.read_text()
        running.endpoints = json.loads(endpoints_file.read_text())
        yield running
    finally:
        running.stop()


def _processes_of(home: Path) -> set[int]:
    """Pids of live processes started for this MODELGATE_HOME (found by their environment)."""
    marker = f"MODELGATE_HOME={home}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.add(int(entry.name))
        except OSError:
            continue
    return found


def _panel_pid(home: Path) -> int | None:
    for pid in _processes_of(home):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"panel" in cmd and os.getpgid(pid) == pid:
            return pid
    return None


def _healthy(url: str) -> bool:
    try:
        return requests.get(url + "/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _beat_pids(home: Path) -> set[int]:
    """Live Celery beat schedulers of this home (they name themselves modelgate-beat)."""
    found = set()
    for pid in _processes_of(home):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == BEAT_PROCESS_NAME:
                found.add(pid)
        except OSError:
            continue
    return found


def _worker_pid(home: Path) -> int | None:
    """The worker's main process: the leader of its own process group."""
    for pid in _processes_of(home):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"worker" in cmd and os.getpgid(pid) == pid:
                return pid
        except OSError:
            continue
    return None


def test_up_starts_everything(up: Up) -> None:
    endpoints = up.endpoints
    assert set(endpoints) >= {"panel", "issuer", "gateway", "ca_bundle", "redis"}
    assert endpoints["panel"].startswith("http://127.0.0.1:")
    assert "@" not in endpoints["redis"], "the Redis password must not be published"
    assert requests.get(endpoints["panel"] + "/health", timeout=5).status_code == 200
    assert requests.get(endpoints["panel"] + "/health?deep=1", timeout=5).status_code == 200
    discovery = requests.get(endpoints["issuer"] + "/.well-known/openid-configuration",
                             verify=endpoints["ca_bundle"], timeout=5).json()
    assert discovery["issuer"] == endpoints["issuer"]
    assert (up.home / "dev-credentials.json").stat().st_mode & 0o077 == 0
    assert (up.home / "secret_key").stat().st_mode & 0o077 == 0
    children = _processes_of(up.home) - {up.process.pid}
    assert len(children) >= 3  # redis, panel (+ its workers), worker (+ its pool)


def test_a_dead_child_is_restarted(up: Up) -> None:
    first = _panel_pid(up.home)
    assert first is not None
    os.killpg(first, signal.SIGKILL)
    wait_for(lambda: (p := _panel_pid(up.home)) is not None and p != first, 30,
             "the panel to be restarted")
    wait_for(lambda: _healthy(up.endpoints["panel"]), 30, "the restarted panel")


def test_killing_the_workers_main_process_leaves_exactly_one_beat(up: Up) -> None:
    """Its beat child dies with the old group; the restarted worker's beat is the only one."""
    first_beat = wait_for(lambda: _beat_pids(up.home), 30, "the embedded beat")
    assert len(first_beat) == 1
    worker = _worker_pid(up.home)
    assert worker is not None

    os.kill(worker, signal.SIGKILL)  # the main process only, as an OOM kill would
    wait_for(lambda: (p := _worker_pid(up.home)) is not None and p != worker, 30,
             "the worker to be restarted")
    wait_for(lambda: _beat_pids(up.home) - first_beat, 60, "the new worker's beat")
    assert len(_beat_pids(up.home)) == 1, "two schedulers run: the old beat was orphaned"


def test_ctrl_c_stops_every_process(up: Up) -> None:
    assert up.process.poll() is None, up.log.read_text()
    assert up.stop() == 0, up.log.read_text()
    assert not (up.home / "endpoints.json").exists()
    wait_for(lambda: not _processes_of(up.home), 10, "every child process to be gone")
    assert not _beat_pids(up.home), "a beat outlived modelgate up"
