"""Shared fixtures: the real CSV and one real training run per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.ml.training import TrainingConfig, TrainingOutcome, train

CSV = Path(__file__).resolve().parents[2] / "data" / "german_credit_data.csv"
CSV_SHA256 = "0eb5e4b3beade418c774282c9973d384bb6e36f4416506b7b76d22f303412e62"


@pytest.fixture(scope="session")
def csv_path() -> Path:
    assert CSV.is_file(), f"dataset missing: {CSV}"
    return CSV


@pytest.fixture(scope="session")
def outcome(csv_path: Path) -> TrainingOutcome:
    """The default training run (seed 42, LR vs GB), shared because it takes seconds."""
    return train(csv_path, TrainingConfig())
