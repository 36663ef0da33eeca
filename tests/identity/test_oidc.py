"""The panel's token checks (app.auth.oidc) against the real issuer and locally minted attacks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.auth.oidc import (
    MissingRoleError,
    OidcSettings,
    SessionJWKClient,
    TokenValidationError,
    build_msal_app,
    validate_access_token,
    validate_id_token,
)
from tests.identity.conftest import REDIRECT_URI, Issuer, form_post_params, sign_in

API = "api://modelgate"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def jwks_client(issuer: Issuer) -> SessionJWKClient:
    """The panel's JWKS client against the running issuer."""
    return SessionJWKClient(f"{issuer.url}/jwks", issuer.session())


@pytest.fixture(scope="module")
def signed_in(issuer: Issuer) -> dict[str, Any]:
    """An MSAL auth-code sign-in as alice: the flow and MSAL's result."""
    settings = OidcSettings(identity="local", client_id="modelgate-panel",
                            client_secret=issuer.secret("modelgate-panel"),
                            issuer_url=issuer.url)
    app = build_msal_app(settings, issuer.session())
    flow = app.initiate_auth_code_flow(settings.scopes, redirect_uri=REDIRECT_URI,
                                       response_mode="form_post")
    page = sign_in(issuer.session(), flow["auth_uri"], "alice", issuer.password("alice"))
    result = app.acquire_token_by_auth_code_flow(flow, form_post_params(page))
    assert "id_token" in result, result
    issuer.remember(result["id_token"], result["access_token"], result["refresh_token"])
    return {"flow": flow, "result": result}


def _signing_key(issuer: Issuer) -> tuple[str, Any]:
    """The issuer's current private signing key (to mint tokens with chosen defects)."""
    doc = json.loads((issuer.home / "identity" / "keys.json").read_text())
    entry = next(e for e in doc["keys"] if e["state"] == "active")
    key = jwt.PyJWK.from_dict(entry["jwk"], algorithm="RS256")
    return entry["jwk"]["kid"], key.key


def _mint(issuer: Issuer, *, header: dict[str, Any] | None = None, drop: tuple[str, ...] = (),
          key: Any = None, **claims: Any) -> str:
    kid, real_key = _signing_key(issuer)
    now = int(time.time())
    body: dict[str, Any] = {"iss": issuer.url, "aud": API, "sub": "s", "oid": "s",
                            "iat": now, "nbf": now, "exp": now + 300, "roles": ["Score.Invoke"]}
    body.update(claims)
    for name in drop:
        body.pop(name)
    headers = {"typ": "at+jwt", "kid": kid, **(header or {})}
    return jwt.encode(body, key or real_key, algorithm=headers.pop("alg", "RS256"),
                      headers=headers)


def _check_at(token: str, client: SessionJWKClient, issuer: Issuer, **kw: Any) -> dict[str, Any]:
    return validate_access_token(token, jwks_client=client, issuer=issuer.url, audience=API, **kw)


def test_access_token_from_issuer_accepted_and_roles_enforced(
        issuer: Issuer, jwks_client: SessionJWKClient, signed_in: dict[str, Any]) -> None:
    token = signed_in["result"]["access_token"]
    claims = _check_at(token, jwks_client, issuer, required_roles=["Score.Invoke"])
    assert claims["preferred_username"] == "alice"
    with pytest.raises(MissingRoleError) as info:
        _check_at(token, jwks_client, issuer, required_roles=["MLOps.Admin"])
    assert info.value.missing == ("MLOps.Admin",)


def _none_token(issuer: Issuer) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    payload = _b64(json.dumps({"iss": issuer.url, "aud": API, "sub": "s",
                               "exp": int(time.time()) + 300, "iat": int(time.time())}).encode())
    return f"{header}.{payload}."


def _hs256_with_public_pem(issuer: Issuer) -> str:
    kid, private = _signing_key(issuer)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    header = _b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": kid}).encode())
    payload = _b64(json.dumps({"iss": issuer.url, "aud": API, "sub": "s", "roles": ["MLOps.Admin"],
                               "exp": int(time.time()) + 300, "iat": int(time.time())}).encode())
    sig = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(sig)}"


ATTACKER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("case", [
    "expired", "wrong_iss", "wrong_aud", "no_exp", "no_sub", "nbf_future", "alg_none",
    "hs256_confusion", "bad_signature", "tampered", "id_token_typ", "rs512", "unknown_kid",
    "garbage",
])
def test_access_token_defects_rejected(issuer: Issuer, jwks_client: SessionJWKClient,
                                       case: str) -> None:
    now = int(time.time())
    tokens = {
        "expired": lambda: _mint(issuer, exp=now - 120, iat=now - 700, nbf=now - 700),
        "wrong_iss": lambda: _mint(issuer, iss=issuer.url + "/"),
        "wrong_aud": lambda: _mint(issuer, aud="api://other"),
        "no_exp": lambda: _mint(issuer, drop=("exp",)),
        "no_sub": lambda: _mint(issuer, drop=("sub",)),
        "nbf_future": lambda: _mint(issuer, nbf=now + 600),
        "alg_none": lambda: _none_token(issuer),
        "hs256_confusion": lambda: _hs256_with_public_pem(issuer),
        "bad_signature": lambda: _mint(issuer, key=ATTACKER),
        "tampered": lambda: _tamper(_mint(issuer)),
        "id_token_typ": lambda: _mint(issuer, header={"typ": "JWT"}),
        "rs512": lambda: _mint(issuer, header={"alg": "RS512"}),
        "unknown_kid": lambda: _mint(issuer, header={"kid": "../../etc/passwd"}, key=ATTACKER),
        "garbage": lambda: "not.a-jwt",
    }
    token = tokens[case]()
    with pytest.raises(TokenValidationError) as info:
        _check_at(token, jwks_client, issuer)
    assert token not in str(info.value)


def _tamper(token: str) -> str:
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["MLOps.Admin"]
    return ".".join([header, _b64(json.dumps(claims).encode()), sig])


def test_id_token_validated(issuer: Issuer, jwks_client: SessionJWKClient,
                            signed_in: dict[str, Any]) -> None:
    id_token, nonce = signed_in["result"]["id_token"], signed_in["flow"]["nonce"]
    claims = validate_id_token(id_token, jwks_client=jwks_client, issuer=issuer.url,
                               audience="modelgate-panel", nonce=nonce)
    assert claims["preferred_username"] == "alice"


@pytest.mark.parametrize("case", ["wrong_iss", "wrong_aud", "bad_nonce", "expired",
                                  "bad_signature", "access_token", "alg_none"])
def test_id_token_defects_rejected(issuer: Issuer, jwks_client: SessionJWKClient,
                                   signed_in: dict[str, Any], case: str) -> None:
    nonce = signed_in["flow"]["nonce"]
    digest = hashlib.sha256(nonce.encode()).hexdigest()
    now = int(time.time())
    good = {"aud": "modelgate-panel", "nonce": digest, "header": {"typ": "JWT"}}
    token = signed_in["result"]["id_token"]
    kwargs: dict[str, Any] = {"issuer": issuer.url, "audience": "modelgate-panel",
                              "nonce": nonce}
    if case == "wrong_iss":
        kwargs["issuer"] = "https://127.0.0.1:1/local"
    elif case == "wrong_aud":
        kwargs["audience"] = "modelgate-ci"
    elif case == "bad_nonce":
        kwargs["nonce"] = "another-flow-nonce"
    elif case == "expired":
        token = _mint(issuer, exp=now - 120, iat=now - 3700, nbf=now - 3700, **good)
    elif case == "bad_signature":
        token = _mint(issuer, key=ATTACKER, **good)
    elif case == "access_token":
        token = signed_in["result"]["access_token"]
        kwargs["audience"] = API
    elif case == "alg_none":
        token = _none_token(issuer)
    with pytest.raises(TokenValidationError):
        validate_id_token(token, jwks_client=jwks_client, **kwargs)


def test_settings_for_entra_and_local() -> None:
    entra = OidcSettings.from_config({
        "IDENTITY": "entra", "CLIENT_ID": "panel-guid", "CLIENT_SECRET": "s" * 32,
        "TENANT_ID": "tenant-guid", "API_CLIENT_ID": "api-guid"})
    assert entra.authority == "https://login.microsoftonline.com/tenant-guid"
    assert entra.issuer == "https://login.microsoftonline.com/tenant-guid/v2.0"
    assert entra.jwks_uri.endswith("/tenant-guid/discovery/v2.0/keys")
    assert entra.scopes == ["api://api-guid/Score.Invoke"]
    assert entra.api_audiences == ["api://api-guid", "api-guid"]
    assert "s" * 32 not in repr(entra)
    local = OidcSettings.from_config({"IDENTITY": "local", "CLIENT_SECRET": "x" * 32,
                                      "ISSUER_URL": "https://127.0.0.1:8443/local/"})
    assert local.authority == local.issuer == "https://127.0.0.1:8443/local"
    assert local.scopes == ["api://modelgate/Score.Invoke"] and local.client_id == "modelgate-panel"
    with pytest.raises(ValueError):
        OidcSettings.from_config({"IDENTITY": "entra", "CLIENT_SECRET": "x" * 32})
    with pytest.raises(ValueError):
        OidcSettings.from_config({"IDENTITY": "local", "ISSUER_URL": "https://h/local"})


class _CannedResponse:
    """Just enough of requests.Response for MSAL's discovery call."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.status_code = 200
        self.text = json.dumps(data)
        self.headers: dict[str, str] = {}

    def raise_for_status(self) -> None:
        """Never fails."""


class _EntraStub:
    """A fake at the cloud boundary: answers Entra's tenant discovery, records URLs."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def get(self, url: str, **_: Any) -> _CannedResponse:
        self.urls.append(url)
        tenant = "https://login.microsoftonline.com/tenant-guid"
        return _CannedResponse({"authorization_endpoint": f"{tenant}/oauth2/v2.0/authorize",
                                "token_endpoint": f"{tenant}/oauth2/v2.0/token",
                                "issuer": f"{tenant}/v2.0"})

    def post(self, url: str, **_: Any) -> None:
        raise AssertionError(f"unexpected POST {url}")


def test_build_msal_app_for_entra_uses_tenant_authority_and_api_scope() -> None:
    settings = OidcSettings.from_config({
        "IDENTITY": "entra", "CLIENT_ID": "panel-guid", "CLIENT_SECRET": "s" * 32,
        "TENANT_ID": "tenant-guid", "API_CLIENT_ID": "api-guid"})
    stub = _EntraStub()
    app = build_msal_app(settings, stub)  # type: ignore[arg-type]
    flow = app.initiate_auth_code_flow(settings.scopes, response_mode="form_post",
                                       redirect_uri="http://localhost:5000/auth/callback")
    assert stub.urls == [
        "https://login.microsoftonline.com/tenant-guid/v2.0/.well-known/openid-configuration"]
    uri = flow["auth_uri"]
    assert uri.startswith("https://login.microsoftonline.com/tenant-guid/oauth2/v2.0/authorize?")
    assert "scope=api%3A%2F%2Fapi-guid%2FScore.Invoke" in uri and "code_challenge=" in uri


def test_rotated_signer_accepted_from_cached_jwks_without_refetch(issuer: Issuer) -> None:
    from app.identity import rotate_keys

    session = issuer.session()
    fetches: list[str] = []
    original_get = session.get

    def counting_get(url: str, **kw: Any) -> Any:
        fetches.append(url)
        return original_get(url, **kw)

    session.get = counting_get  # type: ignore[method-assign]
    client = SessionJWKClient(f"{issuer.url}/jwks", session, cooldown=30)
    old = issuer.session().post(
        f"{issuer.url}/token", auth=("modelgate-ci", issuer.secret("modelgate-ci")),
        data={"grant_type": "client_credentials", "scope": f"{API}/.default"},
        timeout=5).json()["access_token"]
    issuer.remember(old)
    _check_at(old, client, issuer, required_roles=["MLOps.Engineer"])
    rotate_keys(issuer.home, force=True)
    new = issuer.session().post(
        f"{issuer.url}/token", auth=("modelgate-ci", issuer.secret("modelgate-ci")),
        data={"grant_type": "client_credentials", "scope": f"{API}/.default"},
        timeout=5).json()["access_token"]
    issuer.remember(new)
    assert jwt.get_unverified_header(new)["kid"] != jwt.get_unverified_header(old)["kid"]
    _check_at(new, client, issuer)
    _check_at(old, client, issuer)
    assert len(fetches) == 1  # the new signer was already in the cached JWKS
    for _ in range(20):  # unknown kids: at most one forced refetch per cooldown
        with pytest.raises(TokenValidationError):
            _check_at(_mint(issuer, header={"kid": "nope"}, key=ATTACKER), client, issuer)
    assert len(fetches) <= 2
