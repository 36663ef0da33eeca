"""The local gateway's request log (logs/gateway-requests.jsonl), read from its tail.

Only the last TAIL_BYTES are ever read, and a RequestLog remembers what it parsed: each read
parses only the lines appended since the last one (pages are viewed often and the log grows
with every call; re-parsing megabytes per view would cost more than the rest of the page).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any

from app.backends.base import CallRecord

TAIL_BYTES = 4 * 1024 * 1024


def request_log_path(home: Path) -> Path:
    """Where the gateway writes its request log."""
    return Path(home) / "logs" / "gateway-requests.jsonl"


def _tail_lines(path: Path, max_bytes: int) -> list[bytes]:
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read(size - start)
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    return lines[1:] if start > 0 else lines  # a first line cut in the middle is skipped


def tail_records(path: Path, max_bytes: int = TAIL_BYTES) -> list[dict[str, Any]]:
    """Parse the JSON lines in the last `max_bytes` of the file (a cut first line is skipped)."""
    out: list[dict[str, Any]] = []
    for line in _tail_lines(path, max_bytes):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being appended right now
        if isinstance(record, dict):
            out.append(record)
    return out


def parse_call(line: bytes) -> CallRecord | None:
    """One log line as a CallRecord, None for a blank, cut or foreign line."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
        when = dt.datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        version = record.get("model_version")
        environment = record.get("environment")
        return CallRecord(when, str(record["api"]), int(record["status"]),
                          float(record["latency_ms"]),
                          str(environment) if environment is not None else None,
                          str(version) if version is not None else None)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


class RequestLog:
    """The calls in the log's tail, parsed once and kept in memory (thread-safe)."""

    def __init__(self, path: Path, max_bytes: int = TAIL_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file read
        self._offset = 0
        self._aligned = True  # whether _offset is at the start of a line
        self._calls: deque[CallRecord] = deque()

    def calls(self, since: dt.datetime | None) -> list[CallRecord]:
        """Calls logged since `since`, oldest first; None reads the whole tail afresh (older
        calls are dropped from memory as `since` moves on)."""
        if since is None:
            return [c for c in map(parse_call, _tail_lines(self.path, self.max_bytes)) if c]
        with self._lock:
            self._read_new()
            calls = self._calls
            while calls and calls[0].time < since:
                calls.popleft()
            return [c for c in calls if c.time >= since]

    def _read_new(self) -> None:
        try:
            stat = self.path.stat()
        except OSError:
            self._identity, self._offset = None, 0
            self._calls.clear()
            return
        identity = (stat.st_dev, stat.st_ino)
        if identity != self._identity or stat.st_size < self._offset:  # rotated or truncated
            self._identity, self._offset, self._aligned = identity, 0, True
            self._calls.clear()
        if stat.st_size <= self._offset:
            return
        start = max(self._offset, stat.st_size - self.max_bytes)
        aligned = self._aligned and start == self._offset
        with open(self.path, "rb") as fh:
            fh.seek(start)
            data = fh.read(stat.st_size - start)
        complete = data.rfind(b"\n") + 1  # a line being appended waits for the next read
        lines = data[:complete].split(b"\n")
        if not aligned:
            lines = lines[1:]  # began mid-line
        if complete:
            self._offset, self._aligned = start + complete, True
        for line in lines:
            parsed = parse_call(line)
            if parsed is not None:
                self._calls.append(parsed)
