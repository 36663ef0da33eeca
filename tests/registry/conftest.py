"""A panel whose MODELGATE_HOME holds two real versions trained on the real CSV (per module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import build_app
from tests.support import RedisServer

CSV = Path(__file__).resolve().parents[2] / "data" / "german_credit_data.csv"
# Real training, fewer importance repeats: the pages only need the files to exist.
MODEL = {"importance_repeats": 3}


@pytest.fixture(scope="module")
def registry_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    """Two versions from identical inputs, as two train jobs would register them."""
    from app.ml.workflow import train_and_register

    home = tmp_path_factory.mktemp("registry-home")
    results = [train_and_register(home, CSV, job_id=f"job-{i}", config=MODEL) for i in (1, 2)]
    return home, results


@pytest.fixture(scope="module")
def panel(registry_home: tuple[Path, list[Any]]) -> Iterator[Any]:
    home, _ = registry_home
    redis = RedisServer(home / "redis").start()
    try:
        yield build_app(home, f"sqlite:///{home / 'modelgate.db'}", redis.url)
    finally:
        redis.stop()
