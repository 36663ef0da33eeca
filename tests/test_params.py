"""Integer path and query parameters are bounded: out of range is a 404 or 422, never a 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from werkzeug.routing.converters import NumberConverter

from app.params import SQL_INT_MAX, IdConverter
from tests.conftest import build_app, csrf_headers, sign_in

ISSUE_13 = 9223372036854775808  # 2^63: past SQLite's integers
TOO_BIG = SQL_INT_MAX + 1  # past PostgreSQL's INTEGER columns


@pytest.fixture
def app(tmp_path: Path, database_url: str, redis_server: Any) -> Any:
    return build_app(tmp_path, database_url, redis_server.url)


@pytest.mark.parametrize("revision", [ISSUE_13, TOO_BIG])
def test_rollback_to_a_revision_out_of_range_is_404_not_500(app: Any, revision: int) -> None:
    client = app.test_client()
    sign_in(client, "alice")
    response = client.post(f"/api/v1/apis/credit-risk/revisions/{revision}/rollback",
                           headers=csrf_headers(client))
    assert response.status_code == 404, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert str(revision) in response.get_json()["detail"]
    # In range but unknown: the view's own 404.
    response = client.post(f"/api/v1/apis/credit-risk/revisions/{SQL_INT_MAX}/rollback",
                           headers=csrf_headers(client))
    assert response.status_code == 404
    assert "has no revision" in response.get_json()["detail"]


@pytest.mark.parametrize("url", [
    f"/apis/revisions/{TOO_BIG}/rollback",
    "/apis/revisions/0/rollback",
    "/apis/revisions/" + "9" * 5000 + "/rollback",
])
def test_page_rollback_with_an_out_of_range_id_is_404(app: Any, url: str) -> None:
    client = app.test_client()
    sign_in(client, "alice")
    assert client.post(url, headers=csrf_headers(client)).status_code == 404


def test_model_version_out_of_range_is_404(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "erin")
    assert client.get(f"/models/german-credit/versions/{TOO_BIG}").status_code == 404
    assert client.get(f"/models/german-credit/compare?a=1&b={TOO_BIG}").status_code == 404


@pytest.mark.parametrize(("url", "field"), [
    (f"/api/v1/jobs?limit={TOO_BIG}", "limit"),
    ("/api/v1/jobs?limit=0", "limit"),
    ("/api/v1/jobs?limit=ten", "limit"),
    (f"/api/v1/promotions?limit={TOO_BIG}", "limit"),
    (f"/jobs/00000000/status?after={TOO_BIG}", "after"),
    (f"/jobs/00000000/status?after={ISSUE_13}", "after"),
    (f"/audit/?limit={ISSUE_13}", "limit"),
    ("/jobs/00000000/status?after=-1", "after"),
    ("/jobs/00000000/status?after=" + "9" * 5000, "after"),
])
def test_out_of_range_query_integers_are_422_naming_the_parameter(app: Any, url: str,
                                                                  field: str) -> None:
    client = app.test_client()
    sign_in(client, "dave")
    response = client.get(url, headers={"Accept": "application/json"})
    assert response.status_code == 422, response.get_data(as_text=True)[:300]
    assert response.get_json()["errors"] == [{"field": field,
                                              "message": response.get_json()["errors"][0]
                                              ["message"]}]
    assert field in response.get_json()["detail"]


def test_after_at_the_bound_reaches_the_database_and_answers(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "alice")
    job = client.post("/api/v1/jobs", json={"kind": "selfcheck"},
                      headers=csrf_headers(client)).get_json()
    response = client.get(f"/jobs/{job['id']}/status?after={SQL_INT_MAX}")
    assert response.status_code == 200 and response.get_json()["log"] == []


def test_every_integer_path_parameter_is_bounded(app: Any) -> None:
    """A bare <int:…> would let 2^63 reach the database; every integer segment is <id:…>."""
    bare = [rule.rule for rule in app.url_map.iter_rules()
            for converter in rule._converters.values()
            if isinstance(converter, NumberConverter) and not isinstance(converter, IdConverter)]
    assert bare == []
