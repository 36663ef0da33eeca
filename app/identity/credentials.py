"""Users and clients of the local issuer, read from MODELGATE_HOME/dev-credentials.json.

The file holds plaintext passwords and secrets by contract (it is the dev credential file the
people running the stack read). At load we keep only salted scrypt hashes of passwords and
SHA-256 digests of client secrets in memory, and compare in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PANEL_CLIENT_ID = "modelgate-panel"
CI_CLIENT_ID = "modelgate-ci"
PANEL_REDIRECT_URI = "http://127.0.0.1/auth/callback"
#: Where the panel asks to return after signing out at the issuer (any loopback port).
PANEL_POST_LOGOUT_REDIRECT_URI = "http://127.0.0.1/auth/login"

DEFAULT_USERS: dict[str, list[str]] = {
    "alice": ["MLOps.Engineer", "Score.Invoke"],
    "bob": ["MLOps.Approver", "Score.Invoke"],
    "carol": ["Score.Invoke"],
    "dave": ["MLOps.Admin", "Score.Invoke"],
    "erin": [],
}
DEFAULT_CLIENTS: dict[str, list[str]] = {CI_CLIENT_ID: ["MLOps.Engineer", "Score.Invoke"]}

# A stable namespace so that a user's or client's object id survives restarts and edits.
_OID_NAMESPACE = uuid.UUID("6f1c1c2e-6d0b-4b8e-9a53-0d6f6d6f6465")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class CredentialsError(ValueError):
    """The dev credentials file is malformed (the message never contains a secret)."""


def _scrypt(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, **_SCRYPT)


@dataclass(frozen=True)
class User:
    """A local user; `oid` doubles as `sub` (the panel keys accounts on it)."""

    username: str
    name: str
    roles: tuple[str, ...]
    oid: str
    password_salt: bytes = field(repr=False)
    password_hash: bytes = field(repr=False)

    def get_user_id(self) -> str:
        """Authlib's hook: the subject identifier."""
        return self.oid

    def check_password(self, password: str) -> bool:
        """Compare a presented password with the stored hash in constant time."""
        return hmac.compare_digest(_scrypt(password, self.password_salt), self.password_hash)


def is_loopback_http(uri: str) -> bool:
    """True for an http(s) URI on a loopback host with no credentials or fragment."""
    try:
        parts = urlsplit(uri)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and parts.hostname in _LOOPBACK_HOSTS
        and parts.username is None
        and parts.password is None
        and not parts.fragment
    )


def redirect_uri_matches(registered: str, presented: str) -> bool:
    """Exact match, except that a loopback registration accepts any port (RFC 8252 §7.3)."""
    if registered == presented:
        return True
    if not (is_loopback_http(registered) and is_loopback_http(presented)):
        return False
    reg, pre = urlsplit(registered), urlsplit(presented)
    return (reg.scheme, reg.hostname, reg.path or "/", reg.query) == (
        pre.scheme, pre.hostname, pre.path or "/", pre.query,
    )


@dataclass(frozen=True)
class Client:
    """A confidential OAuth client (Authlib ClientMixin duck type)."""

    client_id: str
    roles: tuple[str, ...]
    oid: str
    secret_digest: bytes = field(repr=False)
    redirect_uris: tuple[str, ...] = ()
    post_logout_redirect_uris: tuple[str, ...] = ()

    @property
    def grant_types(self) -> frozenset[str]:
        """Clients with redirect URIs sign users in; the others are daemons."""
        if self.redirect_uris:
            return frozenset({"authorization_code", "refresh_token"})
        return frozenset({"client_credentials"})

    def get_client_id(self) -> str:
        """The client id."""
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        """None: every authorization request must name its redirect URI."""
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        """Scopes were validated against the server's list already; keep them as asked."""
        return scope or ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        """A registered redirect URI, with loopback port variance."""
        return any(redirect_uri_matches(r, redirect_uri) for r in self.redirect_uris)

    def check_post_logout_redirect_uri(self, uri: str) -> bool:
        """A registered post-logout redirect URI, with loopback port variance."""
        return any(redirect_uri_matches(r, uri) for r in self.post_logout_redirect_uris)

    def check_client_secret(self, client_secret: str) -> bool:
        """Compare digests in constant time (hides the secret's length too)."""
        presented = hashlib.sha256(client_secret.encode("utf-8", "surrogatepass")).digest()
        return hmac.compare_digest(presented, self.secret_digest)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        """Confidential clients only: secret in the body or in Basic auth."""
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        """Only the code flow."""
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        """Grant types follow from whether the client has redirect URIs."""
        return grant_type in self.grant_types


@dataclass(frozen=True)
class Directory:
    """All users and clients, loaded once at start."""

    users: Mapping[str, User]
    clients: Mapping[str, Client]

    def authenticate(self, username: str, password: str) -> User | None:
        """Return the user if the password matches, spending the same time for unknown names."""
        user = self.users.get(username)
        if user is None:
            _scrypt(password, b"\0" * 16)  # equalise timing so names cannot be enumerated
            return None
        return user if user.check_password(password) else None


def object_id(kind: str, name: str) -> str:
    """A stable, non-secret object id (GUID like Entra's `oid`)."""
    return str(uuid.uuid5(_OID_NAMESPACE, f"{kind}:{name}"))


def _new_secret() -> str:
    return secrets.token_urlsafe(32)


def default_credentials() -> dict[str, Any]:
    """A fresh credentials document with random passwords and secrets."""
    return {
        "users": {
            name: {"password": _new_secret()[:20], "roles": list(roles)}
            for name, roles in DEFAULT_USERS.items()
        },
        "clients": {
            **{cid: {"secret": _new_secret(), "roles": list(roles)}
               for cid, roles in DEFAULT_CLIENTS.items()},
            PANEL_CLIENT_ID: _panel_entry(),
        },
    }


def _panel_entry() -> dict[str, Any]:
    return {"secret": _new_secret(), "roles": [], "redirect_uris": [PANEL_REDIRECT_URI],
            "post_logout_redirect_uris": [PANEL_POST_LOGOUT_REDIRECT_URI]}


def _write_private_json(path: Path, doc: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def ensure_dev_credentials(home: Path) -> Path:
    """Create dev-credentials.json (0600) if missing; add the panel client if it is absent.

    A panel client from before post-logout redirect URIs were registered gets the default one.
    """
    path = Path(home) / "dev-credentials.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _write_private_json(path, default_credentials())
        return path
    doc = _read(path)
    clients = doc.setdefault("clients", {})
    if not isinstance(clients, dict):
        return path
    panel = clients.get(PANEL_CLIENT_ID)
    if panel is None:
        clients[PANEL_CLIENT_ID] = _panel_entry()
        _write_private_json(path, doc)
    elif isinstance(panel, dict) and "post_logout_redirect_uris" not in panel:
        panel["post_logout_redirect_uris"] = [PANEL_POST_LOGOUT_REDIRECT_URI]
        _write_private_json(path, doc)
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CredentialsError(f"cannot read {path}: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise CredentialsError(f"{path}: top level must be an object")
    return doc


def _roles(entry: Mapping[str, Any], where: str) -> tuple[str, ...]:
    roles = entry.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise CredentialsError(f"{where}: 'roles' must be a list of strings")
    return tuple(roles)


def _uris(entry: Mapping[str, Any], key: str, where: str, path: Path) -> tuple[str, ...]:
    uris = entry.get(key, [])
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        raise CredentialsError(f"{path}: {where}.{key} must be a list of strings")
    return tuple(uris)


def _entries(doc: Mapping[str, Any], key: str, path: Path) -> Mapping[str, Any]:
    section = doc.get(key, {})
    if not isinstance(section, dict):
        raise CredentialsError(f"{path}: '{key}' must be an object")
    for name, entry in section.items():
        if not isinstance(entry, dict):
            raise CredentialsError(f"{path}: {key}.{name} must be an object")
    return section


def load_directory(home: Path) -> Directory:
    """Read the credentials file and hash its secrets; plaintext is not kept."""
    path = Path(home) / "dev-credentials.json"
    doc = _read(path)
    users: dict[str, User] = {}
    for name, entry in _entries(doc, "users", path).items():
        password = entry.get("password")
        if not isinstance(password, str) or not password:
            raise CredentialsError(f"{path}: users.{name}.password must be a non-empty string")
        salt = secrets.token_bytes(16)
        users[name] = User(
            username=name,
            name=str(entry.get("name") or name.capitalize()),
            roles=_roles(entry, f"users.{name}"),
            oid=object_id("user", name),
            password_salt=salt,
            password_hash=_scrypt(password, salt),
        )
    clients: dict[str, Client] = {}
    for cid, entry in _entries(doc, "clients", path).items():
        secret = entry.get("secret")
        if not isinstance(secret, str) or len(secret) < 16:
            raise CredentialsError(f"{path}: clients.{cid}.secret must be >= 16 characters")
        clients[cid] = Client(
            client_id=cid,
            roles=_roles(entry, f"clients.{cid}"),
            oid=object_id("client", cid),
            secret_digest=hashlib.sha256(secret.encode("utf-8")).digest(),
            redirect_uris=_uris(entry, "redirect_uris", f"clients.{cid}", path),
            post_logout_redirect_uris=_uris(entry, "post_logout_redirect_uris",
                                            f"clients.{cid}", path),
        )
    return Directory(users=users, clients=clients)
