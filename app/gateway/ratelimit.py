"""rate-limit-by-key: sliding-window counters in Redis, shared by every gateway replica.

The window is the sliding-window-counter approximation (current fixed window plus the previous
one weighted by how much of it still overlaps), evaluated atomically in one Lua script that also
takes the time from Redis, so replicas with skewed clocks agree. Keys are SHA-256 digests of the
counter key, so claim values never become Redis key syntax.

Permits are taken from Redis in small adaptive batches ("leases"): a caller that keeps using its
permits gets twice as many on the next Redis call (up to 1% of its limit, valid for at most one
second), and a caller that leaves permits unused drops back to one at a time. Permits are counted
in Redis *before* use, so replicas together never admit more than the limit; the cost is that a
lease expiring unused under-admits by at most its size. A limit under 200 calls is exact (leases
of one). This keeps one Redis round trip off most requests of busy callers.

If Redis is unreachable the gateway fails **closed** (503 + Retry-After): the limit protects the
scoring replicas and the per-caller fairness the policy promises; failing open would let one
caller take the whole backend during an outage, and a Redis outage is visible and short.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local period = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local win = math.floor(now / period)
local cur_key = KEYS[1] .. ':' .. win
local cur = tonumber(redis.call('GET', cur_key) or '0')
local prev = tonumber(redis.call('GET', KEYS[1] .. ':' .. (win - 1)) or '0')
local elapsed = now - win * period
local estimate = prev * (period - elapsed) / period + cur
if estimate + 1 > limit then
  local wait
  if cur + 1 > limit then
    wait = (period - elapsed) + period * (1 - (limit - 1) / cur)
  else
    wait = period * (1 - (limit - 1 - cur) / prev) - elapsed
  end
  return {0, 0, math.ceil(wait)}
end
local grant = math.max(1, math.min(want, math.floor(limit - estimate)))
redis.call('INCRBY', cur_key, grant)
redis.call('PEXPIRE', cur_key, period * 2)
return {grant, math.floor(limit - estimate - grant), 0}
"""


class RateLimitUnavailable(Exception):
    """The counter store cannot be reached; the gateway answers 503 (fail closed)."""


class RateDecision(NamedTuple):
    """The outcome of counting one call (a tuple: one is built on every request)."""

    allowed: bool
    remaining: int
    retry_after_s: int


@dataclass(slots=True)
class _Lease:
    """Permits already counted in Redis for one key, usable until expires (monotonic)."""

    permits: int
    expires: float
    size: int


class RateLimiter:
    """Counts calls per key in Redis, taking permits in adaptive leases."""

    def __init__(self, client: aioredis.Redis, lease_ttl_s: float = 1.0,
                 max_leases: int = 50_000) -> None:
        self._client = client
        self._script = client.register_script(_SCRIPT)
        # by (counter key, calls, period): the key itself, so a leased permit costs one dict
        # lookup (the SHA-256 digest Redis sees is computed only when Redis is asked)
        self._leases: dict[tuple[str, int, int], _Lease] = {}
        self._ttl = lease_ttl_s
        self._max_leases = max_leases
        self.redis_calls = 0

    def take_leased(self, key: str, calls: int, period_s: int) -> RateDecision | None:
        """A permit from this replica's current lease for key, or None: ask Redis (hit)."""
        lease = self._leases.get((key, calls, period_s))
        if lease is not None and lease.permits > 0 and time.monotonic() < lease.expires:
            lease.permits -= 1
            return RateDecision(True, lease.permits, 0)
        return None

    async def hit(self, key: str, calls: int, period_s: int) -> RateDecision:
        """Count one call for key; raise RateLimitUnavailable if Redis fails."""
        leased = self.take_leased(key, calls, period_s)
        if leased is not None:
            return leased
        lease_key = (key, calls, period_s)
        now = time.monotonic()
        lease = self._leases.get(lease_key)
        size = 1
        if lease is not None:
            used_up_in_time = lease.permits == 0 and now < lease.expires
            size = min(max(1, calls // 100), lease.size * 2) if used_up_in_time else 1
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        redis_key = f"modelgate:rl:{{{digest}}}:{period_s}"
        try:
            self.redis_calls += 1
            granted, remaining, wait_ms = await self._script(
                keys=[redis_key], args=[period_s * 1000, calls, size])
        except (RedisError, OSError, TimeoutError) as exc:
            raise RateLimitUnavailable(type(exc).__name__) from None
        if not granted:
            self._leases.pop(lease_key, None)
            return RateDecision(False, 0, max(1, math.ceil(int(wait_ms) / 1000)))
        if len(self._leases) >= self._max_leases:
            self._prune(now)
        self._leases[lease_key] = _Lease(int(granted) - 1, now + min(self._ttl, period_s / 10),
                                         size)
        return RateDecision(True, max(int(remaining), 0), 0)

    def _prune(self, now: float) -> None:
        """Forget expired leases (and, if still full, all of them) to bound memory."""
        self._leases = {k: v for k, v in self._leases.items() if v.expires > now}
        if len(self._leases) >= self._max_leases:
            self._leases.clear()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def create_rate_limiter(redis_url: str, timeout_s: float = 0.5) -> RateLimiter:
    """A limiter over a pooled Redis client with short timeouts (no I/O until first use)."""
    # no client-side retries: a slow or absent Redis must become a prompt 503, not a stall
    client = aioredis.Redis.from_url(redis_url, socket_timeout=timeout_s,
                                     socket_connect_timeout=timeout_s,
                                     retry=Retry(NoBackoff(), 0))
    return RateLimiter(client)
