"""Gateway overhead, side by side in one run: direct, nginx, a do-nothing Python proxy, the gateway.

    python -m bench.gateway_bench [--duration 10] [--rounds 1] [--loadgen python|wrk|both]
                                  [--backend stub|scoring|sklearn|all]
                                  [--policy default|key-only] [--json out.json]
                                  [--gateway-pythonpath DIR]

Starts, on loopback: a private Redis (random port, password, PID checked), an HTTPS issuer
(discovery + JWKS) in this process, and per backend kind a backend in its own process (a
minimal aiohttp stub; a scoring replica on its compiled fast path; a scoring replica serving a
random forest through scikit-learn), the gateway in its own process exactly as it runs in
production (``python -m app.gateway``, HTTPS, default policy: JWT + role + Redis rate limit +
key injection), bench/passthrough_proxy.py, a TLS proxy that checks nothing (the floor any
Python proxy process reaches on these cores), and nginx as the compiled floor (bench/
nginx_floor.py; Debian's nginx when installed, skipped with a note otherwise).

Two load generators drive every path, closed loop, at concurrency 1 and 8, each point after
300 warm-up requests: bench/loadgen.py (Python, in this process) and Debian's wrk
(bench/wrk_load.py; one thread; installed with apt-get when missing and running as root,
skipped with a note otherwise). With --rounds N every round measures each path at each c back
to back (the path order alternates between rounds); the report gives per-path medians over
rounds of ok rps, p50 and p99, the throughput ratios computed from those medians (nginx,
floor and gateway against direct, and the gateway against nginx) per load generator, the CPU
milliseconds per request of every process (backend, nginx master + worker, Python floor,
gateway, load generator; from /proc, wait4 for wrk, getrusage for this process), the load
average before and after, a markdown table for bench/README.md, and the verdicts against the
goals: gateway ≥ 0.85× nginx; at c = 8 added p50 ≤ 1 ms and added p99 ≤ 3 ms against direct;
against the scikit-learn backend, gateway ≥ 0.95× direct. All processes share the machine's
cores with the load generator. Exit status 0 when every goal is met, 1 otherwise.

--gateway-pythonpath DIR runs the gateway process from another copy of the app package, such
as the optional compiled build (``python -m app.gateway.compile --out DIR``); the report names
which gateway modules ran compiled.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import resource
import secrets
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import redis
import requests
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.cpu_profile import (
    FREQUENCY_HZ,
    GROUPS,
    microseconds_per_request,
    perf_binary,
    samples_by_group,
    start_recording,
)
from bench.loadgen import LoadResult, run_load
from bench.nginx_floor import nginx_binary, nginx_floor, worker_pids
from bench.wrk_load import run_wrk, wrk_binary, wrk_version

# The data-plane issue's goals, checked per load generator and c
GOAL_VS_NGINX = 0.85  # gateway ok rps / nginx ok rps
GOAL_LATENCY_C = 8  # the latency goals apply at this concurrency
GOAL_ADDED_P50_MS, GOAL_ADDED_P99_MS = 1.0, 3.0  # gateway - direct
GOAL_SKLEARN_VS_DIRECT = 0.95  # gateway / direct against the scikit-learn backend
WARMUP_REQUESTS = 300
PATHS = ("direct", "nginx", "floor", "gateway")
# the process each path charges in the summary table (the JSON keeps every process per point)
OWN_PROCESS = {"direct": "backend", "nginx": "nginx", "floor": "floor", "gateway": "gateway"}
CPU_COLUMNS = ("backend", "nginx", "floor", "gateway", "loadgen")
# --policy key-only: the gateway's floor (TLS, HTTP, forwarding, request log, metrics) with a
# policy that only injects the backend key; callers still send a bearer token, unchecked (the
# API is declared anonymous, which the gateway requires of a policy without validate-jwt)
KEY_ONLY_POLICY = """<policies><inbound>
  <set-header name="Authorization" exists-action="override">
    <value>Bearer {{prod-backend-key}}</value>
  </set-header>
</inbound></policies>"""
STUB_BODY = json.dumps(
    {
        "predictions": [{"label": "good", "probabilities": {"good": 0.69, "bad": 0.31}}],
        "model": {"name": "german-credit", "version": "3"},
    }
).encode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_stub(port: int) -> None:
    """A minimal backend: POST /score answers a fixed prediction (for the overhead baseline)."""

    async def score(request: web.Request) -> web.Response:
        await request.read()
        # the same response header as the scoring replica (the gateway logs it)
        return web.Response(body=STUB_BODY, content_type="application/json",
                            headers={"X-Model-Version": "3"})

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/score", score)
    app.router.add_get("/", ready)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _wait_http(url: str, verify: str | bool = True, timeout_s: float = 30) -> None:
    """Wait until url answers 200 (a replica answers 503 until its model is loaded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(url, timeout=1, verify=verify).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not become ready")
        time.sleep(0.1)


@contextmanager
def _process(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def _redis() -> Iterator[str]:
    port, password = _free_port(), secrets.token_urlsafe(16)
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    with _process(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            password,
            "--save",
            "",
            "--appendonly",
            "no",
        ]
    ) as proc:
        client = redis.Redis(host="127.0.0.1", port=port, password=password)
        deadline = time.monotonic() + 10
        while True:
            try:
                info = client.info("server")
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        if info["process_id"] != proc.pid:
            raise RuntimeError("another Redis answered on our port")
        client.close()
        yield f"redis://:{password}@127.0.0.1:{port}/0"


class _Issuer:
    """Discovery + JWKS over HTTPS in a daemon thread (only hit when the gateway warms up)."""

    def __init__(self, home: Path) -> None:
        from app.gateway.app import server_ssl_context

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "bench-" + uuid.uuid4().hex[:8]
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}/local"
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})

        async def discovery(request: web.Request) -> web.Response:
            return web.json_response({"issuer": self.url, "jwks_uri": f"{self.url}/jwks"})

        async def jwks(request: web.Request) -> web.Response:
            return web.json_response({"keys": [jwk]})

        app = web.Application()
        app.router.add_get("/local/.well-known/openid-configuration", discovery)
        app.router.add_get("/local/jwks", jwks)
        self._loop = asyncio.new_event_loop()
        ctx = server_ssl_context(home)

        async def start() -> None:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=ctx).start()

        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)

    def token(self) -> str:
        """A valid access token with the scoring role, good for an hour."""
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": "api://modelgate",
            "sub": "bench",
            "oid": "bench",
            "roles": ["Score.Invoke"],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
        }
        return jwt.encode(
            claims, self.key, algorithm="RS256", headers={"kid": self.kid, "typ": "at+jwt"}
        )


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu_s() -> float:
    """User + system CPU seconds of this process (the Python load generator runs here)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class _Target:
    """Where and how one path is driven."""

    url: str
    headers: dict[str, str]
    ssl: ssl.SSLContext | None


@dataclass(frozen=True)
class _Setup:
    """One backend kind's running processes: the paths to drive and the processes to watch."""

    kind: str
    body: bytes
    targets: dict[str, _Target]  # by path; no "nginx" when nginx is not installed
    pids: dict[str, Callable[[], list[int]]]  # by process: backend, nginx, floor, gateway


@dataclass(frozen=True)
class _Loadgens:
    """The load generators to run: names in order, and wrk's path when it is one of them."""

    names: tuple[str, ...]
    wrk: str | None
    wrk_version: str | None


def _measure_point(setup: _Setup, path: str, loadgen: _Loadgens, name: str, c: int,
                   duration: float, workdir: Path) -> dict[str, Any]:
    """Warm one path up, run one point with one load generator, and charge the CPU it took.

    The warm-up (WARMUP_REQUESTS through bench/loadgen.py at the same c) is outside the CPU
    window, so every process's CPU is divided by the measured requests only.
    """
    target = setup.targets[path]
    run_load(target.url, setup.body, target.headers, concurrency=c, duration_s=60,
             count=WARMUP_REQUESTS, ssl=target.ssl)
    pids = {proc: get() for proc, get in setup.pids.items()}
    before = {proc: sum(_cpu_s(pid) for pid in ids) for proc, ids in pids.items()}
    result: LoadResult
    if name == "wrk":
        assert loadgen.wrk is not None
        run = run_wrk(loadgen.wrk, target.url, setup.body, target.headers, concurrency=c,
                      duration_s=duration, workdir=workdir)
        result, loadgen_cpu = run.result, run.cpu_s
    else:
        self_before = _self_cpu_s()
        result = run_load(target.url, setup.body, target.headers, concurrency=c,
                          duration_s=duration, ssl=target.ssl)
        loadgen_cpu = _self_cpu_s() - self_before
    served = max(result.sent, 1)
    cpu = {proc: (sum(_cpu_s(pid) for pid in ids) - before[proc]) * 1000 / served
           for proc, ids in pids.items()}
    cpu["loadgen"] = loadgen_cpu * 1000 / served
    return {"backend": setup.kind, "loadgen": name, "concurrency": c, "path": path,
            "result": result.to_dict(), "cpu_ms_per_request": cpu}


def _measure_rounds(setup: _Setup, loadgens: _Loadgens, args: argparse.Namespace,
                    workdir: Path) -> list[dict[str, Any]]:
    """Every round: each c, each load generator, each path back to back (order alternating)."""
    points: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        order = [*PATHS, *(p for p in setup.targets if p not in PATHS)]
        paths = [p for p in (order if rnd % 2 == 0 else order[::-1]) if p in setup.targets]
        names = loadgens.names if rnd % 2 == 0 else loadgens.names[::-1]
        print(f"[{setup.kind}] round {rnd + 1}/{args.rounds}", file=sys.stderr, flush=True)
        for c in args.concurrency:
            for name in names:
                for path in paths:
                    point = _measure_point(setup, path, loadgens, name, c, args.duration,
                                           workdir)
                    points.append({"round": rnd + 1, "policy": args.policy, **point})
    return points


def _tree_env() -> dict[str, str]:
    """The environment of the processes the bench starts: imports from this work tree."""
    return dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))


def _gateway_env(args: argparse.Namespace) -> tuple[dict[str, str], Path | None]:
    """Environment and working directory of the gateway process: the tree's, or with
    --gateway-pythonpath DIR its app package from DIR (e.g. a compiled copy made by
    ``python -m app.gateway.compile --out DIR``); `python -m` puts the working directory
    first on sys.path, so the gateway also starts in DIR."""
    env = _tree_env()
    if args.gateway_pythonpath is None:
        return env, None
    where = args.gateway_pythonpath.resolve()
    return _env_from(where), where


def _with_workers(pid: int) -> list[int]:
    """A gateway process and its workers (MODELGATE_GATEWAY_WORKERS > 1)."""
    return [pid, *worker_pids(pid)]


def _build(spec: str) -> tuple[str, Path]:
    """--compare NAME=DIR: a name for the report and a folder holding an app package."""
    name, sep, where = spec.partition("=")
    if not sep or not name or not where:
        raise ValueError(f"--compare takes NAME=DIR, not {spec!r}")
    folder = Path(where).resolve()
    if not (folder / "app" / "gateway").is_dir():
        raise ValueError(f"--compare {name}: {folder} holds no app/gateway package")
    return name, folder


def _env_from(folder: Path) -> dict[str, str]:
    """The environment of a gateway process that imports its app package from folder."""
    env = _tree_env()
    return dict(env, PYTHONPATH=os.pathsep.join([str(folder), env["PYTHONPATH"]]))


def gateway_flavour(args: argparse.Namespace) -> str:
    """Which gateway modules the gateway process will run compiled (app.gateway.flavour)."""
    env, cwd = _gateway_env(args)
    done = subprocess.run([sys.executable, "-c", "import app.gateway as g; print(g.flavour())"],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout.strip()


def _bench_backend(kind: str, model_dir: Path | None, home: Path, redis_url: str,
                   issuer: _Issuer, args: argparse.Namespace,
                   loadgens: _Loadgens) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Start one backend, the floors and a gateway in front of it; measure every round (and,
    with --profile, where each proxy's CPU goes)."""
    from app.gateway.config import encrypt_named_value, write_gateway_config
    from app.gateway.template import render_default_policy
    from app.pki import ensure_tls

    tls = ensure_tls(home)
    backend_key = secrets.token_urlsafe(32)
    backend_port, gateway_port, floor_port, nginx_port = (_free_port() for _ in range(4))
    env = _tree_env()
    gateway_env, gateway_cwd = _gateway_env(args)
    body = b'{"data": [{"Age": 30}]}'
    if model_dir is not None:
        keys = home / f"keys-{backend_port}.json"
        digest = hashlib.sha256(backend_key.encode()).hexdigest()
        keys.write_text(json.dumps({"primary_sha256": digest, "secondary_sha256": digest}))
        sig = json.loads((model_dir / "signature.json").read_text())
        body = json.dumps({"data": [sig["example"]]}).encode()
        backend_cmd = [sys.executable, "-m", "app.serving", "--model-dir", str(model_dir),
                       "--keys-file", str(keys), "--port", str(backend_port)]
        ready = f"http://127.0.0.1:{backend_port}/health/ready"
    else:
        backend_cmd = [sys.executable, "-m", "bench.gateway_bench", "--serve-stub",
                       str(backend_port)]
        ready = f"http://127.0.0.1:{backend_port}/"
    write_gateway_config(home, {
        "apis": [{"name": "credit-risk", "path": "credit-risk", "revision": 1,
                  "environment": "prod", "backend_url": f"http://127.0.0.1:{backend_port}",
                  "operations": [{"id": "score", "method": "POST", "url_template": "/score"}],
                  "policy_xml": KEY_ONLY_POLICY if args.policy == "key-only" else
                  render_default_policy(issuer=issuer.url, environment="prod",
                                        rate_limit=10_000_000),
                  "anonymous": args.policy == "key-only"}],
        "named_values": {
            "prod-backend-key": {"secret": True, "value": encrypt_named_value(home, backend_key)},
            "prod-backend-url": {"secret": False, "value": f"http://127.0.0.1:{backend_port}"}}})
    def gateway_cmd(port: int) -> list[str]:
        return [sys.executable, "-m", "app.gateway", "--home", str(home), "--port", str(port),
                "--redis-url", redis_url]

    floor_cmd = [sys.executable, "-m", "bench.passthrough_proxy", str(floor_port),
                 str(backend_port), str(tls.server_cert), str(tls.server_key)]
    nginx = nginx_binary()
    with _process(backend_cmd, env) as backend_proc, \
            _process(gateway_cmd(gateway_port), gateway_env, gateway_cwd) as gw_proc, \
            _process(floor_cmd, dict(env, BENCH_BACKEND_KEY=backend_key)) as floor_proc, \
            ExitStack() as optional:
        nginx_proc = None if nginx is None else optional.enter_context(nginx_floor(
            nginx, home / f"nginx-{kind}", nginx_port, backend_port, tls.server_cert,
            tls.server_key, backend_key))
        _wait_http(ready, timeout_s=120)
        _wait_http(f"https://127.0.0.1:{gateway_port}/health", verify=str(tls.ca_cert))
        ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
        _wait_tls(floor_port, ctx)
        if nginx_proc is not None:
            _wait_tls(nginx_port, ctx)
        direct_headers = {"Authorization": f"Bearer {backend_key}",
                          "Content-Type": "application/json"}
        gated_headers = {"Authorization": f"Bearer {issuer.token()}",
                         "Content-Type": "application/json"}
        gated = "https://127.0.0.1:{}/credit-risk/score"
        targets = {
            "direct": _Target(f"http://127.0.0.1:{backend_port}/score", direct_headers, None),
            "floor": _Target(gated.format(floor_port), gated_headers, ctx),
            "gateway": _Target(gated.format(gateway_port), gated_headers, ctx)}
        pids: dict[str, Callable[[], list[int]]] = {
            "backend": lambda: [backend_proc.pid], "floor": lambda: [floor_proc.pid],
            # with MODELGATE_GATEWAY_WORKERS > 1 the gateway's work is in its workers
            "gateway": lambda: [gw_proc.pid, *worker_pids(gw_proc.pid)]}
        if nginx_proc is not None:
            targets["nginx"] = _Target(gated.format(nginx_port), gated_headers, ctx)
            master = nginx_proc.pid
            pids["nginx"] = lambda: [master, *worker_pids(master)]
        for name, folder in args.compare:
            port = _free_port()
            proc = optional.enter_context(_process(
                gateway_cmd(port), _env_from(folder), folder))
            _wait_http(f"https://127.0.0.1:{port}/health", verify=str(tls.ca_cert))
            targets[f"gateway@{name}"] = _Target(gated.format(port), gated_headers, ctx)
            pids[f"gateway@{name}"] = functools.partial(_with_workers, proc.pid)
        setup = _Setup(kind, body, targets, pids)
        points = _measure_rounds(setup, loadgens, args, home)
        return points, _profile_paths(setup, loadgens, args, home) if args.profile else []


def _profile_paths(setup: _Setup, loadgens: _Loadgens, args: argparse.Namespace,
                   workdir: Path) -> list[dict[str, Any]]:
    """For each c and proxy path: wrk drives it while perf samples its processes; the CPU per
    request by library (bench/cpu_profile.py)."""
    perf = perf_binary()
    if perf is None or loadgens.wrk is None:
        print("note: --profile needs perf (apt-get install -y linux-perf) and wrk: skipped")
        return []
    seconds = max(args.duration, 2.0)
    profiles = []
    for c in args.concurrency:
        for path in ("nginx", "floor", "gateway"):
            if path not in setup.targets:
                continue
            target, data = setup.targets[path], workdir / f"perf-{setup.kind}-{path}-{c}.data"
            recording = start_recording(perf, setup.pids[OWN_PROCESS[path]](), seconds, data)
            run = run_wrk(loadgens.wrk, target.url, setup.body, target.headers,
                          concurrency=c, duration_s=seconds + 2, workdir=workdir)
            _, err = recording.communicate(timeout=seconds + 60)
            if recording.returncode != 0:
                print(f"note: perf record failed for {path}: {err.decode(errors='replace')}")
                continue
            groups = samples_by_group(perf, data)
            profiles.append({"backend": setup.kind, "concurrency": c, "path": path,
                             "ok_rps": run.result.ok_rps, "samples": groups,
                             "us_per_request": microseconds_per_request(
                                 groups, run.result.ok_rps * seconds)})
    return profiles


def _path_summary(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Medians over rounds of one path's points (None when the path was not measured)."""
    if not points:
        return None
    results = [p["result"] for p in points]
    procs = points[0]["cpu_ms_per_request"].keys()
    return {
        "rounds": len(points),
        "ok_rps": statistics.median(r["ok_rps"] for r in results),
        "p50_ms": statistics.median(r["p50_ms"] for r in results),
        "p99_ms": statistics.median(r["p99_ms"] for r in results),
        "max_ms": max(r["max_ms"] for r in results),
        "sent": sum(r["sent"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "cpu_ms_per_request": {proc: statistics.median(p["cpu_ms_per_request"][proc]
                                                       for p in points) for proc in procs},
    }


def _ratio(paths: dict[str, dict[str, Any] | None], a: str, b: str) -> float | None:
    """ok rps of path a over path b (from the medians), None when either is missing."""
    x, y = paths.get(a), paths.get(b)
    if x is None or y is None or not y["ok_rps"]:
        return None
    return float(x["ok_rps"] / y["ok_rps"])


def _goals(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals that apply to one row, each with its value and whether it is met."""
    r = row["ratios"]
    goals = [{"goal": f"gateway/nginx >= {GOAL_VS_NGINX}", "value": r["gateway/nginx"],
              "met": r["gateway/nginx"] is not None and r["gateway/nginx"] >= GOAL_VS_NGINX}]
    if row["concurrency"] == GOAL_LATENCY_C:
        goals += [{"goal": f"added p50 <= {GOAL_ADDED_P50_MS} ms", "value": row["added_p50_ms"],
                   "met": row["added_p50_ms"] <= GOAL_ADDED_P50_MS},
                  {"goal": f"added p99 <= {GOAL_ADDED_P99_MS} ms", "value": row["added_p99_ms"],
                   "met": row["added_p99_ms"] <= GOAL_ADDED_P99_MS}]
    if row["backend"] == "sklearn":
        goals.append({"goal": f"gateway/direct >= {GOAL_SKLEARN_VS_DIRECT}",
                      "value": r["gateway/direct"], "met": r["gateway/direct"] is not None
                      and r["gateway/direct"] >= GOAL_SKLEARN_VS_DIRECT})
    failed = sum(p["failed"] for p in row["paths"].values() if p is not None)
    goals.append({"goal": "no failed requests", "value": failed, "met": failed == 0})
    return goals


def summarise(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (backend, policy, load generator, c): medians, ratios, CPU and goals."""
    seen = list(dict.fromkeys((p["backend"], p["policy"], p["loadgen"], p["concurrency"])
                              for p in points))
    # grouped per backend and load generator (as measured), concurrency ascending within
    groups = list(dict.fromkeys(k[:2] for k in seen))
    keys = sorted(seen, key=lambda k: (groups.index(k[:2]), k[2], k[3]))
    rows = []
    for backend, policy, loadgen, c in keys:
        mine = [p for p in points if (p["backend"], p["policy"], p["loadgen"],
                                      p["concurrency"]) == (backend, policy, loadgen, c)]
        paths = {path: _path_summary([p for p in mine if p["path"] == path]) for path in PATHS}
        direct, gateway = paths["direct"], paths["gateway"]
        assert direct is not None and gateway is not None
        row: dict[str, Any] = {
            "backend": backend, "policy": policy, "loadgen": loadgen, "concurrency": c,
            "paths": paths,
            "ratios": {f"{a}/{b}": _ratio(paths, a, b) for a, b in (
                ("nginx", "direct"), ("floor", "direct"), ("gateway", "direct"),
                ("gateway", "nginx"))},
            "added_p50_ms": gateway["p50_ms"] - direct["p50_ms"],
            "added_p99_ms": gateway["p99_ms"] - direct["p99_ms"],
            # each process at the point that drives it; the load generator at the gateway's
            "cpu_ms_per_request": {
                **{OWN_PROCESS[path]: (None if s is None else
                                       s["cpu_ms_per_request"][OWN_PROCESS[path]])
                   for path, s in paths.items()},
                "loadgen": gateway["cpu_ms_per_request"]["loadgen"]},
        }
        builds = {p["path"] for p in mine} - set(PATHS)
        row["builds"] = {}
        for path in sorted(builds):
            summary = _path_summary([p for p in mine if p["path"] == path])
            assert summary is not None
            nginx = paths["nginx"]
            row["builds"][path.removeprefix("gateway@")] = {
                "summary": summary,
                "vs_nginx": summary["ok_rps"] / nginx["ok_rps"] if nginx and nginx["ok_rps"]
                else None,
                "vs_gateway": summary["ok_rps"] / gateway["ok_rps"] if gateway["ok_rps"]
                else None,
                "cpu_ms_per_request": summary["cpu_ms_per_request"][path]}
        row["goals"] = _goals(row)
        row["meets"] = all(g["met"] for g in row["goals"])
        rows.append(row)
    return rows


def _wait_tls(port: int, ctx: ssl.SSLContext, timeout_s: float = 30) -> None:
    """Wait until a TLS listener completes a handshake (the passthrough has no health route)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, \
                    ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing answered TLS on port {port}") from None
            time.sleep(0.1)


def _model_dir(home: Path, given: Path | None, kind: str) -> Path:
    """The replica's model: the one given, or a package fitted now (lr: compiled fast path;
    rf: a random forest, which the fast path does not compile, so scikit-learn serves it)."""
    if given is not None:
        return given
    from tests.serving.modelpkg import build_model_package

    return build_model_package(home / f"model-{kind}", kind)


def _choose_loadgens(choice: str | None) -> _Loadgens:
    """python, wrk or both (default: both when wrk is installed or can be installed)."""
    if choice == "python":
        return _Loadgens(("python",), None, None)
    wrk = wrk_binary(install=True)
    if wrk is None:
        print("note: wrk is not installed (apt-get install -y wrk): wrk points are skipped")
        return _Loadgens(("python",) if choice in (None, "both") else (), None, None)
    names = ("python", "wrk") if choice in (None, "both") else ("wrk",)
    return _Loadgens(names, wrk, wrk_version(wrk))


def main(argv: list[str] | None = None) -> int:
    """Run the side-by-side benchmark, print the tables and verdicts."""
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_bench")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds per point (wrk rounds up to whole seconds)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every point this many times; report medians")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--loadgen", choices=["python", "wrk", "both"],
                        help="bench/loadgen.py, Debian's wrk, or both (default: both when wrk "
                        "is installed)")
    parser.add_argument("--backend", choices=["stub", "scoring", "sklearn", "all"],
                        default="all", help="stub: fixed answer; scoring: replica on its compiled "
                        "fast path; sklearn: replica serving a random forest through scikit-learn")
    parser.add_argument("--policy", choices=["default", "key-only"], default="default",
                        help="the default policy, or only the key injection (the floor)")
    parser.add_argument("--model-dir", type=Path, help="model package for the scoring replica")
    parser.add_argument("--json", type=Path, help="write the summary and every round here")
    parser.add_argument("--gateway-pythonpath", type=Path, metavar="DIR",
                        help="run the gateway process with its app package from DIR, e.g. a "
                        "compiled copy (python -m app.gateway.compile --out DIR); everything "
                        "else runs from this tree")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                        help="also run a gateway from the app package in DIR (another checkout, "
                        "e.g. `git worktree add DIR COMMIT`, or a compiled copy) as path "
                        "gateway@NAME, measured in the same rounds; repeatable")
    parser.add_argument("--profile", action="store_true",
                        help="after the rounds, sample nginx, the floor and the gateway with "
                        "perf while wrk drives each, and print their CPU per request by library")
    parser.add_argument("--serve-stub", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        args.compare = [_build(spec) for spec in args.compare]
    except ValueError as exc:
        parser.error(str(exc))
    if args.serve_stub:
        serve_stub(args.serve_stub)
        return 0
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    loadgens = _choose_loadgens(args.loadgen)
    if not loadgens.names:
        return 2
    if nginx_binary() is None:
        print("note: nginx is not installed (apt-get install -y nginx-light): nginx points are "
              "skipped and gateway/nginx cannot be checked")
    from app.pki import ensure_tls

    meta: dict[str, Any] = {
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "cores": os.cpu_count(),
        "loadavg_before": os.getloadavg(), "duration_s": args.duration, "rounds": args.rounds,
        "concurrency": args.concurrency, "backend": args.backend, "policy": args.policy,
        "loadgens": list(loadgens.names), "wrk": loadgens.wrk_version, "nginx": nginx_binary(),
        "warmup_requests": WARMUP_REQUESTS, "gateway_modules": gateway_flavour(args)}
    print(f"gateway modules: {meta['gateway_modules']}")
    home = Path(tempfile.mkdtemp(prefix="mg-gwbench-"))  # 0700: keys, certificates, scripts
    ensure_tls(home)
    points: list[dict[str, Any]] = []
    profiles: list[dict[str, Any]] = []
    try:
        with _redis() as redis_url:
            issuer = _Issuer(home)
            kinds = [k for k in ("stub", "scoring", "sklearn") if args.backend in (k, "all")]
            for kind in kinds:
                model = None if kind == "stub" else _model_dir(
                    home, args.model_dir if kind == "scoring" else None,
                    "lr" if kind == "scoring" else "rf")
                measured, profiled = _bench_backend(kind, model, home, redis_url, issuer, args,
                                                    loadgens)
                points += measured
                profiles += profiled
    finally:
        shutil.rmtree(home, ignore_errors=True)
    meta["loadavg_after"] = os.getloadavg()
    rows = summarise(points)
    _print(rows, meta)
    print()
    print(markdown(rows, meta))
    if profiles:
        print()
        print(profile_markdown(profiles))
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "summary": rows, "points": points,
                                         "profiles": profiles}, indent=2))
    return 0 if rows and all(r["meets"] for r in rows) else 1


def _value(x: float | int | None) -> str:
    """A goal's measured value for the verdict line."""
    if x is None:
        return "n/a"
    return str(x) if isinstance(x, int) else f"{x:.2f}"


def _times(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def _loadavg(values: Any) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def _print(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """The per-path medians, ratios, added latency and verdicts, per load generator."""
    print(f"gateway overhead vs direct and vs nginx ({meta['cores']} cores shared by load "
          "generator, backend, proxies and Redis; closed loop; HTTPS at the proxies, HTTP "
          f"direct); load average before {_loadavg(meta['loadavg_before'])}")
    group = None
    for row in rows:
        if (row["backend"], row["policy"], row["loadgen"]) != group:
            group = (row["backend"], row["policy"], row["loadgen"])
            tool = meta["wrk"] if row["loadgen"] == "wrk" else "bench/loadgen.py"
            print(f"--- backend: {row['backend']}, policy: {row['policy']}, loadgen: "
                  f"{row['loadgen']} ({tool}); medians of {meta['rounds']} round(s) of "
                  f"{meta['duration_s']:g} s")
            print(f"{'c':>3} {'path':<8} {'ok rps':>9} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'max ms':>8} {'failed':>6} {'cpu ms/req':>10} {'loadgen':>8}")
        c = row["concurrency"]
        for path in PATHS:
            s = row["paths"][path]
            if s is None:
                print(f"{c:>3} {path:<8} not measured (nginx is not installed)")
                continue
            cpu = s["cpu_ms_per_request"]
            print(f"{c:>3} {path:<8} {s['ok_rps']:>9.0f} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} "
                  f"{s['max_ms']:>8.2f} {s['failed']:>6} {cpu[OWN_PROCESS[path]]:>10.3f} "
                  f"{cpu['loadgen']:>8.3f}")
        for name, build in row["builds"].items():
            b = build["summary"]
            print(f"{c:>3} gateway@{name}: {b['ok_rps']:.0f} rps, p50 {b['p50_ms']:.2f} ms, p99 "
                  f"{b['p99_ms']:.2f} ms, {build['cpu_ms_per_request']:.3f} ms CPU/req, "
                  f"{_times(build['vs_nginx'])} nginx, {_times(build['vs_gateway'])} this "
                  f"tree's gateway")
        r = row["ratios"]
        print(f"{c:>3} ratios   nginx {_times(r['nginx/direct'])} direct, Python floor "
              f"{_times(r['floor/direct'])}, gateway {_times(r['gateway/direct'])}; "
              f"gateway/nginx {_times(r['gateway/nginx'])}")
        print(f"{c:>3} added    p50 {row['added_p50_ms']:+.2f} ms, p99 {row['added_p99_ms']:+.2f} "
              "ms vs direct")
        verdicts = "; ".join(f"{g['goal']}: {_value(g['value'])} "
                             f"{'met' if g['met'] else 'MISSED'}" for g in row["goals"])
        print(f"{c:>3} goals    {verdicts} -> "
              f"{'meets goals' if row['meets'] else 'MISSES goals'}")
    print(f"load average before {_loadavg(meta['loadavg_before'])}, after "
          f"{_loadavg(meta['loadavg_after'])}")


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """Markdown tables (one per backend and policy) ready for bench/README.md."""

    def rps(s: dict[str, Any] | None, ratio: float | None) -> str:
        return "–" if s is None or ratio is None else f"{s['ok_rps']:.0f} ({ratio:.2f}×)"

    def ms(x: float | None) -> str:
        return "–" if x is None else f"{x:.3f}"

    out = []
    for group in dict.fromkeys((r["backend"], r["policy"]) for r in rows):
        out += [f"backend `{group[0]}`, policy `{group[1]}`: medians of {meta['rounds']} "
                f"round(s), {meta['duration_s']:g} s per point, {meta['cores']} cores, load "
                f"average {_loadavg(meta['loadavg_before'])} before and "
                f"{_loadavg(meta['loadavg_after'])} after ({meta['started']})", "",
                "| loadgen | c | direct rps | nginx rps (× direct) | Python floor rps (× direct) "
                "| gateway rps (× direct) | **gateway / nginx** | added p50 / p99 ms vs direct "
                "| CPU ms/req direct backend · nginx · floor · gateway · loadgen |",
                "|---|---|---|---|---|---|---|---|---|"]
        for row in (r for r in rows if (r["backend"], r["policy"]) == group):
            p, r, cpu = row["paths"], row["ratios"], row["cpu_ms_per_request"]
            vs_nginx = "–" if r["gateway/nginx"] is None else f"**{r['gateway/nginx']:.2f}×**"
            out.append(
                f"| {row['loadgen']} | {row['concurrency']} | {p['direct']['ok_rps']:.0f} "
                f"| {rps(p['nginx'], r['nginx/direct'])} | {rps(p['floor'], r['floor/direct'])} "
                f"| {rps(p['gateway'], r['gateway/direct'])} | {vs_nginx} "
                f"| {row['added_p50_ms']:+.2f} / {row['added_p99_ms']:+.2f} "
                f"| {' · '.join(ms(cpu.get(k)) for k in CPU_COLUMNS)} |")
        out += ["", "CPU per request: each process at the point that drives it (the backend at "
                "the direct point), the load generator at the gateway point.", ""]
        mine = [r for r in rows if (r["backend"], r["policy"]) == group and r["builds"]]
        if mine:
            out += ["Gateway builds in the same rounds (`--compare`):", "",
                    "| loadgen | c | build | rps | × nginx | × this tree's gateway "
                    "| gateway CPU ms/req |", "|---|---|---|---|---|---|---|"]
            for row in mine:
                gw = row["paths"]["gateway"]
                out.append(f"| {row['loadgen']} | {row['concurrency']} | this tree "
                           f"| {gw['ok_rps']:.0f} | {_times(row['ratios']['gateway/nginx'])} "
                           f"| 1.00x | {gw['cpu_ms_per_request']['gateway']:.3f} |")
                for name, build in row["builds"].items():
                    out.append(f"| {row['loadgen']} | {row['concurrency']} | {name} "
                               f"| {build['summary']['ok_rps']:.0f} "
                               f"| {_times(build['vs_nginx'])} | {_times(build['vs_gateway'])} "
                               f"| {build['cpu_ms_per_request']:.3f} |")
            out.append("")
    return "\n".join(out).rstrip("\n")


def profile_markdown(profiles: list[dict[str, Any]]) -> str:
    """Where each proxy's CPU goes, per request, by library (one table per backend)."""
    out = []
    for kind in dict.fromkeys(p["backend"] for p in profiles):
        mine = [p for p in profiles if p["backend"] == kind]
        present = {g for p in mine for g in p["us_per_request"] if g != "total"}
        groups = [g for g in (*(name for name, _ in GROUPS), "other") if g in present]
        out += [f"backend `{kind}`: CPU µs per request by library (perf cpu-clock at "
                f"{FREQUENCY_HZ} Hz while wrk drives the path)", "",
                "| c | path | wrk rps | **total** | " + " | ".join(groups) + " |",
                "|---|---|---|---|" + "---|" * len(groups)]
        for p in mine:
            per = p["us_per_request"]
            cells = " | ".join(f"{per[g]:.1f}" if g in per else "–" for g in groups)
            out.append(f"| {p['concurrency']} | {p['path']} | {p['ok_rps']:.0f} "
                       f"| **{per.get('total', 0):.1f}** | {cells} |")
        out.append("")
    return "\n".join(out).rstrip("\n")


if __name__ == "__main__":
    raise SystemExit(main())
