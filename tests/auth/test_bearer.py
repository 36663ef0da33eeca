"""The panel REST API with bearer access tokens from the real issuer (and forged ones)."""

from __future__ import annotations

import base64
import json
from typing import Any

import msal
import pytest

from tests.auth.conftest import full_sign_in, page_csrf, session_user
from tests.identity_support import Issuer


@pytest.fixture(scope="module")
def ci_token(issuer: Issuer) -> str:
    """A client-credentials token for modelgate-ci (MLOps.Engineer + Score.Invoke)."""
    app = msal.ConfidentialClientApplication(
        "modelgate-ci", client_credential=issuer.secret("modelgate-ci"),
        oidc_authority=issuer.url, http_client=issuer.session())
    result = app.acquire_token_for_client(["api://modelgate/.default"])
    token: str = result["access_token"]
    issuer.remember(token)
    return token


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["MLOps.Admin"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_client_credentials_token_queues_a_job_without_csrf(oidc_app: Any,
                                                            ci_token: str) -> None:
    client = oidc_app.test_client()
    auth = {"Authorization": f"Bearer {ci_token}"}
    response = client.post("/api/v1/jobs", json={"kind": "selfcheck"}, headers=auth)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["requested_by"] == "modelgate-ci"
    assert len(client.get("/api/v1/jobs", headers=auth).get_json()["jobs"]) == 1
    assert client.get_cookie(oidc_app.config["SESSION_COOKIE_NAME"]) is None


@pytest.mark.parametrize("case", ["garbage", "basic", "tampered", "stripped", "oversized",
                                  "empty"])
def test_bad_bearer_tokens_get_401_without_echo(oidc_app: Any, ci_token: str,
                                                case: str) -> None:
    header = {
        "garbage": "Bearer not.a.token",
        "basic": "Basic bW9kZWxnYXRlOnNlY3JldA==",
        "tampered": f"Bearer {_tamper(ci_token)}",
        "stripped": "Bearer " + ci_token.rsplit(".", 1)[0] + ".",
        "oversized": "Bearer " + "a" * 20000,
        "empty": "Bearer ",
    }[case]
    response = oidc_app.test_client().get("/api/v1/jobs", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer error=")
    assert response.mimetype == "application/problem+json"
    body = response.get_data(as_text=True)
    assert ci_token[:40] not in body and "Traceback" not in body


def test_id_token_is_not_an_access_token(oidc_app: Any, issuer: Issuer) -> None:
    client = oidc_app.test_client()
    full_sign_in(client, issuer, "alice")
    user_id = session_user(oidc_app, client).id
    with oidc_app.app_context():
        from app.auth import session_tokens

        cache = session_tokens.identity_client().store.load(user_id)
        id_token = next(e["secret"] for e in cache.search(msal.TokenCache.CredentialType.ID_TOKEN))
    issuer.remember(id_token)
    response = oidc_app.test_client().get("/api/v1/jobs",
                                          headers={"Authorization": f"Bearer {id_token}"})
    assert response.status_code == 401


def test_a_bad_token_is_not_rescued_by_the_session_cookie(oidc_app: Any,
                                                          issuer: Issuer) -> None:
    client = oidc_app.test_client()
    full_sign_in(client, issuer, "alice")
    csrf = page_csrf(client.get("/").get_data(as_text=True))
    response = client.post("/api/v1/jobs", json={"kind": "selfcheck"},
                           headers={"Authorization": "Bearer junk", "X-CSRFToken": csrf})
    assert response.status_code == 401
    assert client.get("/api/v1/jobs").get_json()["jobs"] == []


def test_pages_ignore_bearer_tokens(oidc_app: Any, ci_token: str) -> None:
    response = oidc_app.test_client().get("/", headers={"Authorization": f"Bearer {ci_token}"})
    assert response.status_code == 302 and "/auth/login" in response.headers["Location"]


def test_user_token_acts_as_the_user(oidc_app: Any, issuer: Issuer) -> None:
    from app.auth import session_tokens
    from app.auth.users import User

    client = oidc_app.test_client()
    full_sign_in(client, issuer, "carol")
    data = session_user(oidc_app, client)
    with oidc_app.app_context():
        token = session_tokens.user_access_token(User(
            id=data.id, name=data.name, username=data.username, roles=frozenset()))
    issuer.remember(token)
    api = oidc_app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    assert api.get("/api/v1/jobs", headers=auth).status_code == 200
    refused = api.post("/api/v1/jobs", json={"kind": "selfcheck"}, headers=auth)
    assert refused.status_code == 403 and "MLOps.Engineer" in refused.get_json()["detail"]
