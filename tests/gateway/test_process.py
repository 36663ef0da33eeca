"""`python -m app.gateway`: HTTPS from the instance's TLS material, graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tests.gateway.conftest import Stack, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_serve_https_and_graceful_sigterm(stack: Stack) -> None:
    """The process serves HTTPS; SIGTERM lets an in-flight request finish, then exits 0."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.gateway", "--home", str(stack.home), "--port", str(port),
         "--redis-url", stack.redis_url],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{base}/health", verify=stack.ca, timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.1)
        result: dict[str, int] = {}

        def slow_call() -> None:
            token = stack.issuer.mint()
            result["status"] = requests.post(
                f"{base}/slow/credit-risk/slow", json={}, verify=stack.ca, timeout=15,
                headers={"Authorization": f"Bearer {token}"}).status_code

        worker = threading.Thread(target=slow_call)
        worker.start()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        worker.join(15)
        assert result.get("status") == 200
        assert proc.wait(15) == 0
        output = proc.stdout.read().decode() if proc.stdout else ""
        assert "Traceback" not in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
