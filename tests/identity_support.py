"""A real local issuer process for tests in any folder, and helpers to drive its sign-in form."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import requests

REPO = Path(__file__).resolve().parents[1]
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


@contextmanager
def start_issuer(home: Path, port: int = 0, **env_overrides: str) -> Iterator[Issuer]:
    """Run `python -m app.identity` for `home` on `port` (0: a free one); SIGTERM it afterwards."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = home / "issuer.log"
    env = {k: v for k, v in os.environ.items()
           if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env.update(TEST_ENV, PYTHONPATH=str(REPO))
    env.update(env_overrides)
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


def sign_out(browser: requests.Session, issuer_url: str) -> requests.Response:
    """Sign out at the issuer as a person does: open /logout, press "Sign out" on its page."""
    page = browser.get(f"{issuer_url}/logout", timeout=10)
    assert page.status_code == 200 and 'name="confirm"' in page.text, page.text[:300]
    action = html.unescape(_ACTION.search(page.text)["action"])  # type: ignore[index]
    fields = {m["name"]: html.unescape(m["value"]) for m in _INPUT.finditer(page.text)}
    return browser.post(urljoin(page.url, action), data=fields, timeout=10,
                        allow_redirects=False, headers={"Referer": page.url})
