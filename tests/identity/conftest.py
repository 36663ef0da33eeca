"""Fixtures: a real issuer process over HTTPS in a temporary MODELGATE_HOME, and helpers."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import jwt
import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
REDIRECT_URI = "http://127.0.0.1:5555/auth/callback"
TEST_ENV = {
    "MODELGATE_IDP_ACCESS_TOKEN_TTL": "120",
    "MODELGATE_IDP_MAX_FAILED_SIGNINS": "3",
    "MODELGATE_IDP_LOCKOUT_SECONDS": "2",
}


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Issuer:
    """A running issuer and what tests need to talk to it."""

    url: str
    home: Path
    ca: Path
    log: Path
    process: subprocess.Popen[bytes]
    creds: dict[str, Any] = field(default_factory=dict)
    secrets_seen: set[str] = field(default_factory=set)

    def session(self) -> requests.Session:
        """A requests session trusting only the local CA, ignoring the environment."""
        s = requests.Session()
        s.verify = str(self.ca)
        s.trust_env = False
        return s

    def jwks(self) -> dict[str, Any]:
        """The current JWKS document."""
        doc: dict[str, Any] = self.session().get(f"{self.url}/jwks", timeout=5).json()
        return doc

    def secret(self, client_id: str) -> str:
        """A client secret from dev-credentials.json."""
        value: str = self.creds["clients"][client_id]["secret"]
        return value

    def password(self, user: str) -> str:
        """A user's password from dev-credentials.json."""
        value: str = self.creds["users"][user]["password"]
        return value

    def remember(self, *values: Any) -> None:
        """Record tokens so the log scan can look for them."""
        for value in values:
            if isinstance(value, str) and len(value) >= 8:
                self.secrets_seen.add(value)


def _wait_ready(url: str, ca: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    s = requests.Session()
    s.trust_env = False
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("issuer exited early:\n" + log.read_text())
        if ca.exists():
            try:
                if s.get(f"{url}/health", verify=str(ca), timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
        time.sleep(0.1)
    raise RuntimeError("issuer not ready in 30 s:\n" + log.read_text())


@pytest.fixture(scope="session")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    """Start `python -m app.identity` on a free port; stop it with SIGTERM afterwards."""
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    log = home / "issuer.log"
    env = {k: v for k, v in os.environ.items()
           if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env.update(TEST_ENV, PYTHONPATH=str(REPO))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.identity", "--home", str(home), "--port", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"https://127.0.0.1:{port}/local"
    ca = home / "tls" / "ca.pem"
    try:
        _wait_ready(url, ca, process, log)
        creds = json.loads((home / "dev-credentials.json").read_text())
        yield Issuer(url=url, home=home, ca=ca, log=log, process=process, creds=creds)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def verify_with_jwks(token: str, jwks: dict[str, Any], *, audience: str, issuer: str,
                     typ: str) -> dict[str, Any]:
    """Verify a token with PyJWT against a JWKS document, pinning RS256 and required claims."""
    header = jwt.get_unverified_header(token)
    assert header["typ"] == typ
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token, key.key, algorithms=["RS256"], audience=audience, issuer=issuer,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub"]},
    )
    return claims


_INPUT = re.compile(r'<input[^>]*name="(?P<name>[^"]+)"[^>]*value="(?P<value>[^"]*)"')
_ACTION = re.compile(r'<form[^>]*action="(?P<action>[^"]*)"')


def sign_in(browser: requests.Session, auth_uri: str, username: str,
            password: str) -> requests.Response:
    """Open the authorization URL, fill in the sign-in form and post it (no redirects)."""
    page = browser.get(auth_uri, timeout=10, allow_redirects=False)
    if page.status_code != 200:
        return page
    return post_form(browser, page, username, password)


def post_form(browser: requests.Session, page: requests.Response, username: str,
              password: str) -> requests.Response:
    """Post the sign-in form found in `page`."""
    action = html.unescape(_ACTION.search(page.text)["action"])  # type: ignore[index]
    fields = {m["name"]: html.unescape(m["value"]) for m in _INPUT.finditer(page.text)}
    fields.update(username=username, password=password)
    # A browser sends the form page as Referer (Referrer-Policy same-origin); the CSRF
    # check on HTTPS requires it.
    return browser.post(urljoin(page.url, action), data=fields, timeout=10,
                        allow_redirects=False, headers={"Referer": page.url})


def callback_params(response: requests.Response) -> dict[str, str]:
    """The query parameters of the redirect back to the client."""
    assert response.status_code == 302, response.text[:500]
    location = response.headers["Location"]
    assert location.startswith("http://127.0.0.1:5555/auth/callback"), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def form_post_params(response: requests.Response) -> dict[str, str]:
    """The fields of a response_mode=form_post page aimed at the test redirect URI."""
    assert response.status_code == 200, response.text[:500]
    assert html.unescape(_ACTION.search(response.text)["action"]) == REDIRECT_URI  # type: ignore[index]
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    return {m["name"]: html.unescape(m["value"]) for m in _INPUT.finditer(response.text)}


def pkce_pair() -> tuple[str, str]:
    """A code verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize_url(issuer: Issuer, **params: str) -> str:
    """An authorization URL for the panel client with the given extra parameters."""
    query = {"client_id": "modelgate-panel", "response_type": "code",
             "redirect_uri": REDIRECT_URI, "scope": "openid profile offline_access "
             "api://modelgate/Score.Invoke", "state": secrets.token_urlsafe(8)}
    query.update(params)
    return f"{issuer.url}/authorize?{urlencode({k: v for k, v in query.items() if v})}"
