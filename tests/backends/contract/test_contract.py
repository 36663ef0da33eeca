"""The Backend contract, run against every backend fixture (conftest.HARNESSES)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import pytest

from app.backends.base import (
    ApiSpec,
    BackendError,
    KeyRole,
    ProvisionSpec,
    ResourceNotFound,
    SlotNotReady,
    SlotRef,
    SlotSpec,
)
from tests.backends.contract.conftest import MODEL, Harness


def _ref(slot_id: str = "slot0001", environment: str = "staging", colour: str = "blue",
         version: str = "3") -> SlotRef:
    return SlotRef(slot_id, environment, environment, colour, MODEL, version)


class Progress:
    """Records progress calls; raises once told to cancel."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []
        self.cancel = False

    def __call__(self, percent: int, step: str) -> None:
        self.calls.append((percent, step))
        if self.cancel:
            raise _Cancelled()

    def monotonic(self) -> bool:
        values = [p for p, _ in self.calls]
        return values == sorted(values) and all(0 <= p <= 100 for p in values)


class _Cancelled(Exception):
    """Not a BackendError: a backend must let the caller's exception through."""


def _running_slot(harness: Harness, slot_id: str = "slot0001", colour: str = "blue",
                  version: str = "3") -> SlotRef:
    ref = _ref(slot_id, colour=colour, version=version)
    harness.prepare_version(version)
    harness.backend.create_slot(SlotSpec(ref, replicas=1), Progress())
    harness.run_slot(ref)
    harness.backend.wait_ready(ref, 1, 10, lambda: None)
    return ref


# --------------------------------------------------------------------------- idempotency


def test_provision_twice_creates_once_and_reports_monotonic_progress(harness: Harness) -> None:
    from app.pipeline_config import DEFAULT_PATH, load_pipeline_config

    config = load_pipeline_config(DEFAULT_PATH)
    spec = ProvisionSpec(config.workspace.name, config.environment_names, config.to_dict())
    first_progress, second_progress = Progress(), Progress()
    first = harness.backend.provision(spec, first_progress)
    second = harness.backend.provision(spec, second_progress)
    assert first.created and not second.created
    assert set(second.existing) >= set(first.created)
    assert first_progress.calls and first_progress.monotonic() and second_progress.monotonic()


def test_create_slot_twice_is_one_slot_with_the_same_keys(harness: Harness) -> None:
    harness.prepare_version("3")
    ref = _ref()
    progress = Progress()
    first = harness.backend.create_slot(SlotSpec(ref, replicas=1), progress)
    keys = harness.backend.slot_keys(ref)
    second = harness.backend.create_slot(SlotSpec(ref, replicas=1), Progress())
    assert first == second and first.ref == ref
    assert harness.backend.slot_keys(ref) == keys
    assert progress.monotonic()


def test_publishing_a_revision_twice_keeps_one_and_making_it_current_is_idempotent(
        harness: Harness) -> None:
    ref = _running_slot(harness)
    harness.backend.switch_traffic("staging", ref)
    spec = ApiSpec("credit-risk-staging", "staging/credit-risk", "staging", 1, "<policies/>",
                   rules={"anonymous": True})  # no token check: the pipeline file allows it
    assert harness.backend.publish_revision(spec) == harness.backend.publish_revision(spec)
    first = harness.backend.make_revision_current(spec.name, 1)
    assert first == harness.backend.make_revision_current(spec.name, 1)
    assert first.is_current and first.revision == 1


def test_switching_to_the_serving_slot_again_changes_nothing(harness: Harness) -> None:
    ref = _running_slot(harness)
    harness.backend.switch_traffic("staging", ref)
    before = harness.gateway_view("staging")
    harness.backend.switch_traffic("staging", ref)
    assert harness.gateway_view("staging") == before


def test_retiring_twice_or_a_missing_slot_is_not_an_error(harness: Harness) -> None:
    ref = _running_slot(harness)
    harness.backend.retire_slot(ref)
    harness.backend.retire_slot(ref)
    harness.backend.retire_slot(_ref("never-created"))


# --------------------------------------------------------------------------- errors


def test_errors_come_only_from_the_backend_error_family(harness: Harness) -> None:
    missing = _ref("missing0")
    with pytest.raises(ResourceNotFound):
        harness.backend.slot_keys(missing)
    with pytest.raises(BackendError):
        harness.backend.smoke_test(missing, "x" * 43)
    with pytest.raises(BackendError):
        harness.backend.switch_traffic("staging", missing)
    with pytest.raises(ResourceNotFound):
        harness.backend.make_revision_current("no-such-api", 7)
    with pytest.raises(ResourceNotFound):  # the version cannot be fetched
        harness.backend.create_slot(SlotSpec(_ref(version="404"), replicas=1), Progress())
    with pytest.raises(BackendError):  # a policy the gateway does not support
        ref = _running_slot(harness)
        harness.backend.switch_traffic("staging", ref)
        harness.backend.publish_revision(ApiSpec(
            "credit-risk-staging", "staging/credit-risk", "staging", 2,
            "<policies><inbound><send-request /></inbound></policies>"))


def test_a_slot_that_never_gets_ready_times_out_as_slot_not_ready(harness: Harness) -> None:
    harness.prepare_version("3")
    ref = _ref()
    harness.backend.create_slot(SlotSpec(ref, replicas=1), Progress())
    with pytest.raises(SlotNotReady):
        harness.backend.wait_ready(ref, 1, 0.5, lambda: None)


# --------------------------------------------------------------------------- cancellation


def test_cancellation_is_honoured_while_waiting(harness: Harness) -> None:
    harness.prepare_version("3")
    ref = _ref()
    harness.backend.create_slot(SlotSpec(ref, replicas=1), Progress())
    calls = []

    def checkpoint() -> None:
        calls.append(1)
        if len(calls) > 2:
            raise _Cancelled()

    started = time.monotonic()
    with pytest.raises(_Cancelled):
        harness.backend.wait_ready(ref, 1, 60, checkpoint)
    assert time.monotonic() - started < 30


def test_cancellation_through_progress_passes_through_create(harness: Harness) -> None:
    harness.prepare_version("5")
    progress = Progress()
    progress.cancel = True
    ref = _ref("slot0005", version="5")
    try:
        harness.backend.create_slot(SlotSpec(ref, replicas=1), progress)
    except _Cancelled:
        pass  # the backend reported progress and let the cancellation through
    else:
        assert progress.calls == []  # nothing to report: nothing to cancel


# --------------------------------------------------------------------------- keys


def test_keys_never_appear_in_reprs_or_errors(harness: Harness) -> None:
    ref = _running_slot(harness)
    keys = harness.backend.slot_keys(ref)
    info = harness.backend.switch_traffic("staging", ref)
    texts = [repr(keys), str(keys), repr(info), repr(harness.backend),
             repr(harness.backend.slot_info(ref)), repr(harness.backend.slots_report())]
    fresh = harness.backend.regenerate_key(ref, KeyRole.SECONDARY)
    harness.backend.retire_slot(ref)
    try:
        harness.backend.check_key(ref, fresh)
    except BackendError as exc:
        texts.append(str(exc))
    for secret in (keys.primary, keys.secondary, fresh):
        assert all(secret not in text for text in texts)


def test_regenerating_one_key_keeps_the_other(harness: Harness) -> None:
    ref = _running_slot(harness)
    harness.backend.switch_traffic("staging", ref)
    before = harness.backend.slot_keys(ref)
    fresh = harness.backend.regenerate_key(ref, KeyRole.SECONDARY)
    after = harness.backend.slot_keys(ref)
    assert after.primary == before.primary and after.secondary == fresh != before.secondary
    assert harness.backend.check_key(ref, fresh) is True
    assert harness.backend.check_key(ref, before.secondary) is False
    assert harness.backend.check_key(ref, before.primary) is True
    harness.backend.gateway_use_key("staging", fresh)
    view = harness.gateway_view("staging")
    assert view is not None and view[1] == fresh


def test_smoke_test_scores_with_the_key_and_refuses_without(harness: Harness) -> None:
    ref = _running_slot(harness)
    result = harness.backend.smoke_test(ref, harness.backend.slot_keys(ref).primary)
    assert result.model_version == "3" and set(result.probabilities) == {"bad", "good"}
    with pytest.raises(BackendError):
        harness.backend.smoke_test(ref, "not-the-key")


# --------------------------------------------------------------------------- traffic switch


def test_switch_traffic_is_atomic_for_an_observer(harness: Harness) -> None:
    """While the traffic flips between two slots, every view pairs a slot with its own key."""
    blue = _running_slot(harness, "slotblue", "blue")
    green = _running_slot(harness, "slotgren", "green", version="4")
    pairs = {harness.backend.switch_traffic("staging", blue).base_url:
             harness.backend.slot_keys(blue).primary,
             harness.backend.switch_traffic("staging", green).base_url:
             harness.backend.slot_keys(green).primary}
    seen: list[tuple[str, str] | None] = []
    stop = threading.Event()

    def observe() -> None:
        while not stop.is_set():
            seen.append(harness.gateway_view("staging"))

    watcher = threading.Thread(target=observe)
    watcher.start()
    try:
        for _ in range(25):
            harness.backend.switch_traffic("staging", blue)
            harness.backend.switch_traffic("staging", green)
    finally:
        stop.set()
        watcher.join()
    assert seen and all(view is not None and pairs[view[0]] == view[1] for view in seen)


# --------------------------------------------------------------------------- traffic figures


def test_traffic_returns_the_calls_since_a_moment(harness: Harness) -> None:
    now = dt.datetime.now(dt.UTC)
    for seconds, status in ((3600, 200), (30, 200), (10, 502)):
        harness.log_call("credit-risk-staging", "staging", status, 5.0,
                         now - dt.timedelta(seconds=seconds))
    harness.log_call("credit-risk", "prod", 200, 5.0, now)
    stats = harness.backend.traffic(None, now - dt.timedelta(minutes=15))
    assert sorted((c.api, c.status) for c in stats.calls) == [
        ("credit-risk", 200), ("credit-risk-staging", 200), ("credit-risk-staging", 502)]
    staging = harness.backend.traffic("staging", now - dt.timedelta(minutes=15))
    assert {c.environment for c in staging.calls} == {"staging"} and len(staging.calls) == 2
    times = [c.time for c in stats.calls]
    assert times == sorted(times)


def test_capabilities_and_health(harness: Harness) -> None:
    assert isinstance(harness.backend.capabilities, frozenset)
    health: Any = harness.backend.health()
    assert health.name == harness.backend.name and isinstance(health.healthy, bool)
