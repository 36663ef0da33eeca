"""Sign-ins in progress, kept on the server: one Redis record per `state`, bound to the browser.

Between "Sign in" and the provider's callback the panel holds MSAL's auth code flow (state,
nonce, PKCE verifier). It used to live in the client-side session cookie, where any concurrent
response that also wrote the session (a 404 page, an error page rendering a new CSRF token)
could replace the cookie holding the flow, and the callback then found no sign-in in progress.

Now the flow is stored in Redis, encrypted with a key derived from SECRET_KEY, under
`modelgate:sign-in:<SHA-256 of (browser binding, state)>`, for FLOW_MAX_AGE_SECONDS. The
browser binding is a random 256-bit value in its own small cookie (`binding_cookie`), which no
other response writes. The callback looks the record up with the binding it receives and the
`state` the provider echoes and takes it with one GETDEL: a flow is used at most once, and a
`state` presented by another browser (without the binding) finds nothing. Several sign-ins
started in one browser (two tabs) share the binding and each keeps its own record.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PENDING_PREFIX = "modelgate:sign-in:"
#: The browser-binding cookie (HttpOnly, SameSite=Lax, path /, expiring with the flow);
#: Secure with the __Host- prefix whenever the session cookie is Secure.
BINDING_COOKIE = "modelgate-sign-in"
#: A sign-in must come back within this time; the record expires then.
FLOW_MAX_AGE_SECONDS = 600
_BINDING = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)


def binding_cookie(secure: bool) -> str:
    """The binding cookie's name: __Host- prefixed when it is Secure (as the session's is)."""
    return f"__Host-{BINDING_COOKIE}" if secure else BINDING_COOKIE


def new_binding(current: str | None) -> str:
    """The browser's binding: its current cookie value if well formed, else a new random one."""
    if current and _BINDING.match(current):
        return current
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class PendingSignIn:
    """One sign-in in progress: MSAL's flow, where to go afterwards, when it started."""

    flow: dict[str, Any]
    next_url: str
    started: float

    @property
    def state(self) -> str:
        """The OAuth `state` the provider must echo."""
        return str(self.flow["state"])


class PendingSignIns:
    """Pending sign-ins in Redis; every method raises redis.RedisError when Redis is away."""

    def __init__(self, redis: Any, secret_key: str) -> None:
        """Derive the cipher key from SECRET_KEY: Redis holds no usable PKCE verifier or nonce."""
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"modelgate pending sign-in").derive(secret_key.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(key))
        self._redis = redis

    @staticmethod
    def key(binding: str, state: str) -> str:
        """The record's Redis key (neither the binding nor the state is stored)."""
        material = f"{binding}\x00{state}".encode("utf-8", "surrogatepass")
        return PENDING_PREFIX + hashlib.sha256(material).hexdigest()

    def put(self, binding: str, pending: PendingSignIn) -> None:
        """Keep `pending` for this browser until it is taken or FLOW_MAX_AGE_SECONDS pass."""
        blob = json.dumps({"flow": pending.flow, "next": pending.next_url,
                           "started": pending.started}).encode()
        self._redis.set(self.key(binding, pending.state), self._fernet.encrypt(blob),
                        ex=FLOW_MAX_AGE_SECONDS)

    def take(self, binding: str, state: str) -> PendingSignIn | None:
        """Remove and return this browser's sign-in for `state`; None when there is none."""
        if not binding or not state:
            return None
        blob = self._redis.getdel(self.key(binding, state))
        if not blob:
            return None
        try:
            data = json.loads(self._fernet.decrypt(blob))
            flow = data["flow"]
            if not isinstance(flow, dict) or "state" not in flow:
                return None
            return PendingSignIn(flow=flow, next_url=str(data.get("next") or "/"),
                                 started=float(data.get("started", 0)))
        except (InvalidToken, ValueError, KeyError, TypeError):
            return None  # written with another SECRET_KEY, or not ours

    @staticmethod
    def begin(flow: dict[str, Any], next_url: str) -> PendingSignIn:
        """A record for a flow starting now."""
        return PendingSignIn(flow=flow, next_url=next_url, started=time.time())
