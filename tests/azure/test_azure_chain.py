"""The chain on Azure through the real services, in-process: the panel app with the azure
backend on the fake transport, the services the jobs run (deploy, publish, rotate keys, a
second version blue/green, an API rollback), a client scoring through the fake API
Management gateway between the steps, and no key in any log line.

Provisioning runs through the provision job's service on an empty subscription; training has
its own tests (test_azure_training): the registered versions are seeded as it leaves them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tests.azure import fakes_apim
from tests.azure import fakes_endpoints as fe
from tests.azure.fake_azure import FakeAzure, Recorded

MODEL = "german-credit"
ENDPOINT = "modelgate-ws-staging"
SERVICE = "/service/modelgate-apim-test"


class _Job:
    """What a job gives the services (a JobContext-like reporter)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.lines: list[str] = []
        self.steps: list[tuple[int, str]] = []

    def progress(self, percent: int, step: str) -> None:
        self.steps.append((percent, step))

    def log(self, message: str, *, level: str = "INFO") -> None:
        self.lines.append(message)

    def check_cancelled(self) -> None:
        pass


class _Registry:
    """The MLflow registry's alias call (the deploy sets it last; its failure is logged)."""

    def __init__(self) -> None:
        self.aliases: list[tuple[str, str, str]] = []

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases.append((name, alias, version))

    def get_version(self, name: str, version: str) -> Any:
        assert (name, version) in {(MODEL, "3"), (MODEL, "4")}
        return object()


@pytest.fixture
def panel(tmp_path: Path, sqlite_url: str) -> Any:
    from tests.conftest import build_app

    return build_app(tmp_path / "panel", sqlite_url, "redis://127.0.0.1:1/0")


def _client_call(fake: FakeAzure, path: str = "staging/credit-risk") -> tuple[int, Any]:
    """A caller's request through API Management with a token: (status, body)."""
    url = f"https://{fe.APIM}.azure-api.net/{path}/score"
    answer = fake.answer(Recorded("POST", url, f"/{path}/score", {},
                                  {"authorization": "Bearer client-token",
                                   "content-type": "application/json"},
                                  {"data": [{"Age": 30}]}))
    return answer.status, answer.body


def _run(kind: str, params: dict[str, Any], reporters: list[_Job]) -> dict[str, Any]:
    """A job of ``kind`` as a worker runs it: its row, then the kind's own function (its
    reporter kept in ``reporters``)."""
    from app.services import jobs
    from app.services.apis import run_publish
    from app.services.kinds import JobKind
    from app.services.rollout import run_deploy, run_rotate_keys

    job = jobs._record(JobKind(kind), params, "alice", None)
    task = {"deploy": run_deploy, "publish": run_publish, "rotate-keys": run_rotate_keys}[kind]
    reporters.append(_Job(job.id))
    result: dict[str, Any] = task(reporters[-1], params)
    return result


def _provisioned(fake: FakeAzure, tmp_path: Path, panel: Any,
                 monkeypatch: pytest.MonkeyPatch) -> Any:
    """The provision job's service on the azure backend, from an empty subscription (the
    panel reads the same pipeline file as the backend)."""
    import yaml

    from app.backends.azure import AzureBackend
    from app.pipeline_config import parse_pipeline_config
    from app.services import jobs
    from app.services.kinds import JobKind
    from app.services.provisioning import run_provision
    from tests.azure.conftest import azure_pipeline_settings
    from tests.azure.fake_azure import FakeCredential

    settings = azure_pipeline_settings(key_grace_seconds=0)
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    monkeypatch.setenv("MODELGATE_PIPELINE_CONFIG", str(path))
    backend = AzureBackend.for_pipeline(
        parse_pipeline_config(settings), credential=FakeCredential(), home=tmp_path / "home",
        client_kwargs={"transport": fake.transport(), "polling_interval": 0})
    panel.extensions["modelgate.backend"] = backend
    with panel.app_context():
        job = jobs._record(JobKind.PROVISION, {}, "alice", None)
        result = run_provision(_Job(job.id), {})
    assert result["backend"] == "azure" and "environment:staging" in result["created"]
    assert not fake.calls("PUT", "/onlineEndpoints/")  # endpoints come with the first deploy
    assert fake.get(fakes_apim.service_id(name=fe.APIM)) is not None
    return backend


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    lines = []
    for record in caplog.records:
        lines.append(record.getMessage())
        if record.exc_text:
            lines.append(record.exc_text)
    return "\n".join(lines)


def test_deploy_publish_score_rotate_blue_green_and_api_rollback_on_azure(
        fake_azure: FakeAzure, tmp_path: Path, panel: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from app.services import apis, deployments

    caplog.set_level(logging.DEBUG)
    backend = _provisioned(fake_azure, tmp_path, panel, monkeypatch)
    for version in ("3", "4"):
        fe.register_model(fake_azure, MODEL, version)
    # Azure ML marks a deployment ready once its instances pass the readiness probe: here,
    # as soon as the deployment PUT answered (the fake's own clock is the test's).
    real_create = backend.create_slot

    def create_and_become_ready(spec: Any, progress: Any) -> Any:
        info = real_create(spec, progress)
        fe.mark_ready(fake_azure, ENDPOINT, spec.ref.slot)
        return info

    monkeypatch.setattr(backend, "create_slot", create_and_become_ready)
    registry = _Registry()
    monkeypatch.setattr("app.services.models.registry", lambda: registry)
    panel.config.update(DEPLOY_DRAIN_SECONDS=0.01, KEY_SWITCH_GRACE_SECONDS=0)
    seen_keys: set[str] = set()
    reporters: list[_Job] = []

    with panel.app_context():
        # ---- first deploy of staging on an empty API Management: smoke test via the smoke API
        start = len(fake_azure.requests)
        first = _run("deploy", {"environment": "staging", "version": "3"}, reporters)
        seen_keys.update(fe.endpoint_keys(fake_azure, ENDPOINT).values())
        assert first["slot"] == "blue" and first["model"]["version"] == "3"
        sent = fake_azure.requests[start:]
        urls = [r.url.split("?")[0] for r in sent]
        smoke = f"https://{fe.APIM}.azure-api.net/smoke/staging/credit-risk/score"
        assert urls.count(smoke) == 2  # without a token (401), then with the CI's token
        # the order the services keep: deployment, smoke API, smoke test, the switch
        put_blue = next(i for i, u in enumerate(urls) if u.endswith("/deployments/blue")
                        and sent[i].method == "PUT")
        put_smoke_api = next(i for i, u in enumerate(urls)
                             if u.endswith("/apis/credit-risk-staging-smoke"))
        first_smoke = urls.index(smoke)
        switch = max(i for i, r in enumerate(sent) if r.method == "PUT"
                     and urls[i].endswith(f"/onlineEndpoints/{ENDPOINT}"))
        assert put_smoke_api < first_smoke < switch and put_blue < first_smoke
        assert sent[switch].body["properties"]["traffic"] == {"blue": 100}
        assert _client_call(fake_azure)[0] == 404  # nothing published yet

        # ---- publish staging (the publish job's service)
        policy = apis.render_policy(panel.config, "staging")
        published = _run("publish", {"environment": "staging"}, reporters)
        assert published["revision"] == 1
        row1 = apis.current("credit-risk-staging")
        assert row1 is not None and row1.revision == 1
        [put_policy] = fake_azure.calls(
            "PUT", f"{SERVICE}/apis/credit-risk-staging(;rev=|%3Brev%3D)1/policies/policy$")
        assert put_policy.body["properties"] == {"format": "rawxml", "value": policy}
        status, body = _client_call(fake_azure)
        assert status == 200 and body["model"]["version"] == "3"
        # the published API is listed; the smoke API is the backend's own
        assert {r.api_name for r in apis.list_revisions()} == {"credit-risk-staging"}

        # ---- rotate keys: a client calls at every grace, never refused
        before = fe.endpoint_keys(fake_azure, ENDPOINT)
        statuses: list[int] = []
        monkeypatch.setattr("app.services.rollout.time.sleep",
                            lambda seconds: statuses.append(_client_call(fake_azure)[0]))
        _run("rotate-keys", {"environment": "staging"}, reporters)
        after = fe.endpoint_keys(fake_azure, ENDPOINT)
        seen_keys.update(after.values())
        assert after["primaryKey"] != before["primaryKey"]
        assert after["secondaryKey"] != before["secondaryKey"]
        assert statuses and set(statuses) == {200}
        assert fakes_apim.named_value(fake_azure, "staging-backend-key",
                                      name=fe.APIM) == after["primaryKey"]

        # ---- a second version blue/green: green takes the traffic, blue goes after the drain
        drained: list[int] = []
        monkeypatch.setattr(
            "app.services.rollout.time.sleep",
            lambda seconds: drained.append(_client_call(fake_azure)[0]))
        start = len(fake_azure.requests)
        second = _run("deploy", {"environment": "staging", "version": "4"}, reporters)
        assert second["slot"] == "green" and second["replaced"][0]["slot"] == "blue"
        assert drained == [200]  # during the drain the gateway answers (from green)
        sent = fake_azure.requests[start:]
        traffic = [r.body["properties"]["traffic"] for r in sent if r.method == "PUT"
                   and r.path.endswith(f"/onlineEndpoints/{ENDPOINT}")]
        assert traffic[-1] == {"green": 100}
        deletes = [i for i, r in enumerate(sent) if r.method == "DELETE"
                   and r.path.endswith("/deployments/blue")]
        switch = max(i for i, r in enumerate(sent) if r.method == "PUT"
                     and r.path.endswith(f"/onlineEndpoints/{ENDPOINT}"))
        assert deletes and deletes[0] > switch
        assert fake_azure.get(fe.deployment_id(ENDPOINT, "blue")) is None
        status, body = _client_call(fake_azure)
        assert status == 200 and body["model"]["version"] == "4"
        assert deployments.active("staging").model_version == "4"
        assert registry.aliases == [(MODEL, "staging", "3"), (MODEL, "staging", "4")]

        # ---- publish again, then roll the API back to revision 1 (a release of it)
        assert _run("publish", {"environment": "staging"}, reporters)["revision"] == 2
        releases_before = len(fake_azure.calls("PUT", r"/apis/credit-risk-staging/releases/"))
        back = apis.rollback(row1.id, "alice")
        assert back.revision == 1 and back.is_current
        [release] = fake_azure.calls("PUT", r"/apis/credit-risk-staging/releases/")[
            releases_before:]
        assert release.body["properties"]["apiId"].endswith("/apis/credit-risk-staging;rev=1")
        assert _client_call(fake_azure)[0] == 200

    texts = "\n".join([_logged(caplog), *(line for job in reporters for line in job.lines),
                       *(step for job in reporters for _, step in job.steps)])
    assert len(reporters) == 5
    assert "smoke test" in texts or "API Management" in texts  # the log was captured
    assert all(key not in texts for key in seen_keys)
