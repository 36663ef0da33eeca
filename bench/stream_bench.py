"""Ordinary panel pages, idle vs with many live-update streams open, in one run.

    python -m bench.stream_bench [--streams 200] [--requests 400] [--concurrency 4]
                                 [--users 200] [--jobs 300]

Starts a Redis of its own and the real `python -m app panel` (gunicorn, 2 workers × 8
threads) on loopback ports, on a temporary MODELGATE_HOME with --jobs seeded jobs. Then:

1. idle: --requests GETs of three ordinary pages (dashboard, jobs list, GET /api/v1/jobs)
   by --concurrency clients in a closed loop; p50/p99/max per phase;
2. streams: --streams `GET /jobs/events` connections are opened at once, spread over --users
   signed-in users (1 = one user opens them all), each kept open if the panel admits it
   (a refused one is closed, as the browser's EventSource gives up and the page polls), and the
   same pages are timed again while they stay open;
3. idle again, after the streams are closed.

Streams live MODELGATE_SSE_MAX_SECONDS = 120 here, so none ends during the measurement. The
p99 ratio streams / idle is the figure (goal ≤ 2). Only 127.0.0.1 is contacted; every loop is
bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("/", "/jobs/", "/api/v1/jobs?limit=50")
COOKIE = "__Host-session"  # the panel's production session cookie name
REQUEST_TIMEOUT = 30.0


def session_cookie(app: Any, username: str, roles: list[str]) -> str:
    """A session cookie the panel accepts (signed with its secret), as sign-in sets it."""
    client = app.test_client()
    with client.session_transaction() as session:
        session["user"] = {"id": f"oid-{username}", "name": username, "username": username,
                           "roles": roles, "signed_in_at": int(time.time())}
        session["_user_id"] = f"oid-{username}"
        session["_fresh"] = True
    cookie = client.get_cookie(app.config["SESSION_COOKIE_NAME"])
    return f"{COOKIE}={cookie.value}"


def measure(base: str, cookie: str, total: int, concurrency: int) -> dict[str, Any]:
    """Closed loop: `concurrency` clients GET PAGES in turn until `total` are done."""
    samples: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        with requests.Session() as http:
            http.headers["Cookie"] = cookie
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                started = time.perf_counter()
                try:
                    status = http.get(base + PAGES[i % len(PAGES)],
                                      timeout=REQUEST_TIMEOUT).status_code
                except requests.RequestException as exc:
                    status = exc.__class__.__name__
                elapsed = (time.perf_counter() - started) * 1000
                with lock:
                    samples.append(elapsed)
                    if status != 200:
                        errors.append(str(status))

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    samples.sort()
    return {"requests": len(samples), "errors": len(errors), "error_kinds": sorted(set(errors)),
            "p50_ms": round(statistics.median(samples), 2),
            "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2),
            "max_ms": round(samples[-1], 2), "rps": round(len(samples) / wall, 1)}


def open_streams(port: int, cookies: list[str], count: int) -> tuple[list[socket.socket],
                                                                     dict[str, int]]:
    """Open `count` streams round-robin over `cookies`; keep the admitted ones open."""
    pending = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(f"GET /jobs/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Accept: text/event-stream\r\nCookie: {cookies[i % len(cookies)]}\r\n\r\n"
                     .encode())
        pending.append(sock)
    kept: list[socket.socket] = []
    outcome: dict[str, int] = {}
    deadline = time.monotonic() + 15
    for sock in pending:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            status = sock.recv(64).split(b" ", 2)[1].decode()
        except (OSError, IndexError):
            status = "no answer"
        outcome[status] = outcome.get(status, 0) + 1
        if status == "200" or status == "no answer":
            kept.append(sock)  # admitted (or still waiting for a thread): it stays open
        else:
            sock.close()
    return kept, outcome


def start_panel(home: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    log = open(home / "panel.log", "ab")  # noqa: SIM115 (owned by the child)
    panel = subprocess.Popen([sys.executable, "-m", "app", "panel", "--port", str(port)],
                             cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    log.close()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if panel.poll() is not None:
            raise SystemExit(f"the panel exited; see {home / 'panel.log'}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return panel
        except requests.RequestException:
            pass
        time.sleep(0.2)
    panel.terminate()
    raise SystemExit("the panel did not start in 90 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--users", type=int, default=200,
                        help="users the streams are spread over (1: one user opens them all)")
    parser.add_argument("--requests", type=int, default=400, help="timed requests per phase")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=300)
    args = parser.parse_args(argv)
    if not (1 <= args.streams <= 1000 and 1 <= args.requests <= 20_000
            and 1 <= args.concurrency <= 64 and 1 <= args.users <= args.streams):
        parser.error("bounds: streams 1..1000, users 1..streams, requests 1..20000, "
                     "concurrency 1..64")
    for name in list(os.environ):
        if name.startswith("MODELGATE_"):
            del os.environ[name]

    from app import create_app
    from app.localstack.redis_server import RedisSpec, find_redis_binary, free_port, wait_until_ours
    from app.migrate import upgrade
    from bench.page_bench import seed_jobs

    home = Path(tempfile.mkdtemp(prefix="modelgate-stream-bench-")).resolve()
    redis_spec = RedisSpec(binary=find_redis_binary(), port=free_port(),
                           password=secrets.token_hex(16), data_dir=home / "redis")
    redis_spec.data_dir.mkdir(parents=True)
    redis = subprocess.Popen(redis_spec.command(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    panel: subprocess.Popen[bytes] | None = None
    try:
        wait_until_ours(redis_spec, redis)
        database = f"sqlite:///{home / 'modelgate.db'}"
        secret = secrets.token_urlsafe(48)
        app = create_app({"HOME": str(home), "DATABASE_URL": database, "SECRET_KEY": secret,
                          "REDIS_URL": redis_spec.url, "SESSION_COOKIE_NAME": "session",
                          "SESSION_COOKIE_SECURE": False})
        upgrade(database)
        with app.app_context():
            seed_jobs(args.jobs)
        reader = session_cookie(app, "alice", ["MLOps.Engineer", "Score.Invoke"])
        viewers = [session_cookie(app, f"viewer{i:04d}", []) for i in range(args.users)]

        port = free_port()
        env = {**os.environ, "MODELGATE_HOME": str(home), "MODELGATE_DATABASE_URL": database,
               "MODELGATE_REDIS_URL": redis_spec.url, "MODELGATE_SECRET_KEY": secret,
               "MODELGATE_SSE_MAX_SECONDS": "120", "PYTHONUNBUFFERED": "1"}
        panel = start_panel(home, env, port)
        base = f"http://127.0.0.1:{port}"
        measure(base, reader, 30, args.concurrency)  # warm-up: every worker's first requests

        phases: dict[str, Any] = {"idle": measure(base, reader, args.requests, args.concurrency)}
        streams, outcome = open_streams(port, viewers, args.streams)
        time.sleep(1.0)
        try:
            phases["streams"] = measure(base, reader, args.requests, args.concurrency)
        finally:
            for sock in streams:
                sock.close()
        time.sleep(1.0)
        phases["idle again"] = measure(base, reader, args.requests, args.concurrency)
    finally:
        if panel is not None:
            panel.terminate()
            panel.wait(30)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(home, ignore_errors=True)

    ratio = phases["streams"]["p99_ms"] / phases["idle"]["p99_ms"]
    report = {"streams": args.streams, "users": args.users, "stream_answers": outcome,
              "requests_per_phase": args.requests, "concurrency": args.concurrency,
              "pages": PAGES, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
              "phases": phases, "p99_ratio_streams_to_idle": round(ratio, 2)}
    out = ROOT / "bench" / "results" / "stream-bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"{args.streams} streams over {args.users} user(s): answers {outcome}; "
          f"{args.requests} requests per phase at concurrency {args.concurrency}; "
          f"load average {report['load_average'][0]:.2f}")
    print(f"{'phase':<12}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>10}{'rps':>8}{'errors':>8}")
    for name, f in phases.items():
        print(f"{name:<12}{f['p50_ms']:>9}{f['p99_ms']:>9}{f['max_ms']:>10}{f['rps']:>8}"
              f"{f['errors']:>8}")
    print(f"p99 with streams / idle: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
