"""Authlib wiring: the authorization server, its grants and the JWT access/ID token minting.

Claims follow Entra ID v2 tokens so the panel and gateway code is the same for both issuers:
scope `api://modelgate/<name>` gives `aud` api://modelgate, `scp` lists the short names for
users, `roles` carries app roles, `azp`/`appid` name the client.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import InvalidRequestError, InvalidScopeError, scope_to_list
from authlib.oauth2.rfc6749.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    RefreshTokenGrant,
)
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.core.util import create_half_hash
from flask import Flask
from joserfc import jwt

from app.identity.credentials import Client, Directory, User
from app.identity.keys import KeyStore
from app.identity.settings import API_AUDIENCE, IssuerSettings
from app.identity.store import AuthorizationCode, IssuerStore, RefreshToken

OIDC_SCOPES = ("openid", "profile", "email", "offline_access")
API_SCOPES = (f"{API_AUDIENCE}/Score.Invoke", f"{API_AUDIENCE}/.default")
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


@dataclass(frozen=True)
class IssuerContext:
    """The issuer's collaborators, shared by views and grants."""

    settings: IssuerSettings
    directory: Directory
    keys: KeyStore
    store: IssuerStore


@dataclass(frozen=True)
class SignedIn:
    """A user who has just signed in at the authorization endpoint."""

    user: User
    auth_time: int

    def get_user_id(self) -> str:
        """Authlib's hook: the subject identifier."""
        return self.user.oid


def _as_user(user: object) -> User:
    return user.user if isinstance(user, SignedIn) else user  # type: ignore[return-value]


def delegated_scopes(scope: str) -> list[str]:
    """Short names of the API scopes in a request (`.default` stands for all of them)."""
    names: list[str] = []
    for item in scope_to_list(scope) or []:
        if item.startswith(API_AUDIENCE + "/"):
            name = item[len(API_AUDIENCE) + 1:]
            names.extend(["Score.Invoke"] if name == ".default" else [name])
    return sorted(set(names))


def user_claims(user: User) -> dict[str, Any]:
    """Identity claims shared by ID tokens, user access tokens and userinfo."""
    return {"sub": user.oid, "oid": user.oid, "name": user.name,
            "preferred_username": user.username, "roles": list(user.roles)}


class AccessTokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]
    """RS256 `at+jwt` access tokens signed with the current key, plus opaque refresh tokens."""

    def __init__(self, ctx: IssuerContext) -> None:
        """Bind to the issuer context."""
        ttl = ctx.settings.access_token_ttl
        super().__init__(
            issuer=ctx.settings.issuer,
            alg="RS256",
            refresh_token_generator=lambda **_: generate_token(48),
            expires_generator=lambda client, grant_type: ttl,
        )
        self.ctx = ctx

    def access_token_generator(self, client: Client, grant_type: str, user: object,
                               scope: str) -> str:
        """Mint the JWT; audience from the API scope as Entra does."""
        now = int(time.time())
        api = delegated_scopes(scope)
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": API_AUDIENCE if api else client.client_id,
            "iat": now, "nbf": now, "exp": now + self.ctx.settings.access_token_ttl,
            "jti": generate_token(22), "azp": client.client_id, "appid": client.client_id,
            "client_id": client.client_id, "ver": "2.0",
        }
        if user is None:
            claims.update(sub=client.oid, oid=client.oid, roles=list(client.roles), idtyp="app")
        else:
            claims.update(user_claims(_as_user(user)), idtyp="user")
            if api:
                claims["scp"] = " ".join(api)
        key = self.ctx.keys.signing_key()
        header = {"alg": "RS256", "typ": "at+jwt", "kid": key.kid}
        return jwt.encode(header, claims, key, algorithms=["RS256"])

    def generate(self, grant_type: str, client: Client, user: object = None,
                 scope: str | None = None, expires_in: int | None = None,
                 include_refresh_token: bool = True) -> dict[str, Any]:
        """Issue refresh tokens only when `offline_access` was granted."""
        scopes = scope_to_list(scope) or []
        token: dict[str, Any] = super().generate(
            grant_type, client, user=user, scope=scope, expires_in=expires_in,
            include_refresh_token=include_refresh_token and "offline_access" in scopes,
        )
        return token


class LocalAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    """Authlib's Flask server bound to our directory and store."""

    def __init__(self, ctx: IssuerContext) -> None:
        """Create the server; the app is bound later with init_app."""
        super().__init__()
        self.ctx = ctx

    def query_client(self, client_id: str) -> Client | None:
        """Clients come from the dev credentials file."""
        return self.ctx.directory.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Persist the refresh token's digest, if one was issued."""
        refresh = token.get("refresh_token")
        if not refresh:
            return
        rotated: RefreshToken | None = getattr(request, "refresh_token", None)
        source = rotated or request.authorization_code
        # A rotation continues the family of the token it replaces; a sign-in starts one.
        self.ctx.store.save_refresh_token(
            refresh,
            RefreshToken("", request.client.client_id, _as_user(request.user).username,
                         token.get("scope", ""), source.auth_time,
                         rotated.family if rotated else ""),
            self.ctx.settings.refresh_token_ttl,
        )


class S256Required(CodeChallenge):  # type: ignore[misc]
    """PKCE is mandatory for every client, and only with S256."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        """Refuse authorization requests without an S256 code challenge."""
        data = grant.request.payload.data
        if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE with code_challenge_method=S256 is required.")
        super().validate_code_challenge(grant, redirect_uri)


class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    """Authorization code grant over our SQLite store."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    @property
    def ctx(self) -> IssuerContext:
        """The issuer context."""
        ctx: IssuerContext = self.server.ctx
        return ctx

    def save_authorization_code(self, code: str, request: Any) -> None:
        """Store the code's digest with everything the token request will check."""
        data = request.payload.data
        signed_in: SignedIn = request.user
        self.ctx.store.save_code(code, AuthorizationCode(
            client_id=request.client.client_id, username=signed_in.user.username,
            redirect_uri=request.payload.redirect_uri, scope=request.payload.scope or "",
            nonce=data.get("nonce"), code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            auth_time=signed_in.auth_time,
        ), self.ctx.settings.code_ttl)

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        """Consume the code: it is single-use even if the rest of the request fails."""
        return self.ctx.store.consume_code(code, client.client_id)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Nothing to do: query_authorization_code consumed it already."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> User | None:
        """The user as currently configured (a deleted user gets no token)."""
        return self.ctx.directory.users.get(authorization_code.username)


class RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    """Refresh tokens rotate: each one is usable once and is replaced by a new one.

    The token is used up as it is looked up (one atomic statement), so of several concurrent
    requests with the same token exactly one succeeds; the others count as reuse and revoke
    the token's family.
    """

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshToken | None:
        """Redeem a live refresh token of the authenticated client (it is used up now)."""
        store: IssuerStore = self.server.ctx.store
        return store.redeem_refresh_token(refresh_token, self.request.client.client_id)

    def authenticate_user(self, refresh_token: RefreshToken) -> User | None:
        """Roles are re-read from the directory, so edits apply at the next refresh."""
        user: User | None = self.server.ctx.directory.users.get(refresh_token.username)
        return user

    def revoke_old_credential(self, refresh_token: RefreshToken) -> None:
        """Nothing to do: authenticate_refresh_token used the token up already."""


class AppGrant(ClientCredentialsGrant):  # type: ignore[misc]
    """Client credentials; like Entra, only `<resource>/.default` may be requested."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def validate_token_request(self) -> None:
        """Authenticate the client, then insist on the .default scope of our API."""
        super().validate_token_request()
        if scope_to_list(self.request.payload.scope) != [f"{API_AUDIENCE}/.default"]:
            raise InvalidScopeError(f"Use scope {API_AUDIENCE}/.default for client credentials.")


class IdTokens(OpenIDCode):  # type: ignore[misc]
    """ID tokens: RS256, `typ` JWT, `aud` the client id, nonce echoed."""

    def __init__(self, ctx: IssuerContext) -> None:
        """Bind to the issuer context; a nonce is optional (MSAL always sends one)."""
        super().__init__(require_nonce=False)
        self.ctx = ctx

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        """Refuse a nonce already carried by a live code of the same client."""
        return self.ctx.store.nonce_in_use(request.payload.client_id, nonce)

    def generate_user_info(self, user: object, scope: str) -> dict[str, Any]:
        """Identity claims of the signed-in user."""
        return user_claims(_as_user(user))

    def encode_id_token(self, token: dict[str, Any], request: Any) -> str:
        """Sign with one key snapshot, so `kid` and signature always agree."""
        now = int(time.time())
        client_id = request.client.client_id
        claims: dict[str, Any] = {
            "iss": self.ctx.settings.issuer, "aud": client_id, "azp": client_id,
            "iat": now, "nbf": now, "exp": now + self.ctx.settings.id_token_ttl, "ver": "2.0",
        }
        code = request.authorization_code
        if code is not None:
            claims.update(self.get_authorization_code_claims(code))
        else:  # a refresh: no nonce to echo, but keep the original sign-in time
            claims["auth_time"] = request.refresh_token.auth_time
        at_hash = create_half_hash(token["access_token"], "RS256")
        if at_hash is not None:
            claims["at_hash"] = at_hash.decode("ascii")
        claims.update(self.generate_user_info(request.user, token["scope"]))
        key = self.ctx.keys.signing_key()
        header = {"alg": "RS256", "typ": "JWT", "kid": key.kid}
        return jwt.encode(header, claims, key, algorithms=["RS256"])


class IdTokensOnRefresh(IdTokens):
    """A fresh ID token with refreshed tokens when `openid` was granted (as Entra does)."""

    def __call__(self, grant: Any) -> None:
        """Only the token-response hook: refresh requests have no authorization step."""
        grant.register_hook("after_create_token_response", self.process_token)


def build_authorization_server(ctx: IssuerContext, app: Flask) -> LocalAuthorizationServer:
    """The authorization server bound to `app`, with our grants and token generator."""
    server = LocalAuthorizationServer(ctx)
    # init_app registers Authlib's opaque default generator; ours must replace it afterwards.
    server.init_app(app)
    server.scopes_supported = [*OIDC_SCOPES, *API_SCOPES]
    server.register_token_generator("default", AccessTokenGenerator(ctx))
    server.register_grant(CodeGrant, [S256Required(required=True), IdTokens(ctx)])
    server.register_grant(RefreshGrant, [IdTokensOnRefresh(ctx)])
    server.register_grant(AppGrant)
    return server
