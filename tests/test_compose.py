"""docker-compose.yml checked offline: every service runs a real command with known settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from app.cli import main
from app.config import BaseConfig

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
MODELGATE_SERVICES = {name: svc for name, svc in COMPOSE["services"].items()
                      if svc.get("image", "").startswith("modelgate")}


def test_compose_runs_every_process_of_the_local_stack() -> None:
    commands = {tuple(svc["command"][:2]) for svc in MODELGATE_SERVICES.values()}
    for process in ("panel", "worker", "beat", "idp", "gateway", "runtime"):
        assert ("modelgate", process) in commands, process
    assert {"redis", "postgres"} <= set(COMPOSE["services"])


@pytest.mark.parametrize("name", sorted(MODELGATE_SERVICES))
def test_service_command_parses(name: str) -> None:
    argv = MODELGATE_SERVICES[name]["command"][1:]
    result = CliRunner().invoke(main, [*argv, "--help"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", sorted(MODELGATE_SERVICES))
def test_service_settings_are_known_and_secrets_not_fixed(name: str) -> None:
    env = MODELGATE_SERVICES[name]["environment"]
    known = {k for k in dir(BaseConfig) if k.isupper()}
    for key in env:
        assert key.startswith("MODELGATE_") and key[len("MODELGATE_"):] in known, key
    # Every secret is a required variable from the environment, never a value in the file.
    assert env["MODELGATE_SECRET_KEY"].startswith("${MODELGATE_SECRET_KEY:?")
    assert "${POSTGRES_PASSWORD:?" in env["MODELGATE_DATABASE_URL"]
    assert "${REDIS_PASSWORD:?" in env["MODELGATE_REDIS_URL"]
