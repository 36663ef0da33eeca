"""Registry pages and the versions API over a real MLflow store with two trained versions."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import csrf_headers, sign_in

from .conftest import CSV


def _client(panel: Any, user: str) -> Any:
    client = panel.test_client()
    sign_in(client, user)
    return client


def test_versions_list_shows_metrics_aliases_and_lineage(
        panel: Any, registry_home: tuple[Path, list[Any]]) -> None:
    _, results = registry_home
    client = _client(panel, "erin")  # no role: may still read
    assert client.get("/models/").headers["Location"].endswith("/models/german-credit")
    page = client.get("/models/german-credit")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'data-version="1"' in html and 'data-version="2"' in html
    roc_auc = results[0].outcome.heldout["roc_auc"]
    assert f"{roc_auc:.3f}" in html
    assert "job-1" in html and "job-2" in html
    assert 'action="/models/german-credit/compare"' in html  # the compare form
    assert "Train a new version" not in html  # erin may not train
    assert b'href="/models/"' in client.get("/").data  # the Models link in the nav


def test_train_button_for_engineers(panel: Any) -> None:
    html = _client(panel, "alice").get("/models/german-credit").get_data(as_text=True)
    form = re.search(r'<form method="post" action="/jobs/">(.*?)</form>', html, re.S)
    assert form, "no train form"
    assert 'name="kind" value="train"' in form.group(1)
    assert 'name="csrf_token"' in form.group(1)


def test_version_detail_draws_charts_and_lineage(
        panel: Any, registry_home: tuple[Path, list[Any]]) -> None:
    _, results = registry_home
    outcome = results[0].outcome
    page = _client(panel, "carol").get("/models/german-credit/versions/1")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for chart in ("roc", "confusion", "importance", "calibration"):
        assert f'data-chart="{chart}"' in html
    # and two per attribute of the fairness report (rates, calibration by group)
    assert html.count("<svg") == 4 + 2 * len(outcome.fairness["attributes"])
    for chart in ("fairness-rates", "fairness-calibration"):
        assert html.count(f'data-chart="{chart}"') == len(outcome.fairness["attributes"])
    assert 'class="roc-line"' in html and 'class="operating-point"' in html
    assert html.count('class="cm-cell"') == 4
    assert html.count('class="importance-bar"') == 9
    assert 'class="calibration-bin"' in html
    tp = outcome.heldout["confusion_matrix"]["actual_bad_predicted_bad"]
    assert f">{tp}</text>" in html
    assert "style=" not in html  # the CSP forbids inline styles
    sha = hashlib.sha256(CSV.read_bytes()).hexdigest()
    assert "german-credit v1" in html and sha[:12] in html
    assert results[0].model.run_id in html and "job-1" in html
    assert "not deployed yet" in html
    assert f"{outcome.heldout['roc_auc']:.4f}" in html


def test_aliases_show_on_pages(panel: Any, registry_home: tuple[Path, list[Any]]) -> None:
    from app.ml.registry import ModelRegistry

    home, _ = registry_home
    reg = ModelRegistry.for_home(home)
    reg.set_alias("german-credit", "staging", "2")
    try:
        html = _client(panel, "erin").get("/models/german-credit").get_data(as_text=True)
        row = re.search(r'<tr data-version="2">(.*?)</tr>', html, re.S)
        assert row and "badge-alias-staging" in row.group(1)
        body = _client(panel, "erin").get("/api/v1/models/german-credit/versions").get_json()
        assert body["versions"][0]["aliases"] == ["staging"]
    finally:
        reg.delete_alias("german-credit", "staging")


def test_compare_shows_both_versions_side_by_side(
        panel: Any, registry_home: tuple[Path, list[Any]]) -> None:
    _, results = registry_home
    client = _client(panel, "bob")
    default = client.get("/models/german-credit/compare")
    assert default.status_code == 302 and "a=1&b=2" in default.headers["Location"]
    html = client.get("/models/german-credit/compare?a=1&b=2").get_data(as_text=True)
    assert "Version 1" in html and "Version 2" in html
    assert all(r.model.run_id in html for r in results)
    assert html.count('class="roc-line"') == 2
    # Identical inputs give identical metrics: every delta reads "same".
    deltas = re.findall(r'<td class="num delta[^"]*">([^<]*)</td>', html)
    assert deltas and set(deltas) == {"same"}
    assert client.get("/models/german-credit/compare?a=1&b=1").status_code == 422
    assert client.get("/models/german-credit/compare?a=1&b=9").status_code == 404


def test_versions_api_shape(panel: Any, registry_home: tuple[Path, list[Any]]) -> None:
    _, results = registry_home
    client = _client(panel, "carol")
    r = client.get("/api/v1/models/german-credit/versions")
    assert r.status_code == 200
    body = r.get_json()
    assert body["name"] == "german-credit"
    assert [v["version"] for v in body["versions"]] == ["2", "1"]
    v1 = body["versions"][1]
    assert {"name", "version", "run_id", "status", "created_at", "aliases", "tags", "metrics",
            "params", "lineage"} <= set(v1)
    assert v1["metrics"]["roc_auc"] == results[0].outcome.heldout["roc_auc"] >= 0.75
    assert v1["tags"]["job_id"] == "job-1"
    lineage = v1["lineage"]
    assert lineage["dataset"] == {"name": "german-credit", "version": 1,
                                  "sha256": hashlib.sha256(CSV.read_bytes()).hexdigest()}
    assert lineage["run_id"] == v1["run_id"] and lineage["job_id"] == "job-1"
    assert lineage["model"] == {"name": "german-credit", "version": "1"}
    assert lineage["deployments"] == []
    missing = client.get("/api/v1/models/nope/versions")
    assert missing.status_code == 404 and missing.mimetype == "application/problem+json"
    assert panel.test_client().get("/api/v1/models/german-credit/versions").status_code == 401
    doc = panel.test_client().get("/api/v1/openapi.json").get_json()
    assert "/models/{name}/versions" in doc["paths"]


def test_unknown_version_is_404(panel: Any) -> None:
    client = _client(panel, "erin")
    assert client.get("/models/german-credit/versions/99").status_code == 404
    assert client.get("/models/german-credit/versions/x").status_code == 404


def test_pages_stay_fast_once_warm(panel: Any) -> None:
    client = _client(panel, "erin")
    client.get("/models/german-credit/versions/1")  # warm: mlflow import, client, chart cache
    start = time.perf_counter()
    for path in ("/models/german-credit", "/models/german-credit/versions/2",
                 "/models/german-credit/compare?a=1&b=2"):
        assert client.get(path).status_code == 200
    # Generous bound: it only guards against re-importing MLflow or rebuilding clients.
    assert time.perf_counter() - start < 5


def test_carol_may_not_queue_training(panel: Any) -> None:
    client = _client(panel, "carol")
    headers = csrf_headers(client)
    r = client.post("/api/v1/jobs", json={"kind": "train"}, headers=headers)
    assert r.status_code == 403 and "MLOps.Engineer" in r.get_json()["detail"]
    form = client.post("/jobs/", data={"kind": "train", "csrf_token": headers["X-CSRFToken"]})
    assert form.status_code == 403
    assert client.get("/api/v1/jobs").get_json()["jobs"] == []


def test_empty_home_lists_no_versions_without_creating_a_store(tmp_path: Path,
                                                                redis_server: Any) -> None:
    from tests.conftest import build_app

    app = build_app(tmp_path, f"sqlite:///{tmp_path / 'modelgate.db'}", redis_server.url)
    client = _client(app, "alice")
    page = client.get("/models/german-credit")
    assert page.status_code == 200 and b"No version" in page.data
    assert client.get("/api/v1/models/german-credit/versions").status_code == 404
    assert not (tmp_path / "mlflow" / "mlflow.db").exists()


def test_redelivered_train_job_result_is_rebuilt_from_its_version(
        panel: Any, registry_home: tuple[Path, list[Any]]) -> None:
    from app.backends.local.training import summary as _summary
    from app.backends.local.training import version_of_job as _version_of_job
    from app.ml.registry import ModelRegistry

    home, results = registry_home
    reg = ModelRegistry.for_home(home)
    assert _version_of_job(reg, "german-credit", "job-unknown") is None
    found = _version_of_job(reg, "german-credit", "job-2")
    assert found is not None and found.version == "2"
    summary, original = _summary(found), results[1].to_dict()
    assert summary["reused"] is True
    assert summary["model"] == original["model"]
    assert summary["dataset"] == {**original["dataset"], "created": False}
    assert summary["family"] == original["family"]
    assert summary["threshold"] == pytest.approx(original["threshold"], abs=1e-6)
    assert summary["metrics"] == pytest.approx(original["metrics"])
