"""The Kubernetes manifests reach users: `modelgate k8s render` and the Deployments page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from app.backends.base import SlotRef, SlotSpec
from tests.conftest import build_app, sign_in


def _deploy(app: Any, home: Path) -> tuple[str, str]:
    """A staging slot created on the local backend and recorded active (as a deploy leaves)."""
    from app.backends.local.slots import model_dir
    from app.services import deployments
    from app.services.backend import backend

    package = model_dir(home, "german-credit", "3")
    package.mkdir(parents=True)
    (package / "signature.json").write_text(json.dumps({"version": "3"}))
    (package / "model.joblib").write_bytes(b"x")
    with app.app_context():
        slot_id, colour = deployments.new_slot("staging")
        ref = SlotRef(slot_id, "staging", "staging", colour, "german-credit", "3")
        info = backend().create_slot(SlotSpec(ref, replicas=1), lambda _p, _s: None)
        row = deployments.create_slot(environment="staging", model_name="german-credit",
                                      model_version="3", replicas=1, resources={},
                                      job_id="job-k8s", slot_id=slot_id, slot=colour,
                                      info=info)
        deployments.activate(row.id)
        keys = backend().slot_keys(ref)
    return keys.primary, keys.secondary


def test_page_download_and_cli_render_the_active_slot(
        tmp_path: Path, redis_server: Any, sqlite_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from app.cli import main

    app = build_app(tmp_path, sqlite_url, redis_server.url)
    secrets = _deploy(app, tmp_path)
    client = app.test_client()
    sign_in(client, "alice")
    assert b"k8s.yaml" in client.get("/deployments/").data
    page = client.get("/deployments/staging/k8s.yaml")
    assert page.status_code == 200 and page.mimetype == "application/yaml"
    docs = list(yaml.safe_load_all(page.get_data(as_text=True)))
    assert [d["kind"] for d in docs][:2] == ["Secret", "Deployment"]
    assert docs[1]["metadata"]["name"] == "scoring-staging-blue"
    assert client.get("/deployments/prod/k8s.yaml").status_code == 404  # nothing deployed
    erin = app.test_client()
    sign_in(erin, "erin")
    assert erin.get("/deployments/staging/k8s.yaml").status_code == 403

    monkeypatch.setenv("MODELGATE_HOME", str(tmp_path))
    monkeypatch.setenv("MODELGATE_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("MODELGATE_REDIS_URL", redis_server.url)
    monkeypatch.setenv("MODELGATE_SECRET_KEY", "k" * 40)
    result = CliRunner().invoke(main, ["k8s", "render", "--environment", "staging",
                                       "--image", "registry.example/scoring:3"])
    assert result.exit_code == 0, result.output
    assert "registry.example/scoring:3" in result.output
    assert all(secret not in result.output and secret not in page.get_data(as_text=True)
               for secret in secrets)
    missing = CliRunner().invoke(main, ["k8s", "render", "--environment", "prod"])
    assert missing.exit_code != 0 and "prod has no active deployment" in missing.output
