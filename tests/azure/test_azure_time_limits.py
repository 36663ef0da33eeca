"""Time limits and waits that fit Azure: the train, deploy and rotate-keys jobs get longer
soft limits on the azure backend (sent with the task), and a deploy waits
``azure.ready_timeout_seconds`` for readiness there (``runtime.ready_timeout_seconds``
locally)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.azure.conftest import azure_pipeline_settings


def test_train_deploy_and_rotation_get_limits_that_fit_azure() -> None:
    from app.backends.azure import training
    from app.config import BaseConfig, celery_settings, load_config
    from app.pipeline_config import load_pipeline_config
    from app.services.kinds import JobKind, time_limit_options

    config = load_config({"TESTING": True, "BACKEND": "azure"})
    defaults = load_pipeline_config().azure
    train = time_limit_options(JobKind.TRAIN, config)
    assert train["soft_time_limit"] == BaseConfig.AZURE_TRAIN_TIME_LIMIT_SECONDS
    # Azure ML's own limit fits in one attempt, and an attempt stops following (the retry
    # follows on) early enough to leave the registration time
    assert train["soft_time_limit"] > training.FOLLOW_SECONDS + 15 * 60
    assert training.FOLLOW_SECONDS > training.JOB_TIMEOUT_SECONDS
    deploy = time_limit_options(JobKind.DEPLOY, config)
    assert deploy["soft_time_limit"] == BaseConfig.AZURE_DEPLOY_TIME_LIMIT_SECONDS
    assert deploy["soft_time_limit"] >= defaults.ready_timeout_seconds + 20 * 60
    rotate = time_limit_options(JobKind.ROTATE_KEYS, config)
    assert rotate["soft_time_limit"] >= 2 * defaults.key_grace_seconds + 5 * 60
    pipeline = time_limit_options(JobKind.PIPELINE, config)["soft_time_limit"]
    assert pipeline >= sum(time_limit_options(kind, config)["soft_time_limit"]
                           for kind in (JobKind.PROVISION, JobKind.TRAIN, JobKind.DEPLOY))
    for kind in (JobKind.TRAIN, JobKind.DEPLOY, JobKind.ROTATE_KEYS):
        assert time_limit_options(kind, {**config, "BACKEND": "local"}) == {}
    visibility = celery_settings(config)["broker_transport_options"]["visibility_timeout"]
    assert visibility > time_limit_options(JobKind.PIPELINE, config)["time_limit"]
    tuned = load_config({"TESTING": True, "BACKEND": "azure",
                         "AZURE_TRAIN_TIME_LIMIT_SECONDS": 12000})
    assert time_limit_options(JobKind.TRAIN, tuned) == {"soft_time_limit": 12000,
                                                        "time_limit": 12060}


@pytest.mark.parametrize("backend", ["azure", "local"])
def test_the_limits_travel_with_the_queued_task(backend: str, tmp_path: Path, redis_server: Any,
                                                sqlite_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """What the broker holds for a worker: the task message's ``timelimit`` header."""
    import redis

    from app.services import jobs
    from app.services.kinds import JobKind
    from tests.conftest import build_app

    monkeypatch.setenv("MODELGATE_PIPELINE_CONFIG", str(_pipeline_file(tmp_path)))
    app = build_app(tmp_path, sqlite_url, redis_server.url, BACKEND=backend)
    queue = redis.Redis.from_url(redis_server.url)
    sent: dict[str, Any] = {}
    with app.app_context():
        for kind in (JobKind.TRAIN, JobKind.ROTATE_KEYS):
            job = jobs.submit(kind, {}, "alice")
            message = json.loads(queue.rpop("modelgate") or b"{}")
            assert message["headers"]["id"] and message["headers"]["argsrepr"] == \
                repr([job.id])
            sent[kind.value] = message["headers"]["timelimit"]
    if backend == "azure":
        assert sent == {"train": [3 * 3600 + 60, 3 * 3600], "rotate-keys": [1860, 1800]}
    else:  # the tasks' own limits (their decorators) hold
        assert sent == {"train": [None, None], "rotate-keys": [None, None]}


@pytest.mark.parametrize("backend", ["azure", "local"])
def test_the_deploy_waits_the_backends_own_ready_timeout(backend: str, tmp_path: Path,
                                                         redis_server: Any, sqlite_url: str,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    from app.services import rollout
    from app.services.backend import ready_timeout_seconds
    from tests.conftest import build_app

    monkeypatch.setenv("MODELGATE_PIPELINE_CONFIG", str(_pipeline_file(
        tmp_path, runtime={"host": "127.0.0.1", "ready_timeout_seconds": 45},
        azure={"ready_timeout_seconds": 2400})))
    app = build_app(tmp_path, sqlite_url, redis_server.url, BACKEND=backend)
    with app.app_context():
        expected = 2400.0 if backend == "azure" else 45.0
        assert ready_timeout_seconds() == expected
        assert rollout.settings().ready_timeout_seconds == expected


def test_the_azure_ready_timeout_defaults_to_half_an_hour_and_is_checked() -> None:
    from app.pipeline_config import (
        PipelineConfigError,
        load_pipeline_config,
        parse_pipeline_config,
    )

    assert load_pipeline_config().azure.ready_timeout_seconds == 1800
    assert load_pipeline_config().runtime.ready_timeout_seconds == 60
    with pytest.raises(PipelineConfigError, match="azure.ready_timeout_seconds"):
        parse_pipeline_config(azure_pipeline_settings(ready_timeout_seconds=5))


def _pipeline_file(tmp_path: Path, **sections: dict[str, Any]) -> Path:
    import yaml

    data = azure_pipeline_settings(**sections.pop("azure", {}))
    data.update(sections)
    path = tmp_path / "pipeline.yml"
    path.write_text(yaml.safe_dump(data))
    return path
