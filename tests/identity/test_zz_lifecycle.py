"""Process lifecycle (port 0, ready file, SIGTERM) and the log scan after every other test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.identity.conftest import REPO, Issuer, authorize_url, pkce_pair, sign_in


def test_sigterm_stops_cleanly_and_port_zero_works(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("CA_BUNDLE")}
    env["PYTHONPATH"] = str(REPO)
    log = tmp_path / "out.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.identity", "--home", str(tmp_path), "--port", "0"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    ready = tmp_path / "identity" / "issuer.json"
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        url = json.loads(ready.read_text())["issuer"]
        s = requests.Session()
        s.trust_env = False
        health = s.get(f"{url}/health", verify=str(tmp_path / "tls" / "ca.pem"), timeout=10)
        assert health.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    assert code == 0, log.read_text()
    assert not ready.exists()


def test_rotate_keys_command(issuer: Issuer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("CA_BUNDLE")}
    env["PYTHONPATH"] = str(REPO)
    command = [sys.executable, "-m", "app.identity", "--home", str(issuer.home), "rotate-keys"]
    forced = subprocess.run([*command, "--force"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    assert forced.returncode == 0, forced.stderr
    signer = forced.stdout.split("signing key:")[1].split()[0]
    assert signer in {k["kid"] for k in issuer.jwks()["keys"]}
    refused = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and "refused" in refused.stderr


def test_no_secret_password_or_token_in_issuer_log(issuer: Issuer) -> None:
    # Runs last in a full run (file order), so it scans the log of every test above; it also
    # makes its own failed sign-in and token call so it never scans an empty log.
    _, challenge = pkce_pair()
    url = authorize_url(issuer, code_challenge=challenge, code_challenge_method="S256")
    wrong = "Wrong-" + issuer.password("bob")
    assert sign_in(issuer.session(), url, "bob", wrong).status_code == 401
    issuer.remember(wrong)
    token = issuer.session().post(
        f"{issuer.url}/token", auth=("modelgate-ci", issuer.secret("modelgate-ci")),
        data={"grant_type": "client_credentials", "scope": "api://modelgate/.default"},
        timeout=5).json()["access_token"]
    issuer.remember(token)
    time.sleep(0.2)  # let the access log line reach the file
    text = issuer.log.read_text()
    assert "sign-in failed" in text and "POST /local/token" in text  # the log is not empty
    values = {e["password"] for e in issuer.creds["users"].values()}
    values |= {e["secret"] for e in issuer.creds["clients"].values()}
    values |= issuer.secrets_seen
    assert len(values) >= 9  # 5 passwords, 2 client secrets, a wrong password, a token
    leaked = [v[:6] + "…" for v in values if v in text]
    if leaked:
        pytest.fail(f"{len(leaked)} secret values found in the issuer log: {leaked}")
    assert "Authorization" not in text and "Bearer " not in text
