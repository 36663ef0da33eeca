"""`modelgate up` on a fresh MODELGATE_HOME: ready, endpoints.json, restarts, clean Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from app.cli import BEAT_PROCESS_NAME
from tests.support import ROOT, wait_for


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


def test_up_starts_everything_restarts_a_dead_child_and_stops_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "instance"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    env["MODELGATE_HOME"] = str(home)
    up = subprocess.Popen(
        [sys.executable, "-m", "app", "up", "--panel-port", "0", "--issuer-port", "0",
         "--gateway-port", "0"],
        cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        endpoints_file = home / "endpoints.json"
        wait_for(lambda: endpoints_file.exists() or up.poll() is not None, 90, "endpoints.json")
        assert up.poll() is None, up.stdout.read().decode() if up.stdout else ""
        endpoints = json.loads(endpoints_file.read_text())
        assert set(endpoints) >= {"panel", "issuer", "gateway", "ca_bundle", "redis"}
        assert endpoints["panel"].startswith("http://127.0.0.1:")
        assert "@" not in endpoints["redis"], "the Redis password must not be published"
        assert requests.get(endpoints["panel"] + "/health", timeout=5).status_code == 200
        assert requests.get(endpoints["panel"] + "/health?deep=1", timeout=5).status_code == 200
        discovery = requests.get(endpoints["issuer"] + "/.well-known/openid-configuration",
                                 verify=endpoints["ca_bundle"], timeout=5).json()
        assert discovery["issuer"] == endpoints["issuer"]
        assert (home / "dev-credentials.json").stat().st_mode & 0o077 == 0
        secret = home / "secret_key"
        assert secret.stat().st_mode & 0o077 == 0

        # A child that dies is restarted.
        first = _panel_pid(home)
        assert first is not None
        os.killpg(first, signal.SIGKILL)
        wait_for(lambda: (p := _panel_pid(home)) is not None and p != first, 30,
                 "the panel to be restarted")
        wait_for(lambda: _healthy(endpoints["panel"]), 30, "the restarted panel")

        children = _processes_of(home) - {up.pid}
        assert len(children) >= 3  # redis, panel (+ its workers), worker (+ its pool)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            code = up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert code == 0
    assert not (home / "endpoints.json").exists()
    wait_for(lambda: not _processes_of(home), 10, "every child process to be gone")


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


def test_killing_the_workers_main_process_leaves_exactly_one_beat(tmp_path: Path) -> None:
    """Its beat child dies with the old group; the restarted worker's beat is the only one."""
    home = tmp_path / "instance"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    env["MODELGATE_HOME"] = str(home)
    up = subprocess.Popen(
        [sys.executable, "-m", "app", "up", "--panel-port", "0", "--issuer-port", "0",
         "--gateway-port", "0"],
        cwd=str(ROOT), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: (home / "endpoints.json").exists() or up.poll() is not None, 90,
                 "endpoints.json")
        assert up.poll() is None
        first_beat = wait_for(lambda: _beat_pids(home), 30, "the embedded beat")
        assert len(first_beat) == 1
        worker = _worker_pid(home)
        assert worker is not None

        os.kill(worker, signal.SIGKILL)  # the main process only, as an OOM kill would
        wait_for(lambda: (p := _worker_pid(home)) is not None and p != worker, 30,
                 "the worker to be restarted")
        wait_for(lambda: _beat_pids(home) - first_beat, 60, "the new worker's beat")
        assert len(_beat_pids(home)) == 1, "two schedulers run: the old beat was orphaned"
    finally:
        up.send_signal(signal.SIGINT)
        try:
            code = up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert code == 0
    assert not _beat_pids(home), "a beat outlived modelgate up"
    assert not _processes_of(home)
