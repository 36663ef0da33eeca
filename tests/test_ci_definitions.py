"""The CI definitions in ci/ parse, run one existing `modelgate` command per stage with options
the command accepts, plan before provisioning, and request a promotion for prod."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from app.cli import main
from tests.support import ROOT

CI = ROOT / "ci"
DEFINITIONS = sorted(CI.rglob("*.yml"))


def _scripts(node: Any) -> Iterator[str]:
    """Every shell script of a pipeline: Azure DevOps `script:` and GitHub Actions `run:`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("script", "run") and isinstance(value, str):
                yield value
            else:
                yield from _scripts(value)
    elif isinstance(node, list):
        for item in node:
            yield from _scripts(item)


def _invocations(path: Path) -> list[list[str]]:
    document = yaml.safe_load(path.read_text())
    calls = []
    for script in _scripts(document):
        for line in script.replace("\\\n", " ").splitlines():
            words = shlex.split(line.replace("$(", "(").replace("${{", "{{"))
            if words and words[0] == "modelgate":
                calls.append(words[1:])
    return calls


def _resolve(args: list[str]) -> None:
    """Parse the arguments as `modelgate` would, without running the command."""
    command: click.Command = main
    while isinstance(command, click.Group):
        name, args = args[0], args[1:]
        found = command.get_command(click.Context(command), name)
        assert found is not None, f"`modelgate {name}` does not exist"
        command = found
    command.make_context(command.name or "", list(args))


def test_the_seed_pipelines_exist_in_both_forms() -> None:
    names = {p.relative_to(CI).as_posix() for p in DEFINITIONS}
    assert {"azure-devops/1-infra.yml", "azure-devops/2-train.yml", "azure-devops/3-deploy.yml",
            "azure-devops/4-publish.yml", "github/modelgate.yml"} <= names


@pytest.mark.parametrize("path", DEFINITIONS, ids=lambda p: p.relative_to(CI).as_posix())
def test_every_modelgate_command_exists_with_its_options(path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # --environment is checked against the shipped pipeline file's environments
    monkeypatch.delenv("MODELGATE_PIPELINE_CONFIG", raising=False)
    for args in _invocations(path):
        _resolve(args)


def test_each_stage_is_one_command_and_plan_comes_before_provision() -> None:
    for form in (sorted((CI / "azure-devops").glob("[1-4]-*.yml")), [CI / "github/modelgate.yml"]):
        calls = [args for path in form for args in _invocations(path)]
        commands = [args[0] for args in calls]
        for stage in ("provision", "train", "deploy", "publish"):
            assert stage in commands, (form, stage)
        assert "plan" in commands and commands.index("plan") < commands.index("provision")


def test_prod_is_a_promotion_request_with_a_reason() -> None:
    for path in DEFINITIONS:
        for args in _invocations(path):
            if "prod" in args:
                assert args[0] in ("deploy", "publish")
                assert "--reason" in args and "--wait" in args, (path, args)


def _named_values(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (name, value) of env mappings and variable lists."""
    if isinstance(node, dict):
        if set(node) == {"name", "value"}:
            yield str(node["name"]), node["value"]
        for key, value in node.items():
            if isinstance(value, str | int | float | bool):
                yield str(key), value
            else:
                yield from _named_values(value)
    elif isinstance(node, list):
        for item in node:
            yield from _named_values(item)


def test_secrets_only_come_from_the_ci_systems_secret_store() -> None:
    seen = 0
    for path in DEFINITIONS:
        for name, value in _named_values(yaml.safe_load(path.read_text())):
            if "SECRET" in name.upper():
                seen += 1
                assert str(value).startswith(("$(", "${{ secrets.")), (path, name)
    assert seen, "the definitions pass their secrets somewhere"
