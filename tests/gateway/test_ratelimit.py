"""The Redis rate limiter directly: exact small limits, leases never exceed the limit."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from app.gateway.ratelimit import RateLimitUnavailable, create_rate_limiter
from tests.gateway.conftest import free_port


def test_small_limit_is_exact_with_retry_after(redis_url: str) -> None:
    """calls=5: five allowed, then denied with a Retry-After within the window."""

    async def run() -> list[tuple[bool, int]]:
        limiter = create_rate_limiter(redis_url)
        key = uuid.uuid4().hex
        try:
            return [((d := await limiter.hit(key, 5, 60)).allowed, d.retry_after_s)
                    for _ in range(7)]
        finally:
            await limiter.close()

    out = asyncio.run(run())
    assert [a for a, _ in out] == [True] * 5 + [False] * 2
    assert all(1 <= r <= 2 * 60 for _, r in out[5:])  # sliding window: up to 1.2 periods


def test_leases_save_round_trips_and_replicas_never_exceed_the_limit(redis_url: str) -> None:
    """Two replicas sharing Redis admit exactly the limit in total, with far fewer calls."""

    async def run() -> tuple[int, int]:
        a, b = create_rate_limiter(redis_url), create_rate_limiter(redis_url)
        key = uuid.uuid4().hex
        try:
            allowed = 0
            for i in range(1200):
                allowed += (await (a if i % 3 else b).hit(key, 1000, 60)).allowed
            return allowed, a.redis_calls + b.redis_calls
        finally:
            await a.close()
            await b.close()

    allowed, calls = asyncio.run(run())
    assert allowed == 1000
    assert calls < 600


def test_unreachable_redis_raises_promptly() -> None:
    """No Redis → RateLimitUnavailable within the short socket timeout (fail closed upstream)."""

    async def run() -> None:
        limiter = create_rate_limiter(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
        try:
            await limiter.hit("k", 10, 60)
        finally:
            await limiter.close()

    started = time.monotonic()
    with pytest.raises(RateLimitUnavailable):
        asyncio.run(run())
    assert time.monotonic() - started < 2
