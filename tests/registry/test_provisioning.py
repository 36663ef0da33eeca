"""The local backend's provisioning on its own, and the backend registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.backends import get_backend
from app.backends.base import BackendError, ProvisionSpec, ResourceConflict
from app.backends.local import LocalBackend
from app.pipeline_config import DEFAULT_PATH, load_pipeline_config


def _spec(**changes: object) -> ProvisionSpec:
    config = load_pipeline_config(DEFAULT_PATH)
    settings = config.to_dict()
    for dotted, value in changes.items():
        section, key = dotted.split("__", 1)
        settings[section] = {**settings[section], key: value}
    return ProvisionSpec(workspace=config.workspace.name, environments=config.environment_names,
                         settings=settings)


def _quiet(_percent: int, _step: str) -> None:
    return None


def test_get_backend_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = get_backend({"BACKEND": "local", "HOME": str(tmp_path)})
    assert isinstance(backend, LocalBackend) and backend.home == tmp_path.resolve()
    assert backend.health().healthy
    with pytest.raises(BackendError, match="unknown backend 'aws'; choose one of azure, local"):
        get_backend({"BACKEND": "aws"})
    import app.backends as backends

    monkeypatch.setattr(backends, "_installed", lambda _module: False)
    with pytest.raises(BackendError, match=r"pip install 'modelgate\[azure\]'"):
        get_backend({"BACKEND": "azure", "HOME": str(tmp_path)})


def test_provision_reports_updates_and_refuses_another_workspace(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    steps: list[tuple[int, str]] = []
    first = backend.provision(_spec(), lambda pct, step: steps.append((pct, step)))
    assert first.existing == () and "workspace:modelgate-local" in first.created
    assert [p for p, _ in steps] == sorted(p for p, _ in steps) and steps[-1][0] == 100
    runtime = json.loads((tmp_path / "runtime" / "settings.json").read_text())
    assert runtime["environments"]["prod"] == {"replicas": 2, "cpu": 0.25, "memory_mb": 256}
    gateway = json.loads((tmp_path / "gateway" / "settings.json").read_text())
    assert gateway["paths"] == {"staging": "staging/credit-risk", "prod": "credit-risk"}

    # Changed sizes rewrite the settings and say so; nothing else is created again.
    second = backend.provision(_spec(keys__rotation_days=7), _quiet)
    assert second.created == ()
    assert second.details["updated"] == ["gateway-settings"]
    assert json.loads((tmp_path / "gateway" / "settings.json").read_text()
                      )["key_rotation_days"] == 7

    other = ProvisionSpec(workspace="team-b", settings=_spec().settings)
    with pytest.raises(ResourceConflict, match="already holds workspace 'modelgate-local'"):
        backend.provision(other, _quiet)
    # Tearing down a workspace that is not here removes nothing.
    backend.teardown("team-b", _quiet)
    assert (tmp_path / "workspace.json").exists()


def test_missing_dataset_fails_before_creating_anything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(BackendError, match="^data.path: dataset file not found"):
        LocalBackend(home).provision(_spec(data__path=str(tmp_path / "missing.csv")), _quiet)
    assert not home.exists() or not any(home.iterdir())


def test_teardown_of_an_empty_home_is_not_an_error(tmp_path: Path) -> None:
    steps: list[str] = []
    LocalBackend(tmp_path).teardown("modelgate-local", lambda _p, step: steps.append(step))
    assert steps == ["workspace modelgate-local is not provisioned here; nothing to remove"]
