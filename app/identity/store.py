"""Codes, refresh tokens and browser sessions in SQLite (MODELGATE_HOME/identity/issuer.db, 0600).

SQLite rather than memory so that refresh tokens survive an issuer restart (the panel keeps
users signed in across restarts) and so several worker processes would agree. Only SHA-256
digests of codes and refresh tokens are stored. Codes are consumed atomically (DELETE …
RETURNING), and so are refresh tokens (UPDATE … WHERE live RETURNING): each can be redeemed
once even under concurrent requests.

The issuer's browser session cookie holds only a random session id; the session (who signed in,
when) is a row here, found by the id's digest, so signing out deletes it for every copy of the
cookie.

Refresh tokens form families (RFC 9700 §4.14.2): a sign-in starts one, every rotation adds the
next token to it. Presenting a token that was already rotated is a reuse: it revokes the whole
family, including the token the legitimate rotation issued.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("modelgate.identity")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS codes (
    digest TEXT PRIMARY KEY, client_id TEXT NOT NULL, username TEXT NOT NULL,
    redirect_uri TEXT NOT NULL, scope TEXT NOT NULL, nonce TEXT,
    code_challenge TEXT, code_challenge_method TEXT, auth_time INTEGER NOT NULL,
    expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    digest TEXT PRIMARY KEY, client_id TEXT NOT NULL, username TEXT NOT NULL,
    scope TEXT NOT NULL, auth_time INTEGER NOT NULL, expires_at REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0, family TEXT);
CREATE TABLE IF NOT EXISTS browser_sessions (
    digest TEXT PRIMARY KEY, username TEXT NOT NULL, auth_time INTEGER NOT NULL,
    expires_at REAL NOT NULL);
"""
# `revoked`: a live token, one used once (rotated), or one revoked with its family or user.
LIVE, ROTATED, REVOKED = 0, 1, 2


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class AuthorizationCode:
    """A consumed authorization code (Authlib AuthorizationCodeMixin duck type)."""

    client_id: str
    username: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int

    def get_redirect_uri(self) -> str:
        """The redirect URI the code was issued for."""
        return self.redirect_uri

    def get_scope(self) -> str:
        """The granted scope."""
        return self.scope

    def get_nonce(self) -> str | None:
        """The OpenID nonce to echo in the ID token."""
        return self.nonce

    def get_auth_time(self) -> int:
        """When the user signed in."""
        return self.auth_time

    def get_acr(self) -> None:
        """No authentication context classes."""
        return None

    def get_amr(self) -> list[str]:
        """Password sign-in."""
        return ["pwd"]


@dataclass(frozen=True)
class RefreshToken:
    """A refresh token (Authlib TokenMixin duck type for the refresh grant).

    `family` is the id shared by every token rotated from one sign-in ("" for a new one).
    """

    digest: str
    client_id: str
    username: str
    scope: str
    auth_time: int
    family: str = ""

    def check_client(self, client: object) -> bool:
        """Bound to the client it was issued to."""
        return getattr(client, "client_id", None) == self.client_id

    def get_scope(self) -> str:
        """The originally granted scope."""
        return self.scope


class IssuerStore:
    """Codes and refresh tokens; one connection guarded by a lock (the issuer is threaded)."""

    def __init__(self, path: Path) -> None:
        """Open (creating with 0600) the database file."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(refresh_tokens)")}
        if "family" not in columns:  # a database from before families: each token its own
            self._db.execute("ALTER TABLE refresh_tokens ADD COLUMN family TEXT")
            self._db.execute("UPDATE refresh_tokens SET family = digest")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def save_code(self, code: str, grant: AuthorizationCode, ttl: int) -> None:
        """Store a new code, and purge expired ones while at it."""
        now = time.time()
        with self._lock:
            self._db.execute("DELETE FROM codes WHERE expires_at < ?", (now,))
            self._db.execute(
                "INSERT INTO codes VALUES (?,?,?,?,?,?,?,?,?,?)",
                (_digest(code), grant.client_id, grant.username, grant.redirect_uri,
                 grant.scope, grant.nonce, grant.code_challenge, grant.code_challenge_method,
                 grant.auth_time, now + ttl),
            )

    def consume_code(self, code: str, client_id: str) -> AuthorizationCode | None:
        """Delete and return a live code of this client; None if unknown, used or expired."""
        with self._lock:
            row = self._db.execute(
                "DELETE FROM codes WHERE digest = ? RETURNING client_id, username, "
                "redirect_uri, scope, nonce, code_challenge, code_challenge_method, "
                "auth_time, expires_at",
                (_digest(code),),
            ).fetchone()
        if row is None or row[0] != client_id or row[8] < time.time():
            return None
        return AuthorizationCode(*row[:8])

    def nonce_in_use(self, client_id: str, nonce: str) -> bool:
        """True if a live code of this client already carries the nonce (replay guard)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM codes WHERE client_id = ? AND nonce = ? AND expires_at >= ?",
                (client_id, nonce, time.time()),
            ).fetchone()
        return row is not None

    def save_refresh_token(self, token: str, grant: RefreshToken, ttl: int) -> str:
        """Store a refresh token's digest in `grant.family` (a new family when empty).

        A token joining a family that was revoked meanwhile (a reuse raced the rotation that
        issued it) is stored revoked. Returns the family id.
        """
        now = time.time()
        family = grant.family or secrets.token_hex(16)
        with self._lock:
            self._db.execute("DELETE FROM refresh_tokens WHERE expires_at < ?", (now,))
            self._db.execute(
                "INSERT INTO refresh_tokens VALUES (?,?,?,?,?,?, CASE WHEN EXISTS (SELECT 1 "
                "FROM refresh_tokens WHERE family = ? AND revoked = ?) THEN ? ELSE ? END, ?)",
                (_digest(token), grant.client_id, grant.username, grant.scope,
                 grant.auth_time, now + ttl, family, REVOKED, REVOKED, LIVE, family),
            )
        return family

    def redeem_refresh_token(self, token: str, client_id: str) -> RefreshToken | None:
        """Use up a live refresh token of this client in one statement; None if not live.

        Presenting a token of this client that was already rotated revokes its whole family.
        """
        digest = _digest(token)
        with self._lock:
            row = self._db.execute(
                "UPDATE refresh_tokens SET revoked = ? WHERE digest = ? AND client_id = ? "
                "AND revoked = ? AND expires_at >= ? "
                "RETURNING client_id, username, scope, auth_time, family",
                (ROTATED, digest, client_id, LIVE, time.time()),
            ).fetchone()
            if row is not None:
                return RefreshToken(digest, *row)
            reused = self._db.execute(
                "SELECT family, username FROM refresh_tokens WHERE digest = ? AND client_id = ? "
                "AND revoked = ?", (digest, client_id, ROTATED),
            ).fetchone()
            if reused is not None:
                self._db.execute("UPDATE refresh_tokens SET revoked = ? WHERE family = ?",
                                 (REVOKED, reused[0]))
        if reused is not None:
            log.warning("refresh token reused: revoked its family (user=%s client=%s)",
                        reused[1], client_id)
        return None

    def revoke_user_tokens(self, username: str) -> int:
        """Revoke every refresh token of a user (sign-out at the issuer); return how many."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE refresh_tokens SET revoked = ? WHERE username = ? AND revoked = ?",
                (REVOKED, username, LIVE))
        return cursor.rowcount

    def open_session(self, username: str, auth_time: int, ttl: int) -> str:
        """Record a browser sign-in; return the session id for the cookie."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self._db.execute("DELETE FROM browser_sessions WHERE expires_at < ?", (now,))
            self._db.execute("INSERT INTO browser_sessions VALUES (?,?,?,?)",
                             (_digest(session_id), username, auth_time, now + ttl))
        return session_id

    def session_user(self, session_id: str) -> tuple[str, int] | None:
        """(username, auth_time) of a live browser session, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT username, auth_time FROM browser_sessions WHERE digest = ? "
                "AND expires_at >= ?", (_digest(session_id), time.time())).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def end_sessions(self, username: str) -> int:
        """End every browser session of a user (sign-out); return how many there were."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM browser_sessions WHERE username = ?",
                                      (username,))
        return cursor.rowcount
