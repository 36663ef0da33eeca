"""Panel sessions on the server: one Redis record per sign-in, named by a random id in the cookie.

The session cookie (Flask's signed cookie `__Host-session`, 10 h) carries a random session id
(256 bits) next to flask-login's user id, the CSRF token and flash messages; it holds no roles
and no tokens. The record lives in Redis under `modelgate:session:<SHA-256 of the id>` (so
Redis holds no usable session id) as JSON {id, name, username, roles, signed_in_at,
roles_checked_at}, and expires when the 10-hour absolute lifetime ends. Every request with a
session cookie reads it with one GET: deleting the record ends the session at once, for every
copy of the cookie. A set per user (`modelgate:user-sessions:<SHA-256 of the username>`) lists
the user's records, so all of them can be ended together.

Roles come from the ID token at sign-in and are re-checked when they are older than
SESSION_ROLE_TTL_SECONDS: the panel renews the user's tokens with the refresh token (MSAL,
forced) and takes the roles from the new, validated ID token. When that fails the session ends.
A request that finds Redis unreachable is treated as signed out (fail closed), never a 500.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis
from flask import Flask, current_app, g, redirect, request, session, url_for

from app.auth import session_tokens
from app.auth.bearer import user_from_bearer
from app.auth.users import User
from app.errors import ConfigError, ServiceUnavailable, Unauthorized
from app.extensions import login_manager
from app.services import audit
from app.services.audit import AuditAction

log = logging.getLogger(__name__)

SID_KEY = "sid"
RECORD_PREFIX = "modelgate:session:"
USER_INDEX_PREFIX = "modelgate:user-sessions:"
#: How long one request may hold the right to re-check a session's roles before another may.
RECHECK_CLAIM_SECONDS = 30
_EXTENSION = "modelgate.sessions"


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class SessionRecord:
    """What the server knows about one signed-in session (never a token)."""

    id: str
    name: str
    username: str
    roles: tuple[str, ...]
    signed_in_at: float
    roles_checked_at: float

    def user(self) -> User:
        """The flask-login user of this session."""
        return User(id=self.id, name=self.name, username=self.username,
                    roles=frozenset(self.roles))

    def to_json(self) -> str:
        """The stored form."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> SessionRecord | None:
        """Parse a stored record; None for anything malformed."""
        try:
            data = json.loads(raw)
            return cls(id=str(data["id"]), name=str(data["name"]),
                       username=str(data["username"]),
                       roles=tuple(str(r) for r in data["roles"]),
                       signed_in_at=float(data["signed_in_at"]),
                       roles_checked_at=float(data["roles_checked_at"]))
        except (ValueError, KeyError, TypeError):
            return None


class SessionStore:
    """Session records in Redis; every method raises redis.RedisError when Redis is away."""

    def __init__(self, client: redis.Redis, lifetime_seconds: int) -> None:
        """Records live `lifetime_seconds` from sign-in, however active the user is."""
        self._redis = client
        self.lifetime = lifetime_seconds

    @staticmethod
    def key(session_id: str) -> str:
        """The record's key: a digest, so the key itself cannot be used as a cookie."""
        return RECORD_PREFIX + _digest(session_id)

    @staticmethod
    def user_key(username: str) -> str:
        """The key of the set of a user's record keys."""
        return USER_INDEX_PREFIX + _digest(username.casefold())

    def create(self, user: User, roles_checked_at: float | None = None) -> str:
        """Store a new session for `user`; return its id (for the cookie only).

        The roles count as checked now unless `roles_checked_at` says otherwise.
        """
        now = time.time()
        session_id = secrets.token_urlsafe(32)
        record = SessionRecord(id=user.id, name=user.name, username=user.username,
                               roles=tuple(user.role_names), signed_in_at=now,
                               roles_checked_at=now if roles_checked_at is None
                               else roles_checked_at)
        key, index = self.key(session_id), self.user_key(user.username)
        pipe = self._redis.pipeline()
        pipe.set(key, record.to_json(), ex=self.lifetime)
        pipe.sadd(index, key)
        pipe.expire(index, self.lifetime)
        pipe.execute()
        return session_id

    def get(self, session_id: str, now: float | None = None) -> SessionRecord | None:
        """The live record of a session id, or None (one GET)."""
        raw = self._redis.get(self.key(session_id))
        record = SessionRecord.from_json(raw) if raw else None
        now = time.time() if now is None else now
        if record is None or now - record.signed_in_at > self.lifetime:
            return None
        return record

    def claim_recheck(self, session_id: str) -> bool:
        """True for the one request that may re-check this session's roles now."""
        claimed = self._redis.set(self.key(session_id) + ":recheck", "1", nx=True,
                                  ex=RECHECK_CLAIM_SECONDS)
        return bool(claimed)

    def update(self, session_id: str, record: SessionRecord) -> bool:
        """Replace a record that still exists (a signed-out session is never revived)."""
        key = self.key(session_id)
        done = self._redis.set(key, record.to_json(), xx=True, keepttl=True)
        self._redis.delete(key + ":recheck")
        return bool(done)

    def delete(self, session_id: str, username: str | None = None) -> None:
        """End one session."""
        key = self.key(session_id)
        pipe = self._redis.pipeline()
        pipe.delete(key, key + ":recheck")
        if username:
            pipe.srem(self.user_key(username), key)
        pipe.execute()

    def delete_user(self, username: str) -> int:
        """End every session of `username`; return how many were live."""
        index = self.user_key(username)
        keys = [k.decode() if isinstance(k, bytes) else str(k)
                for k in self._redis.smembers(index)]
        if not keys:
            return 0
        pipe = self._redis.pipeline()
        pipe.delete(*keys)
        pipe.delete(index, *(k + ":recheck" for k in keys))
        ended, _ = pipe.execute()
        return int(ended)


def session_store(app: Flask | None = None) -> SessionStore:
    """The app's SessionStore (built on first use from its Redis client and lifetime)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    store: SessionStore | None = app.extensions.get(_EXTENSION)
    if store is None:
        store = SessionStore(app.extensions["redis"],
                             int(app.permanent_session_lifetime.total_seconds()))
        app.extensions[_EXTENSION] = store
    return store


def role_ttl(app: Flask) -> float:
    """SESSION_ROLE_TTL_SECONDS, checked: how old a session's roles may get."""
    value = app.config.get("SESSION_ROLE_TTL_SECONDS")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError("MODELGATE_SESSION_ROLE_TTL_SECONDS must be a number of seconds >= 0")
    return float(value)


def start(user: User) -> None:
    """Open a server-side session for `user` in a fresh cookie session (sign-in).

    Raises ServiceUnavailable when Redis cannot store it.
    """
    try:
        session_id = session_store().create(user)
    except redis.RedisError as exc:
        log.warning("sign-in not completed: the session store (Redis) is unreachable (%s)",
                    type(exc).__name__)
        raise ServiceUnavailable("Sessions cannot be stored right now; try signing in again "
                                 "in a moment.") from None
    session.clear()
    session.permanent = True
    session[SID_KEY] = session_id
    audit.record(user.username, AuditAction.SIGN_IN, f"user:{user.username}",
                 {"roles": user.role_names})


def end(user: User | None) -> None:
    """End this browser's session and every other session of the same user (sign-out).

    The user's token cache, which all their sessions share, is gone after sign-out, and the
    local issuer revokes all their refresh tokens: their other sessions could not re-check
    their roles any more, so they end now rather than at their next check.
    Raises ServiceUnavailable when Redis cannot delete the records.
    """
    session_id = session.get(SID_KEY)
    store = session_store()
    try:
        if isinstance(session_id, str):
            store.delete(session_id, user.username if user else None)
        ended = store.delete_user(user.username) if user is not None else 0
    except redis.RedisError as exc:
        log.warning("sign-out not completed: the session store (Redis) is unreachable (%s)",
                    type(exc).__name__)
        raise ServiceUnavailable("Your sign-out could not be recorded because the session "
                                 "store is unreachable; try again in a moment.") from None
    if user is not None:
        audit.record(user.username, AuditAction.SIGN_OUT, f"user:{user.username}",
                     {"other_sessions_ended": ended})


def end_user_sessions(username: str, actor: str) -> int:
    """End every panel session of `username` at once (an admin's "sign out everywhere")."""
    ended = session_store().delete_user(username)
    audit.record(actor, AuditAction.SESSIONS_REVOKED, f"user:{username}", {"ended": ended})
    return ended


def _load(user_id: str) -> User | None:
    """The user of this request's session cookie, with roles re-checked when due."""
    session_id = session.get(SID_KEY)
    if not isinstance(session_id, str):
        return None
    store = session_store()
    try:
        record = store.get(session_id)
    except redis.RedisError as exc:
        _store_down(exc)
        return None
    if record is None or record.id != user_id:
        return None
    if time.time() - record.roles_checked_at >= role_ttl(current_app):
        return _recheck_roles(store, session_id, record)
    return record.user()


def _store_down(exc: Exception) -> None:
    """No user for this request (fail closed); the unauthorized handler then answers 503, since
    the session may well be valid and signing in again cannot work until Redis is back."""
    log.warning("session check failed: the session store (Redis) is unreachable (%s); "
                "the request is refused with 503", type(exc).__name__)
    g.session_store_down = True


def _recheck_roles(store: SessionStore, session_id: str,
                   record: SessionRecord) -> User | None:
    """Take the roles from a freshly renewed ID token; end the session if that fails.

    One request per session re-checks at a time; the session's other requests meanwhile go on
    with the roles they have (for at most RECHECK_CLAIM_SECONDS).
    """
    try:
        if not store.claim_recheck(session_id):
            return record.user()
        claims = session_tokens.renewed_id_token_claims(record.user())
    except redis.RedisError as exc:
        _store_down(exc)
        return None
    except Exception as exc:  # noqa: BLE001 - whatever failed, these roles cannot be confirmed
        reason = exc.reason if isinstance(exc, session_tokens.RenewalError) else (
            type(exc).__name__)
        log.info("session ended: roles could not be re-checked (%s) user=%s", reason,
                 record.username)
        try:
            store.delete(session_id, record.username)
        except redis.RedisError:
            pass  # unreachable now: the record is refused again at its next check
        return None
    fresh = User.from_claims(claims)
    updated = replace(record, roles=tuple(fresh.role_names), roles_checked_at=time.time())
    try:
        if not store.update(session_id, updated):
            return None  # signed out meanwhile
    except redis.RedisError:
        return None
    if updated.roles != record.roles:
        log.info("roles changed: user=%s roles=%s", record.username,
                 ",".join(updated.roles) or "-")
        audit.record(record.username, AuditAction.ROLES_CHANGED, f"user:{record.username}",
                     {"before": list(record.roles), "after": list(updated.roles)})
    return updated.user()


def _bearer_request(req: Any) -> bool:
    """API requests with an Authorization header are judged by the token alone, not the cookie."""
    return bool(req.path.startswith("/api/") and req.headers.get("Authorization"))


def init_login(app: Flask) -> None:
    """Bind flask-login: session users come from the Redis record, API users from bearer tokens."""
    role_ttl(app)  # fail fast on a bad setting
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"

    @login_manager.user_loader
    def load_user(user_id: str) -> User | None:
        if _bearer_request(request):
            return None
        return _load(user_id)

    @login_manager.request_loader
    def load_from_bearer(req: Any) -> User | None:
        if not _bearer_request(req):
            return None  # pages never take bearer tokens
        return user_from_bearer(req.headers["Authorization"])

    @login_manager.unauthorized_handler
    def unauthorized() -> Any:
        if g.get("session_store_down"):
            raise ServiceUnavailable("Your sign-in cannot be checked because the panel's "
                                     "session store is unreachable; nothing was changed. "
                                     "Try again in a moment.", headers={"Retry-After": "5"})
        if request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json":
            raise Unauthorized("sign in first: send a bearer access token or use the panel",
                               headers={"WWW-Authenticate": "Bearer"})
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
