"""Drift sampling: a replica keeps a random share of the records it scores, for drift checks.

On the request path :meth:`Sampler.offer` only draws a random number per record and appends
the sampled (record, prediction) pairs to an in-memory buffer: no I/O, no serialisation. A
background task flushes the buffer every ``flush_seconds`` to the environment's store in Redis,
a list capped at ``max_samples`` entries (RPUSH then LTRIM in one MULTI, so every replica of
every slot of the environment shares one bounded store holding the newest records). If Redis
is unreachable the batch is dropped and counted (the buffer itself is bounded too): sampling
never delays or fails a score.

A stored record holds the validated input fields, P(bad), the label, the model name and
version, the environment and the UTC hour it was scored in. Nothing identifies the caller: the
replica never sees the caller's token (the gateway swaps it for the backend key), and neither
the key, the request id, the client address nor the exact time is stored (an exact time could
be joined with the gateway's request log, which names callers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.ml.signature import Signature
from app.ml.validation import Row

log = logging.getLogger(__name__)

KEY_PREFIX = "modelgate:drift:samples:"
# Every key a stored record has; tests assert on exactly these.
RECORD_KEYS: tuple[str, ...] = ("fields", "p_bad", "label", "model", "version", "environment",
                                "hour")
REDIS_TIMEOUT_SECONDS = 2.0


def store_key(environment: str) -> str:
    """The Redis list holding an environment's samples."""
    return KEY_PREFIX + environment


def hour_of(epoch_seconds: float) -> str:
    """The UTC hour a record was scored in, e.g. ``2026-03-01T14:00Z``."""
    return time.strftime("%Y-%m-%dT%H:00Z", time.gmtime(epoch_seconds))


@dataclass(frozen=True)
class SamplingSettings:
    """Where and how much a replica samples."""

    environment: str
    rate: float
    max_samples: int
    redis_url: str
    flush_seconds: float = 1.0
    # Records waiting for a flush; more are dropped (Redis down or a burst beyond it).
    buffer_limit: int = 10_000


class Sampler:
    """Samples scored records on the request path; flushes them to Redis in the background."""

    def __init__(self, settings: SamplingSettings, *,
                 chance: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.time, client: Any = None) -> None:
        if not 0.0 <= settings.rate <= 1.0:
            raise ValueError("the sample rate must be within 0..1")
        self.settings = settings
        self.key = store_key(settings.environment)
        self._chance = chance
        self._clock = clock
        self._client = client
        self._buffer: deque[tuple[Signature, Row, dict[str, Any], float]] = deque()
        self.sampled = 0
        self.stored = 0
        self.dropped = 0
        self._failing = False

    # ------------------------------------------------------------------ request path

    def offer(self, signature: Signature, rows: Sequence[Row],
              predictions: Sequence[dict[str, Any]]) -> None:
        """Keep each scored record with probability ``rate`` (no I/O; never raises)."""
        rate = self.settings.rate
        if rate <= 0.0:
            return
        chance, buffer, limit = self._chance, self._buffer, self.settings.buffer_limit
        now = 0.0
        for row, prediction in zip(rows, predictions, strict=False):
            if chance() >= rate:
                continue
            if len(buffer) >= limit:
                self.dropped += 1
                continue
            if not now:
                now = self._clock()
            buffer.append((signature, row, prediction, now))
            self.sampled += 1

    # ------------------------------------------------------------------ background

    @property
    def pending(self) -> int:
        """Records waiting for the next flush."""
        return len(self._buffer)

    def record(self, signature: Signature, row: Row, prediction: dict[str, Any],
               scored_at: float) -> dict[str, Any]:
        """The stored form of one sampled record (exactly RECORD_KEYS)."""
        probabilities = prediction["probabilities"]
        return {
            "fields": dict(zip(signature.feature_names, row, strict=True)),
            "p_bad": float(probabilities[signature.positive_class]),
            "label": str(prediction["label"]),
            "model": signature.name,
            "version": signature.version or "",
            "environment": self.settings.environment,
            "hour": hour_of(scored_at),
        }

    def _redis(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(
                self.settings.redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS,
                socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        return self._client

    async def flush(self) -> int:
        """Write the buffered records to the store; return how many were stored.

        A failed write drops its batch (counted in ``dropped``) and is logged once until a
        write succeeds again.
        """
        from redis.exceptions import RedisError

        buffer = self._buffer
        if not buffer:
            return 0
        batch = [buffer.popleft() for _ in range(len(buffer))]
        items = [json.dumps(self.record(*entry), allow_nan=False) for entry in batch]
        try:
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.rpush(self.key, *items)
                pipe.ltrim(self.key, -self.settings.max_samples, -1)
                await pipe.execute()
        except (TimeoutError, RedisError, OSError) as exc:
            self.dropped += len(items)
            if not self._failing:
                log.warning("drift samples not stored (%s); dropping them until the store "
                            "answers again", type(exc).__name__)
            self._failing = True
            return 0
        if self._failing:
            log.info("drift sample store reachable again")
        self._failing = False
        self.stored += len(items)
        return len(items)

    async def run(self) -> None:
        """Flush every ``flush_seconds`` until cancelled."""
        while True:
            await asyncio.sleep(self.settings.flush_seconds)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # a sample must never take the replica down
                log.exception("drift sample flush failed")

    async def close(self, timeout: float = REDIS_TIMEOUT_SECONDS) -> None:
        """Flush what is left (bounded by ``timeout``) and close the connection."""
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except Exception as exc:  # shutting down: log, never raise
            log.warning("final drift sample flush failed: %s", type(exc).__name__)
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception:  # noqa: BLE001  (closing a broken connection)
                pass
            self._client = None
