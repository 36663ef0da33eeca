"""Gateway overhead, side by side in one run: direct, a do-nothing proxy, and the gateway.

    python -m bench.gateway_bench [--duration 10] [--backend stub|scoring|sklearn|all]
                                  [--policy default|key-only] [--json out.json]

Starts, on loopback: a private Redis (random port, password, PID checked), an HTTPS issuer
(discovery + JWKS) in this process, and per backend kind a backend in its own process (a
minimal aiohttp stub; a scoring replica on its compiled fast path; a scoring replica serving a
random forest through scikit-learn), the gateway in its own process exactly as it runs in
production (``python -m app.gateway``, HTTPS, default policy: JWT + role + Redis rate limit +
key injection), bench/passthrough_proxy.py, a TLS proxy that checks nothing (the floor any
Python proxy process reaches on these cores), and nginx as the compiled floor (bench/
nginx_floor.py; Debian's nginx when installed, skipped with a note otherwise).
bench/loadgen.py then drives every path, closed loop, at concurrency 1 and 8, with warm-up, and
prints added p50/p99 latency, the throughput ratios against the goals (added p50 ≤ 1.5 ms, added
p99 ≤ 5 ms, throughput ≥ 0.6× direct) and the gateway's throughput as a share of nginx's. All
processes share the machine's cores with the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import jwt
import redis
import requests
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.loadgen import LoadResult, run_load
from bench.nginx_floor import nginx_binary, nginx_floor, worker_pids

GOAL_P50_MS, GOAL_P99_MS, GOAL_RATIO = 1.5, 5.0, 0.6
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
    cmd: list[str], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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


def _run(
    url: str,
    body: bytes,
    headers: dict[str, str],
    c: int,
    duration: float,
    ctx: ssl.SSLContext | None,
) -> LoadResult:
    return run_load(
        url, body, headers, concurrency=c, duration_s=duration, ssl=ctx, warmup_requests=300
    )


def _measured(url: str, body: bytes, headers: dict[str, str], c: int, duration: float,
              ctx: ssl.SSLContext | None, *, pids: list[int]) -> tuple[LoadResult, list[float]]:
    """Run one point and return it with each process's CPU milliseconds per request."""
    before = [_cpu_s(pid) for pid in pids]
    result = _run(url, body, headers, c, duration, ctx)
    served = max(result.sent + 300, 1)  # the 300 warm-up requests were served too
    return result, [(_cpu_s(pid) - b) * 1000 / served for pid, b in zip(pids, before, strict=True)]


def _bench_backend(kind: str, model_dir: Path | None, home: Path, redis_url: str,
                   issuer: _Issuer, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Start one backend, the passthrough floor and a gateway in front of it; measure each c."""
    from app.gateway.config import encrypt_named_value, write_gateway_config
    from app.gateway.template import render_default_policy
    from app.pki import ensure_tls

    tls = ensure_tls(home)
    backend_key = secrets.token_urlsafe(32)
    backend_port, gateway_port, floor_port, nginx_port = (_free_port() for _ in range(4))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
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
    gateway_cmd = [sys.executable, "-m", "app.gateway", "--home", str(home), "--port",
                   str(gateway_port), "--redis-url", redis_url]
    floor_cmd = [sys.executable, "-m", "bench.passthrough_proxy", str(floor_port),
                 str(backend_port), str(tls.server_cert), str(tls.server_key)]
    results: list[dict[str, Any]] = []
    nginx = nginx_binary()
    with _process(backend_cmd, env) as backend_proc, _process(gateway_cmd, env) as gw_proc, \
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
        for c in args.concurrency:
            d = _run(f"http://127.0.0.1:{backend_port}/score", body, direct_headers, c,
                     args.duration, None)
            gated = (body, gated_headers, c, args.duration, ctx)
            f, (floor_cpu,) = _measured(f"https://127.0.0.1:{floor_port}/credit-risk/score",
                                        *gated, pids=[floor_proc.pid])
            n, nginx_cpu = None, None
            if nginx_proc is not None:
                pids = [nginx_proc.pid, *worker_pids(nginx_proc.pid)]
                n, cpu = _measured(f"https://127.0.0.1:{nginx_port}/credit-risk/score", *gated,
                                   pids=pids)
                nginx_cpu = sum(cpu)
            g, (gateway_cpu, backend_cpu) = _measured(
                f"https://127.0.0.1:{gateway_port}/credit-risk/score", *gated,
                pids=[gw_proc.pid, backend_proc.pid])
            results.append({"backend": kind, "policy": args.policy, "concurrency": c,
                            "direct": d.to_dict(), "passthrough": f.to_dict(),
                            "gateway": g.to_dict(),
                            "gateway_cpu_ms_per_request": gateway_cpu,
                            "passthrough_cpu_ms_per_request": floor_cpu,
                            "backend_cpu_ms_per_request": backend_cpu,
                            "added_p50_ms": g.p50_ms - d.p50_ms,
                            "added_p99_ms": g.p99_ms - d.p99_ms,
                            "throughput_ratio": g.ok_rps / d.ok_rps if d.ok_rps else 0.0,
                            "passthrough_ratio": f.ok_rps / d.ok_rps if d.ok_rps else 0.0,
                            "nginx": n.to_dict() if n else None,
                            "nginx_cpu_ms_per_request": nginx_cpu,
                            "nginx_ratio": n.ok_rps / d.ok_rps if n and d.ok_rps else None,
                            "gateway_vs_nginx": g.ok_rps / n.ok_rps if n and n.ok_rps
                            else None})
    return results


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


def main(argv: list[str] | None = None) -> int:
    """Run the side-by-side benchmark and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_bench")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--backend", choices=["stub", "scoring", "sklearn", "all"],
                        default="all", help="stub: fixed answer; scoring: replica on its compiled "
                        "fast path; sklearn: replica serving a random forest through scikit-learn")
    parser.add_argument("--policy", choices=["default", "key-only"], default="default",
                        help="the default policy, or only the key injection (the floor)")
    parser.add_argument("--model-dir", type=Path, help="model package for the scoring replica")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--serve-stub", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_stub:
        serve_stub(args.serve_stub)
        return 0
    from app.pki import ensure_tls

    home = Path(tempfile.mkdtemp(prefix="mg-gwbench-"))
    ensure_tls(home)
    results: list[dict[str, Any]] = []
    try:
        with _redis() as redis_url:
            issuer = _Issuer(home)
            if args.backend in ("stub", "all"):
                results += _bench_backend("stub", None, home, redis_url, issuer, args)
            if args.backend in ("scoring", "all"):
                model = _model_dir(home, args.model_dir, "lr")
                results += _bench_backend("scoring", model, home, redis_url, issuer, args)
            if args.backend in ("sklearn", "all"):
                model = _model_dir(home, None, "rf")
                results += _bench_backend("sklearn", model, home, redis_url, issuer, args)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(_meets(r) for r in results) else 1


def _meets(r: dict[str, Any]) -> bool:
    return bool(
        r["added_p50_ms"] <= GOAL_P50_MS
        and r["added_p99_ms"] <= GOAL_P99_MS
        and r["throughput_ratio"] >= GOAL_RATIO
        and r["gateway"]["failed"] == 0
        and r["direct"]["failed"] == 0
    )


def _print(results: list[dict[str, Any]]) -> None:
    print(f"gateway overhead vs direct ({os.cpu_count()} cores shared by load generator, "
          "backend, gateway and Redis; closed loop; HTTPS at the gateway, HTTP direct)")
    backend = None
    for r in results:
        if r["backend"] != backend:
            backend = r["backend"]
            print(f"--- backend: {backend}, policy: {r['policy']}")
            print(f"{'c':>3} {'path':<11} {'ok rps':>9} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'max ms':>8} {'failed':>6}")
        for name in ("direct", "nginx", "passthrough", "gateway"):
            x = r[name]
            if x is None:
                continue
            print(f"{r['concurrency']:>3} {name:<11} {x['ok_rps']:>9.0f} {x['p50_ms']:>8.2f} "
                  f"{x['p99_ms']:>8.2f} {x['max_ms']:>8.2f} {x['failed']:>6}")
        print(f"{r['concurrency']:>3} cpu         gateway {r['gateway_cpu_ms_per_request']:.3f} "
              f"ms/request, passthrough {r['passthrough_cpu_ms_per_request']:.3f}, backend "
              f"{r['backend_cpu_ms_per_request']:.3f}")
        print(f"{r['concurrency']:>3} floor       passthrough reaches "
              f"{r['passthrough_ratio']:.2f}x direct (no checks at all: the most any proxy "
              "process in Python reaches here)")
        if r["nginx"] is None:
            print(f"{r['concurrency']:>3} nginx       not measured: Debian's nginx is not "
                  "installed (apt-get install -y nginx-light)")
        else:
            print(f"{r['concurrency']:>3} nginx       reaches {r['nginx_ratio']:.2f}x direct at "
                  f"{r['nginx_cpu_ms_per_request']:.3f} ms CPU/request; the gateway reaches "
                  f"{r['gateway_vs_nginx']:.2f}x nginx")
        verdict = "meets goals" if _meets(r) else "MISSES goals"
        print(f"{r['concurrency']:>3} added       p50 +{r['added_p50_ms']:.2f} ms "
              f"(<= {GOAL_P50_MS}), p99 +{r['added_p99_ms']:.2f} ms (<= {GOAL_P99_MS}), "
              f"throughput {r['throughput_ratio']:.2f}x direct (>= {GOAL_RATIO}): {verdict}")


if __name__ == "__main__":
    raise SystemExit(main())
