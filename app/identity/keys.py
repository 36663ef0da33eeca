"""Signing keys of the local issuer, persisted in MODELGATE_HOME/identity/keys.json (0600).

Rotation semantics (pre-publication, as Entra does): the issuer always holds one *next* key that
is published in the JWKS but signs nothing. A rotation step makes the next key the signer,
retires the previous signer and publishes a fresh next key. So every key has been in the JWKS
for at least one rotation interval before it signs, and verifiers that cached the JWKS earlier
already know it. A retired key stays published until every token it signed has expired
(retired_at + longest token lifetime + verifier skew), then it is dropped.
A step refuses to activate a next key published less than JWKS_MAX_AGE_SECONDS ago (caches may
not have seen it yet) unless forced.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import KeySet, RSAKey

from app.identity.settings import JWKS_MAX_AGE_SECONDS, settings_from_env

KEYS_FILE = "keys.json"
NEXT, ACTIVE, RETIRED = "next", "active", "retired"


class KeyRotationError(RuntimeError):
    """A rotation step was refused (for example the next key is too freshly published)."""


@dataclass(frozen=True)
class RotationResult:
    """Key ids after a rotation step."""

    signing_kid: str
    next_kid: str
    retired_kids: tuple[str, ...]


def _new_entry(now: float) -> dict[str, Any]:
    key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, auto_kid=True)
    return {"jwk": key.as_dict(private=True), "state": NEXT, "published_at": now,
            "activated_at": None, "retired_at": None}


def _write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)
    os.replace(tmp, path)


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise writers (the running issuer and a `rotate-keys` command)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / "keys.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def ensure_keys(state_dir: Path, now: float | None = None) -> None:
    """Create an active and a next key if there is no key file yet."""
    path = state_dir / KEYS_FILE
    with _locked(state_dir):
        if path.exists():
            return
        now = time.time() if now is None else now
        active = _new_entry(now)
        active.update(state=ACTIVE, activated_at=now)
        _write(path, {"keys": [active, _new_entry(now)]})


def rotate_keys(home: Path, *, force: bool = False, now: float | None = None) -> RotationResult:
    """One rotation step: next → signer, signer → retired, a fresh next key; drop expired keys."""
    settings = settings_from_env(Path(home))
    state_dir = settings.state_dir
    ensure_keys(state_dir)
    now = time.time() if now is None else now
    with _locked(state_dir):
        doc = json.loads((state_dir / KEYS_FILE).read_text(encoding="utf-8"))
        entries: list[dict[str, Any]] = doc["keys"]
        nxt = next(e for e in entries if e["state"] == NEXT)
        age = now - float(nxt["published_at"])
        if not force and age < JWKS_MAX_AGE_SECONDS:
            raise KeyRotationError(
                f"the next key was published {age:.0f} s ago; verifiers may cache the JWKS for "
                f"{JWKS_MAX_AGE_SECONDS} s. Wait, or force the step."
            )
        for entry in entries:
            if entry["state"] == ACTIVE:
                entry.update(state=RETIRED, retired_at=now)
        nxt.update(state=ACTIVE, activated_at=now)
        grace = settings.retired_key_grace
        kept = [e for e in entries
                if e["state"] != RETIRED or now < float(e["retired_at"]) + grace]
        fresh = _new_entry(now)
        kept.append(fresh)
        _write(state_dir / KEYS_FILE, {"keys": kept})
    return RotationResult(
        signing_kid=nxt["jwk"]["kid"],
        next_kid=fresh["jwk"]["kid"],
        retired_kids=tuple(e["jwk"]["kid"] for e in kept if e["state"] == RETIRED),
    )


class KeyStore:
    """The issuer's view of keys.json, reloaded when the file is replaced (thread-safe)."""

    def __init__(self, state_dir: Path, retired_grace: int) -> None:
        """Bind to a state folder; keys are read lazily."""
        self._path = state_dir / KEYS_FILE
        self._grace = retired_grace
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        # One immutable snapshot, swapped whole, so readers never mix two file versions.
        self._snapshot: tuple[tuple[dict[str, Any], RSAKey], ...] = ()

    def _current(self) -> tuple[tuple[dict[str, Any], RSAKey], ...]:
        with self._lock:
            st = os.stat(self._path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                entries = json.loads(self._path.read_text(encoding="utf-8"))["keys"]
                self._snapshot = tuple((e, RSAKey.import_key(e["jwk"])) for e in entries)
                self._stamp = stamp
            return self._snapshot

    def signing_key(self) -> RSAKey:
        """The key that signs new tokens."""
        return next(k for e, k in self._current() if e["state"] == ACTIVE)

    def _published(self, now: float) -> list[RSAKey]:
        return [k for e, k in self._current()
                if e["state"] != RETIRED or now < float(e["retired_at"]) + self._grace]

    def jwks(self, now: float | None = None) -> dict[str, Any]:
        """The public JWKS document: signer, next key and retired keys still in their grace."""
        now = time.time() if now is None else now
        return {"keys": [k.as_dict(private=False) for k in self._published(now)]}

    def keyset(self, now: float | None = None) -> KeySet:
        """The published keys as a joserfc KeySet (for verifying our own tokens)."""
        now = time.time() if now is None else now
        return KeySet(list(self._published(now)))

    def public_key(self, kid: str, now: float | None = None) -> RSAKey | None:
        """A published key by kid (for verifying our own tokens at userinfo)."""
        now = time.time() if now is None else now
        return next((k for k in self._published(now) if k.kid == kid), None)
