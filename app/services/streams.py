"""Admission of live-update streams (`GET /jobs/events`): caps per process and per user.

The panel runs under gunicorn's threaded workers, where an open Server-Sent Events stream
holds one request thread for its whole life. Unbounded, a few open streams from anyone signed
in would take every thread and stall everybody's pages. So a stream is admitted only while
this process has a free stream slot (its request threads less SSE_RESERVED_THREADS, kept for
ordinary requests) and its user holds fewer than SSE_STREAMS_PER_USER streams across all
panel processes (leases in Redis, each expiring with its stream, so a killed process cannot
leak them). A refused stream is answered at once, as a stream still (200
`text/event-stream`, so the browser logs no error): one `capped` event saying why and when to
try again, and no job events. The page's script then closes it and polls instead.
"""

from __future__ import annotations

import enum
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

import redis

LEASE_PREFIX = "modelgate:sse-leases:"
LEASE_SLACK_SECONDS = 30.0  # a lease outlives its stream's maximum by this much

# Drop expired leases, count the rest, add one if under the cap: atomic, so two panel
# processes cannot both take a user's last slot.
_LEASE_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class Cap(enum.Enum):
    """Why a stream was refused."""

    USER = "user"  # the user holds SSE_STREAMS_PER_USER streams already
    SERVER = "server"  # this process has no free stream slot
    UNAVAILABLE = "unavailable"  # Redis, which counts the user's streams, cannot be reached


class StreamRefused(Exception):
    """A stream not admitted: why, a sentence for people, and seconds before trying again."""

    def __init__(self, cap: Cap, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.cap = cap
        self.detail = detail
        self.retry_after = retry_after


class StreamSlots:
    """This process's stream slots: a counter that never blocks."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        return self._open

    def try_acquire(self) -> bool:
        with self._lock:
            if self._open >= self.capacity:
                return False
            self._open += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._open = max(0, self._open - 1)


@dataclass
class Admission:
    """One admitted stream's process slot and user lease; release() frees both, once."""

    slots: StreamSlots
    client: redis.Redis
    key: str
    lease: str
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self.slots.release()
        self.release_lease()

    def release_lease(self) -> None:
        try:
            self.client.zrem(self.key, self.lease)
        except redis.RedisError:
            pass  # the lease expires by itself with its stream's lifetime


def admit(slots: StreamSlots, client: redis.Redis, user_id: str, *, per_user: int,
          max_seconds: float) -> Admission:
    """Admit one stream for `user_id` or raise.

    The user's cap is checked first, so a user over it is always told so, whatever the load
    of the process that answers.

    Raises:
        StreamRefused: the user already holds `per_user` streams (Cap.USER), this process has
            no free stream slot (Cap.SERVER), or Redis is down (Cap.UNAVAILABLE).
    """
    retry_after = max(1, round(max_seconds))
    key = LEASE_PREFIX + user_id
    lease = uuid.uuid4().hex
    now = time.time()
    try:
        granted = client.eval(_LEASE_SCRIPT, 1, key, now, per_user,
                              now + max_seconds + LEASE_SLACK_SECONDS, lease,
                              round(max_seconds + LEASE_SLACK_SECONDS) + 1)
    except redis.RedisError as exc:
        raise StreamRefused(Cap.UNAVAILABLE, "live updates are unavailable; the page polls "
                            "instead", retry_after) from exc
    if not granted:
        raise StreamRefused(Cap.USER, f"at most {per_user} live streams per user are open at "
                            "once; the page polls instead", retry_after)
    admission = Admission(slots, client, key, lease)
    if not slots.try_acquire():
        admission.release_lease()
        raise StreamRefused(Cap.SERVER, "this server has no room for another live stream; "
                            "the page polls instead", retry_after)
    return admission


def capped_event(refused: StreamRefused) -> str:
    """The whole body of a refused stream: a reconnection delay and one `capped` event.

    `retry` holds a browser that ignores the event back from reconnecting for `retry_after`
    seconds; the panel's scripts close the stream on the event and poll.
    """
    data = json.dumps({"cap": refused.cap.value, "detail": refused.detail,
                       "retry_after": refused.retry_after})
    return f"retry: {refused.retry_after * 1000}\nevent: capped\ndata: {data}\n\n"
