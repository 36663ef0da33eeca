"""§3.6 B (27–31), key rotation, issuer outage, hot reload, logs and metrics, against real parts."""

from __future__ import annotations

import copy
import http.client
import json
import ssl
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from app.gateway.app import create_gateway_app, server_ssl_context
from app.gateway.config import ConfigError, write_gateway_config
from app.gateway.state import GatewaySettings
from tests.gateway.conftest import (
    BACKEND_KEY,
    SigningKey,
    Stack,
    api_entry,
    free_port,
)


def test_health_and_metrics(stack: Stack) -> None:
    """GET /health is 200 and /metrics exposes per-API counters and latency histograms."""
    assert stack.score(stack.issuer.mint()).status_code == 200
    s = stack.session()
    assert s.get(f"{stack.url}/health", timeout=5).status_code == 200
    text = s.get(f"{stack.url}/metrics", timeout=5).text
    assert 'modelgate_gateway_requests_total{api="credit-risk",status="200"}' in text
    assert "modelgate_gateway_request_seconds_bucket" in text
    assert "modelgate_gateway_backend_seconds_bucket" in text
    assert "modelgate_gateway_jwks_fetch_attempts" in text


def test_unknown_path_404_wrong_method_405(stack: Stack) -> None:
    """Unrouted paths are 404 and a known path with another method is 405, as problem+json."""
    s = stack.session()
    assert s.post(f"{stack.url}/nope/score", timeout=5).status_code == 404
    resp = s.get(f"{stack.url}/credit-risk/score", timeout=5)
    assert resp.status_code == 405
    assert resp.headers["Content-Type"].startswith("application/problem+json")


def test_27_rate_limit_429_with_retry_after_per_caller(stack: Stack) -> None:
    """Caller A is limited (429 + Retry-After) while caller B, sharing nothing, still gets 200."""
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    token_a = stack.issuer.mint(oid=a)
    for _ in range(5):
        assert stack.score(token_a, "limited/credit-risk/score").status_code == 200
    resp = stack.score(token_a, "limited/credit-risk/score")
    assert resp.status_code == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 2 * 60  # sliding window: up to 1.2 periods
    assert resp.json()["status"] == 429
    # a fresh token of the same caller is the same caller
    assert stack.score(stack.issuer.mint(oid=a), "limited/credit-risk/score").status_code == 429
    for _ in range(5):
        assert stack.score(stack.issuer.mint(oid=b), "limited/credit-risk/score").status_code == 200


def test_27_rate_limit_under_concurrency(stack: Stack) -> None:
    """8 threads hammering as one caller: exactly the limit is accepted, the rest is 429 (R14)."""
    token = stack.issuer.mint(oid=uuid.uuid4().hex)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: stack.score(token, "limited/credit-risk/score")
                              .status_code, range(24)))
    assert codes.count(200) == 5
    assert codes.count(429) == 19


def test_28_spoofed_forwarding_headers_do_not_reset_the_counter(stack: Stack) -> None:
    """The counter is keyed by the validated oid, not X-Forwarded-For or other client headers."""
    oid = uuid.uuid4().hex
    for _ in range(5):
        stack.score(stack.issuer.mint(oid=oid), "limited/credit-risk/score")
    for i in range(3):
        resp = stack.score(stack.issuer.mint(oid=oid, sub=f"other-{i}"),
                           "limited/credit-risk/score",
                           headers={"X-Forwarded-For": f"10.0.0.{i}", "X-Real-IP": f"10.1.0.{i}",
                                    "X-Request-ID": f"spoof-{i}"})
        assert resp.status_code == 429


def test_29_caller_token_never_reaches_backend_and_key_never_reaches_caller(stack: Stack) -> None:
    """B sees only the injected key; hop-by-hop and forwarding headers are the gateway's own."""
    token = stack.issuer.mint()
    resp = stack.score(token, headers={"X-Forwarded-For": "6.6.6.6", "Connection": "X-Secret",
                                       "X-Secret": "hop", "Proxy-Authorization": "Basic eA==",
                                       "X-Request-ID": "req-123"})
    assert resp.status_code == 200
    seen = stack.backend.seen[-1]
    assert seen["Authorization"] == f"Bearer {BACKEND_KEY}"
    assert token not in json.dumps(seen)
    assert seen["X-Forwarded-For"] == "127.0.0.1"
    assert "X-Secret" not in seen and "Proxy-Authorization" not in seen
    assert seen["X-Request-ID"] == "req-123"
    assert resp.headers["X-Request-ID"] == "req-123"
    assert BACKEND_KEY not in resp.text and BACKEND_KEY not in json.dumps(dict(resp.headers))
    assert "X-Backend" in resp.headers  # end-to-end headers pass through
    assert resp.headers["Server"] == "modelgate-gateway"


def test_29_backend_echoing_the_key_is_blocked(stack: Stack) -> None:
    """A backend that echoes the injected key gets a 502, so the key never reaches the caller."""
    resp = stack.score(stack.issuer.mint(), "leak/credit-risk/leak")
    assert resp.status_code == 502
    assert BACKEND_KEY not in resp.text


def test_insane_request_id_is_replaced(stack: Stack) -> None:
    """A request id with odd characters is replaced by a generated one."""
    resp = stack.score(stack.issuer.mint(), headers={"X-Request-ID": "a b<script>"})
    assert resp.status_code == 200
    rid = resp.headers["X-Request-ID"]
    assert rid != "a b<script>" and len(rid) == 32
    assert stack.backend.seen[-1]["X-Request-ID"] == rid


def test_30_backend_down_502_within_timeout(stack: Stack) -> None:
    """Connection refused (after one retry) → 502 quickly, problem+json, no stack trace."""
    started = time.monotonic()
    resp = stack.score(stack.issuer.mint(), "down/credit-risk/score")
    assert resp.status_code == 502
    assert time.monotonic() - started < 1.0 + 1.0
    assert "Traceback" not in resp.text and "Error" not in resp.json()["detail"]


def test_31_backend_slower_than_timeout_504(stack: Stack) -> None:
    """A backend slower than the 1 s upstream timeout → 504 within timeout + 1 s."""
    started = time.monotonic()
    resp = stack.score(stack.issuer.mint(), "slow/credit-risk/slow")
    assert resp.status_code == 504
    assert time.monotonic() - started < 2.0


def test_413_body_too_large(stack: Stack) -> None:
    """Bodies over 1 MiB are 413 problem+json, not a 500."""
    resp = requests.post(f"{stack.url}/credit-risk/score", data=b"x" * (1024 * 1024 + 10),
                         headers={"Authorization": f"Bearer {stack.issuer.mint()}",
                                  "Content-Type": "application/json"},
                         verify=stack.ca, timeout=10)
    assert resp.status_code == 413


def test_14_key_rotation_new_kid_after_one_refetch(stack: Stack) -> None:
    """A new key is accepted at once after one refetch; the old one works until it is removed."""
    issuer, path = stack.rot_issuer, "rot/credit-risk/score"
    old = issuer.keys[0]
    accepted = issuer.mint(old)  # verified once, then served from the verified-token cache
    assert stack.score(accepted, path).status_code == 200
    assert stack.score(accepted, path).status_code == 200
    time.sleep(1.1)  # past the 1 s test cooldown
    new = SigningKey("k2-" + uuid.uuid4().hex[:8])
    issuer.keys.append(new)
    hits = issuer.hits
    assert stack.score(issuer.mint(new), path).status_code == 200
    assert issuer.hits - hits == 1
    assert stack.score(issuer.mint(old), path).status_code == 200
    issuer.keys.remove(old)
    time.sleep(1.1)
    # an unknown kid refreshes the set; the removed key is gone with it
    assert stack.score(issuer.mint(SigningKey("k3-unknown")), path).status_code == 401
    assert stack.score(issuer.mint(old), path).status_code == 401
    # the very string verified (and cached) before: the refreshed set no longer vouches for it
    assert stack.score(accepted, path).status_code == 401
    assert stack.score(issuer.mint(new), path).status_code == 200


def test_r12_issuer_down_cached_keys_work_unknown_kid_fast(stack: Stack) -> None:
    """Issuer down: known kids keep working; unknown kids get 401 quickly (≤ 2 s fetch timeout)."""
    issuer, path = stack.down_issuer, "isdown/credit-risk/score"
    assert stack.score(issuer.mint(), path).status_code == 200
    issuer.stop()
    try:
        time.sleep(1.1)
        for _ in range(3):
            assert stack.score(issuer.mint(), path).status_code == 200
        for _ in range(5):
            started = time.monotonic()
            assert stack.score(issuer.mint(SigningKey("nope")), path).status_code == 401
            assert time.monotonic() - started < 2.0 + 1.0
        assert stack.score(issuer.mint(), path).status_code == 200
    finally:
        issuer.start()


def test_13_fifty_unknown_kids_at_most_one_fetch_per_cooldown(stack: Stack) -> None:
    """50 tokens with unknown kids (concurrently) → ≤ 1 JWKS fetch within the cooldown."""
    issuer, path = stack.kid_issuer, "kid/credit-risk/score"
    assert stack.score(issuer.mint(), path).status_code == 200
    time.sleep(1.1)
    hits = issuer.hits
    attacker = SigningKey("unknown")
    tokens = [issuer.mint(SigningKey(f"unknown-{i}", attacker.private)) for i in range(50)]
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda t: stack.score(t, path).status_code, tokens))
    assert set(codes) == {401}
    elapsed = time.monotonic() - started
    assert issuer.hits - hits <= 1 + int(elapsed // 1.0)
    assert issuer.hits - hits >= 1


def test_request_log_lines(stack: Stack) -> None:
    """Each request becomes a JSON line with the contract's fields, and never the token."""
    token = stack.issuer.mint(oid="caller-for-log")
    rid = "log-" + uuid.uuid4().hex
    assert stack.score(token, headers={"X-Request-ID": rid}).status_code == 200
    path = stack.home / "logs" / "gateway-requests.jsonl"
    deadline = time.monotonic() + 3
    record: dict[str, Any] | None = None
    while record is None and time.monotonic() < deadline:
        time.sleep(0.1)
        if path.exists():
            lines = [json.loads(x) for x in path.read_text().splitlines()]
            record = next((r for r in lines if r["request_id"] == rid), None)
    assert record is not None
    assert set(record) == {"time", "caller", "api", "revision", "environment", "status",
                           "latency_ms", "backend_ms", "model_version", "request_id"}
    assert record["caller"] == "caller-for-log" and record["status"] == 200
    assert record["environment"] == "prod" and record["model_version"] == "3"
    text = path.read_text()
    assert token not in text and BACKEND_KEY not in text


def test_hot_reload_within_a_second_and_bad_config_kept_out(stack: Stack) -> None:
    """A new config is served within a second; a broken one is refused and the old one kept."""
    new = copy.deepcopy(stack.config)
    new["apis"].append(api_entry("prod", "v2/credit-risk", stack.issuer))
    try:
        write_gateway_config(stack.home, new)
        deadline, code = time.monotonic() + 1.0, 0
        while time.monotonic() < deadline and code != 200:
            code = stack.score(stack.issuer.mint(), "v2/credit-risk/score").status_code
            time.sleep(0.05)
        assert code == 200
        with pytest.raises(ConfigError, match="set-variable"):
            bad = copy.deepcopy(new)
            bad["apis"][0]["policy_xml"] = bad["apis"][0]["policy_xml"].replace(
                "<base />", '<base /><set-variable name="x" value="1" />', 1)
            write_gateway_config(stack.home, bad)
        # a writer that bypasses validation: the gateway logs and keeps the running config
        cfg = stack.home / "gateway" / "config.json"
        tmp = cfg.with_suffix(".tmp")
        tmp.write_text("{not json")
        tmp.replace(cfg)
        time.sleep(0.5)
        assert stack.score(stack.issuer.mint(), "v2/credit-risk/score").status_code == 200
    finally:
        write_gateway_config(stack.home, stack.config)
    deadline, code = time.monotonic() + 1.0, 200
    while time.monotonic() < deadline and code != 404:
        code = stack.score(stack.issuer.mint(), "v2/credit-risk/score").status_code
        time.sleep(0.05)
    assert code == 404


def test_redis_unreachable_fails_closed_503(stack: Stack) -> None:
    """With the counter store down the gateway answers 503 + Retry-After (fail closed)."""
    app = create_gateway_app(stack.home, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    port = stack.loop.run(app.start("127.0.0.1", 0, server_ssl_context(stack.home)))
    try:
        started = time.monotonic()
        resp = requests.post(f"https://127.0.0.1:{port}/credit-risk/score", json={},
                             headers={"Authorization": f"Bearer {stack.issuer.mint()}"},
                             verify=stack.ca, timeout=10)
        assert resp.status_code == 503
        assert resp.headers["Retry-After"] == "1"
        assert time.monotonic() - started < 3
        # bad tokens are still refused before the limiter is consulted
        assert requests.post(f"https://127.0.0.1:{port}/credit-risk/score", json={},
                             verify=stack.ca, timeout=10).status_code == 401
    finally:
        stack.loop.run(app.stop())


def test_cors_preflight_and_simple_response(stack: Stack) -> None:
    """cors: an allowed origin gets its preflight and response headers; others get none."""
    s = stack.session()
    pre = s.options(f"{stack.url}/features/score", timeout=5, headers={
        "Origin": "https://panel.local", "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 200
    assert pre.headers["Access-Control-Allow-Origin"] == "https://panel.local"
    assert pre.headers["Access-Control-Allow-Methods"] == "POST"
    assert pre.headers["Access-Control-Max-Age"] == "300"
    other = s.options(f"{stack.url}/features/score", timeout=5, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in other.headers
    resp = stack.score(stack.issuer.mint(), "features/score",
                       headers={"Origin": "https://panel.local", "X-Tenant": "CONTOSO",
                                "X-Added": "client", "X-Strip": "x"})
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://panel.local"
    assert resp.headers["Access-Control-Expose-Headers"] == "X-Request-ID"


def test_check_header_set_header_actions_outbound_and_on_error(stack: Stack) -> None:
    """check-header refuses with its code/message; set-header append/delete; outbound/on-error."""
    resp = stack.score(stack.issuer.mint(), "features/score", headers={"X-Tenant": "fabrikam"})
    assert resp.status_code == 403
    assert resp.json()["detail"] == "Wrong tenant."
    assert resp.headers["X-Error"] == "yes"
    resp = stack.score(stack.issuer.mint(), "features/score",
                       headers={"X-Tenant": "contoso", "X-Added": "client", "X-Strip": "x"})
    assert resp.status_code == 200
    seen = stack.backend.seen[-1]
    assert seen["X-Added"] == "client, policy" or seen["X-Added"] in ("client", "policy")
    assert "X-Strip" not in seen
    assert seen["Authorization"] == f"Bearer {BACKEND_KEY}"
    assert "X-Backend" not in resp.headers and resp.headers["X-Outbound"] == "1"
    assert "X-Error" not in resp.headers


def test_return_response(stack: Stack) -> None:
    """return-response answers from the gateway without calling the backend."""
    before = len(stack.backend.seen)
    resp = stack.score(None, "teapot/score")
    assert resp.status_code == 418
    assert resp.text == "short and stout"
    assert len(stack.backend.seen) == before


def test_secrets_never_logged(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    """Across successes and failures, logs never contain the token or the backend key."""
    caplog.set_level("DEBUG")
    token = stack.issuer.mint()
    for path in ("credit-risk/score", "down/credit-risk/score", "leak/credit-risk/leak"):
        stack.score(token, path)
    stack.score(auth="Bearer " + token[:-4] + "AAAA")
    text = caplog.text
    assert token not in text and token[:-4] not in text and BACKEND_KEY not in text


def test_verified_token_cache_rechecks_expiry(stack: Stack) -> None:
    """A token accepted (and cached) just inside the skew is refused once it expires."""
    token = stack.issuer.mint(exp=int(time.time()) - 29)  # main API: clock-skew 30 s
    assert stack.score(token).status_code == 200
    assert stack.score(token).status_code == 200
    time.sleep(2.0)
    resp = stack.score(token)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_a_cached_token_in_two_authorization_fields_is_refused(stack: Stack) -> None:
    """The verified-token cache serves exactly one Authorization field: two fields holding a
    token it already verified are as ambiguous as ever (401)."""
    token = stack.issuer.mint()
    assert stack.score(token).status_code == 200
    host, port = stack.url.removeprefix("https://").split(":")
    tls = ssl.create_default_context(cafile=stack.ca)
    conn = http.client.HTTPSConnection(host, int(port), timeout=5, context=tls)
    try:
        conn.putrequest("POST", "/credit-risk/score")
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", "2")
        conn.endheaders(b"{}")
        answer = conn.getresponse()
        assert answer.status == 401
        assert answer.getheader("WWW-Authenticate") == 'Bearer error="invalid_token"'
    finally:
        conn.close()
    assert stack.score(token).status_code == 200


def test_revision_switch_under_load_drops_nothing(stack: Stack) -> None:
    """Replacing config.json (new revision, same path) while calls run: every call succeeds."""
    stop = time.monotonic() + 2.0
    token = stack.issuer.mint()

    def caller(_: int) -> list[int]:
        session = stack.session()
        codes = []
        while time.monotonic() < stop:
            codes.append(session.post(f"{stack.url}/credit-risk/score", json={}, timeout=5,
                                      headers={"Authorization": f"Bearer {token}"}).status_code)
        return codes

    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(caller, i) for i in range(3)]
            revision = 1
            while time.monotonic() < stop:
                revision += 1
                new = copy.deepcopy(stack.config)
                new["apis"][0]["revision"] = revision
                write_gateway_config(stack.home, new)
                time.sleep(0.2)
            codes = [c for f in futures for c in f.result()]
    finally:
        write_gateway_config(stack.home, stack.config)
    assert len(codes) > 20
    assert set(codes) == {200}


def test_backend_connection_limit_answers_503_with_retry_after_and_counts_it(
        stack: Stack) -> None:
    """Over the per-backend connection limit a request waits, then gets 503 + Retry-After."""
    settings = GatewaySettings(upstream_timeout_s=5.0, max_backend_connections=1,
                               backend_wait_s=0.2)
    app = create_gateway_app(stack.home, redis_url=stack.redis_url, settings=settings)
    port = stack.loop.run(app.start("127.0.0.1", 0, server_ssl_context(stack.home)))
    url = f"https://127.0.0.1:{port}/slow/credit-risk/slow"
    auth = {"Authorization": f"Bearer {stack.issuer.mint()}"}
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(requests.post, url, json={}, headers=auth, verify=stack.ca,
                                timeout=10)
            time.sleep(0.5)  # the first holds the only connection (the backend takes 3 s)
            second = requests.post(url, json={}, headers=auth, verify=stack.ca, timeout=10)
            assert first.result().status_code == 200
        assert second.status_code == 503, second.text
        assert second.headers["Retry-After"] == "1"
        assert second.headers["Content-Type"] == "application/problem+json"
        assert second.json()["status"] == 503
        text = requests.get(f"https://127.0.0.1:{port}/metrics", verify=stack.ca,
                            timeout=5).text
        origin = stack.backend.url
        assert f'modelgate_gateway_backend_busy_total{{origin="{origin}"}} 1.0' in text
        assert f'modelgate_gateway_backend_connections{{origin="{origin}"}} 1.0' in text
    finally:
        stack.loop.run(app.stop())


def test_backend_connection_settings_from_the_environment() -> None:
    """MODELGATE_GATEWAY_* set the connection limit and wait; a bad value is named."""
    settings = GatewaySettings.from_env({"MODELGATE_GATEWAY_MAX_BACKEND_CONNECTIONS": "8",
                                         "MODELGATE_GATEWAY_BACKEND_WAIT_SECONDS": "0.5"})
    assert (settings.max_backend_connections, settings.backend_wait_s) == (8, 0.5)
    assert GatewaySettings.from_env({}) == GatewaySettings()
    for name, value in (("MODELGATE_GATEWAY_MAX_BACKEND_CONNECTIONS", "0"),
                        ("MODELGATE_GATEWAY_MAX_BACKEND_CONNECTIONS", "many"),
                        ("MODELGATE_GATEWAY_BACKEND_WAIT_SECONDS", "-1"),
                        ("MODELGATE_GATEWAY_BACKEND_WAIT_SECONDS", "nan")):
        with pytest.raises(ValueError, match=name):
            GatewaySettings.from_env({name: value})
