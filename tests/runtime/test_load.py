"""Steady open-loop load through the gateway while slots, keys and replicas change under it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from bench.loadgen import LoadResult, run_load_async
from tests.runtime.conftest import EXAMPLE, ROOT, Stack
from tests.support import wait_for

RATE = 50.0
BODY = json.dumps({"data": [EXAMPLE]}).encode()
FIGURES: dict[str, dict[str, Any]] = {}


def _load(stack: Stack, duration: float) -> asyncio.Task[LoadResult]:
    """Start open-loop load at the staging API through the gateway (HTTPS, a user's token)."""
    ctx = ssl.create_default_context(cafile=stack.ca)
    return asyncio.create_task(run_load_async(
        f"{stack.gateway_url}/staging/credit-risk/score", BODY,
        {"Content-Type": "application/json", "Authorization": f"Bearer {stack.token()}"},
        rate=RATE, duration_s=duration, ssl=ctx, timeout_s=5.0, keep_samples=True))


def _record(name: str, result: LoadResult) -> None:
    FIGURES[name] = {k: v for k, v in result.to_dict().items()
                     if k in ("planned", "sent", "ok", "failed", "statuses", "p50_ms", "p99_ms",
                              "max_ms", "sent_ratio")}
    print(f"\n[{name}] {result.summary()}")


def test_redeploy_and_key_rotation_under_load_lose_nothing(deployed: Stack) -> None:
    stack = deployed
    target = stack.versions[1]
    duration = 30.0

    async def scenario() -> tuple[LoadResult, dict[str, Any], dict[str, Any], float]:
        t0 = time.monotonic()
        load = _load(stack, duration)
        await asyncio.sleep(1.0)
        deploy = await asyncio.to_thread(stack.run, "deploy", {"version": target})
        rotation = await asyncio.to_thread(stack.run, "rotate-keys", {"environment": "staging"})
        done_at = time.monotonic() - t0
        return await load, deploy, rotation, done_at

    result, deploy, rotation, done_at = asyncio.run(scenario())
    _record("redeploy+rotation", result)
    assert deploy["status"] == "SUCCEEDED", deploy
    assert rotation["status"] == "SUCCEEDED", rotation
    assert done_at < duration, "the jobs must finish while the load still runs"
    assert deploy["result"]["replaced"], "a slot was replaced"
    assert result.failed == 0, result.summary()
    assert result.sent_ratio >= 0.99, result.summary()
    assert stack.score().json()["model"]["version"] == target


def test_negative_control_switch_before_ready_is_detected(deployed: Stack) -> None:
    """Pointing the gateway at a slot that is still loading must show up in the harness."""
    from app.backends.local import gateway as gateway_config
    from app.backends.local.slots import keys_file, model_dir

    stack = deployed
    url, primary, _ = stack.keys()
    with stack.app.app_context():
        from app.services import deployments

        active = deployments.active_row("staging")
        assert active is not None
        active_id, package = active.id, model_dir(stack.home, active.model_name,
                                                              active.model_version)
    port = _free_port()
    early = f"http://127.0.0.1:{port}"

    async def scenario() -> LoadResult:
        load = _load(stack, 8.0)
        await asyncio.sleep(1.0)
        gateway_config.set_backend(stack.home, "staging", early, primary)  # nothing ready
        await asyncio.sleep(1.5)
        replica = subprocess.Popen(
            [sys.executable, "-m", "app.serving", "--model-dir", str(package), "--keys-file",
             str(keys_file(stack.home, active_id)), "--port", str(port)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await asyncio.to_thread(wait_for, lambda: _ready(early), 30, "early replica")
            await asyncio.sleep(0.5)
        finally:
            gateway_config.set_backend(stack.home, "staging", url, primary)
            await asyncio.sleep(1.5)
            replica.send_signal(signal.SIGTERM)
            await asyncio.to_thread(replica.wait, 30)
        return await load

    result = asyncio.run(scenario())
    _record("negative control", result)
    detected = result.failed > 0 or result.sent_ratio < 0.99 or result.max_ms > 1000
    assert detected, f"the harness missed an unsafe switch: {result.summary()}"
    assert stack.score().status_code == 200


def test_killed_replica_is_restarted_and_only_that_window_fails(deployed: Stack) -> None:
    stack = deployed
    with stack.app.app_context():
        from app.services import deployments

        active = deployments.active_row("staging")
        assert active is not None
        dep_id = active.id
    victim = stack.status()["deployments"][dep_id]["replicas"][0]["pid"]
    assert victim

    def restarted() -> int | None:
        replica = stack.status()["deployments"][dep_id]["replicas"][0]
        ok = replica["state"] == "ready" and replica["pid"] not in (None, victim)
        return replica["pid"] if ok else None

    async def scenario() -> tuple[LoadResult, float, float, int]:
        t0 = time.monotonic()
        load = _load(stack, 10.0)
        await asyncio.sleep(2.0)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic() - t0
        new_pid = await asyncio.to_thread(wait_for, restarted, 30, "replica restarted", 0.05)
        ready_at = time.monotonic() - t0
        return await load, killed_at, ready_at, int(new_pid)

    result, killed_at, ready_at, new_pid = asyncio.run(scenario())
    _record("replica killed", result)
    FIGURES["replica killed"]["down_s"] = round(ready_at - killed_at, 2)
    assert new_pid != victim
    failures = [s for s in result.samples if not s.status.startswith("2")]
    # A request fails only if it was sent while no replica was up (in flight at the kill, or
    # before the restarted replica listened); the margin covers latency and polling.
    outside = [s for s in failures
               if not killed_at - 1.0 <= s.start_offset_s <= ready_at + 0.5]
    assert not outside, (outside[:5], killed_at, ready_at, result.summary())
    after = [s for s in result.samples if s.start_offset_s > ready_at + 0.5]
    assert after and all(s.status.startswith("2") for s in after)
    assert result.sent_ratio >= 0.99


def test_killing_one_of_two_replicas_loses_nothing(deployed: Stack) -> None:
    """With another replica on the shared port, a killed one costs at most what it was serving."""
    from tests.runtime.conftest import PIPELINE_YAML

    stack = deployed
    stack.pipeline.write_text(PIPELINE_YAML.format(ready=60) + "environments:\n"
                              "  staging: {replicas: 2, cpu: 0.25, memory_mb: 256}\n")
    try:
        job = stack.run("deploy", {"version": stack.versions[1]})
    finally:
        stack.pipeline.write_text(PIPELINE_YAML.format(ready=60))
    assert job["status"] == "SUCCEEDED", job
    dep_id = job["result"]["deployment_id"]
    victim = stack.status()["deployments"][dep_id]["replicas"][0]["pid"]

    async def scenario() -> tuple[LoadResult, float]:
        t0 = time.monotonic()
        load = _load(stack, 8.0)
        await asyncio.sleep(2.0)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic() - t0  # before awaiting the load, which runs for 8 s
        return await load, killed_at

    result, killed_at = asyncio.run(scenario())
    _record("one of two replicas killed", result)
    # Only a request the killed process was serving at that instant can be lost (at 50 rps
    # and a few ms each, that is rarely more than one); everything else goes to the other.
    failures = [s for s in result.samples if not s.status.startswith("2")]
    assert len(failures) <= 2, result.summary()
    assert all(abs(s.start_offset_s - killed_at) < 1.0 for s in failures), failures
    assert result.sent_ratio >= 0.99
    wait_for(lambda: stack.status()["deployments"][dep_id]["replicas_ready"] == 2, 30,
             "the killed replica back")


def test_runtime_restart_restores_the_deployment_on_its_port(deployed: Stack) -> None:
    stack = deployed
    url, primary, _ = stack.keys()
    assert stack.runtime.stop() == 0
    assert not _ready(url), "replicas stop with the runtime"
    stack.start_runtime()
    wait_for(lambda: _ready(url), 30, "restored slot ready on the same port")
    wait_for(lambda: stack.score().status_code == 200, 10, "scoring through the gateway")


def test_rollback_returns_to_the_previous_version(deployed: Stack) -> None:
    stack = deployed
    with stack.app.app_context():
        from app.services import deployments

        prev = deployments.previous("staging")
        assert prev is not None
        expected = prev.model_version
    job = stack.run("deploy", {"rollback": True})
    assert job["status"] == "SUCCEEDED", job
    assert job["result"]["model"]["version"] == expected and job["result"]["rollback"]
    assert stack.score().json()["model"]["version"] == expected


def test_no_key_reaches_a_log_or_a_job(deployed: Stack) -> None:
    stack = deployed
    stack.keys()
    assert stack.seen_keys
    logs = [p for p in Path(stack.home).rglob("*.log") if p.is_file()]
    logs += list((Path(stack.home) / "logs").rglob("*"))
    text = "\n".join(p.read_text(errors="replace") for p in logs if p.is_file())
    database = (Path(stack.home) / "modelgate.db").read_bytes()
    for key in stack.seen_keys:
        assert key not in text
        assert key.encode() not in database  # only Fernet tokens are stored
    client = stack.client()
    jobs = json.dumps(client.get("/api/v1/jobs?limit=200").get_json())
    for key in stack.seen_keys:
        assert key not in jobs
    print("\nload figures:", json.dumps(FIGURES, indent=1))


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/health/ready", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
