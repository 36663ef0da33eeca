"""A home restored into another folder keeps its registered models and logs new runs inside it.

A real MLflow store (SQLite, local artifacts) with a registered version is moved to another
folder, the old folder gone, as a backup restored elsewhere would be.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from app.backends.local.relocation import STORE, relocate
from app.ml.registry import ModelRegistry, RegistryError
from app.ml.training import TrainingConfig, TrainingOutcome, train

CSV = Path(__file__).resolve().parents[2] / "data" / "german_credit_data.csv"
NAME = "german-credit"


@pytest.fixture(scope="module")
def outcome() -> TrainingOutcome:
    return train(CSV, TrainingConfig(importance_repeats=1))


def _text_mentioning(store: Path, needle: str) -> list[str]:
    """Every `table.column: value` of the store whose text holds `needle`."""
    found = []
    with sqlite3.connect(store) as conn:
        tables = [t for (t,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]:
                for (value,) in conn.execute(
                        f'SELECT "{column}" FROM "{table}" WHERE typeof("{column}") = \'text\' '
                        f'AND instr("{column}", ?) > 0', (needle,)):
                    found.append(f"{table}.{column}: {value}")
    return found


def test_a_moved_home_reads_its_models_and_logs_new_runs_inside_it(
        tmp_path: Path, outcome: TrainingOutcome) -> None:
    before, after = tmp_path / "backed-up home", tmp_path / "restored"
    first = ModelRegistry.for_home(before).log_and_register(outcome, job_id="job-1")
    assert relocate(before) == [], "a home that never moved is left alone"
    shutil.move(before, after)

    # Unrelocated, the store still sends MLflow to the folder that is gone.
    with pytest.raises(RegistryError):
        ModelRegistry.for_home(after).download_package(NAME, first.version, tmp_path / "pkg")

    moved = relocate(after)
    assert [(m.old, m.new) for m in moved] == [(before.resolve(), after.resolve())]
    assert moved[0].values >= 4  # experiment, run, logged model, model version
    assert _text_mentioning(after / STORE, str(before)) == []
    assert relocate(after) == [], "relocating again changes nothing"

    registry = ModelRegistry.for_home(after)
    package = registry.load_package(NAME, first.version, after / "models" / NAME / "1")
    assert package.signature.version == first.version
    assert list(registry.load_pipeline(NAME, first.version).classes_) == ["bad", "good"]
    second = registry.log_and_register(outcome, job_id="job-2")
    assert second.version == "2"
    assert _text_mentioning(after / STORE, str(before)) == []
    assert not before.exists(), "a new run wrote into the folder the home was moved from"
    assert registry.download_package(NAME, "2", tmp_path / "pkg2").is_dir()
