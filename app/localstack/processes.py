"""Helpers for supervisors that start child processes (`modelgate up`, the local runtime)."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PROC = Path("/proc")


def die_with_parent() -> None:
    """In a child (preexec_fn): get SIGTERM when the parent dies, so nothing is orphaned."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: children may outlive a killed supervisor, as without this call


def name_this_process(name: str) -> None:
    """Set this process's short name (`ps -o comm`, /proc/PID/comm; 15 bytes at most).

    Forked helpers (Celery's embedded beat) share their parent's command line; the name is
    what tells them apart for an operator, and for `group_members` callers.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode()[:15])
    except OSError:
        pass


def group_members(pgid: int) -> list[int]:
    """Pids of the live (not zombie) processes in the process group `pgid`."""
    if not PROC.is_dir():  # not Linux: a signal 0 tells whether anything is left
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    return _live_where(2, pgid)


def live_children(pid: int) -> list[int]:
    """Pids of the live (not zombie) child processes of `pid` (Linux /proc), sorted."""
    return sorted(_live_where(1, pid))


def _live_where(field: int, value: int) -> list[int]:
    """Pids of live processes whose /proc stat field `field` (counted after the name: 1 is the
    parent, 2 the process group) equals value."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # /proc/PID/stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces or ")".
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[field]) == value:
            found.append(int(entry.name))
    return found


def end_group(pgid: int, *, grace: float) -> bool:
    """Stop every process of a group: SIGTERM, up to `grace` s, then SIGKILL; wait until gone.

    The group outlives its leader: a killed leader's forked helpers stay in it, so a
    supervisor ends the group, not just the pid it started. Returns False if something was
    still alive 5 s after SIGKILL (a process stuck in the kernel).
    """
    signal_group(pgid, signal.SIGTERM)
    if wait_group_empty(pgid, grace):
        return True
    signal_group(pgid, signal.SIGKILL)
    return wait_group_empty(pgid, 5.0)


def signal_group(pgid: int, sig: int) -> None:
    """Send `sig` to a process group; a group that is gone already is fine."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_group_empty(pgid: int, timeout: float) -> bool:
    """Wait up to `timeout` s until the group has no live process; True if it has none."""
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
