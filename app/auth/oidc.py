"""OpenID Connect helpers for the panel: MSAL app construction and JWT validation (no Flask).

MSAL (1.38+) does not check an ID token's signature, issuer, audience or expiry, so the panel
calls `validate_id_token` on every sign-in. `validate_access_token` checks the bearer tokens of
the panel REST API with the gateway's own rules (app.gateway.token_rules): RS256/PS256 only,
each key with the algorithm it is published for, required exp/iat/iss/aud/sub of the right
JSON types, `typ` at+jwt (JWT from Entra ID), keys from the issuer's JWKS by `kid` (never from
token headers such as jku/jwk).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
import msal
import requests

from app.gateway import token_rules
from app.gateway.token_rules import TokenRejected

ALGORITHMS = list(token_rules.ALGORITHMS)
LOCAL_API_AUDIENCE = "api://modelgate"
ENTRA_LOGIN = "https://login.microsoftonline.com"
#: Clock skew accepted on exp/nbf/iat. APIM uses 0; the panel also takes Entra-issued tokens
#: whose clock is not ours, so a small, explicit allowance.
DEFAULT_LEEWAY = 30
JWKS_TIMEOUT_SECONDS = 2.0
JWKS_LIFESPAN_SECONDS = 300
#: Minimum time between forced JWKS refreshes on an unknown kid; it bounds how long a key the
#: issuer activated without pre-publishing stays unusable, and how often attackers can make us
#: fetch.
JWKS_COOLDOWN_SECONDS = 10.0


class TokenValidationError(Exception):
    """A token failed validation; the message is generic and never contains the token."""


class MissingRoleError(TokenValidationError):
    """A valid token lacks a required app role (maps to 403, not 401)."""

    def __init__(self, missing: Sequence[str]) -> None:
        """Remember which roles were missing (role names are not secret)."""
        super().__init__("missing role: " + ", ".join(missing))
        self.missing = tuple(missing)


@dataclass(frozen=True)
class OidcSettings:
    """How the panel signs in: the local issuer or Microsoft Entra ID."""

    identity: Literal["local", "entra"]
    client_id: str
    client_secret: str = field(default="", repr=False)
    issuer_url: str = ""  # local: https://127.0.0.1:<port>/local
    tenant_id: str = ""  # entra
    api_client_id: str = ""  # entra: the app registration exposing Score.Invoke
    client_certificate: Mapping[str, str] | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> OidcSettings:
        """Read IDENTITY, ISSUER_URL, CLIENT_ID, CLIENT_SECRET, TENANT_ID, API_CLIENT_ID."""
        identity = str(config.get("IDENTITY") or "local")
        if identity not in ("local", "entra"):
            raise ValueError("MODELGATE_IDENTITY must be 'local' or 'entra'")
        settings = cls(
            identity=identity,  # type: ignore[arg-type]
            client_id=str(config.get("CLIENT_ID") or "modelgate-panel"),
            client_secret=str(config.get("CLIENT_SECRET") or ""),
            issuer_url=str(config.get("ISSUER_URL") or "").rstrip("/"),
            tenant_id=str(config.get("TENANT_ID") or ""),
            api_client_id=str(config.get("API_CLIENT_ID") or ""),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Fail fast on an incomplete configuration (messages name settings, not values)."""
        if not (self.client_secret or self.client_certificate):
            raise ValueError("MODELGATE_CLIENT_SECRET (or a client certificate) is required")
        if self.identity == "local" and not self.issuer_url.startswith("https://"):
            raise ValueError("MODELGATE_ISSUER_URL must be an https URL for identity=local")
        if self.identity == "entra" and not (self.tenant_id and self.api_client_id):
            raise ValueError("identity=entra needs MODELGATE_TENANT_ID and "
                             "MODELGATE_API_CLIENT_ID")
        if self.identity == "entra" and self.api_client_id == self.client_id:
            # Entra's ID tokens carry typ JWT like its access tokens: only the audience tells
            # a panel sign-in's ID token from an API access token.
            raise ValueError("MODELGATE_API_CLIENT_ID must be the scoring API's own app "
                             "registration, not the panel's (MODELGATE_CLIENT_ID)")

    @property
    def authority(self) -> str:
        """The MSAL authority (Entra) or OIDC authority (local issuer)."""
        if self.identity == "entra":
            return f"{ENTRA_LOGIN}/{self.tenant_id}"
        return self.issuer_url

    @property
    def issuer(self) -> str:
        """The `iss` of ID tokens and (v2) access tokens."""
        if self.identity == "entra":
            return f"{ENTRA_LOGIN}/{self.tenant_id}/v2.0"
        return self.issuer_url

    @property
    def jwks_uri(self) -> str:
        """Where the signing keys are published."""
        if self.identity == "entra":
            return f"{ENTRA_LOGIN}/{self.tenant_id}/discovery/v2.0/keys"
        return f"{self.issuer_url}/jwks"

    @property
    def api_audience(self) -> str:
        """The `aud` of access tokens for the scoring API / panel API."""
        if self.identity == "entra":
            return f"api://{self.api_client_id}"
        return LOCAL_API_AUDIENCE

    @property
    def api_audiences(self) -> list[str]:
        """Accepted access-token audiences (Entra v2 tokens carry the API's client id)."""
        if self.identity == "entra":
            return [self.api_audience, self.api_client_id]
        return [LOCAL_API_AUDIENCE]

    @property
    def access_token_type(self) -> str:
        """The `typ` header of access tokens: at+jwt from the local issuer, JWT from Entra ID."""
        if self.identity == "entra":
            return token_rules.ENTRA_ACCESS_TOKEN_TYPE
        return token_rules.ACCESS_TOKEN_TYPE

    @property
    def scopes(self) -> list[str]:
        """Delegated scopes the panel asks for at sign-in (MSAL adds openid/profile/offline)."""
        return [f"{self.api_audience}/Score.Invoke"]


def build_msal_app(settings: OidcSettings, http_session: requests.Session,
                   token_cache: msal.TokenCache | None = None,
                   ) -> msal.ConfidentialClientApplication:
    """A ConfidentialClientApplication for the configured identity provider.

    MSAL fetches discovery here, so build it lazily (per request or cached after first use).
    `http_session` should verify against the local CA with `trust_env` off.
    """
    credential: Any = settings.client_certificate or settings.client_secret
    common: dict[str, Any] = {
        "client_credential": credential, "http_client": http_session, "token_cache": token_cache,
    }
    if settings.identity == "entra":
        return msal.ConfidentialClientApplication(
            settings.client_id, authority=settings.authority, **common)
    return msal.ConfidentialClientApplication(
        settings.client_id, oidc_authority=settings.authority, **common)


class SessionJWKClient(jwt.PyJWKClient):
    """PyJWKClient fetching through a requests session (CA pinning, no proxy env, timeout)."""

    def __init__(self, uri: str, session: requests.Session, *,
                 timeout: float = JWKS_TIMEOUT_SECONDS, lifespan: float = JWKS_LIFESPAN_SECONDS,
                 cooldown: float = JWKS_COOLDOWN_SECONDS) -> None:
        """Cache the JWKS for `lifespan` seconds; refetch on unknown kid at most per `cooldown`."""
        super().__init__(uri, cache_jwk_set=True, lifespan=lifespan, timeout=timeout,
                         cooldown_duration=cooldown)
        self._session = session

    def fetch_data(self) -> Any:
        """GET the JWKS document with the session; errors become PyJWKClientConnectionError."""
        try:
            response = self._session.get(self.uri, timeout=self.timeout,
                                         allow_redirects=False)
            response.raise_for_status()
            data = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise jwt.PyJWKClientConnectionError(
                f"cannot fetch the JWKS: {type(exc).__name__}") from None
        if not isinstance(data, dict):
            raise jwt.PyJWKClientError("The JWKS endpoint did not return a JSON object")
        # get_jwk_set caches what we return; the fetch time drives the unknown-kid cooldown.
        self._last_successful_fetch = time.monotonic()
        return data


def _decode(token: str, *, jwks_client: jwt.PyJWKClient, issuer: str | Sequence[str],
            audience: str | Iterable[str], leeway: float, require: list[str],
            typ: str | None) -> dict[str, Any]:
    try:
        alg, kid = token_rules.check_header(jwt.get_unverified_header(token), typ)
        key = jwks_client.get_signing_key(kid)
        # PyJWT reads a JWK's alg, or RS256 for an RSA key naming none, as token_rules does
        token_rules.check_key_algorithm(alg, key.algorithm_name)
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[alg], audience=audience, issuer=issuer,
            leeway=leeway, options={"require": require},
        )
        token_rules.check_claim_types(claims)
    except TokenRejected as exc:
        raise TokenValidationError(f"invalid token ({exc})") from None
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        # The class name says what failed (expired, audience…) without echoing the token.
        raise TokenValidationError(f"invalid token ({type(exc).__name__})") from None
    return claims


def validate_id_token(id_token: str, *, jwks_client: jwt.PyJWKClient, issuer: str,
                      audience: str, nonce: str, leeway: float = DEFAULT_LEEWAY,
                      ) -> dict[str, Any]:
    """Validate an ID token from MSAL's auth code flow and return its claims.

    `nonce` is the flow's own nonce (`flow["nonce"]`): MSAL sends its SHA-256 hex digest as the
    request nonce, so the token must echo that digest. Raises TokenValidationError.
    """
    claims = _decode(id_token, jwks_client=jwks_client, issuer=issuer, audience=audience,
                     leeway=leeway, require=["exp", "iat", "iss", "aud", "sub", "nonce"],
                     typ=None)
    typ = str(jwt.get_unverified_header(id_token).get("typ", "JWT"))
    if typ.lower() not in ("jwt", ""):
        raise TokenValidationError("unexpected token type")  # e.g. an at+jwt passed as ID token
    expected = hashlib.sha256(nonce.encode("utf-8")).hexdigest()
    if not hmac.compare_digest(str(claims["nonce"]).encode(), expected.encode()):
        raise TokenValidationError("nonce mismatch")
    aud = claims["aud"]
    if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != audience:
        raise TokenValidationError("authorized party mismatch")
    return claims


def validate_access_token(token: str, *, jwks_client: jwt.PyJWKClient,
                          issuer: str | Sequence[str], audience: str | Iterable[str],
                          required_roles: Iterable[str] | None = None,
                          typ: str | None = "at+jwt", leeway: float = DEFAULT_LEEWAY,
                          ) -> dict[str, Any]:
    """Validate a bearer access token and, after that, its app roles.

    Raises TokenValidationError (→ 401) or MissingRoleError (→ 403). Entra access tokens carry
    `typ` JWT: pass typ="JWT" for them.
    """
    claims = _decode(token, jwks_client=jwks_client, issuer=issuer, audience=audience,
                     leeway=leeway, require=["exp", "iat", "iss", "aud", "sub"], typ=typ)
    roles = claims.get("roles", [])  # a list of strings, if present (check_claim_types)
    missing = [r for r in (required_roles or []) if r not in roles]
    if missing:
        raise MissingRoleError(missing)
    return claims
