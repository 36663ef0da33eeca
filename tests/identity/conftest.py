"""Fixtures: a real issuer process over HTTPS in a temporary MODELGATE_HOME, and helpers.

The issuer process itself and the sign-in form helpers live in tests/identity_support.py so
other test folders can start one too; they are re-exported here for the identity tests.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import requests

from tests.identity_support import (  # noqa: F401  (re-exported for the identity tests)
    _ACTION,
    _INPUT,
    REPO,
    TEST_ENV,
    Issuer,
    free_port,
    post_form,
    sign_in,
    start_issuer,
)

REDIRECT_URI = "http://127.0.0.1:5555/auth/callback"


@pytest.fixture(scope="session")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    """Start `python -m app.identity` on a free port; stop it with SIGTERM afterwards."""
    with start_issuer(tmp_path_factory.mktemp("home")) as running:
        yield running


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
