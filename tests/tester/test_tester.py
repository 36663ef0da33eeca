"""The score tester: the form from a signature, errors beside fields, masking, batch chunks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.ml.signature import Signature
from app.services import scoring
from tests.conftest import build_app, csrf_headers, sign_in
from tests.identity_support import start_issuer

SIGNATURE: dict[str, Any] = {
    "name": "german-credit", "version": "3", "target": "Risk", "classes": ["bad", "good"],
    "positive_class": "bad", "threshold": 0.42, "max_rows": 1000,
    "fields": [
        {"name": "Age", "type": "integer", "minimum": 18, "maximum": 120, "nullable": False},
        {"name": "Sex", "type": "category", "categories": ["female", "male"], "nullable": False},
        {"name": "Job", "type": "integer", "minimum": 0, "maximum": 3, "nullable": False},
        {"name": "Housing", "type": "category", "categories": ["free", "own", "rent"],
         "nullable": False},
        {"name": "Saving accounts", "type": "category",
         "categories": ["little", "moderate", "quite rich", "rich"], "nullable": True},
        {"name": "Checking account", "type": "category",
         "categories": ["little", "moderate", "rich"], "nullable": True},
        {"name": "Credit amount", "type": "integer", "minimum": 1, "maximum": 1000000,
         "nullable": False},
        {"name": "Duration", "type": "integer", "minimum": 1, "maximum": 120, "nullable": False},
        {"name": "Purpose", "type": "category", "nullable": False,
         "categories": ["business", "car", "domestic appliances", "education",
                        "furniture/equipment", "radio/TV", "repairs", "vacation/others"]},
    ],
    "example": {"Age": 35, "Sex": "female"},
}
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjYXJvbCJ9.c2lnbmF0dXJl"


@pytest.fixture
def signature() -> Signature:
    return Signature.from_dict(SIGNATURE)


def test_the_form_follows_the_signature_and_starts_from_the_seed_example(
        signature: Signature) -> None:
    fields = {f.name: f for f in scoring.form_fields(signature)}
    assert list(fields) == list(signature.feature_names)
    age = fields["Age"]
    assert (age.kind, age.minimum, age.maximum, age.step, age.value) == ("number", 18, 120, "1",
                                                                         "20")
    sex = fields["Sex"]
    assert sex.kind == "select" and [v for v, _ in sex.options] == ["female", "male"]
    assert sex.value == "male"
    savings = fields["Saving accounts"]
    assert savings.options[0] == ("", "No account")  # nullable: "no account" sends null
    assert savings.value == "little"
    assert fields["Purpose"].value == "radio/TV"
    assert fields["Credit amount"].input_id == "field-credit-amount"
    assert len({f.input_id for f in fields.values()}) == len(fields)


def test_a_signature_without_the_seed_fields_uses_its_own_example() -> None:
    own = Signature.from_dict({**SIGNATURE, "fields": SIGNATURE["fields"][:2]})
    assert scoring.example_record(own) == {"Age": 35, "Sex": "female"}


def test_form_values_become_json_and_blanks_mean_no_account(signature: Signature) -> None:
    form = {"Age": "20", "Sex": "male", "Job": "0", "Housing": "own", "Saving accounts": "",
            "Checking account": "little", "Credit amount": "1e3", "Duration": "",
            "Purpose": "radio/TV"}
    record = scoring.record_from_form(signature, form)
    assert record["Age"] == 20 and isinstance(record["Age"], int)
    assert record["Saving accounts"] is None  # nullable and blank: null
    assert "Duration" not in record  # required and blank: left out, the gateway names it
    assert record["Credit amount"] == 1000.0  # not an integer literal: the gateway decides
    assert scoring.record_from_form(signature, {"Age": "twenty"})["Age"] == "twenty"


def test_gateway_errors_map_to_the_fields_they_name() -> None:
    problem = {"status": 422, "errors": [
        {"field": "data[0].Age", "message": "must be ≥ 18"},
        {"field": "data[0].Credit amount", "message": "missing required field"},
        {"field": "data", "message": "too many rows"},
        {"field": "data[1].Sex", "message": "unknown category"}]}
    fields, other = scoring.field_errors(problem)
    assert fields == {"Age": "must be ≥ 18", "Credit amount": "missing required field"}
    assert other == ["data: too many rows", "data[1].Sex: unknown category"]
    by_row, rest = scoring.split_errors(problem)
    assert by_row == {0: {"Age": "must be ≥ 18", "Credit amount": "missing required field"},
                      1: {"Sex": "unknown category"}}
    assert rest == ["data: too many rows"]
    assert scoring.field_errors({"detail": "no errors list"}) == ({}, [])


def test_the_token_is_masked_everywhere_it_could_be_shown(signature: Signature) -> None:
    body = {"data": [scoring.example_record(signature)]}
    url = "https://127.0.0.1:8000/staging/credit-risk/score"
    shown = [scoring.raw_request(url, body), scoring.curl_snippet(url, body, "/ca.pem"),
             scoring.python_snippet(url, body, "/ca.pem"),
             json.dumps(scoring.mask({"echo": f"Bearer {TOKEN}", "n": [TOKEN]}, TOKEN))]
    assert not [s for s in shown if TOKEN in s]
    assert "Authorization: Bearer <your access token>" in shown[0]
    assert '"Authorization: Bearer $MODELGATE_TOKEN"' in shown[1]
    assert "--cacert '/ca.pem'" in shown[1]
    assert "os.environ['MODELGATE_TOKEN']" in shown[2]
    compile(shown[2], "snippet.py", "exec")  # the Python snippet is valid Python
    nullable = {"data": [{"Saving accounts": None}]}
    assert "None" in scoring.python_snippet(url, nullable, None)


def test_api_paths_follow_the_contract() -> None:
    assert scoring.score_url("https://gw:8000/", "prod") == "https://gw:8000/credit-risk/score"
    assert scoring.score_url("https://gw:8000", "staging") == \
        "https://gw:8000/staging/credit-risk/score"


def test_csv_rows_become_records(signature: Signature) -> None:
    records = scoring.records_from_rows(
        signature, ["Age", "Unknown", "Saving accounts", "Duration"],
        [["20", "x", "", "48"], ["31", "y", "rich", ""]])
    assert records == [{"Age": 20, "Saving accounts": None, "Duration": 48},
                       {"Age": 31, "Saving accounts": "rich"}]


# --------------------------------------------------------------------------- pages


@pytest.fixture
def app(tmp_path: Path, redis_server: Any, sqlite_url: str) -> Iterator[Any]:
    """The panel next to a real local issuer (so token look-ups really happen)."""
    with start_issuer(tmp_path) as issuer:
        yield build_app(tmp_path, sqlite_url, redis_server.url, ISSUER_URL=issuer.url,
                        CA_BUNDLE=str(issuer.ca))


def deploy_signature(app: Any, home: Path) -> None:
    """A staging deployment row and its package's signature on disk (what a deploy job leaves)."""
    from app.services import deployments

    package = home / "models" / "german-credit" / "3"
    package.mkdir(parents=True)
    (package / "signature.json").write_text(json.dumps(SIGNATURE))
    with app.app_context():
        row = deployments.create_slot(environment="staging", model_name="german-credit",
                                      model_version="3", replicas=1, resources={},
                                      job_id="job-deploy")
        deployments.activate(row.id)


def test_nothing_deployed_is_said_plainly(app: Any) -> None:
    client = app.test_client()
    sign_in(client, "carol")
    page = client.get("/score/")
    assert page.status_code == 200
    assert "No model is deployed to staging yet" in page.get_data(as_text=True)
    assert client.get("/score/?environment=nowhere").status_code == 422


def test_the_form_renders_for_testers_only(app: Any, tmp_path: Path) -> None:
    deploy_signature(app, tmp_path)
    client = app.test_client()
    sign_in(client, "carol")
    html = client.get("/score/").get_data(as_text=True)
    assert 'id="field-age"' in html and 'value="20"' in html
    assert '<label for="field-saving-accounts">' in html
    assert '<option value="" >No account</option>' in html.replace("  ", " ")
    assert "german-credit version 3" in html
    assert 'min="18"' in html and 'max="120"' in html
    assert "style=" not in html and "<script>" not in html  # CSP: no inline style or script
    sign_in(client, "erin")
    assert client.get("/score/").status_code == 403


def test_scoring_without_a_renewable_token_asks_to_sign_in_again(app: Any,
                                                                 tmp_path: Path) -> None:
    deploy_signature(app, tmp_path)
    client = app.test_client()
    sign_in(client, "carol")  # a session without tokens in the server-side cache
    form = {"environment": "staging", "Age": "20", **csrf_headers_form(client)}
    response = client.post("/score/", data=form)
    assert response.status_code == 401
    html = response.get_data(as_text=True)
    assert "sign in again" in html and 'id="sign-in-again"' in html
    assert 'value="20"' in html  # what was typed is kept


def csrf_headers_form(client: Any) -> dict[str, str]:
    return {"csrf_token": csrf_headers(client)["X-CSRFToken"]}


def test_batch_chunks_are_bounded_and_checked(app: Any, tmp_path: Path) -> None:
    deploy_signature(app, tmp_path)
    client = app.test_client()
    sign_in(client, "carol")
    headers = {**csrf_headers(client), "Accept": "application/json"}

    def post(body: Any) -> Any:
        return client.post("/score/batch", json=body, headers=headers)

    too_many = post({"environment": "staging", "columns": ["Age"], "rows": [["20"]] * 101})
    assert too_many.status_code == 422 and "at most 100 rows" in too_many.get_json()["detail"]
    assert post({"environment": "staging", "columns": "Age", "rows": [["1"]]}).status_code == 422
    assert post({"environment": "staging", "columns": ["Age"], "rows": []}).status_code == 422
    assert post({"environment": "moon", "columns": ["Age"], "rows": [["1"]]}).status_code == 422
    assert post([1, 2]).status_code == 400
    no_token = post({"environment": "staging", "columns": ["Age"], "rows": [["20"]]})
    assert no_token.status_code == 401
    assert no_token.mimetype == "application/problem+json"
    assert "sign in again" in no_token.get_json()["detail"]
    assert post({"environment": "prod", "columns": ["Age"], "rows": [["20"]]}).status_code == 409
    big = client.post("/score/batch", data=b"x" * (2 * 1024 * 1024), headers=headers,
                      content_type="application/json")
    assert big.status_code == 413
    sign_in(client, "erin")
    assert post({"environment": "staging", "columns": ["Age"], "rows": [["20"]]}
                ).status_code == 403
