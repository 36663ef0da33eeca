"""Keys on Azure ML: the endpoint's two keys, regenerated through the SDK's own request and
checked for a change, never the key API Management presents, the grace before the primary;
the services' rotation on the azure backend (no 401), and no key in any log line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from app.backends.base import (
    BackendError,
    KeyRole,
    ResourceNotFound,
    SlotInfo,
    SlotRef,
    SlotSpec,
    SmokeTestFailed,
)
from tests.azure import fakes_endpoints as fe
from tests.azure.fake_azure import FakeAzure, Recorded

MODEL = "german-credit"
ENDPOINT = "modelgate-ws-staging"
SDK_ENDPOINTS_API = "2022-02-01-preview"
DEPLOYMENTS_API = "2023-04-01-preview"
GATEWAY = f"https://{fe.APIM}.azure-api.net/staging/credit-risk/score"


def _ref(slot_id: str = "slot0001", colour: str = "blue", version: str = "3") -> SlotRef:
    return SlotRef(slot_id, "staging", "staging", colour, MODEL, version)


def _ready(backend: Any, fake: FakeAzure, ref: SlotRef) -> SlotInfo:
    fe.register_model(fake, MODEL, ref.model_version)
    backend.create_slot(SlotSpec(ref, 1, {"cpu": 0.25, "memory_mb": 512}), lambda p, s: None)
    fe.mark_ready(fake, ENDPOINT, ref.slot)
    info: SlotInfo = backend.wait_ready(ref, 1, 5, lambda: None)
    return info


def _serving(backend: Any, fake: FakeAzure, ref: SlotRef) -> SlotInfo:
    _ready(backend, fake, ref)
    info: SlotInfo = backend.switch_traffic("staging", ref)
    fe.publish_api(fake, fe.APIM, "credit-risk-staging", "staging/credit-risk", "staging")
    return info


def _through_gateway(fake: FakeAzure) -> int:
    """A client's call through API Management (with a token): the status it gets."""
    request = Recorded("POST", GATEWAY, "/staging/credit-risk/score", {},
                       {"authorization": "Bearer client-token",
                        "content-type": "application/json"}, {"data": [{"Age": 30}]})
    return fake.answer(request).status


def _presented(fake: FakeAzure) -> str | None:
    return fe.named_value(fake, fe.APIM, "staging-backend-key")


# --------------------------------------------------------------------------- primitives


def test_the_keys_are_the_endpoints_and_every_slot_of_it_shares_them(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    _serving(backend, fake_azure, _ref("slotblu1"))
    _ready(backend, fake_azure, _ref("slotgrn1", "green", "4"))
    blue = backend.slot_keys(_ref("slotblu1"))
    green = backend.slot_keys(_ref("slotgrn1", "green", "4"))
    azure = fe.endpoint_keys(fake_azure, ENDPOINT)
    assert blue == green
    assert (blue.primary, blue.secondary) == (azure["primaryKey"], azure["secondaryKey"])
    assert blue.primary not in repr(blue) and blue.secondary not in str(blue)
    listed = fake_azure.calls("POST", f"/onlineEndpoints/{ENDPOINT}/listKeys$")
    assert listed and {r.api_version for r in listed} == {DEPLOYMENTS_API}
    with pytest.raises(ResourceNotFound, match="slot slotxxxx is not deployed"):
        backend.slot_keys(_ref("slotxxxx"))


def test_regenerating_the_secondary_sends_the_sdks_request_and_keeps_the_primary(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    _serving(backend, fake_azure, _ref())
    before = fe.endpoint_keys(fake_azure, ENDPOINT)
    fresh = backend.regenerate_key(_ref(), KeyRole.SECONDARY)
    [sent] = fake_azure.calls("POST", f"/onlineEndpoints/{ENDPOINT}/regenerateKeys$")
    assert sent.api_version == SDK_ENDPOINTS_API
    # azure-ai-ml sends the key's current value along
    assert sent.body == {"keyType": "Secondary", "keyValue": before["secondaryKey"]}
    after = fe.endpoint_keys(fake_azure, ENDPOINT)
    assert fresh == after["secondaryKey"] != before["secondaryKey"]
    assert after["primaryKey"] == before["primaryKey"]
    assert backend.check_key(_ref(), fresh) is True
    assert backend.check_key(_ref(), before["secondaryKey"]) is False
    assert backend.check_key(_ref(), before["primaryKey"]) is True
    assert _through_gateway(fake_azure) == 200


def test_a_key_azure_did_not_change_fails_loudly_without_showing_it(
        fake_azure: FakeAzure, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    backend = fe.slots_backend(fake_azure, tmp_path)
    _serving(backend, fake_azure, _ref())
    keys = fe.endpoint_keys(fake_azure, ENDPOINT)
    fe.keep_keys(fake_azure)
    with pytest.raises(BackendError) as caught:
        backend.regenerate_key(_ref(), KeyRole.SECONDARY)
    message = str(caught.value)
    assert message.startswith("Azure ML did not change the secondary key of endpoint "
                              f"{ENDPOINT}")
    assert "the primary key still works" in message
    assert fe.endpoint_keys(fake_azure, ENDPOINT) == keys
    assert all(k not in message for k in keys.values())
    assert all(k not in _logged(caplog) for k in keys.values())


def test_the_key_api_management_presents_is_never_regenerated(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path)
    _serving(backend, fake_azure, _ref())
    assert _presented(fake_azure) == fe.endpoint_keys(fake_azure, ENDPOINT)["primaryKey"]
    with pytest.raises(BackendError, match="API Management presents the primary key; point it "
                                           "at the secondary key first"):
        backend.regenerate_key(_ref(), KeyRole.PRIMARY)
    assert fake_azure.calls("POST", "/regenerateKeys$") == []
    assert _through_gateway(fake_azure) == 200


def test_the_primary_is_regenerated_only_after_the_grace_for_api_management(
        fake_azure: FakeAzure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path, key_grace_seconds=600)
    _serving(backend, fake_azure, _ref())
    # API Management moved to the secondary (the services' gateway_use_key)
    fe.set_named_value(fake_azure, fe.APIM, "staging-backend-key",
                       fe.endpoint_keys(fake_azure, ENDPOINT)["secondaryKey"])
    waits: list[tuple[float, int]] = []
    monkeypatch.setattr("app.backends.azure.endpoints.time.sleep",
                        lambda seconds: waits.append((seconds, len(fake_azure.requests))))
    backend.regenerate_key(_ref(), KeyRole.PRIMARY)
    regenerate = fake_azure.requests.index(fake_azure.calls("POST", "/regenerateKeys$")[0])
    assert [seconds for seconds, _ in waits] == [600.0]
    assert waits[0][1] <= regenerate  # waited before Azure ML was asked


def test_check_key_direct_tries_the_key_on_the_scoring_uri(
        fake_azure: FakeAzure, tmp_path: Path) -> None:
    backend = fe.slots_backend(fake_azure, tmp_path, smoke_test_via="direct")
    info = _ready(backend, fake_azure, _ref())
    keys = fe.endpoint_keys(fake_azure, ENDPOINT)
    before = len(fake_azure.requests)
    assert backend.check_key(_ref(), keys["secondaryKey"]) is True
    assert backend.check_key(_ref(), "x" * 43) is False
    sent = [r for r in fake_azure.requests[before:] if r.url == info.scoring_uri]
    assert [r.headers["authorization"] for r in sent] == [f"Bearer {keys['secondaryKey']}",
                                                          f"Bearer {'x' * 43}"]
    assert sent[0].body == {"data": [{"Age": 30, "Sex": "male", "Credit amount": 1000}]}
    backend.retire_slot(_ref())
    with pytest.raises(SmokeTestFailed, match="not deployed"):
        backend.check_key(_ref(), keys["primaryKey"])


def test_no_key_in_any_log_line_of_a_slots_life(
        fake_azure: FakeAzure, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    backend = fe.slots_backend(fake_azure, tmp_path)
    _serving(backend, fake_azure, _ref("slotblu1"))
    green = _ref("slotgrn1", "green", "4")
    _ready(backend, fake_azure, green)
    seen = {*fe.endpoint_keys(fake_azure, ENDPOINT).values()}
    keys = backend.slot_keys(green)
    backend.smoke_test(green, keys.primary)
    backend.switch_traffic("staging", green)
    seen.add(backend.regenerate_key(green, KeyRole.SECONDARY))
    backend.check_key(green, keys.secondary)
    backend.retire_slot(_ref("slotblu1"))
    texts = _logged(caplog)
    assert "regenerated the secondary key" in texts  # the log was captured at all
    assert all(secret not in texts for secret in seen)


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    lines = []
    for record in caplog.records:
        lines.append(record.getMessage())
        if record.exc_text:
            lines.append(record.exc_text)
    return "\n".join(lines)


# --------------------------------------------------------------------------- the services


class _Job:
    """What a job gives the rotation service."""

    job_id = "job-rotate-1"

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.steps: list[tuple[int, str]] = []

    def progress(self, percent: int, step: str) -> None:
        self.steps.append((percent, step))

    def log(self, message: str, *, level: str = "INFO") -> None:
        self.lines.append(message)

    def check_cancelled(self) -> None:
        pass


@pytest.fixture
def panel(tmp_path: Path, sqlite_url: str) -> Any:
    from tests.conftest import build_app

    return build_app(tmp_path / "panel", sqlite_url, "redis://127.0.0.1:1/0")


def _active_row(panel: Any, backend: Any, info: SlotInfo) -> None:
    from app.services import deployments

    ref = info.ref
    panel.extensions["modelgate.backend"] = backend
    deployments.create_slot(environment=ref.environment, model_name=ref.model_name,
                            model_version=ref.model_version, replicas=1, resources={},
                            job_id="job-deploy-1", slot_id=ref.id, slot=ref.slot, info=info)
    deployments.activate(ref.id)


def test_rotation_with_a_key_azure_did_not_change_stops_and_the_gateway_keeps_working(
        fake_azure: FakeAzure, tmp_path: Path, panel: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    from app.errors import AppError
    from app.services.rollout import RolloutSettings, rotate_keys

    caplog.set_level(logging.DEBUG)
    backend = fe.slots_backend(fake_azure, tmp_path)
    info = _serving(backend, fake_azure, _ref())
    keys = fe.endpoint_keys(fake_azure, ENDPOINT)
    fe.keep_keys(fake_azure)
    job = _Job()
    with panel.app_context():
        _active_row(panel, backend, info)
        with pytest.raises(AppError) as caught:
            rotate_keys(job, "staging", "alice", RolloutSettings(key_switch_grace_seconds=0))
    assert str(caught.value.message).startswith(
        "key rotation of staging stopped: Azure ML did not change the secondary key")
    assert fe.endpoint_keys(fake_azure, ENDPOINT) == keys
    assert _presented(fake_azure) == keys["primaryKey"]  # a key the endpoint accepts
    assert _through_gateway(fake_azure) == 200
    texts = "\n".join([str(caught.value.message), *job.lines, *(s for _, s in job.steps),
                       _logged(caplog)])
    assert all(secret not in texts for secret in keys.values())


def test_rotation_moves_the_gateway_to_each_new_key_with_no_refused_call(
        fake_azure: FakeAzure, tmp_path: Path, panel: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole order on Azure: needs API Management's gateway_use_key (apim.py)."""
    pytest.importorskip("app.backends.azure.apim", reason="API Management's module (apim.py) "
                                                          "is not on this branch yet")
    from app.services.rollout import RolloutSettings, rotate_keys

    backend = fe.slots_backend(fake_azure, tmp_path)
    info = _serving(backend, fake_azure, _ref())
    before = fe.endpoint_keys(fake_azure, ENDPOINT)
    statuses: list[int] = []
    # at every grace the service waits, a client calls through API Management
    monkeypatch.setattr("app.services.rollout.time.sleep",
                        lambda seconds: statuses.append(_through_gateway(fake_azure)))
    with panel.app_context():
        _active_row(panel, backend, info)
        result = rotate_keys(_Job(), "staging", "alice",
                             RolloutSettings(key_switch_grace_seconds=0))
    after = fe.endpoint_keys(fake_azure, ENDPOINT)
    assert result["rotated"] == ["secondary", "primary"]
    assert after["primaryKey"] != before["primaryKey"]
    assert after["secondaryKey"] != before["secondaryKey"]
    assert _presented(fake_azure) == after["primaryKey"]
    assert len(statuses) == 3 and set(statuses) == {200}
