"""Scoring keys: generation, the digest-only keys file, and constant-time checking.

The keys file (docs/internal-contracts.md) is
``{"primary_sha256": "<hex>", "secondary_sha256": "<hex>"}``; plaintext keys never touch disk
on the runtime side. The file is re-read whenever its inode, size or mtime changes, so a
rotation (written atomically with os.replace) takes effect on the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KEY_BYTES = 32  # 256 bits of randomness per key
_DIGEST_SIZE = hashlib.sha256().digest_size
_BEARER = "bearer "


def generate_keys() -> tuple[str, str]:
    """Two fresh 256-bit URL-safe keys: (primary, secondary)."""
    return secrets.token_urlsafe(KEY_BYTES), secrets.token_urlsafe(KEY_BYTES)


def key_digest(key: str) -> str:
    """Hex SHA-256 of a key, as stored in the keys file."""
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def write_keys_file(path: Path | str, primary: str, secondary: str) -> None:
    """Atomically write the digests of both keys to path with mode 0600."""
    target = Path(path)
    content = json.dumps(
        {"primary_sha256": key_digest(primary), "secondary_sha256": key_digest(secondary)}
    )
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class KeyDigests:
    """The two accepted key digests as raw bytes."""

    primary: bytes
    secondary: bytes


# Never matches a real digest (SHA-256 of a 33-byte random value cannot be known), so an
# absent or unreadable file denies every key while keeping the comparison work identical.
def _unmatchable() -> bytes:
    """A random digest-sized value no presented key can hash to in practice."""
    return hashlib.sha256(secrets.token_bytes(KEY_BYTES + 1)).digest()


def _parse_digest(value: object) -> bytes:
    """Bytes of a 64-hex-character digest, or an unmatchable value when absent."""
    if not isinstance(value, str) or len(value) != 2 * _DIGEST_SIZE:
        return _unmatchable()
    try:
        return bytes.fromhex(value)
    except ValueError:
        return _unmatchable()


def read_keys_file(path: Path) -> KeyDigests:
    """Parse the keys file.

    Raises:
        OSError: unreadable file.
        ValueError: not a JSON object.
    """
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError("keys file must hold a JSON object")
    return KeyDigests(
        _parse_digest(raw.get("primary_sha256")), _parse_digest(raw.get("secondary_sha256"))
    )


def extract_bearer(header: str | None) -> bytes | None:
    """The ASCII key bytes of an ``Authorization: Bearer <key>`` header, else None."""
    if not header or len(header) > 4096 or header[:7].lower() != _BEARER:
        return None
    key = header[7:].strip()
    if not key:
        return None
    try:
        return key.encode("ascii")
    except UnicodeEncodeError:
        return None


class KeyStore:
    """Holds the accepted digests and reloads them when the keys file changes on disk."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int, int] | None = None
        self._digests = KeyDigests(_unmatchable(), _unmatchable())
        self.refresh()

    def refresh(self) -> None:
        """Re-read the file if its (device, inode, size, mtime) changed; cheap otherwise."""
        try:
            st = os.stat(self.path)
        except OSError:
            if self._stamp is not None:
                log.error("keys file %s disappeared; denying every key", self.path)
            self._stamp = None
            self._digests = KeyDigests(_unmatchable(), _unmatchable())
            return
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        try:
            self._digests = read_keys_file(self.path)
        except (OSError, ValueError):
            # Keep the previous digests and retry on the next request (stamp not updated):
            # a half-written file from a non-atomic writer must not lock everybody out.
            log.error("keys file %s is unreadable or malformed; keeping previous keys", self.path)
            return
        self._stamp = stamp
        log.info("loaded key digests from %s", self.path)

    def check(self, presented: bytes | None) -> bool:
        """True if the key matches primary or secondary; both always compared, in constant time."""
        self.refresh()
        candidate = hashlib.sha256(presented or b"").digest()
        digests = self._digests
        primary_ok = hmac.compare_digest(candidate, digests.primary)
        secondary_ok = hmac.compare_digest(candidate, digests.secondary)
        # Bitwise |, not `or`: no short-circuit, so timing does not reveal which key matched.
        return presented is not None and (primary_ok | secondary_ok)

    def check_header(self, header: str | None) -> bool:
        """check() applied to a raw Authorization header value."""
        return self.check(extract_bearer(header))
