"""A compiled load generator beside bench/loadgen.py: Debian's `wrk`, driven by a Lua script.

bench/gateway_bench.py runs every point with both generators, so a figure can be read against
a client that costs the shared cores as little as possible. `run_wrk` starts one closed-loop
run (`wrk -t1 -c<c> -d<s>s --latency -s script URL`) and returns its summary as a
bench.loadgen.LoadResult, so the same table code reads both generators.

The script sets the method (POST), the body and the headers. Secrets never reach the command
line (any local user can read process arguments): the Authorization header travels in an
environment variable that the script reads with os.getenv, and the script file itself, which
holds only the body and non-secret headers, is created 0600 in the caller's private folder.
Its `done()` hook prints one JSON line (requests, duration, socket errors, error statuses,
latency percentiles in µs), which is parsed instead of wrk's text report.

Limits of wrk 4.1.0 worth knowing: durations are whole seconds (a shorter request is rounded
up to 1 s); it counts answers with status ≥ 400 as errors (`Non-2xx or 3xx responses`), so a
3xx would pass as ok (no path measured here redirects); it does not verify TLS certificates
(loopback only, like bench/loadgen.py); no warm-up of its own (the caller warms up first).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import (
    DEFAULT_TIMEOUT_S,
    MAX_CONCURRENCY,
    MAX_DURATION_S,
    LoadResult,
    check_loopback,
)

AUTH_ENV = "BENCH_WRK_AUTHORIZATION"
MARKER = "BENCH_WRK_JSON "
_DONE_HOOK = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, "connect": %.0f, '
    .. '"read": %.0f, "write": %.0f, "status": %.0f, "timeout": %.0f, "p50_us": %.0f, '
    .. '"p90_us": %.0f, "p99_us": %.0f, "max_us": %.0f, "mean_us": %.3f}\n',
    MARKER, summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass(frozen=True)
class WrkRun:
    """One wrk run: its summary in LoadResult's shape and wrk's own CPU seconds."""

    result: LoadResult
    cpu_s: float


def wrk_binary(install: bool = False) -> str | None:
    """Path of wrk, or None. With install=True and root, try `apt-get install -y wrk` once."""
    found = shutil.which("wrk") or ("/usr/bin/wrk" if Path("/usr/bin/wrk").exists() else None)
    if found or not install or os.geteuid() != 0:
        return found
    print("wrk is missing: trying apt-get install -y wrk once", flush=True)
    try:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True,
                       timeout=300, check=False,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    except (OSError, subprocess.TimeoutExpired):
        return None
    return shutil.which("wrk")


def wrk_version(binary: str) -> str:
    """wrk's version (e.g. 'wrk debian/4.1.0-3+b2 [epoll]'), or '' when unknown."""
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    lines = (out.stdout + out.stderr).splitlines()
    return lines[0].split(" Copyright")[0].strip() if lines else ""


def _lua_string(data: bytes) -> str:
    """A Lua string literal for any bytes (printable ASCII kept, everything else as \\ddd)."""
    out = []
    for byte in data:
        char = chr(byte)
        if 32 <= byte < 127 and char not in '"\\':
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def render_script(body: bytes, headers: Mapping[str, str], method: str = "POST") -> str:
    """The Lua script: method, body and the non-secret headers; Authorization from AUTH_ENV."""
    lines = [f"wrk.method = {_lua_string(method.encode())}",
             f"wrk.body = {_lua_string(body)}",
             f"local MARKER = {_lua_string(MARKER.encode())}"]
    for name, value in headers.items():
        if name.lower() == "authorization":
            continue
        lines.append(f"wrk.headers[{_lua_string(name.encode())}] = "
                     f"{_lua_string(value.encode())}")
    if any(name.lower() == "authorization" for name in headers):
        lines += [f'local auth = os.getenv("{AUTH_ENV}")',
                  f'assert(auth and #auth > 0, "{AUTH_ENV} is not set")',
                  'wrk.headers["Authorization"] = auth']
    return "\n".join(lines) + "\n" + _DONE_HOOK


def _write_private(folder: Path, text: str) -> Path:
    """Write text to a new 0600 file in folder (created exclusively) and return its path."""
    fd, name = tempfile.mkstemp(prefix="wrk-", suffix=".lua", dir=folder)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return Path(name)


def _wait_with_usage(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[int, float]:
    """Reap proc with wait4 and return (exit code, its user + system CPU seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait
            return proc.returncode, usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(10)
            raise RuntimeError(f"wrk did not finish within {timeout_s:.0f} s")
        time.sleep(0.02)


def parse_summary(stdout: str) -> dict[str, float]:
    """The done() hook's JSON line from wrk's stdout."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            data: dict[str, float] = json.loads(line[len(MARKER):])
            return data
    raise RuntimeError("wrk printed no summary line (did the Lua script fail?)")


def to_load_result(s: Mapping[str, float]) -> LoadResult:
    """Map the done() hook's summary into bench.loadgen.LoadResult (closed-loop mode)."""
    requests, status = int(s["requests"]), int(s["status"])
    socket_errors = {k: int(s[k]) for k in ("connect", "read", "write", "timeout") if s[k]}
    errors = {**({"status>=400": status} if status else {}), **socket_errors}
    ok = requests - status
    duration = max(s["duration_us"] / 1e6, 1e-9)
    return LoadResult(
        mode="closed", planned=None,
        # a read/write error or a timeout is a request sent that never completed
        sent=requests + sum(v for k, v in socket_errors.items() if k != "connect"),
        ok=ok, errors=errors,
        statuses={k: v for k, v in (("<400", ok), (">=400", status)) if v},
        p50_ms=s["p50_us"] / 1000, p90_ms=s["p90_us"] / 1000, p99_ms=s["p99_us"] / 1000,
        max_ms=s["max_us"] / 1000, mean_ms=s["mean_us"] / 1000, duration_s=duration,
        rps=requests / duration, ok_rps=ok / duration)


def run_wrk(binary: str, url: str, body: bytes, headers: Mapping[str, str], *,
            concurrency: int, duration_s: float, workdir: Path,
            timeout_s: float = DEFAULT_TIMEOUT_S) -> WrkRun:
    """Run wrk closed loop (one thread, `concurrency` connections) and summarise it.

    Args:
        binary: the wrk executable (see wrk_binary).
        url: loopback http(s) URL; anything else raises ValueError.
        body: request body sent with every request (POST).
        headers: request headers; Authorization goes through the environment, never argv.
        concurrency: open connections, each with one request in flight.
        duration_s: seconds to run, rounded up to whole seconds (at least 1).
        workdir: a private folder (0700) for the 0600 Lua script, removed after the run.
        timeout_s: per-request timeout; a timed-out request counts as error "timeout".

    Returns:
        WrkRun: the LoadResult and wrk's own CPU seconds (from wait4's rusage).

    Raises:
        ValueError: non-loopback URL or out-of-bounds parameters.
        RuntimeError: wrk failed, overran, or printed no summary.
    """
    check_loopback(url)
    if not 1 <= concurrency <= MAX_CONCURRENCY or not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError("concurrency or duration out of bounds")
    seconds = max(1, math.ceil(duration_s))
    auth = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
    env = {k: v for k, v in os.environ.items() if k != AUTH_ENV}
    if auth is not None:
        env[AUTH_ENV] = auth
    script = _write_private(workdir, render_script(body, headers))
    cmd = [binary, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout",
           f"{max(1, math.ceil(timeout_s))}s", "--latency", "-s", str(script), url]
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err)
            code, cpu_s = _wait_with_usage(proc, seconds + timeout_s + 30)
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(errors="replace"), err.read().decode(
                errors="replace")
    finally:
        script.unlink(missing_ok=True)
    if code != 0:
        raise RuntimeError(f"wrk exited {code}: {stderr.strip()[-500:] or stdout[-500:]}")
    return WrkRun(to_load_result(parse_summary(stdout)), cpu_s)
