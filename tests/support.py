"""Real servers for tests: Redis on a random port with a password, Celery worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from app.localstack.redis_server import RedisSpec, find_redis_binary, free_port, wait_until_ours

ROOT = Path(__file__).resolve().parent.parent


class RedisServer:
    """A redis-server of our own: random free port, requirepass, checked to be ours by pid."""

    def __init__(self, data_dir: Path, *, appendonly: bool = True) -> None:
        self.spec = RedisSpec(binary=find_redis_binary(), port=free_port(),
                              password=uuid.uuid4().hex, data_dir=data_dir)
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return self.spec.url

    def start(self) -> RedisServer:
        command = self.spec.command()
        if not self.appendonly:
            command[command.index("--appendonly") + 1] = "no"
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until_ours(self.spec, self.process)
        return self

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL the server (a crash)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def child_env(home: Path, database_url: str, redis_url: str, **extra: Any) -> dict[str, str]:
    """Environment for a child process of the tests (worker, panel)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELGATE_")}
    env.update({
        "MODELGATE_HOME": str(home),
        "MODELGATE_DATABASE_URL": database_url,
        "MODELGATE_REDIS_URL": redis_url,
        "MODELGATE_DEBUG": "true",
        "PYTHONUNBUFFERED": "1",
    })
    env.update({f"MODELGATE_{k}": str(v) for k, v in extra.items()})
    return env


class WorkerProcess:
    """A real `modelgate worker` (Celery prefork) process, ready when it says so."""

    def __init__(self, home: Path, env: dict[str, str], *, concurrency: int = 2,
                 beat: bool = False) -> None:
        self.home = home
        self.env = env
        self.concurrency = concurrency
        self.beat = beat
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = home / f"worker-{uuid.uuid4().hex[:6]}.log"

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        argv = [sys.executable, "-m", "app", "worker", "--concurrency", str(self.concurrency)]
        if self.beat:
            argv.append("--beat")
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(argv, env=self.env, cwd=str(ROOT), stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        marker = self.home / "run" / f"worker.{self.process.pid}.ready"
        wait_for(lambda: marker.exists() or self.process.poll() is not None, timeout,
                 f"worker ready (log: {self.log_path})")
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{self.log_path.read_text()[-3000:]}")
        return self

    def pool_children(self) -> list[int]:
        """Pids of the worker's pool processes."""
        assert self.process is not None
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.process.pid)],
                             capture_output=True, text=True, check=False).stdout
        return [int(p) for p in out.split()]

    def kill_all(self) -> None:
        """SIGKILL the main process and every child (the whole worker dies at once)."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill_all()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.1) -> Any:
    """Poll until condition() is truthy; fail with `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def refused_at_submit(client: Any, headers: dict[str, str], kind: str,
                      params: dict[str, Any]) -> dict[str, Any]:
    """Post a job with bad params; require a 422 problem and no new job row; return the body."""
    before = client.get("/api/v1/jobs?limit=200").get_json()["jobs"]
    r = client.post("/api/v1/jobs", json={"kind": kind, "params": params}, headers=headers)
    assert r.status_code == 422, r.get_json()
    assert r.mimetype == "application/problem+json"
    assert client.get("/api/v1/jobs?limit=200").get_json()["jobs"] == before
    return dict(r.get_json())
