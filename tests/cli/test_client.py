"""`modelgate token` and `modelgate score` against a real issuer, `modelgate gateway` process
and scoring replica (the seed's test client as two commands)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
import requests

from app.backends.local import gateway as gateway_config
from app.gateway.template import render_default_policy
from tests.identity_support import Issuer, free_port, start_issuer
from tests.serving.conftest import Replica, make_keys, start_replica
from tests.serving.modelpkg import build_model_package
from tests.support import ROOT, RedisServer, wait_for


@dataclass
class Parts:
    """The running parts and the environment a `modelgate` command gets."""

    home: Path
    issuer: Issuer
    replica: Replica
    gateway_url: str
    env: dict[str, str]

    def modelgate(self, *args: str, stdin: str | None = None,
                  **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app", *args], cwd=str(ROOT),
                              env={**self.env, **env}, capture_output=True, text=True,
                              timeout=60, input=stdin, check=False)


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parts]:
    home = tmp_path_factory.mktemp("home")
    redis = RedisServer(home / "redis").start()
    package = build_model_package(tmp_path_factory.mktemp("model"), "lr")
    keys = make_keys(tmp_path_factory.mktemp("keys"))
    replica = start_replica(package, keys, home / "replica.log")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MODELGATE_") and k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env.update(MODELGATE_HOME=str(home), MODELGATE_REDIS_URL=redis.url, PYTHONUNBUFFERED="1")
    port = free_port()
    with start_issuer(home) as issuer:
        gateway_config.set_backend(home, "staging", replica.url, keys.primary)
        gateway_config.upsert_api(home, {
            "name": "credit-risk-staging", "path": "staging/credit-risk", "revision": 1,
            "environment": "staging", "backend_url": replica.url,
            "operations": [{"id": "score", "method": "POST", "url_template": "/score"}],
            "policy_xml": render_default_policy(issuer=issuer.url, environment="staging")})
        gateway_log = open(home / "gateway.log", "wb")  # noqa: SIM115
        gateway = subprocess.Popen([sys.executable, "-m", "app", "gateway", "--port", str(port)],
                                   cwd=str(ROOT), env=env, stdout=gateway_log,
                                   stderr=subprocess.STDOUT)
        url = f"https://127.0.0.1:{port}"
        try:
            wait_for(lambda: _healthy(url, issuer.ca) or gateway.poll() is not None, 30,
                     "the gateway")
            assert gateway.poll() is None, (home / "gateway.log").read_text()
            (home / "endpoints.json").write_text(json.dumps({
                "panel": "http://127.0.0.1:9", "issuer": issuer.url, "gateway": url,
                "ca_bundle": str(issuer.ca), "redis": "redis://127.0.0.1:9/0"}))
            yield Parts(home, issuer, replica, url, env)
        finally:
            gateway.send_signal(signal.SIGTERM)
            assert gateway.wait(20) == 0
            gateway_log.close()
            replica.stop()
            redis.stop()


def _healthy(url: str, ca: Path) -> bool:
    try:
        return requests.get(f"{url}/health", verify=str(ca), timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_token_prints_an_access_token_for_the_ci_client(parts: Parts) -> None:
    result = parts.modelgate("token")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout.count("\n") == 1 and token.count(".") == 2
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["typ"] == "at+jwt"
    assert claims["aud"] == "api://modelgate" and claims["iss"] == parts.issuer.url
    assert {"MLOps.Engineer", "Score.Invoke"} <= set(claims["roles"])


def test_token_from_configuration_and_a_wrong_secret(parts: Parts) -> None:
    secret = parts.issuer.secret("modelgate-ci")
    ok = parts.modelgate("token", MODELGATE_CLIENT_ID="modelgate-ci",
                         MODELGATE_CLIENT_SECRET=secret)
    assert ok.returncode == 0 and ok.stdout.count(".") == 2
    wrong = "wrong-" + secret[::-1]
    refused = parts.modelgate("token", MODELGATE_CI_CLIENT_ID="modelgate-ci",
                              MODELGATE_CI_CLIENT_SECRET=wrong)
    assert refused.returncode == 1
    assert "modelgate-ci got no token" in refused.stderr
    assert wrong not in refused.stdout + refused.stderr and refused.stdout == ""


def test_score_posts_the_example_record_through_the_gateway(parts: Parts) -> None:
    result = parts.modelgate("score")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    prediction = answer["predictions"][0]
    assert set(prediction["probabilities"]) == {"good", "bad"}
    assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-9
    assert answer["model"]["name"] == "german-credit"
    assert "eyJ" not in result.stdout + result.stderr  # no token is echoed

    def logged() -> list[dict[str, object]]:
        path = parts.home / "logs" / "gateway-requests.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines if line]

    records = wait_for(logged, 10, "the gateway's request log")
    assert records[-1]["api"] == "credit-risk-staging" and records[-1]["status"] == 200


def test_score_reads_a_file_or_standard_input(parts: Parts, tmp_path: Path) -> None:
    record = {"Age": 45, "Sex": "female", "Job": 2, "Housing": "rent",
              "Credit amount": 5000, "Duration": 24, "Purpose": "car"}  # no accounts
    body = json.dumps({"data": [record, record]})
    path = tmp_path / "two.json"
    path.write_text(body)
    from_file = parts.modelgate("score", str(path))
    from_stdin = parts.modelgate("score", "-", stdin=body)
    assert from_file.returncode == 0 and from_stdin.returncode == 0, from_file.stderr
    assert json.loads(from_file.stdout)["predictions"] == json.loads(
        from_stdin.stdout)["predictions"]
    assert len(json.loads(from_file.stdout)["predictions"]) == 2


def test_score_errors_exit_non_zero_with_the_problem_detail(parts: Parts,
                                                             tmp_path: Path) -> None:
    invalid = parts.modelgate("score", "-", stdin='{"data": [{"Age": 20, "Sex": "robot"}]}')
    assert invalid.returncode == 1 and invalid.stdout == ""
    assert "422" in invalid.stderr and "data[0].Sex" in invalid.stderr
    not_json = parts.modelgate("score", "-", stdin="{nope")
    assert not_json.returncode == 1 and "is not JSON" in not_json.stderr
    prod = parts.modelgate("score", "--environment", "prod")
    assert prod.returncode == 1 and "404" in prod.stderr and "/credit-risk/score" in prod.stderr

    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    (elsewhere / "endpoints.json").write_text(json.dumps({
        "panel": "http://127.0.0.1:9", "issuer": parts.issuer.url,
        "gateway": f"https://127.0.0.1:{free_port()}", "ca_bundle": str(parts.issuer.ca)}))
    no_creds = parts.modelgate("score", MODELGATE_HOME=str(elsewhere))
    # No stack to talk to is exit 2 (issue: the CLI says what it looked for and what to run).
    assert no_creds.returncode == 2 and "dev-credentials.json" in no_creds.stderr
    assert "modelgate up" in no_creds.stderr
    (elsewhere / "dev-credentials.json").write_text(
        (parts.home / "dev-credentials.json").read_text())
    down = parts.modelgate("score", MODELGATE_HOME=str(elsewhere))
    assert down.returncode == 2 and "cannot be reached" in down.stderr
    for result in (invalid, not_json, prod, no_creds, down):
        assert "eyJ" not in result.stdout + result.stderr
        assert parts.issuer.secret("modelgate-ci") not in result.stderr


def test_score_takes_a_csv_as_the_panel_does(parts: Parts, tmp_path: Path) -> None:
    header = "Age,Sex,Job,Housing,Saving accounts,Checking account,Credit amount,Duration,Purpose"
    rows = [f"{20 + i % 50},male,{i % 4},own,,little,{100 + i},48,radio/TV" for i in range(130)]
    rows[3] = "12,male,0,own,little,little,100,48,radio/TV"  # Age below the minimum
    rows[110] = "30,robot,0,own,little,little,100,48,radio/TV"  # not a category (second chunk)
    path = tmp_path / "applicants.csv"
    path.write_text("\r\n".join([header, *rows]) + "\r\n")
    result = parts.modelgate("score", "--csv", str(path))
    assert result.returncode == 1, result.stderr  # some rows were refused
    lines = result.stdout.splitlines()
    assert len(lines) == 130
    assert lines[3].startswith("row 4: refused: ") and "Age" in lines[3]
    assert lines[110].startswith("row 111: refused: ") and "Sex" in lines[110]
    scored = [line for i, line in enumerate(lines) if i not in (3, 110)]
    for number, line in zip((i + 1 for i in range(130) if i not in (3, 110)), scored,
                            strict=True):
        label, p_bad, p_good = line.split()[2:5]
        assert line.startswith(f"row {number}: ") and label in ("good", "bad")
        assert abs(float(p_bad.split("=")[1]) + float(p_good.split("=")[1]) - 1) < 1e-3
    assert "128 of 130 rows scored, 2 refused" in result.stderr
    ok = parts.modelgate("score", "--csv", "-", stdin="\n".join([header, rows[0]]))
    assert ok.returncode == 0 and ok.stdout.startswith("row 1: ")
    empty = parts.modelgate("score", "--csv", "-", stdin=header)
    assert empty.returncode == 1 and "header row and at least one record" in empty.stderr


def test_score_explain_asks_for_reason_codes(parts: Parts) -> None:
    result = parts.modelgate("score", "--explain")
    assert result.returncode == 0, result.stderr
    prediction = json.loads(result.stdout)["predictions"][0]
    reasons = prediction["reasons"]
    assert len(reasons["factors"]) == 9
    p = prediction["probabilities"]
    total = reasons["base"] + sum(f["contribution"] for f in reasons["factors"])
    assert abs(total - (math.log(p["bad"]) - math.log(p["good"]))) < 1e-9
    header = "Age,Sex,Job,Housing,Saving accounts,Checking account,Credit amount,Duration,Purpose"
    rows = ["20,male,0,own,,little,100,48,radio/TV", "12,male,0,own,,little,100,48,radio/TV"]
    table = parts.modelgate("score", "--csv", "-", "--explain", stdin="\n".join([header, *rows]))
    assert table.returncode == 1, table.stderr  # the second row is refused
    first, second = table.stdout.splitlines()
    sentences = first.split("  reasons: ")[1].split("; ")
    assert len(sentences) == 3 and "Checking account: little — raises the risk" in sentences
    assert second.startswith("row 2: refused: ") and "reasons" not in second
