"""Replicas joining and leaving a shared port under steady load lose no request."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.loadgen import LoadResult, run_load_async
from tests.serving.conftest import make_keys, start_replica
from tests.serving.modelpkg import EXAMPLE, ROOT


def test_join_and_leave_under_open_loop_load(lr_package: Path, tmp_path: Path) -> None:
    keys = make_keys(tmp_path)
    first = start_replica(lr_package, keys, tmp_path / "first.log")
    port = first.url.rsplit(":", 1)[1]
    second_log = tmp_path / "second.log"

    async def scenario() -> LoadResult:
        load = asyncio.create_task(
            run_load_async(
                f"{first.url}/score",
                json.dumps({"data": [EXAMPLE]}).encode(),
                first.headers(),
                rate=100.0,
                duration_s=6.0,
                keep_samples=True,
            )
        )
        await asyncio.sleep(0.5)
        # A second replica joins the same port while traffic flows; it binds only once ready.
        second = await asyncio.to_thread(_start_on_port, lr_package, keys.path, port, second_log)
        await asyncio.sleep(1.0)
        first.process.send_signal(signal.SIGTERM)  # the original leaves, gracefully
        result = await load
        second.send_signal(signal.SIGTERM)
        await asyncio.to_thread(second.wait, 20)
        return result

    result = asyncio.run(scenario())
    assert first.process.wait(timeout=20) == 0
    assert result.failed == 0, result.summary()
    assert result.sent_ratio >= 0.99 and result.ok == result.sent
    assert "listening on" in second_log.read_text()


def _start_on_port(
    model_dir: Path,
    keys_file: Path,
    port: str,
    log_path: Path,
) -> subprocess.Popen[bytes]:
    """Start a replica on an already used port and wait for it to listen."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.serving",
                "--model-dir",
                str(model_dir),
                "--keys-file",
                str(keys_file),
                "--port",
                port,
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while "listening on" not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    return process
