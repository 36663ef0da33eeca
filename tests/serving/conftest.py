"""Fixtures: fitted model packages, keys, and a real scoring replica process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from app.serving.keys import generate_keys, write_keys_file
from tests.serving.modelpkg import EXAMPLE, ROOT, build_model_package


@pytest.fixture(scope="session")
def lr_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LogisticRegression model package fitted on the real CSV."""
    return build_model_package(tmp_path_factory.mktemp("lr"), "lr")


@pytest.fixture(scope="session")
def gb_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GradientBoostingClassifier model package fitted on the real CSV."""
    return build_model_package(tmp_path_factory.mktemp("gb"), "gb")


@dataclass
class Keys:
    """A keys file and the plaintext keys whose digests it holds."""

    path: Path
    primary: str
    secondary: str

    def rotate(self) -> None:
        """Replace both keys (atomically on disk)."""
        self.primary, self.secondary = generate_keys()
        write_keys_file(self.path, self.primary, self.secondary)


def make_keys(directory: Path) -> Keys:
    """Fresh keys written to directory/keys.json."""
    primary, secondary = generate_keys()
    path = directory / "keys.json"
    write_keys_file(path, primary, secondary)
    return Keys(path, primary, secondary)


def free_port() -> int:
    """A currently free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Replica:
    """A running `python -m app.serving` process."""

    process: subprocess.Popen[bytes]
    url: str
    keys: Keys
    log_path: Path

    def headers(self, key: str | None = None) -> dict[str, str]:
        """JSON content type and the primary key (or the given one)."""
        return {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {key if key is not None else self.keys.primary}",
        }

    def log_text(self) -> str:
        """Everything the replica wrote to stdout/stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        """SIGTERM and wait for exit; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=5)


def start_replica(model_dir: Path, keys: Keys, log_path: Path, *extra: str) -> Replica:
    """Start a replica on a free port and wait until /health/ready is 200."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    command = [
        sys.executable,
        "-m",
        "app.serving",
        "--model-dir",
        str(model_dir),
        "--keys-file",
        str(keys.path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    replica = Replica(process, f"http://127.0.0.1:{port}", keys, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"replica exited early:\n{replica.log_text()}")
        try:
            if requests.get(f"{replica.url}/health/ready", timeout=1).status_code == 200:
                return replica
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    replica.stop()
    raise RuntimeError(f"replica not ready in time:\n{replica.log_text()}")


@pytest.fixture(scope="module")
def replica(lr_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    """A real LR scoring replica shared by a test module."""
    directory = tmp_path_factory.mktemp("replica")
    running = start_replica(lr_package, make_keys(directory), directory / "replica.log")
    yield running
    running.stop()


@pytest.fixture()
def example_body() -> dict[str, object]:
    """The seed's example request."""
    return {"data": [dict(EXAMPLE)]}
