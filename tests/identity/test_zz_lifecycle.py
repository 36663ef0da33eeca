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

from tests.identity.conftest import REPO, Issuer


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


def test_no_secret_password_or_token_in_issuer_log(issuer: Issuer) -> None:
    text = issuer.log.read_text()
    assert "sign-in failed" in text and "POST /local/token" in text  # the log is not empty
    values = {e["password"] for e in issuer.creds["users"].values()}
    values |= {e["secret"] for e in issuer.creds["clients"].values()}
    values |= issuer.secrets_seen
    assert len(values) > 20
    leaked = [v[:6] + "…" for v in values if v in text]
    if leaked:
        pytest.fail(f"{len(leaked)} secret values found in the issuer log: {leaked}")
    assert "Authorization" not in text and "Bearer " not in text
