"""Entra ID by configuration, without network: authority, scopes, issuer, roles mapping.

Only the cloud boundary is faked (a requests adapter standing in for login.microsoftonline.com);
MSAL, the panel's flow code and the token checks are the real ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from app.auth.roles import Role
from app.auth.users import User
from app.errors import ConfigError, Unauthorized
from tests.conftest import build_app

TENANT = "11111111-2222-3333-4444-555555555555"
PANEL_CLIENT = "aaaaaaaa-0000-0000-0000-000000000001"
API_CLIENT = "bbbbbbbb-0000-0000-0000-000000000002"
LOGIN = "https://login.microsoftonline.com"
ENTRA = {"IDENTITY": "entra", "TENANT_ID": TENANT, "CLIENT_ID": PANEL_CLIENT,
         "CLIENT_SECRET": "entra-secret-" + "s" * 20, "API_CLIENT_ID": API_CLIENT,
         "PANEL_URL": "https://panel.example.com"}


class FakeEntra(requests.adapters.BaseAdapter):
    """Answers the tenant's v2.0 discovery document; anything else is a 404 and is recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.seen.append(f"{request.method} {request.url}")
        assert kwargs.get("timeout"), "every outbound call needs a timeout"
        response = requests.Response()
        response.request = request
        response.url = str(request.url)
        base = f"{LOGIN}/{TENANT}"
        if request.url == f"{base}/v2.0/.well-known/openid-configuration":
            response.status_code = 200
            response._content = json.dumps({
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
            }).encode()
        else:
            response.status_code = 404
            response._content = b"{}"
        return response

    def close(self) -> None:
        pass


@pytest.fixture
def entra_app(tmp_path: Path, redis_server: Any, sqlite_url: str) -> Any:
    return build_app(tmp_path, sqlite_url, redis_server.url, **ENTRA)


@pytest.fixture
def fake_entra(entra_app: Any) -> FakeEntra:
    from app.auth.session_tokens import identity_client

    fake = FakeEntra()
    with entra_app.app_context():
        identity_client().http.mount(LOGIN, fake)
    return fake


def test_entra_settings_are_built_from_configuration(entra_app: Any) -> None:
    from app.auth.session_tokens import identity_client

    with entra_app.app_context():
        client = identity_client()
    settings = client.settings
    assert settings.authority == f"{LOGIN}/{TENANT}"
    assert settings.issuer == f"{LOGIN}/{TENANT}/v2.0"
    assert settings.jwks_uri == f"{LOGIN}/{TENANT}/discovery/v2.0/keys"
    assert settings.scopes == [f"api://{API_CLIENT}/Score.Invoke"]
    assert settings.api_audiences == [f"api://{API_CLIENT}", API_CLIENT]
    assert client.access_token_type == "JWT"
    assert client.redirect_uri == "https://panel.example.com/auth/callback"
    assert client.http.trust_env is False and client.http.verify is True
    assert "entra-secret" not in repr(settings)


@pytest.mark.parametrize("missing", ["CLIENT_SECRET", "TENANT_ID", "API_CLIENT_ID"])
def test_incomplete_entra_configuration_fails_clearly(tmp_path: Path, redis_server: Any,
                                                      sqlite_url: str, missing: str) -> None:
    from app.auth.session_tokens import identity_client

    app = build_app(tmp_path, sqlite_url, redis_server.url, **{**ENTRA, missing: ""})
    with app.app_context(), pytest.raises(ConfigError, match=missing):
        identity_client()


def test_the_api_registration_must_not_be_the_panels(tmp_path: Path, redis_server: Any,
                                                    sqlite_url: str) -> None:
    from app.auth.session_tokens import identity_client

    app = build_app(tmp_path, sqlite_url, redis_server.url,
                    **{**ENTRA, "API_CLIENT_ID": ENTRA["CLIENT_ID"]})
    with app.app_context(), pytest.raises(ConfigError, match="API_CLIENT_ID must be the "
                                                             "scoring API's own"):
        identity_client()


def test_sign_in_goes_to_the_tenant_with_pkce_and_the_api_scope(entra_app: Any,
                                                                 fake_entra: FakeEntra) -> None:
    from app.auth.session_tokens import identity_client, start_sign_in

    binding = "b" * 43
    with entra_app.test_request_context("/auth/login", method="POST"):
        auth_uri = start_sign_in("/jobs/", binding)
    parts = urlsplit(auth_uri)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    with entra_app.app_context():
        pending = identity_client().pending.take(binding, query["state"])
    assert pending is not None and pending.next_url == "/jobs/"
    flow = pending.flow
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == \
        f"{LOGIN}/{TENANT}/oauth2/v2.0/authorize"
    assert query["client_id"] == PANEL_CLIENT and query["response_type"] == "code"
    assert query["redirect_uri"] == "https://panel.example.com/auth/callback"
    assert set(query["scope"].split()) == {f"api://{API_CLIENT}/Score.Invoke", "openid",
                                           "profile", "offline_access"}
    assert query["code_challenge_method"] == "S256" and query["code_challenge"]
    assert query["state"] == flow["state"] and query["nonce"] != flow["nonce"]  # sha256 sent
    assert "response_mode" not in query and "code_verifier" not in auth_uri
    assert fake_entra.seen == [f"GET {LOGIN}/{TENANT}/v2.0/.well-known/openid-configuration"]


def test_sign_out_uses_the_tenant_end_session_endpoint(entra_app: Any,
                                                       fake_entra: FakeEntra) -> None:
    from app.auth.session_tokens import sign_out

    with entra_app.test_request_context("/auth/logout", method="POST"):
        url = sign_out(None)
    assert url is not None and url.startswith(f"{LOGIN}/{TENANT}/oauth2/v2.0/logout?")
    query = parse_qs(urlsplit(url).query)
    assert query["post_logout_redirect_uri"] == ["https://panel.example.com/auth/login"]


class StaticJWKS(jwt.PyJWKClient):
    """A JWKS client answering a fixed key set (Entra's keys endpoint, offline)."""

    def __init__(self, public_key: Any, kid: str) -> None:
        super().__init__("https://login.microsoftonline.com/keys")
        self.doc = {"keys": [{**jwt.algorithms.RSAAlgorithm.to_jwk(public_key, as_dict=True),
                              "kid": kid, "use": "sig"}]}

    def fetch_data(self) -> Any:
        return self.doc


@pytest.fixture(scope="module")
def signer() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _entra_token(signer: Any, typ: str = "JWT", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": f"{LOGIN}/{TENANT}/v2.0", "iat": now, "nbf": now, "exp": now + 600,
            "tid": TENANT, "ver": "2.0", **claims}
    return jwt.encode(body, signer, algorithm="RS256", headers={"kid": "entra-1", "typ": typ})


def test_entra_id_token_roles_become_panel_roles(signer: Any) -> None:
    import hashlib

    from app.auth.oidc import OidcSettings, validate_id_token

    settings = OidcSettings.from_config(ENTRA)
    nonce = "flow-nonce"
    token = _entra_token(signer, aud=PANEL_CLIENT, sub="pairwise-sub", oid="oid-alice",
                         name="Alice Example", preferred_username="alice@contoso.com",
                         roles=["MLOps.Engineer", "Score.Invoke"],
                         nonce=hashlib.sha256(nonce.encode()).hexdigest())
    claims = validate_id_token(token, jwks_client=StaticJWKS(signer.public_key(), "entra-1"),
                               issuer=settings.issuer, audience=settings.client_id,
                               nonce=nonce)
    user = User.from_claims(claims)
    assert (user.id, user.name, user.username) == ("oid-alice", "Alice Example",
                                                   "alice@contoso.com")
    assert user.can(Role.ENGINEER) and user.can(Role.SCORER)
    assert not user.can(Role.APPROVER) and not user.can(Role.ADMIN)


@pytest.mark.parametrize("shape,expected", [
    ({"aud": f"api://{API_CLIENT}", "azp": "ci-app-id", "roles": ["MLOps.Engineer"]},
     ("ci-app-id", {"MLOps.Engineer"})),
    ({"aud": API_CLIENT, "appid": "v1-app-id", "roles": ["Score.Invoke"]},
     ("v1-app-id", {"Score.Invoke"})),
    ({"aud": f"api://{API_CLIENT}", "name": "Bob", "scp": "Score.Invoke",
      "roles": ["MLOps.Approver"]}, ("Bob", {"MLOps.Approver"})),
])
def test_entra_access_tokens_map_to_users(entra_app: Any, signer: Any, shape: dict[str, Any],
                                          expected: tuple[str, set[str]]) -> None:
    from app.auth.bearer import user_from_bearer
    from app.auth.session_tokens import identity_client

    token = _entra_token(signer, sub="s-1", oid="o-1", **shape)
    with entra_app.app_context():
        identity_client().jwks = StaticJWKS(signer.public_key(), "entra-1")
        user = user_from_bearer(f"Bearer {token}")
    assert (user.name, set(user.roles), user.via) == (*expected, "bearer")


@pytest.mark.parametrize("defect", ["v1-issuer", "other-api", "at+jwt", "other-tenant"])
def test_foreign_entra_tokens_are_refused(entra_app: Any, signer: Any, defect: str) -> None:
    from app.auth.bearer import user_from_bearer
    from app.auth.session_tokens import identity_client

    claims: dict[str, Any] = {"aud": f"api://{API_CLIENT}", "sub": "s", "roles": []}
    typ = "JWT"
    if defect == "v1-issuer":
        claims["iss"] = f"https://sts.windows.net/{TENANT}/"
    elif defect == "other-api":
        claims["aud"] = "api://someone-else"
    elif defect == "at+jwt":
        typ = "at+jwt"
    else:
        claims["iss"] = f"{LOGIN}/99999999-0000-0000-0000-000000000000/v2.0"
    token = _entra_token(signer, typ=typ, **claims)
    with entra_app.app_context():
        identity_client().jwks = StaticJWKS(signer.public_key(), "entra-1")
        with pytest.raises(Unauthorized):
            user_from_bearer(f"Bearer {token}")


def test_csp_lets_the_sign_in_form_go_to_entra(entra_app: Any) -> None:
    csp = entra_app.test_client().get("/auth/login").headers["Content-Security-Policy"]
    assert "form-action 'self' https://login.microsoftonline.com" in csp
