"""Job parameters are checked at submit: a bad one on any kind is a 422 naming the field, and
no job row is written (nothing is queued)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.services.kinds import KIND_SPECS, JobKind
from tests.conftest import build_app, csrf_headers, sign_in
from tests.support import refused_at_submit

BAD: dict[JobKind, list[tuple[dict[str, Any], str]]] = {
    JobKind.PROVISION: [({"teardown": "yes"}, "params.teardown"),
                        ({"workspace": "x"}, "params.workspace")],
    JobKind.TRAIN: [({"dataset_version": 0}, "params.dataset_version"),
                    ({"dataset_version": "1"}, "params.dataset_version"),
                    ({"model": {"cv_folds": 1}}, "params.model.cv_folds"),
                    ({"model": []}, "params.model"),
                    ({"epochs": 3}, "params.epochs")],
    JobKind.DEPLOY: [({"version": "abc"}, "params.version"),
                     ({"version": 0}, "params.version"),
                     ({"environment": "qa"}, "params.environment"),
                     ({"rollback": "true"}, "params.rollback"),
                     ({"version": "2", "rollback": True}, "params.version")],
    JobKind.PUBLISH: [({"rate_limit": 0}, "params.rate_limit"),
                      ({"policy_xml": 3}, "params.policy_xml"),
                      ({"environment": 1}, "params.environment")],
    JobKind.ROTATE_KEYS: [({"environment": "qa"}, "params.environment"),
                          ({"slot": "blue"}, "params.slot")],
    JobKind.PIPELINE: [({"until": "serve"}, "params.until"),
                       ({"environment": "qa"}, "params.environment")],
    JobKind.PLAN: [({"offline": "yes"}, "params.offline"),
                   ({"environment": "staging"}, "params.environment")],
    JobKind.SELFCHECK: [({"steps": 0}, "params.steps"),
                        ({"step_seconds": -1}, "params.step_seconds")],
}


def test_every_kind_has_bad_cases() -> None:
    assert set(BAD) == set(KIND_SPECS)


@pytest.mark.parametrize("kind,params,field",
                         [(k, p, f) for k, cases in BAD.items() for p, f in cases])
def test_a_bad_parameter_is_422_naming_the_field_and_leaves_no_job(
        tmp_path: Path, redis_server: Any, sqlite_url: str, kind: JobKind,
        params: dict[str, Any], field: str) -> None:
    app = build_app(tmp_path, sqlite_url, redis_server.url)
    client = app.test_client()
    sign_in(client, "alice")
    body = refused_at_submit(client, csrf_headers(client), kind.value, params)
    assert field in body["detail"]
    assert [e["field"] for e in body["errors"]] == [field]


def test_good_parameters_pass_the_schema() -> None:
    from app.services.params import check

    spec = KIND_SPECS[JobKind.DEPLOY]
    check({"version": "3"}, spec.params, spec.together)
    check({"version": 3, "rollback": False}, spec.params, spec.together)
