"""The panel's OpenID Connect client: MSAL sign-in flows, ID-token checks, per-user token caches.

One `IdentityClient` per Flask app holds the settings, an outbound HTTP session (local CA,
`trust_env` off, a timeout on every call, discovery documents cached) and the JWKS client.
MSAL apps are built per use around one user's token cache: MSAL binds its cache when the app
is constructed, and the cached discovery makes construction free of network round trips.

Token caches live on the server only: in Redis under a hashed user id, encrypted with a key
derived from SECRET_KEY, expiring with the panel session. The cookie never holds a token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msal
import redis
import requests
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app

from app.auth.oidc import (
    OidcSettings,
    SessionJWKClient,
    TokenValidationError,
    build_msal_app,
    validate_access_token,
    validate_id_token,
)
from app.auth.pending import FLOW_MAX_AGE_SECONDS, PendingSignIns
from app.auth.users import User
from app.errors import ConfigError, ServiceUnavailable, Unauthorized

log = logging.getLogger(__name__)

HTTP_TIMEOUT_SECONDS = 5.0
DISCOVERY_TTL_SECONDS = 3600.0
CACHE_PREFIX = "modelgate:token-cache:"
_EXTENSION = "modelgate.identity"
_build_lock = threading.Lock()
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class SignInError(Exception):
    """A sign-in callback that must not sign anyone in; `message` is for the user."""

    def __init__(self, message: str, reason: str) -> None:
        """Keep the user-facing message apart from the log reason (neither holds secrets)."""
        super().__init__(reason)
        self.message = message
        self.reason = reason


class SignInRequired(Unauthorized):
    """The user's tokens cannot be renewed silently: they must sign in again."""

    def __init__(self) -> None:
        """A fixed, user-facing message."""
        super().__init__("Your sign-in has expired for this action: sign out and sign in again.")


class RenewalError(Exception):
    """The user's tokens could not be renewed silently; `reason` is for the log (no secrets)."""

    def __init__(self, reason: str) -> None:
        """Keep the reason."""
        super().__init__(reason)
        self.reason = reason


class OutboundSession(requests.Session):
    """HTTP for MSAL and JWKS: pinned CA, no proxy/CA env, default timeout, cached discovery."""

    def __init__(self, verify: str | bool, timeout: float = HTTP_TIMEOUT_SECONDS) -> None:
        """Verify against `verify` (a CA file or True) and time out every call after `timeout`."""
        super().__init__()
        self.verify = verify
        # REQUESTS_CA_BUNDLE / proxies from the environment would override `verify`.
        self.trust_env = False
        self.timeout = timeout
        self._discovery: dict[str, tuple[float, requests.Response]] = {}
        self._lock = threading.Lock()

    def request(self, method: str, url: str | bytes, *args: Any,
                **kwargs: Any) -> requests.Response:
        """Send with the default timeout; serve discovery GETs from a one-hour cache."""
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        is_discovery = (method.upper() == "GET"
                        and str(url).endswith("/.well-known/openid-configuration"))
        if not is_discovery:
            return super().request(method, url, *args, **kwargs)
        with self._lock:
            hit = self._discovery.get(str(url))
        if hit and hit[0] > time.monotonic():
            return hit[1]
        response = super().request(method, url, *args, **kwargs)
        if response.status_code == 200:
            with self._lock:
                self._discovery[str(url)] = (time.monotonic() + DISCOVERY_TTL_SECONDS, response)
        return response


class TokenCacheStore:
    """Per-user MSAL token caches in Redis: encrypted, keyed by a digest of the user id, TTL'd."""

    def __init__(self, redis: Any, secret_key: str, ttl_seconds: int) -> None:
        """Derive the cipher key from SECRET_KEY so Redis (and its AOF) holds no usable tokens."""
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"modelgate panel token cache").derive(secret_key.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(key))
        self._redis = redis
        self._ttl = ttl_seconds

    @staticmethod
    def key(user_id: str) -> str:
        """The Redis key of a user's cache (the user id itself is not stored)."""
        return CACHE_PREFIX + hashlib.sha256(user_id.encode()).hexdigest()

    def load(self, user_id: str) -> msal.SerializableTokenCache:
        """The user's cache, empty when none is stored or it cannot be decrypted."""
        cache = msal.SerializableTokenCache()
        blob = self._redis.get(self.key(user_id))
        if blob:
            try:
                cache.deserialize(self._fernet.decrypt(blob).decode())
            except (InvalidToken, ValueError):
                log.warning("discarding an unreadable token cache (SECRET_KEY changed?)")
        return cache

    def save(self, user_id: str, cache: msal.SerializableTokenCache) -> None:
        """Store the cache if MSAL changed it; the TTL restarts with every save."""
        if cache.has_state_changed:
            self._redis.set(self.key(user_id),
                            self._fernet.encrypt(cache.serialize().encode()), ex=self._ttl)

    def delete(self, user_id: str) -> None:
        """Forget the user's tokens (sign-out)."""
        self._redis.delete(self.key(user_id))

    @contextmanager
    def locked(self, user_id: str) -> Iterator[None]:
        """Serialise read-refresh-write per user: the issuer rotates refresh tokens on use."""
        lock = self._redis.lock(self.key(user_id) + ":lock", timeout=30, blocking_timeout=10)
        if not lock.acquire():
            raise ServiceUnavailable("another request is renewing your tokens; try again")
        try:
            yield
        finally:
            try:
                lock.release()
            except Exception:  # expired meanwhile: nothing left to release
                pass


@dataclass
class IdentityClient:
    """Everything the panel needs to talk to its identity provider, built once per app."""

    settings: OidcSettings
    http: OutboundSession
    jwks: SessionJWKClient
    store: TokenCacheStore
    pending: PendingSignIns
    panel_url: str

    @property
    def redirect_uri(self) -> str:
        """Where the provider sends the browser back (from PANEL_URL, never the Host header)."""
        return f"{self.panel_url}/auth/callback"

    @property
    def discovery_url(self) -> str:
        """The provider's OpenID configuration (the same URL MSAL reads)."""
        if self.settings.identity == "entra":
            return f"{self.settings.authority}/v2.0/.well-known/openid-configuration"
        return f"{self.settings.issuer_url}/.well-known/openid-configuration"

    @property
    def access_token_type(self) -> str:
        """The `typ` header of API access tokens: at+jwt locally, JWT from Entra ID."""
        return self.settings.access_token_type

    def msal_app(self, cache: msal.TokenCache | None = None,
                 ) -> msal.ConfidentialClientApplication:
        """A ConfidentialClientApplication around `cache`; 503 when the provider is unreachable."""
        try:
            return build_msal_app(self.settings, self.http, token_cache=cache)
        except (requests.RequestException, ValueError) as exc:
            log.warning("identity provider unreachable: %s", type(exc).__name__)
            raise ServiceUnavailable("The sign-in service cannot be reached right now; "
                                     "try again in a moment.") from None


def load_settings(config: Mapping[str, Any]) -> OidcSettings:
    """OidcSettings from the app config; locally the panel secret comes from dev-credentials."""
    values = dict(config)
    if values.get("IDENTITY", "local") == "local" and not values.get("CLIENT_SECRET"):
        values["CLIENT_SECRET"] = _local_client_secret(Path(values["HOME"]),
                                                       str(values.get("CLIENT_ID")))
    try:
        return OidcSettings.from_config(values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _local_client_secret(home: Path, client_id: str) -> str:
    """The panel client's secret that the local issuer generated into dev-credentials.json."""
    path = home / "dev-credentials.json"
    try:
        clients = json.loads(path.read_text())["clients"]
        return str(clients[client_id]["secret"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"no secret for client {client_id!r} in {path}: start the local "
                          "issuer once (modelgate up) or set MODELGATE_CLIENT_SECRET") from None


def identity_client() -> IdentityClient:
    """The current app's IdentityClient, built on first use (nothing connects at import)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    client: IdentityClient | None = app.extensions.get(_EXTENSION)
    if client is not None:
        return client
    with _build_lock:
        client = app.extensions.get(_EXTENSION)
        if client is None:
            # MSAL's DEBUG records dump token-cache events with the auth code and PKCE verifier
            # in them: keep that logger at INFO even when the panel runs with DEBUG logging.
            logging.getLogger("msal").setLevel(logging.INFO)
            config = app.config
            settings = load_settings(config)
            http = OutboundSession(config.get("CA_BUNDLE") or True)
            client = IdentityClient(
                settings=settings, http=http,
                jwks=SessionJWKClient(settings.jwks_uri, http),
                store=TokenCacheStore(app.extensions["redis"], str(config["SECRET_KEY"]),
                                      int(app.permanent_session_lifetime.total_seconds())),
                pending=PendingSignIns(app.extensions["redis"], str(config["SECRET_KEY"])),
                panel_url=str(config["PANEL_URL"]).rstrip("/"),
            )
            app.extensions[_EXTENSION] = client
    return client


def start_sign_in(next_url: str, binding: str) -> str:
    """Begin an auth code + PKCE flow, keep it on the server for `binding`, return the URL.

    `binding` is the browser's sign-in cookie value (app.auth.pending); the flow never goes
    into the session cookie, so no concurrent response can lose it.
    """
    client = identity_client()
    msal_app = client.msal_app()
    with warnings.catch_warnings():
        # MSAL recommends response_mode=form_post. We use the default query mode on purpose:
        # form_post makes the https issuer POST cross-site to the panel, and SameSite=Lax
        # cookies are not sent on a cross-site POST, so the flow could not be found.
        # The code is still bound to this browser by state, PKCE and the nonce.
        # (catch_warnings is process-wide: at worst another thread misses this one warning.)
        warnings.filterwarnings("ignore", message="response_mode='form_post' is recommended",
                                category=UserWarning)
        flow = msal_app.initiate_auth_code_flow(client.settings.scopes,
                                                redirect_uri=client.redirect_uri)
    auth_uri = str(flow.pop("auth_uri"))  # not needed again
    try:
        client.pending.put(binding, PendingSignIns.begin(flow, next_url))
    except redis.RedisError as exc:
        log.warning("sign-in not started: the session store (Redis) is unreachable (%s)",
                    type(exc).__name__)
        raise ServiceUnavailable("Sessions cannot be stored right now; try signing in again "
                                 "in a moment.") from None
    return auth_uri


def _code(value: Any) -> str:
    """An OAuth error code fit for a page or a log line (provider text is not trusted)."""
    text = str(value)
    return text if _ERROR_CODE.match(text) else "unexpected_error"


def finish_sign_in(params: Mapping[str, str], binding: str) -> tuple[User, str]:
    """Check the provider's answer, redeem the code, validate the ID token; return who and where.

    `binding` is the browser's sign-in cookie value: only the browser that started the
    sign-in for this `state` finds its flow, and only once. Raises SignInError for anything
    that must not sign a user in.
    """
    client = identity_client()
    state = str(params.get("state", ""))
    try:
        pending = client.pending.take(binding, state)
    except redis.RedisError as exc:
        log.warning("sign-in not completed: the session store (Redis) is unreachable (%s)",
                    type(exc).__name__)
        raise ServiceUnavailable("Sessions cannot be stored right now; try signing in again "
                                 "in a moment.") from None
    if pending is None:
        raise SignInError("No sign-in was in progress in this browser (it may have expired). "
                          "Start again.", "callback without a pending flow")
    flow, next_url = pending.flow, pending.next_url
    if time.time() - pending.started > FLOW_MAX_AGE_SECONDS:
        raise SignInError("This sign-in took too long and has expired. Start again.",
                          "pending flow expired")
    if not hmac.compare_digest(state.encode(), pending.state.encode()):
        raise SignInError("This sign-in answer does not belong to the sign-in started in this "
                          "browser. Start again.", "state mismatch")
    if "error" in params:
        code = _code(params["error"])
        raise SignInError(f"The identity provider refused the sign-in ({code}).",
                          f"provider error {code}")
    if not params.get("code"):
        raise SignInError("The identity provider's answer is incomplete. Start again.",
                          "callback without a code")
    cache = msal.SerializableTokenCache()
    try:
        result = client.msal_app(cache).acquire_token_by_auth_code_flow(flow, dict(params))
    except (ValueError, RuntimeError) as exc:  # MSAL's own state and nonce checks
        raise SignInError("The sign-in answer failed our checks. Start again.",
                          f"MSAL refused the answer ({type(exc).__name__})") from None
    except requests.RequestException as exc:
        raise SignInError("The sign-in service cannot be reached right now; try again.",
                          f"token endpoint unreachable ({type(exc).__name__})") from None
    if "error" in result or not result.get("id_token"):
        code = _code(result.get("error", "no_id_token"))
        raise SignInError(f"The identity provider did not complete the sign-in ({code}).",
                          f"token endpoint error {code}")
    try:
        claims = validate_id_token(result["id_token"], jwks_client=client.jwks,
                                   issuer=client.settings.issuer,
                                   audience=client.settings.client_id, nonce=flow["nonce"])
    except TokenValidationError as exc:
        raise SignInError("The identity provider's answer failed our checks. Start again.",
                          f"ID token rejected: {exc}") from None
    user = User.from_claims(claims)
    try:
        client.store.save(user.id, cache)
    except Exception as exc:  # the session does not need the cache; the score tester does
        log.warning("token cache not saved (%s): the user will be asked to sign in again "
                    "for token actions", type(exc).__name__)
    return user, next_url


def user_access_token(user: User) -> str:
    """The signed-in user's access token for the scoring API, renewed silently when needed.

    Raises SignInRequired when no token can be had without the user signing in again.
    """
    if user.via != "session":
        raise SignInRequired()
    client = identity_client()
    with client.store.locked(user.id):
        cache = client.store.load(user.id)
        msal_app = client.msal_app(cache)
        accounts = msal_app.get_accounts()
        result = (msal_app.acquire_token_silent(client.settings.scopes, account=accounts[0])
                  if accounts else None)
        client.store.save(user.id, cache)
    if not result or "access_token" not in result:
        log.info("no silent token for user=%s (%s)", user.username,
                 _code((result or {}).get("error", "no_cached_account")))
        raise SignInRequired()
    return str(result["access_token"])


def renewed_id_token_claims(user: User) -> dict[str, Any]:
    """Renew the user's tokens with their refresh token; return the new ID token's claims.

    This is how a session's roles are re-checked: the provider puts the user's current roles
    in the ID token it returns with the renewed tokens. The ID token is validated like the
    sign-in's (signature against the JWKS, RS256/PS256, `typ` JWT, iss, aud = our client id,
    exp, iat, sub; a refresh carries no nonce) and must name the same user.
    Raises RenewalError (or ServiceUnavailable when the provider or Redis is unreachable).
    """
    client = identity_client()
    with client.store.locked(user.id):
        cache = client.store.load(user.id)
        msal_app = client.msal_app(cache)
        accounts = msal_app.get_accounts()
        if not accounts:
            raise RenewalError("no cached account")
        result = msal_app.acquire_token_silent_with_error(
            client.settings.scopes, account=accounts[0], force_refresh=True)
        client.store.save(user.id, cache)
    if not result or not result.get("id_token"):
        raise RenewalError(_code((result or {}).get("error", "no_id_token")))
    try:
        # validate_access_token's checks with typ JWT and our client id as audience are the
        # ID-token checks minus the nonce, which only the sign-in's ID token carries.
        claims = validate_access_token(str(result["id_token"]), jwks_client=client.jwks,
                                       issuer=client.settings.issuer,
                                       audience=client.settings.client_id, typ="JWT")
    except TokenValidationError as exc:
        raise RenewalError(f"ID token rejected: {exc}") from None
    if User.from_claims(claims).id != user.id:
        raise RenewalError("the renewed ID token names another user")
    return claims


def sign_out(user: User | None) -> str | None:
    """Forget the user's tokens; return the provider's end-session URL, or None if unknown."""
    client = identity_client()
    hint = None
    if user is not None and user.is_authenticated and user.via == "session":
        try:
            cache = client.store.load(user.id)
            hint = next((entry["secret"] for entry in cache.search(
                msal.TokenCache.CredentialType.ID_TOKEN)), None)
            client.store.delete(user.id)
        except Exception as exc:  # sign-out must still work when Redis is away
            log.warning("token cache not cleared at sign-out (%s)", type(exc).__name__)
    try:
        response = client.http.get(client.discovery_url)
        endpoint = response.json().get("end_session_endpoint") if response.ok else None
    except (requests.RequestException, ValueError):
        endpoint = None
    if not endpoint:
        log.warning("the identity provider publishes no end_session_endpoint: only the "
                    "panel session was ended")
        return None
    params = {"post_logout_redirect_uri": f"{client.panel_url}/auth/login",
              "client_id": client.settings.client_id}
    if hint:
        params["id_token_hint"] = hint
    return f"{endpoint}?{urlencode(params)}"
