"""A retraining that reproduces a version exactly (same data, parameters and seed) says so on
the version page and on the approval page, and the pipeline file can skip registering it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.approvals.conftest import client_for, record_deploy
from tests.conftest import build_app, csrf_headers
from tests.support import RedisServer

CSV = Path(__file__).resolve().parents[2] / "data" / "german_credit_data.csv"


def small_config(c: float) -> dict[str, Any]:
    return {"cv_folds": 2, "importance_repeats": 1,
            "candidates": [{"family": "logistic_regression", "params": {"C": c}}]}


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """v1 and v2 from identical inputs, v3 with another C; prod and staging serve v1."""
    from app.ml.workflow import train_and_register

    home = tmp_path_factory.mktemp("identical-home")
    for i, c in enumerate((0.1, 0.1, 1.0), start=1):
        train_and_register(home, CSV, job_id=f"train-{i}", config=small_config(c),
                           materialise=False)
    redis = RedisServer(home / "redis").start()
    try:
        app = build_app(home, f"sqlite:///{home / 'modelgate.db'}", redis.url)
        with app.app_context():
            record_deploy(home, "staging", "1", "deploy-staging-1")
            record_deploy(home, "prod", "1", "deploy-prod-1")
        yield app, home
    finally:
        redis.stop()


def test_the_version_page_says_a_version_reproduces_the_serving_one(
        panel: tuple[Any, Path]) -> None:
    app, _ = panel
    erin = client_for(app, "erin")
    page = erin.get("/models/german-credit/versions/2").get_data(as_text=True)
    assert 'data-identical="1"' in page
    assert ("Identical to v1, which serves staging and prod: same data, parameters and seed"
            in page)
    other = erin.get("/models/german-credit/versions/3").get_data(as_text=True)
    assert "data-identical" not in other
    # The family comes from the label table too.
    shown = re.sub(r"<[^>]+>", " ", page)
    assert "Logistic regression" in shown and "logistic_regression" not in shown.split(
        "Parameters and tags")[0]


def test_the_approval_page_says_approving_a_copy_changes_nothing(
        panel: tuple[Any, Path]) -> None:
    app, _ = panel
    alice = client_for(app, "alice")
    headers = csrf_headers(alice)
    same = alice.post("/api/v1/promotions", headers=headers,
                      json={"version": "2", "reason": "retrained"}).get_json()["id"]
    page = client_for(app, "bob").get(f"/approvals/{same}").get_data(as_text=True)
    assert 'data-identical="1"' in page
    assert "v2 is identical to v1, which serves prod: same data, parameters and seed" in page
    differs = alice.post("/api/v1/promotions", headers=headers,
                         json={"version": "3", "reason": "other C"}).get_json()["id"]
    other = client_for(app, "bob").get(f"/approvals/{differs}").get_data(as_text=True)
    assert "data-identical" not in other


def test_skip_identical_reuses_the_version_instead_of_registering_a_copy(
        panel: tuple[Any, Path]) -> None:
    from app.ml.registry import ModelRegistry
    from app.ml.workflow import train_and_register

    _, home = panel
    registry = ModelRegistry.for_home(home)
    before = [v.version for v in registry.list_versions("german-credit")]
    done = train_and_register(home, CSV, job_id="train-again",
                              config={**small_config(0.1), "skip_identical": True},
                              materialise=False)
    assert done.reused_identical and done.to_dict()["reused_identical"] is True
    assert done.model.version == "2"  # the newest of the two identical versions
    assert [v.version for v in registry.list_versions("german-credit")] == before
