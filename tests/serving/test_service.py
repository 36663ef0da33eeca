"""The real scoring replica (`python -m app.serving`) over HTTP: auth, errors, answers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
import requests

from tests.serving.conftest import Replica, make_keys, start_replica
from tests.serving.modelpkg import EXAMPLE, FEATURES, ROOT

PROBLEM = "application/problem+json"


def post(
    replica: Replica,
    body: bytes | str,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """POST /score with the given raw body and headers (default: JSON + primary key)."""
    return requests.post(
        f"{replica.url}/score",
        data=body,
        headers=replica.headers() if headers is None else headers,
        timeout=10,
    )


def assert_problem(response: requests.Response, status: int) -> dict[str, Any]:
    """Check a problem+json answer with status/title/detail and return its body."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith(PROBLEM)
    problem = response.json()
    assert problem["status"] == status and problem["title"] and problem["detail"]
    assert "Traceback" not in response.text and ".py" not in response.text
    return problem


def test_example_scores_with_labels_by_name(
    replica: Replica, lr_package: Path, example_body: dict[str, object]
) -> None:
    response = post(replica, json.dumps(example_body))
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"predictions", "model", "request_id"}
    assert body["model"] == {"name": "german-credit", "version": "3"}
    assert response.headers["X-Request-ID"] == body["request_id"]
    # The gateway reads the version from this header instead of parsing every body.
    assert response.headers["X-Model-Version"] == body["model"]["version"]
    (prediction,) = body["predictions"]
    pipeline = joblib.load(lr_package / "model.joblib")
    proba = pipeline.predict_proba(pd.DataFrame([EXAMPLE], columns=FEATURES))[0]
    expected = dict(zip(pipeline.classes_, proba, strict=True))
    assert set(prediction["probabilities"]) == set(pipeline.classes_) == {"bad", "good"}
    for name, value in expected.items():
        assert abs(prediction["probabilities"][name] - value) <= 1e-9
    assert prediction["label"] == ("bad" if expected["bad"] >= 0.42 else "good")


def test_both_keys_work(replica: Replica, example_body: dict[str, object]) -> None:
    for key in (replica.keys.primary, replica.keys.secondary):
        assert post(replica, json.dumps(example_body), replica.headers(key)).status_code == 200


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        "Basic abc",
        "PRIMARY",
        "PREFIX",
        "SUFFIX",
        "Bearer \u00e9\u00e8",
        "Bearer \u043a\u043b\u044e\u0447",
    ],
)
def test_bad_keys_are_401(
    replica: Replica, example_body: dict[str, object], authorization: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    if authorization == "PRIMARY":
        authorization = replica.keys.primary  # the key without the Bearer scheme
    elif authorization == "PREFIX":
        authorization = f"Bearer {replica.keys.primary[:20]}"
    elif authorization == "SUFFIX":
        authorization = f"Bearer {replica.keys.primary}0"
    if authorization is not None:
        headers["Authorization"] = authorization
    encoded = {k: v.encode("utf-8") for k, v in headers.items()}  # raw non-ASCII bytes on the wire
    response = requests.post(
        f"{replica.url}/score", data=json.dumps(example_body), headers=encoded, timeout=10
    )
    problem = assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert replica.keys.primary not in response.text
    assert problem["request_id"]


def test_auth_comes_before_body_checks(replica: Replica) -> None:
    response = post(replica, "not json", {"Content-Type": "text/plain"})
    assert_problem(response, 401)


def test_bad_input_classes(replica: Replica, example_body: dict[str, object]) -> None:
    key = {"Authorization": f"Bearer {replica.keys.primary}"}
    valid = json.dumps(example_body)
    assert_problem(post(replica, valid, {**key, "Content-Type": "text/plain"}), 415)
    assert_problem(post(replica, valid, key), 415)  # no Content-Type at all
    assert_problem(post(replica, '{"data": [', {**key, "Content-Type": "application/json"}), 400)
    big = json.dumps({"data": [EXAMPLE] * 8000})
    assert len(big) > 1024 * 1024
    assert_problem(post(replica, big), 413)
    cases = {
        "data[0].Age": {**EXAMPLE, "Age": -5},
        "data[0].Duration": {**EXAMPLE, "Duration": "long"},
        "data[0].Purpose": {**EXAMPLE, "Purpose": "A499"},
        "data[0].Sex": {k: v for k, v in EXAMPLE.items() if k != "Sex"},
        "data[0].color": {**EXAMPLE, "color": "red"},
    }
    for field, rec in cases.items():
        problem = assert_problem(post(replica, json.dumps({"data": [rec]})), 422)
        assert [e["field"] for e in problem["errors"]] == [field]
        assert all(e["message"] for e in problem["errors"])
    raw = valid.replace('"Credit amount": 100', '"Credit amount": Infinity')
    problem = assert_problem(post(replica, raw), 422)
    assert problem["errors"][0]["field"] == "data[0].Credit amount"
    assert_problem(post(replica, json.dumps({"data": []})), 422)
    problem = assert_problem(post(replica, json.dumps({"data": [EXAMPLE] * 1001})), 422)
    assert problem["errors"][0]["field"] == "data"


def test_chunked_oversized_body_is_413(replica: Replica) -> None:
    chunks = (b'{"data": [' + b" " * 65536 for _ in range(20))
    response = requests.post(
        f"{replica.url}/score", data=chunks, headers=replica.headers(), timeout=10
    )
    assert_problem(response, 413)


def test_null_accounts_and_batches(replica: Replica) -> None:
    records = [
        {**EXAMPLE, "Saving accounts": None},
        {k: v for k, v in EXAMPLE.items() if k != "Checking account"},
        EXAMPLE,
    ]
    body = post(replica, json.dumps({"data": records})).json()
    assert len(body["predictions"]) == 3


def test_request_id_echoed_only_when_sane(
    replica: Replica,
    example_body: dict[str, object],
) -> None:
    raw = json.dumps(example_body)
    response = post(replica, raw, {**replica.headers(), "X-Request-ID": "abc-123.x:y"})
    assert response.headers["X-Request-ID"] == "abc-123.x:y" == response.json()["request_id"]
    for insane in ("a b", "x" * 500, "<script>", "-leading"):
        response = post(replica, raw, {**replica.headers(), "X-Request-ID": insane})
        assert response.headers["X-Request-ID"] != insane
        assert len(response.headers["X-Request-ID"]) == 32


def test_health_and_openapi(replica: Replica) -> None:
    assert requests.get(f"{replica.url}/health/live", timeout=5).status_code == 200
    ready = requests.get(f"{replica.url}/health/ready", timeout=5).json()
    assert ready["status"] == "ready" and ready["compute_path"] == "fastpath"
    spec = requests.get(f"{replica.url}/openapi.json", timeout=5).json()
    record = spec["components"]["schemas"]["Record"]
    assert record["properties"]["Age"] == {"type": "integer", "minimum": 18, "maximum": 120}
    assert None in record["properties"]["Saving accounts"]["enum"]
    assert "Saving accounts" not in record["required"] and "Age" in record["required"]
    assert spec["components"]["schemas"]["ScoreRequest"]["properties"]["data"]["maxItems"] == 1000
    assert_problem(requests.get(f"{replica.url}/nowhere", timeout=5), 404)
    assert_problem(requests.get(f"{replica.url}/score", timeout=5), 405)


def test_rotation_takes_effect_without_restart(
    lr_package: Path, tmp_path: Path, example_body: dict[str, object]
) -> None:
    keys = make_keys(tmp_path)
    replica = start_replica(lr_package, keys, tmp_path / "replica.log")
    try:
        old_primary, old_secondary = keys.primary, keys.secondary
        raw = json.dumps(example_body)
        assert post(replica, raw, replica.headers(old_primary)).status_code == 200
        keys.rotate()
        for old in (old_primary, old_secondary):
            assert_problem(post(replica, raw, replica.headers(old)), 401)
        for new in (keys.primary, keys.secondary):
            assert post(replica, raw, replica.headers(new)).status_code == 200
    finally:
        assert replica.stop() == 0
    log = replica.log_text()
    for secret in (old_primary, old_secondary, keys.primary, keys.secondary):
        assert secret not in log
    assert "Traceback" not in log


def test_sigterm_finishes_in_flight_request(
    lr_package: Path, tmp_path: Path, example_body: dict[str, object]
) -> None:
    replica = start_replica(lr_package, make_keys(tmp_path), tmp_path / "replica.log")
    body = json.dumps(example_body).encode()
    port = int(replica.url.rsplit(":", 1)[1])
    head = (
        f"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {replica.keys.primary}\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body[:10])  # the request is in flight: half of its body sent
        time.sleep(0.3)
        replica.process.send_signal(15)
        time.sleep(0.3)
        sock.sendall(body[10:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert replica.process.wait(timeout=20) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{replica.url}/health/live", timeout=2)


def test_json_with_charset_is_accepted(replica: Replica, example_body: dict[str, object]) -> None:
    headers = {**replica.headers(), "Content-Type": "application/json; charset=utf-8"}
    assert post(replica, json.dumps(example_body), headers).status_code == 200


def test_workers_share_one_port_and_stop_on_sigterm(
    lr_package: Path, tmp_path: Path, example_body: dict[str, object]
) -> None:
    replica = start_replica(
        lr_package, make_keys(tmp_path), tmp_path / "replica.log", "--workers", "2"
    )
    try:
        deadline = time.monotonic() + 30
        while replica.log_text().count("ready on the") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # a worker answers 503 until its own model is loaded
        for _ in range(20):  # fresh connections, spread by the kernel over both listeners
            with requests.Session() as session:
                response = session.post(
                    f"{replica.url}/score",
                    data=json.dumps(example_body),
                    headers=replica.headers(),
                    timeout=10,
                )
                assert response.status_code == 200
    finally:
        assert replica.stop() == 0
    log = replica.log_text()
    # Both workers bound the same port (only possible with SO_REUSEPORT) and exited cleanly.
    assert log.count("listening on") == 2 and log.count("stopped") == 2
    assert "Traceback" not in log and replica.keys.primary not in log


def test_fallback_is_reported_in_readiness(
    lr_package: Path, tmp_path: Path, example_body: dict[str, object]
) -> None:
    from sklearn.ensemble import RandomForestClassifier

    from tests.serving.modelpkg import build_model_package, load_frame

    package = build_model_package(tmp_path / "rf", "lr")
    pipeline = joblib.load(package / "model.joblib")
    pipeline.set_params(classifier=RandomForestClassifier(n_estimators=5, random_state=0))
    joblib.dump(pipeline.fit(*load_frame()), package / "model.joblib")
    replica = start_replica(package, make_keys(tmp_path), tmp_path / "replica.log")
    try:
        ready = requests.get(f"{replica.url}/health/ready", timeout=5).json()
        assert ready["compute_path"] == "sklearn"
        assert "RandomForestClassifier" in ready["fallback_reason"]
        response = post(replica, json.dumps(example_body))
        assert response.status_code == 200
        assert set(response.json()["predictions"][0]["probabilities"]) == {"bad", "good"}
    finally:
        replica.stop()
    assert "fast path unavailable" in replica.log_text()


def test_replica_entry_pins_one_numeric_thread() -> None:
    script = (
        "import sys, app.serving.__main__\n"
        "assert 'numpy' not in sys.modules\n"
        "import numpy, threadpoolctl\n"
        "print(sorted({p['num_threads'] for p in threadpoolctl.threadpool_info()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "[1]"


def test_bad_package_exits_without_binding(lr_package: Path, tmp_path: Path) -> None:
    package = tmp_path / "broken"
    package.mkdir()
    (package / "signature.json").write_text((lr_package / "signature.json").read_text())
    (package / "model.joblib").write_bytes(b"not a pickle")
    keys = make_keys(tmp_path)
    with pytest.raises(RuntimeError, match="exited early"):
        start_replica(package, keys, tmp_path / "replica.log")
    log = (tmp_path / "replica.log").read_text()
    assert "not binding the port" in log and "listening on" not in log


def test_bind_early_serves_health_while_loading(
    lr_package: Path, tmp_path: Path, example_body: dict[str, object]
) -> None:
    replica = start_replica(
        lr_package, make_keys(tmp_path), tmp_path / "replica.log", "--bind-early"
    )
    try:
        assert post(replica, json.dumps(example_body)).status_code == 200
    finally:
        assert replica.stop() == 0
    log = replica.log_text()
    assert log.index("listening on") < log.index("ready on the")
