"""Dataset registration: content-hash versions, inferred schema, concurrency."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.ml.dataset import (
    DatasetError,
    get_version,
    infer_schema,
    latest_version,
    list_versions,
    register_dataset,
)

from .conftest import CSV_SHA256


def _variant(csv_path: Path, tmp_path: Path, drop_last: int = 1) -> Path:
    lines = csv_path.read_bytes().splitlines(keepends=True)
    out = tmp_path / f"variant-{drop_last}.csv"
    out.write_bytes(b"".join(lines[:-drop_last]))
    return out


def test_register_creates_version_one_with_files(tmp_path: Path, csv_path: Path) -> None:
    reg = register_dataset(tmp_path, csv_path)
    ds = reg.dataset
    assert reg.created is True
    assert ds.version == 1
    assert ds.path == tmp_path / "datasets" / "german-credit" / "1"
    assert ds.data_path.read_bytes() == csv_path.read_bytes()
    meta = json.loads((ds.path / "meta.json").read_text())
    assert meta["sha256"] == CSV_SHA256 == ds.sha256
    assert meta["rows"] == 1000
    assert meta["registered_at"].endswith("+00:00")
    assert json.loads((ds.path / "schema.json").read_text())["rows"] == 1000
    # Nothing half-written is left behind.
    assert [p.name for p in ds.path.parent.iterdir() if p.name.startswith(".incoming")] == []


def test_inferred_schema_matches_data_readme(csv_path: Path) -> None:
    schema = infer_schema(csv_path)
    assert schema.names == ("Sno", "Age", "Sex", "Job", "Housing", "Saving accounts",
                            "Checking account", "Credit amount", "Duration", "Purpose", "Risk")
    age = schema.column("Age")
    assert (age.type, age.minimum, age.maximum, age.nullable) == ("integer", 19, 75, False)
    amount = schema.column("Credit amount")
    assert (amount.minimum, amount.maximum) == (250, 18424)
    assert (schema.column("Duration").minimum, schema.column("Duration").maximum) == (4, 72)
    assert schema.column("Job").type == "integer"
    saving = schema.column("Saving accounts")
    assert saving.type == "category"
    assert saving.categories == ("little", "moderate", "quite rich", "rich")
    assert (saving.nullable, saving.null_count) == (True, 183)
    assert schema.column("Checking account").null_count == 394
    assert schema.column("Risk").categories == ("bad", "good")
    assert len(schema.column("Purpose").categories or ()) == 8


def test_reregistering_identical_bytes_is_a_noop(tmp_path: Path, csv_path: Path) -> None:
    first = register_dataset(tmp_path, csv_path).dataset
    copy = tmp_path / "elsewhere.csv"
    copy.write_bytes(csv_path.read_bytes())
    again = register_dataset(tmp_path, copy)
    assert again.created is False
    assert again.dataset.version == first.version
    assert again.dataset.registered_at == first.registered_at
    assert [d.version for d in list_versions(tmp_path)] == [1]


def test_new_bytes_make_a_new_version(tmp_path: Path, csv_path: Path) -> None:
    register_dataset(tmp_path, csv_path)
    second = register_dataset(tmp_path, _variant(csv_path, tmp_path))
    assert second.created is True
    assert second.dataset.version == 2
    assert second.dataset.rows == 999
    assert second.dataset.sha256 != CSV_SHA256
    # The original bytes still map to version 1.
    assert register_dataset(tmp_path, csv_path).dataset.version == 1
    assert latest_version(tmp_path).version == 2  # type: ignore[union-attr]
    assert get_version(tmp_path, 1).sha256 == CSV_SHA256
    assert [d.version for d in list_versions(tmp_path)] == [1, 2]


def test_concurrent_registration_of_same_bytes_creates_one_version(
    tmp_path: Path, csv_path: Path
) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: register_dataset(tmp_path, csv_path), range(8)))
    assert sum(r.created for r in results) == 1
    assert {r.dataset.version for r in results} == {1}


def test_concurrent_registration_of_different_bytes_gets_distinct_versions(
    tmp_path: Path, csv_path: Path
) -> None:
    files = [_variant(csv_path, tmp_path, n) for n in range(1, 5)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda f: register_dataset(tmp_path, f), files))
    assert sorted(r.dataset.version for r in results) == [1, 2, 3, 4]
    assert len({r.dataset.sha256 for r in results}) == 4


def test_errors(tmp_path: Path, csv_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        register_dataset(tmp_path, tmp_path / "nope.csv")
    with pytest.raises(DatasetError, match="invalid dataset name"):
        register_dataset(tmp_path, csv_path, name="../escape")
    with pytest.raises(DatasetError, match="no version 7"):
        get_version(tmp_path, 7)
    assert latest_version(tmp_path) is None
