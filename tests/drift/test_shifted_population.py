"""A deliberately shifted population scored through the real gateway raises the drift alert
within one beat period; nothing in the drift store identifies the caller.

Real processes: Redis, a Celery worker with beat (drift check every CHECK_SECONDS), the local
runtime with its scoring replica (sampling at the shipped 10 %), the gateway validating the
caller's JWT, and a webhook receiver.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app.serving.sampling import RECORD_KEYS, store_key
from tests.approvals.test_webhooks import SECRET, Hook
from tests.conftest import build_app
from tests.drift.conftest import CSV, FAST_MODEL, applicants, shifted
from tests.gateway.conftest import Issuer, LoopThread, free_port
from tests.runtime.conftest import Process, Stack, publish_staging
from tests.support import RedisServer, WorkerProcess, child_env, wait_for

CHECK_SECONDS = 6.0
FLUSH_SECONDS = 1.0  # the replicas' default flush interval (app.serving.__main__)
MIN_SAMPLES = 100
PIPELINE_YAML = f"drift: {{min_samples: {MIN_SAMPLES}}}\nruntime: {{ready_timeout_seconds: 60}}\n"
BATCH = 250


@pytest.fixture(scope="module")
def hook() -> Iterator[Hook]:
    with Hook([]) as server:
        yield server


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, hook: Hook) -> Iterator[Stack]:
    from app.ml.workflow import train_and_register
    from app.pki import ensure_tls

    home = tmp_path_factory.mktemp("drift-stack")
    version = train_and_register(home, CSV, job_id="seed", config=FAST_MODEL).model.version
    tls = ensure_tls(home)
    redis = RedisServer(home / "redis").start()
    db_url = f"sqlite:///{home / 'modelgate.db'}"
    pipeline = home / "pipeline.yml"
    pipeline.write_text(PIPELINE_YAML)
    loop = LoopThread()
    issuer = Issuer(loop, home)
    hooks = {"model.drift": hook.url}
    settings = dict(DEPLOY_DRAIN_SECONDS=2, KEY_SWITCH_GRACE_SECONDS=1.5, ISSUER_URL=issuer.url,
                    DRIFT_CHECK_SECONDS=CHECK_SECONDS, WEBHOOK_SECRET=SECRET)
    app = build_app(home, db_url, redis.url, WEBHOOKS=hooks, **settings)
    env = child_env(home, db_url, redis.url, PIPELINE_CONFIG=str(pipeline),
                    WEBHOOKS=json.dumps(hooks), **settings)
    processes: list[Process] = []
    worker = WorkerProcess(home, env, concurrency=2, beat=True)
    try:
        worker.start()
        port = free_port()
        processes.append(Process([sys.executable, "-m", "app.gateway", "--home", str(home),
                                  "--port", str(port), "--redis-url", redis.url], env,
                                 home / "gateway.log"))
        running = Stack(home, app, env, pipeline, issuer, f"https://127.0.0.1:{port}",
                        str(tls.ca_cert), [version], None, processes)  # type: ignore[arg-type]
        running.worker = worker
        running.start_runtime()
        job = running.run("deploy")
        assert job["status"] == "SUCCEEDED", job
        publish_staging(running)
        wait_for(lambda: running.score().status_code == 200, 30, "scoring through the gateway")
        yield running
    finally:
        worker.stop()
        if "running" in locals() and running.runtime is not None:
            running.runtime.stop()
        for process in processes:
            process.stop()
        issuer.stop()
        loop.stop()
        redis.stop()


def score(stack: Stack, token: str, records: list[dict[str, Any]]) -> None:
    """Score records through the gateway as a caller with a token, BATCH rows per request."""
    for start in range(0, len(records), BATCH):
        response = requests.post(f"{stack.gateway_url}/staging/credit-risk/score",
                                 json={"data": records[start:start + BATCH]},
                                 headers={"Authorization": f"Bearer {token}",
                                          "X-Request-ID": f"drift-caller-{start}"},
                                 verify=stack.ca, timeout=30)
        assert response.status_code == 200, response.text


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def latest_check(stack: Stack) -> Any:
    from app.services import drift

    with stack.app.app_context():
        checks = drift.history("staging")
        return drift.check_to_dict(checks[-1]) if checks else None


def test_a_shifted_population_raises_the_alert_within_one_beat_period(
        stack: Stack, hook: Hook) -> None:
    token = stack.issuer.mint(roles=["Score.Invoke"], exp=int(time.time()) + 1800)
    claims = claims_of(token)
    # 2,000 applicants 30 years older asking for four times the credit: at the shipped 10 %
    # the replica samples about 200 of them (fewer than MIN_SAMPLES has odds below 1e-12).
    score(stack, token, shifted(applicants()) * 2)
    scored_at = time.monotonic()

    def alert() -> Any:
        check = latest_check(stack)
        fields = {f["field"]: f["band"] for f in check["fields"]} if check else {}
        return check if fields.get("Age") == "act" else None

    # The last samples reach the store within a flush; the next beat tick checks them.
    check = wait_for(alert, CHECK_SECONDS + FLUSH_SECONDS + 8, "the drift alert")
    waited = time.monotonic() - scored_at
    assert waited <= CHECK_SECONDS + FLUSH_SECONDS + 8
    fields = {f["field"]: f["band"] for f in check["fields"]}
    assert fields["Credit amount"] == "act" and fields["Sex"] == "stable"
    assert check["model"] == {"name": "german-credit", "version": stack.versions[0]}
    assert check["samples"] >= MIN_SAMPLES
    assert {c["field"] for c in check["crossed"]} >= {"Age", "Credit amount"}

    # The webhook, the timeline and the page say so.
    wait_for(lambda: hook.received, 30, "the model.drift webhook")
    event = json.loads(hook.received[0][1])
    assert event["type"] == "model.drift" and event["data"]["environment"] == "staging"
    assert event["data"]["fields"]["Age"]["band"] == "act"
    from app.services import timeline

    with stack.app.app_context():
        assert "model.drift" in [e.action for e in timeline.entries(environment="staging")]
    page = stack.client("alice").get("/drift/staging").get_data(as_text=True)
    assert 'id="drift-alert" data-band="act"' in page and 'id="retrain"' in page

    # A few more records (fewer than a check takes) stay in the store: read them there.
    score(stack, token, shifted(applicants()[:200]))
    client = redis_client(stack)
    wait_for(lambda: client.llen(store_key("staging")) > 0, 10, "samples in the store")
    raw = client.lrange(store_key("staging"), 0, -1)
    text = b"".join(raw).decode()
    for secret in (token, claims["sub"], claims["oid"], "drift-caller-"):
        assert secret not in text
    for item in raw:
        record = json.loads(item)
        assert tuple(record) == RECORD_KEYS
        assert set(record["fields"]) == {"Age", "Sex", "Job", "Housing", "Saving accounts",
                                         "Checking account", "Credit amount", "Duration",
                                         "Purpose"}
        assert record["environment"] == "staging"


def redis_client(stack: Stack) -> Any:
    import redis

    return redis.Redis.from_url(stack.env["MODELGATE_REDIS_URL"], socket_timeout=5)


def test_the_runtime_started_the_replica_with_the_pipeline_files_sampling(stack: Stack) -> None:
    logs = list((stack.home / "logs" / "replicas").glob("*.log"))
    assert logs
    text = "".join(p.read_text(errors="replace") for p in logs)
    assert "drift sampling 0.1 of scored records into staging's store (newest 10000 kept)" \
        in text
    assert stack.env["MODELGATE_REDIS_URL"].split("@")[0] not in text  # no password logged
    assert Path(stack.pipeline).read_text() == PIPELINE_YAML
