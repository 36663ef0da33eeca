"""The backend contract suite's fixtures: one harness per backend, every test runs on each.

A backend joins the suite by adding a Harness subclass and its name to HARNESSES: the harness
builds the backend and does, on the backend's own terms, what the tests need from outside it
(a registered model version, a running slot, what the gateway presents, a call through the
gateway). The tests themselves only call the Backend protocol.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from app.backends.base import Backend, SlotRef

MODEL = "german-credit"
SIGNATURE = {"name": MODEL, "version": "3", "classes": ["bad", "good"],
             "example": {"Age": 30, "Sex": "male"}}


class Harness:
    """What the contract tests need from outside the protocol, per backend."""

    name = "abstract"
    backend: Backend

    def prepare_version(self, version: str) -> None:
        """Make a model version available to create slots from."""
        raise NotImplementedError

    def run_slot(self, ref: SlotRef) -> None:
        """Make a created slot's replicas run and answer like the scoring service."""
        raise NotImplementedError

    def gateway_view(self, environment: str) -> tuple[str, str] | None:
        """(backend URL, key) the gateway presents for the environment, None if none."""
        raise NotImplementedError

    def log_call(self, api: str, environment: str, status: int, latency_ms: float,
                 when: dt.datetime) -> None:
        """Record one call through the gateway."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop whatever the harness started."""


# --------------------------------------------------------------------------- local


class _StubSlot:
    """A loopback slot like the scoring service: keys checked against the runtime's digests."""

    def __init__(self, keys_file: Path, version: str) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._answer(200 if self.path == "/health/ready" else 404, {})

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if not key or not stub.accepts(key):
                    self._answer(401, {"status": 401})
                    return
                self._answer(200, {"predictions": [{"label": "bad", "probabilities":
                                                    {"bad": 0.7, "good": 0.3}}],
                                   "model": {"name": MODEL, "version": version}})

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.keys_file = keys_file
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepts(self, key: str) -> bool:
        digests = json.loads(self.keys_file.read_text())
        digest = hashlib.sha256(key.encode()).hexdigest()
        return digest in (digests["primary_sha256"], digests["secondary_sha256"])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LocalHarness(Harness):
    """The local backend in a temporary MODELGATE_HOME; the runtime is played by stub slots."""

    name = "local"

    def __init__(self, home: Path) -> None:
        from app.backends.local import LocalBackend

        self.home = home
        self.backend = LocalBackend(home)
        self.stubs: dict[str, _StubSlot] = {}

    def prepare_version(self, version: str) -> None:
        from app.backends.local.slots import model_dir

        package = model_dir(self.home, MODEL, version)
        package.mkdir(parents=True, exist_ok=True)
        (package / "signature.json").write_text(json.dumps({**SIGNATURE, "version": version}))
        (package / "model.joblib").write_bytes(b"not read by the stub")

    def run_slot(self, ref: SlotRef) -> None:
        from app.backends.local.slots import keys_file, status_file

        stub = _StubSlot(keys_file(self.home, ref.id), ref.model_version)
        self.stubs[ref.id] = stub
        path = status_file(self.home)
        path.parent.mkdir(parents=True, exist_ok=True)
        status = json.loads(path.read_text()) if path.exists() else {"deployments": {}}
        status["updated_at"] = dt.datetime.now(dt.UTC).isoformat()
        status["deployments"][ref.id] = {"port": stub.port, "replicas_ready": 1,
                                         "replicas": [{"restarts": 0}]}
        path.write_text(json.dumps(status))

    def gateway_view(self, environment: str) -> tuple[str, str] | None:
        from app.backends.local import gateway
        from app.keyfiles import load_or_create_fernet

        named = gateway.read(self.home)["named_values"]
        url = named.get(gateway.backend_url_name(environment))
        key = named.get(gateway.backend_key_name(environment))
        if url is None or key is None:
            return None
        fernet = load_or_create_fernet(self.home / "gateway" / "secret.key")
        return str(url["value"]), fernet.decrypt(key["value"].encode()).decode()

    def log_call(self, api: str, environment: str, status: int, latency_ms: float,
                 when: dt.datetime) -> None:
        from app.backends.local.request_log import request_log_path

        path = request_log_path(self.home)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as out:
            out.write(json.dumps({"time": when.isoformat(), "api": api,
                                  "environment": environment, "status": status,
                                  "latency_ms": latency_ms, "model_version": "3"}) + "\n")

    def close(self) -> None:
        for stub in self.stubs.values():
            stub.stop()


# A backend joins the contract suite here: its name and how to build its harness.
HARNESSES: dict[str, Any] = {
    "local": lambda tmp_path: LocalHarness(tmp_path / "home"),
}


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    built: Harness = HARNESSES[request.param](tmp_path)
    yield built
    built.close()


# --------------------------------------------------------------------------- report

_PASSED: Counter[str] = Counter()
_RAN: Counter[str] = Counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" or "tests/backends/contract" not in report.nodeid:
        return
    backend = report.nodeid.rsplit("[", 1)[-1].rstrip("]").split("-")[0]
    _RAN[backend] += 1
    if report.passed:
        _PASSED[backend] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RAN:
        return
    terminalreporter.section("backend contract")
    for backend in sorted(_RAN):
        terminalreporter.write_line(f"{backend}: {_PASSED[backend]} of {_RAN[backend]} "
                                    "contract tests passed")
