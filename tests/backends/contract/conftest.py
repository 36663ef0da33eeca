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

    def unavailable(self, test: str) -> str | None:
        """Why the backend cannot run ``test`` here (None: it can)."""
        return None


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


# --------------------------------------------------------------------------- azure


class AzureHarness(Harness):
    """The azure backend on the fake Azure transport (tests/azure/fake_azure.py with every
    tests/azure/fakes_*.py): Azure ML, its endpoints and API Management answering the SDKs'
    own requests like the REST APIs."""

    name = "azure"
    # Tests that also exercise the parts of the azure backend other modules own: they run
    # once those modules are there.
    NEEDS = {
        "test_provision_twice_creates_once_and_reports_monotonic_progress": "provisioning",
        "test_capabilities_and_health": "provisioning",
        "test_publishing_a_revision_twice_keeps_one_and_making_it_current_is_idempotent":
            "apim",
        "test_errors_come_only_from_the_backend_error_family": "apim",
        "test_regenerating_one_key_keeps_the_other": "apim",
        "test_traffic_returns_the_calls_since_a_moment": "apim",
    }

    def __init__(self, home: Path) -> None:
        from tests.azure import fakes_endpoints
        from tests.azure.fake_azure import FakeAzure

        self.fakes = fakes_endpoints
        self.fake = FakeAzure().install_areas()
        self.backend = fakes_endpoints.slots_backend(self.fake, home)

    def unavailable(self, test: str) -> str | None:
        import importlib.util

        module = self.NEEDS.get(test)
        if module and importlib.util.find_spec(f"app.backends.azure.{module}") is None:
            return f"app.backends.azure.{module} is not part of this version yet"
        return None

    def prepare_version(self, version: str) -> None:
        """A registered model version carrying the signature (training registers it)."""
        self.fakes.register_model(self.fake, MODEL, version,
                                  signature={**SIGNATURE, "version": version})

    def run_slot(self, ref: SlotRef) -> None:
        """The deployment's instances passed their readiness probe; its scorer answers."""
        from app.backends.azure.endpoint_names import endpoint_name

        self.fakes.mark_ready(self.fake, endpoint_name(self.backend.ctx, ref.environment),
                              ref.slot)

    def gateway_view(self, environment: str) -> tuple[str, str] | None:
        """API Management's named values: the backend URL and the key it presents."""
        url = self.fakes.named_value(self.fake, self.fakes.APIM, f"{environment}-backend-url")
        key = self.fakes.named_value(self.fake, self.fakes.APIM, f"{environment}-backend-key")
        return None if url is None or key is None else (url, key)

    def log_call(self, api: str, environment: str, status: int, latency_ms: float,
                 when: dt.datetime) -> None:
        """A record in API Management's request reports (the API names the environment)."""
        from tests.azure import fakes_apim

        fakes_apim.report_call(self.fake, api, status, latency_ms, when)


def _azure(tmp_path: Path) -> Harness:
    pytest.importorskip("azure.ai.ml", reason="pip install -e '.[azure]' runs the azure "
                                              "backend's contract tests")
    return AzureHarness(tmp_path / "home")


# A backend joins the contract suite here: its name and how to build its harness.
HARNESSES: dict[str, Any] = {
    "local": lambda tmp_path: LocalHarness(tmp_path / "home"),
    "azure": _azure,
}


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    built: Harness = HARNESSES[request.param](tmp_path)
    reason = built.unavailable(request.node.originalname)
    if reason:
        built.close()
        pytest.skip(reason)
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
