"""`modelgate up`: start the local stack on 127.0.0.1, keep it running, stop it cleanly.

Children run in their own sessions (so Ctrl-C reaches only the supervisor, which then stops
them in order) and die with the supervisor if it is killed (PR_SET_PDEATHSIG). A child that
exits has its whole process group ended (what it forked, e.g. Celery's embedded beat, would
otherwise live on beside its replacement) and is restarted with backoff. endpoints.json is
written once every service is ready and removed on stop.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from app.localstack.processes import die_with_parent, end_group, signal_group, wait_group_empty
from app.localstack.redis_server import RedisSpec, free_port, make_spec, wait_until_ours
from app.pki import ensure_tls

logger = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
STOP_GRACE = 10.0
RESTART_GRACE = 5.0
MAX_BACKOFF = 30.0


@dataclass
class Service:
    """A child process of the stack, how to tell it is ready, and its restart state."""

    name: str
    argv: list[str]
    ready: Callable[[subprocess.Popen[bytes]], bool]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    next_start: float = 0.0


class Stack:
    """The local stack: embedded Redis (unless MODELGATE_REDIS_URL), panel, worker, and more."""

    def __init__(self, home: Path, *, panel_port: int, issuer_port: int, gateway_port: int,
                 redis_url: str | None, out: Callable[[str], None] = print,
                 gateway_workers: int = 1) -> None:
        self.home = home
        self.out = out
        self.gateway_workers = gateway_workers
        self.ports = {"panel": panel_port or free_port(), "issuer": issuer_port or free_port(),
                      "gateway": gateway_port or free_port()}
        self.external_redis = redis_url
        self.redis: RedisSpec | None = None
        self.services: list[Service] = []
        self.stopping = False
        self.logs = home / "logs"
        self.run_dir = home / "run"

    # ------------------------------------------------------------------ life cycle

    def run(self) -> int:
        """Start everything, supervise until a signal, then stop everything; return exit code."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            self._prepare()
            self._start_all()
            if self.stopping:
                return 0
            self._write_endpoints()
            self._announce()
            self._supervise()
            return 0
        except StackError as exc:
            self.out(f"modelgate up: {exc}")
            return 1
        finally:
            self.stop()

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self.stopping:
            self.out("stopping…")
        self.stopping = True

    def _prepare(self) -> None:
        from app.config import ensure_instance_secret_key, load_config
        from app.migrate import upgrade

        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.run_dir.mkdir(exist_ok=True)
        (self.home / "endpoints.json").unlink(missing_ok=True)
        ensure_instance_secret_key(self.home)
        self.tls = ensure_tls(self.home)
        config = load_config({"HOME": str(self.home)})
        self.out(f"migrating the database ({_redact(config['DATABASE_URL'])})")
        upgrade(config["DATABASE_URL"])
        self._relocate_mlflow_store()
        if self.external_redis:
            redis_url = self.external_redis
        else:
            self.redis = make_spec(self.home)
            redis_url = self.redis.url
        self.child_env = {
            **os.environ,
            "MODELGATE_HOME": str(self.home),
            "MODELGATE_REDIS_URL": redis_url,
            "MODELGATE_ISSUER_URL": f"https://127.0.0.1:{self.ports['issuer']}/local",
            "MODELGATE_GATEWAY_URL": f"https://127.0.0.1:{self.ports['gateway']}",
            "MODELGATE_PANEL_URL": f"http://127.0.0.1:{self.ports['panel']}",
            "PYTHONUNBUFFERED": "1",
        }
        self._point_gateway_at_issuer(self.child_env["MODELGATE_ISSUER_URL"])
        self.services = self._plan()

    def _relocate_mlflow_store(self) -> None:
        """A home restored into another folder: MLflow's locations follow it (relocation)."""
        import sqlite3

        from app.backends.local.relocation import relocate

        try:
            moved = relocate(self.home)
        except sqlite3.Error as exc:
            raise StackError(f"mlflow/mlflow.db cannot be updated: {exc}") from None
        for relocation in moved:
            self.out(relocation.describe())

    def _point_gateway_at_issuer(self, issuer: str) -> None:
        """Set the gateway's ``issuer-url`` named value to this start's issuer URL."""
        from app.backends.local import gateway as gateway_config
        from app.gateway.config import ConfigError
        from app.gateway.policy import PolicyError

        try:
            adopted = gateway_config.set_issuer_url(self.home, issuer)
        except (ConfigError, PolicyError) as exc:
            raise StackError(f"gateway/config.json cannot be updated with the issuer URL: {exc}"
                             ) from None
        if adopted:
            self.out(f"published APIs now name the issuer by {{{{issuer-url}}}}: "
                     f"{', '.join(adopted)}")

    def _plan(self) -> list[Service]:
        """The children in start order."""
        py = [sys.executable, "-m", "app"]
        services: list[Service] = []
        if self.redis is not None:
            spec = self.redis
            services.append(Service("redis", spec.command(), self._redis_ready))
        issuer = f"https://127.0.0.1:{self.ports['issuer']}/local"
        services.append(Service("issuer", py + ["idp", "--port", str(self.ports["issuer"])],
                                _http_ready(issuer + "/health", verify=str(self.tls.ca_cert))))
        # The gateway needs only Redis (counters) and TLS; it fetches JWKS when called.
        gateway = f"https://127.0.0.1:{self.ports['gateway']}"
        # --workers always: the count `up` resolved wins over an inherited environment variable
        services.append(Service("gateway",
                                py + ["gateway", "--port", str(self.ports["gateway"]),
                                      "--workers", str(self.gateway_workers)],
                                _http_ready(gateway + "/health", verify=str(self.tls.ca_cert))))
        panel_url = f"http://127.0.0.1:{self.ports['panel']}/health"
        services.append(Service("panel", py + ["panel", "--port", str(self.ports["panel"])],
                                _http_ready(panel_url)))
        services.append(Service("worker", py + ["worker", "--beat"], self._worker_ready))
        services.append(Service("runtime", py + ["runtime"], self._runtime_ready))
        return services

    def _start_all(self) -> None:
        for service in self.services:
            if self.stopping:
                return
            self._spawn(service)
            self._wait_ready(service)

    def _spawn(self, service: Service) -> None:
        log = open(self.logs / f"{service.name}.log", "ab")  # noqa: SIM115 (owned by the child)
        env = {**self.child_env, **service.env}
        service.process = subprocess.Popen(
            service.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=str(self.home), start_new_session=True, preexec_fn=die_with_parent,
        )
        log.close()
        service.started_at = time.monotonic()
        logger.info("started %s (pid %s)", service.name, service.process.pid)

    def _wait_ready(self, service: Service) -> None:
        assert service.process is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and not self.stopping:
            if service.process.poll() is not None:
                raise StackError(f"{service.name} exited with code {service.process.returncode} "
                                 f"while starting; see {self.logs / (service.name + '.log')}")
            if service.ready(service.process):
                self.out(f"  {service.name:<8} ready")
                return
            time.sleep(0.1)
        if not self.stopping:
            raise StackError(f"{service.name} was not ready within {READY_TIMEOUT:.0f} s; "
                             f"see {self.logs / (service.name + '.log')}")

    def _supervise(self) -> None:
        """Restart children that die, with exponential backoff, until asked to stop."""
        while not self.stopping:
            self._supervise_once()
            time.sleep(0.2)

    def _supervise_once(self) -> None:
        """One supervision pass: end the group of each exited child, restart those due."""
        for service in self.services:
            proc = service.process
            if proc is None or proc.poll() is None or self.stopping:
                continue
            if service.next_start == 0.0:
                # The leader is gone, but what it forked is still in its group.
                if not end_group(proc.pid, grace=RESTART_GRACE):
                    self.out(f"{service.name}: some of its processes would not die")
                now = time.monotonic()
                uptime = now - service.started_at
                if uptime > 30:
                    service.restarts = 0
                delay = min(MAX_BACKOFF, 0.5 * 2 ** service.restarts)
                service.next_start = now + delay
                self.out(f"{service.name} exited with code {proc.returncode}; "
                         f"restarting in {delay:.1f} s")
            elif time.monotonic() >= service.next_start:
                service.restarts += 1
                service.next_start = 0.0
                self._spawn(service)

    def stop(self) -> None:
        """Stop children in reverse order: SIGTERM to each process group, then SIGKILL.

        Returns once every process of every child's group is gone (a child's leader may
        already be dead while what it forked lives on in its group).
        """
        self.stopping = True
        (self.home / "endpoints.json").unlink(missing_ok=True)
        started = [s for s in reversed(self.services) if s.process is not None]
        for service in started:
            assert service.process is not None
            signal_group(service.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for service in started:
            assert service.process is not None
            pgid = service.process.pid
            if not wait_group_empty(pgid, max(0.1, deadline - time.monotonic())):
                self.out(f"{service.name} did not stop in {STOP_GRACE:.0f} s; killing it")
            # Kill stragglers in the group too (pool children, gunicorn workers, beat).
            if not end_group(pgid, grace=0.0):
                self.out(f"{service.name}: some of its processes would not die")
            service.process.poll()

    # ------------------------------------------------------------------ readiness

    def _redis_ready(self, process: subprocess.Popen[bytes]) -> bool:
        assert self.redis is not None
        try:
            wait_until_ours(self.redis, process, timeout=0.5)
            return True
        except RuntimeError as exc:
            if "another Redis" in str(exc) or process.poll() is not None:
                raise StackError(str(exc)) from exc
            return False

    def _worker_ready(self, process: subprocess.Popen[bytes]) -> bool:
        return (self.run_dir / f"worker.{process.pid}.ready").exists()

    def _runtime_ready(self, process: subprocess.Popen[bytes]) -> bool:
        # The runtime writes its pid once every recorded deployment has been restored.
        try:
            return (self.run_dir / "runtime.ready").read_text().strip() == str(process.pid)
        except OSError:
            return False

    # ------------------------------------------------------------------ endpoints

    def endpoints(self) -> dict[str, str]:
        """The endpoints.json document (docs/internal-contracts.md); never includes a password."""
        redis_public = self.redis.public_url if self.redis else _redact(self.external_redis or "")
        return {
            "panel": f"http://127.0.0.1:{self.ports['panel']}",
            "issuer": f"https://127.0.0.1:{self.ports['issuer']}/local",
            "gateway": f"https://127.0.0.1:{self.ports['gateway']}",
            "ca_bundle": str(self.home / "tls" / "ca.pem"),
            "redis": redis_public,
        }

    def _write_endpoints(self) -> None:
        path = self.home / "endpoints.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.endpoints(), indent=2) + "\n")
        os.replace(tmp, path)

    def _announce(self) -> None:
        ep = self.endpoints()
        self.out("modelgate is up:")
        for name in ("panel", "issuer", "gateway"):
            extra = (f" ({self.gateway_workers} processes)"
                     if name == "gateway" and self.gateway_workers > 1 else "")
            self.out(f"  {name:<8} {ep[name]}{extra}")
        self.out(f"  state    {self.home}")
        self.out("Press Ctrl-C to stop.")


class StackError(Exception):
    """The stack could not start; the message says which part and where its log is."""


def _http_ready(url: str, verify: str | bool = True) -> Callable[[subprocess.Popen[bytes]], bool]:
    def ready(process: subprocess.Popen[bytes]) -> bool:
        try:
            return requests.get(url, timeout=1, verify=verify).status_code == 200
        except requests.RequestException:
            return False
    return ready


def _redact(url: str) -> str:
    """Hide the password in a URL."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user + ':***' if user else ':***'}@{host}"
