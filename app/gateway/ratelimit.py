"""rate-limit-by-key: sliding-window counters in Redis, shared by every gateway replica.

The window is the sliding-window-counter approximation (current fixed window plus the previous
one weighted by how much of it still overlaps), evaluated atomically in one Lua script that also
takes the time from Redis, so replicas with skewed clocks agree. Keys are SHA-256 digests of the
counter key, so claim values never become Redis key syntax.

If Redis is unreachable the gateway fails **closed** (503 + Retry-After): the limit protects the
scoring replicas and the per-caller fairness the policy promises; failing open would let one
caller take the whole backend during an outage, and a Redis outage is visible and short.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local period = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
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
redis.call('INCR', cur_key)
redis.call('PEXPIRE', cur_key, period * 2)
return {1, math.floor(limit - estimate - 1), 0}
"""


class RateLimitUnavailable(Exception):
    """The counter store cannot be reached; the gateway answers 503 (fail closed)."""


@dataclass(frozen=True)
class RateDecision:
    """The outcome of counting one call."""

    allowed: bool
    remaining: int
    retry_after_s: int


class RateLimiter:
    """Counts calls per key in Redis."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._script = client.register_script(_SCRIPT)

    async def hit(self, key: str, calls: int, period_s: int) -> RateDecision:
        """Count one call for key; raise RateLimitUnavailable if Redis fails."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:40]
        redis_key = f"modelgate:rl:{{{digest}}}:{period_s}"
        try:
            allowed, remaining, wait_ms = await self._script(
                keys=[redis_key], args=[period_s * 1000, calls])
        except (RedisError, OSError, TimeoutError) as exc:
            raise RateLimitUnavailable(type(exc).__name__) from None
        return RateDecision(bool(allowed), max(int(remaining), 0),
                            max(1, math.ceil(int(wait_ms) / 1000)) if not allowed else 0)

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def create_rate_limiter(redis_url: str, timeout_s: float = 0.5) -> RateLimiter:
    """A limiter over a pooled Redis client with short timeouts (no I/O until first use)."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=timeout_s,
                                     socket_connect_timeout=timeout_s, retry_on_timeout=False)
    return RateLimiter(client)
