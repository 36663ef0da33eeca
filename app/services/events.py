"""Job progress events over Redis pub/sub, for the panel's Server-Sent Events streams."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import redis

logger = logging.getLogger(__name__)

CHANNEL = "modelgate:job-events"


def make_redis(url: str) -> redis.Redis:
    """Create a Redis client with short timeouts, so a dead Redis fails fast, not slowly."""
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5,
                                health_check_interval=30)


def publish(client: redis.Redis | None, event: dict[str, Any]) -> None:
    """Publish an event; best effort, since the database row is the truth and pages poll too."""
    if client is None:
        return
    try:
        client.publish(CHANNEL, json.dumps(event, default=str))
    except redis.RedisError as exc:
        logger.warning("could not publish job event: %s", exc.__class__.__name__)


def subscribe(client: redis.Redis, *, max_seconds: float,
              heartbeat_seconds: float = 15.0) -> Iterator[dict[str, Any] | None]:
    """Yield events as they arrive, and None as a keep-alive tick, for at most max_seconds."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    try:
        deadline = time.monotonic() + max_seconds
        last_tick = time.monotonic()
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1.0)
            if message and message.get("type") == "message":
                yield json.loads(message["data"])
            elif time.monotonic() - last_tick >= heartbeat_seconds:
                last_tick = time.monotonic()
                yield None
    finally:
        pubsub.close()
