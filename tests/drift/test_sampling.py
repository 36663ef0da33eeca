"""Drift sampling in a real scoring replica: what a stored record holds (nothing about the
caller), the store's bound, the sample rate, and a store that is down."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
import requests

from app.ml.signature import Signature
from app.serving.sampling import RECORD_KEYS, Sampler, SamplingSettings, store_key
from tests.serving.conftest import make_keys, start_replica
from tests.serving.modelpkg import EXAMPLE, FEATURES, build_model_package
from tests.support import RedisServer, wait_for

REQUEST_ID = "caller-chosen-request-id-42"
CALLER_IP = "203.0.113.77"


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_package(tmp_path_factory.mktemp("lr"), "lr")


def rows(n: int, **changes: Any) -> list[dict[str, Any]]:
    return [{**EXAMPLE, "Age": 20 + i % 60, **changes} for i in range(n)]


def post(url: str, key: str, data: list[dict[str, Any]]) -> dict[str, Any]:
    response = requests.post(f"{url}/score", json={"data": data}, timeout=10, headers={
        "Authorization": f"Bearer {key}", "X-Request-ID": REQUEST_ID,
        "X-Forwarded-For": CALLER_IP, "User-Agent": "drift-test-caller/1.0"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_sampled_record_holds_fields_and_prediction_only(
        package: Path, tmp_path: Path, redis_server: RedisServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELGATE_REDIS_URL", redis_server.url)
    keys = make_keys(tmp_path)
    replica = start_replica(package, keys, tmp_path / "replica.log", "--environment", "staging",
                            "--sample-rate", "1", "--sample-flush-seconds", "0.2")
    try:
        sent = rows(5) + [{**EXAMPLE, "Saving accounts": None}]
        answer = post(replica.url, keys.primary, sent)
        client = redis_server.client()
        key = store_key("staging")
        wait_for(lambda: client.llen(key) >= len(sent), 10, "the samples in the store")
        raw = client.lrange(key, 0, -1)
    finally:
        replica.stop()
    assert len(raw) == len(sent)
    text = b"".join(raw).decode()
    for secret in (keys.primary, keys.secondary, REQUEST_ID, CALLER_IP, "drift-test-caller",
                   answer["request_id"]):
        assert secret not in text
    records = [json.loads(item) for item in raw]
    for record, row, prediction in zip(records, sent, answer["predictions"], strict=True):
        # Exactly these keys: the fields, the prediction, model, environment, the hour.
        assert tuple(record) == RECORD_KEYS
        assert set(record) == {"fields", "p_bad", "label", "model", "version", "environment",
                               "hour"}
        assert list(record["fields"]) == FEATURES
        assert record["fields"] == {name: row.get(name) for name in FEATURES}
        assert record["p_bad"] == prediction["probabilities"]["bad"]
        assert record["label"] == prediction["label"]
        assert (record["model"], record["version"]) == ("german-credit", "3")
        assert record["environment"] == "staging"
        # The hour only: an exact time could be matched with the gateway's log of callers.
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:00Z", record["hour"])


def last_duration(client: Any, key: str) -> Any:
    last = client.lindex(key, -1)
    return None if last is None else json.loads(last)["fields"]["Duration"]


def test_the_store_keeps_the_newest_records_up_to_its_bound(
        package: Path, tmp_path: Path, redis_server: RedisServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELGATE_REDIS_URL", redis_server.url)
    keys = make_keys(tmp_path)
    replica = start_replica(package, keys, tmp_path / "replica.log", "--environment", "prod",
                            "--sample-rate", "1", "--sample-max", "50",
                            "--sample-flush-seconds", "0.1")
    client = redis_server.client()
    key = store_key("prod")
    try:
        for duration in (6, 12, 24):
            post(replica.url, keys.primary, rows(40, Duration=duration))
            wait_for(lambda d=duration: last_duration(client, key) == d, 10,
                     f"the batch of duration {duration} stored")
        assert client.llen(key) == 50
        durations = [json.loads(item)["fields"]["Duration"] for item in
                     client.lrange(key, 0, -1)]
        assert durations == [12] * 10 + [24] * 40
        # Another environment's store is another list.
        assert client.llen(store_key("staging")) == 0
    finally:
        replica.stop()


def test_no_sampling_without_a_rate_or_a_store(package: Path, tmp_path: Path,
                                               redis_server: RedisServer,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    keys = make_keys(tmp_path)
    monkeypatch.setenv("MODELGATE_REDIS_URL", redis_server.url)
    off = start_replica(package, keys, tmp_path / "off.log", "--environment", "staging")
    try:
        post(off.url, keys.primary, rows(20))
    finally:
        off.stop()
    monkeypatch.delenv("MODELGATE_REDIS_URL")
    nowhere = start_replica(package, keys, tmp_path / "nowhere.log", "--environment", "staging",
                            "--sample-rate", "1")
    try:
        post(nowhere.url, keys.primary, rows(20))
    finally:
        nowhere.stop()
    assert "drift sampling off" in nowhere.log_text()
    assert redis_server.client().keys("modelgate:drift:*") == []


def _signature(package: Path) -> Signature:
    return Signature.load(package / "signature.json")


def test_the_rate_is_the_share_of_records_kept(package: Path) -> None:
    signature = _signature(package)
    row = tuple(EXAMPLE[name] for name in signature.feature_names)
    prediction = {"label": "good", "probabilities": {"good": 0.7, "bad": 0.3}}
    for rate in (0.1, 0.5):
        sampler = Sampler(SamplingSettings("staging", rate, 1000, "redis://127.0.0.1:1/0",
                                           buffer_limit=100_000),
                          chance=random.Random(7).random)
        for _ in range(200):
            sampler.offer(signature, [row] * 100, [prediction] * 100)
        # Binomial(20000, rate): within five standard deviations of its mean.
        sd = (20_000 * rate * (1 - rate)) ** 0.5
        assert abs(sampler.pending - 20_000 * rate) < 5 * sd, (rate, sampler.pending)
    none = Sampler(SamplingSettings("staging", 0.0, 1000, "redis://127.0.0.1:1/0"))
    none.offer(signature, [row] * 100, [prediction] * 100)
    assert none.pending == 0
    with pytest.raises(ValueError):
        Sampler(SamplingSettings("staging", 1.5, 1000, "redis://127.0.0.1:1/0"))


def test_a_store_that_is_down_costs_samples_never_scores(package: Path) -> None:
    signature = _signature(package)
    row = tuple(EXAMPLE[name] for name in signature.feature_names)
    prediction = {"label": "good", "probabilities": {"good": 0.7, "bad": 0.3}}
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    sampler = Sampler(SamplingSettings("staging", 1.0, 1000, "redis://127.0.0.1:1/0",
                                       buffer_limit=30))
    sampler.offer(signature, [row] * 50, [prediction] * 50)
    assert (sampler.pending, sampler.dropped) == (30, 20)  # the buffer is bounded too

    async def flush_and_close() -> int:
        stored = await sampler.flush()
        await sampler.close()
        return stored

    assert asyncio.run(flush_and_close()) == 0
    assert (sampler.pending, sampler.stored, sampler.dropped) == (0, 0, 50)
