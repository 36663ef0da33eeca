"""`modelgate plan` on the local backend: create / update / no change read from the home, an
offline plan that reads nothing, and no change to the home either way."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from app.cli import main


def _plan(home: Path, *args: str, pipeline: Path | None = None) -> tuple[int, str]:
    env = {"MODELGATE_HOME": str(home), "MODELGATE_BACKEND": "local"}
    if pipeline is not None:
        env["MODELGATE_PIPELINE_CONFIG"] = str(pipeline)
    result = CliRunner().invoke(main, ["plan", *args], env=env)
    return result.exit_code, result.output


def _provision(home: Path) -> None:
    from app.backends.local import LocalBackend
    from app.pipeline_config import DEFAULT_PATH, load_pipeline_config
    from app.services.plans import chain_spec

    LocalBackend(home).provision(chain_spec(load_pipeline_config(DEFAULT_PATH)),
                                 lambda p, s: None)


def _tree(home: Path) -> dict[str, float]:
    return {str(p.relative_to(home)): p.stat().st_mtime for p in home.rglob("*")}


def test_a_new_home_plans_everything_as_create_and_is_left_untouched(tmp_path: Path) -> None:
    home = tmp_path / "home"
    code, out = _plan(home)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[-1].startswith("plan: 16 to create, 0 to update, 0 unchanged")
    for kind in ("Workspace record", "Dataset version", "Scoring deployment", "API operation",
                 "API policy", "Named value"):
        assert any(kind in line and line.startswith("create") for line in lines), kind
    assert not home.exists(), "planning created nothing"


def test_after_provisioning_the_workspace_is_unchanged_and_a_changed_key_is_an_update(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    _provision(home)
    before = _tree(home)
    code, out = _plan(home, "--json")
    assert code == 0, out
    plan = json.loads(out)
    actions = {(i["kind"], i["name"].split("@")[0]): i["action"] for i in plan["items"]}
    assert actions[("Workspace record", "modelgate-local")] == "no change"
    assert actions[("Dataset version", "german-credit")] == "no change"
    assert actions[("Runtime settings", "runtime/settings.json")] == "no change"
    assert actions[("API", "credit-risk")] == "create", "nothing is published yet"
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text("workspace:\n  region: northeurope\n"
                        "environments:\n  staging: {replicas: 3, cpu: 0.25, memory_mb: 256}\n"
                        "  prod: {replicas: 2, cpu: 0.25, memory_mb: 256, protected: true}\n")
    code, out = _plan(home, pipeline=pipeline)
    assert code == 0, out
    workspace = next(line for line in out.splitlines() if "Workspace record" in line)
    assert workspace.startswith("update")
    assert "~ region: 'westeurope' -> 'northeurope'" in out
    runtime = out.splitlines().index(next(line for line in out.splitlines()
                                          if "Runtime settings" in line))
    assert out.splitlines()[runtime].startswith("update")
    assert out.splitlines()[runtime + 1].strip().startswith("~ environments:")
    assert "'replicas': 3" in out.splitlines()[runtime + 1]
    assert _tree(home) == before, "planning changed nothing in the home"


def test_offline_reads_nothing_even_from_a_provisioned_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _provision(home)
    code, out = _plan(home, "--offline", "--json")
    assert code == 0, out
    plan = json.loads(out)
    assert plan["offline"] is True
    assert {i["action"] for i in plan["items"]} == {"create"}


def test_a_broken_pipeline_file_is_an_error_naming_the_key(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text("azure:\n  apim_sku: Basic\n")
    code, out = _plan(tmp_path / "home", pipeline=pipeline)
    assert code == 1
    assert "azure.apim_sku" in out and "Traceback" not in out


def test_an_unknown_backend_is_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["plan"], env={"MODELGATE_HOME": str(tmp_path),
                                                     "MODELGATE_BACKEND": "nonsense"})
    assert result.exit_code == 1
    assert "unknown backend 'nonsense'" in result.output
