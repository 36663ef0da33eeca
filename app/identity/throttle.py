"""Throttling of failed sign-ins per (username, client IP) and per IP, with exponential backoff.

Kept in memory: the issuer runs as one process, and a restart forgetting the counters is an
acceptable loss for a local development issuer. The per-IP counter (threshold × 4, across all
usernames) slows password spraying, which a per-username counter alone would not see.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

_ANY_USER = ""


@dataclass(frozen=True)
class _Record:
    failures: int
    last_failure: float
    locked_until: float


class SignInThrottle:
    """After `threshold` failures, lock for base·2^(extra failures) seconds, capped at `cap`."""

    def __init__(self, threshold: int, base_seconds: int, cap_seconds: int) -> None:
        """Configure the policy."""
        self._threshold = threshold
        self._ip_threshold = threshold * 4
        self._base = base_seconds
        self._cap = cap_seconds
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], _Record] = {}

    def retry_after(self, username: str, ip: str, now: float | None = None) -> int:
        """Seconds until this username may try again from this IP (0 = not locked)."""
        now = time.time() if now is None else now
        with self._lock:
            records = [self._records.get((username.lower(), ip)),
                       self._records.get((_ANY_USER, ip))]
        until = max((r.locked_until for r in records if r is not None), default=0.0)
        return 0 if until <= now else max(1, int(until - now + 0.999))

    def record_failure(self, username: str, ip: str, now: float | None = None) -> int:
        """Count a failure; return the lockout now in force (0 if none)."""
        now = time.time() if now is None else now
        with self._lock:
            self._prune(now)
            until = max(self._bump((username.lower(), ip), self._threshold, now),
                        self._bump((_ANY_USER, ip), self._ip_threshold, now))
        return int(until - now) if until > now else 0

    def _bump(self, key: tuple[str, str], threshold: int, now: float) -> float:
        rec = self._records.get(key)
        failures = 1 if rec is None else rec.failures + 1
        locked_until = 0.0
        if failures >= threshold:
            locked_until = now + min(self._cap, self._base * 2 ** (failures - threshold))
        self._records[key] = _Record(failures, now, locked_until)
        return locked_until

    def record_success(self, username: str, ip: str) -> None:
        """Forget this username's failures from this IP (the per-IP count stays)."""
        with self._lock:
            self._records.pop((username.lower(), ip), None)

    def _prune(self, now: float) -> None:
        # Forget records quiet for longer than the cap, so memory stays bounded.
        stale = [k for k, r in self._records.items()
                 if now - r.last_failure > self._cap and r.locked_until <= now]
        for k in stale:
            del self._records[k]
