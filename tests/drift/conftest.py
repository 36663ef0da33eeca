"""Fixtures for drift checks: a registered, materialised version trained on the real CSV, and
samples written to a real Redis by the replicas' own sampler."""

from __future__ import annotations

import asyncio
import math
import shutil
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import build_app
from tests.support import ROOT, RedisServer

CSV = ROOT / "data" / "german_credit_data.csv"
FAST_MODEL = {"candidates": [{"family": "logistic_regression", "params": {"max_iter": 1000}}],
              "importance_repeats": 1, "cv_folds": 3}
MIN_SAMPLES = 50
PIPELINE_YAML = f"drift: {{min_samples: {MIN_SAMPLES}}}\n"


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MODELGATE_HOME holding german-credit v1 (registered and materialised) and its data."""
    from app.ml.workflow import train_and_register

    home = tmp_path_factory.mktemp("drift-trained")
    done = train_and_register(home, CSV, job_id="drift-seed", config=FAST_MODEL)
    assert (done.model.name, done.model.version) == ("german-credit", "1")
    return home


@pytest.fixture
def home(trained_home: Path, tmp_path: Path) -> Path:
    """This test's own copy of the trained home (it may change the package)."""
    target = tmp_path / "home"
    shutil.copytree(trained_home, target)
    return target


@pytest.fixture
def pipeline_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "pipeline.yml"
    path.write_text(PIPELINE_YAML)
    monkeypatch.setenv("MODELGATE_PIPELINE_CONFIG", str(path))
    return path


@pytest.fixture
def panel(home: Path, database_url: str, redis_server: RedisServer, pipeline_file: Path) -> Any:
    """The panel app on this test's home, database (SQLite, then PostgreSQL) and Redis (no
    context pushed: requests of different users must not share one app context's user)."""
    return build_app(home, database_url, redis_server.url, PANEL_URL="http://panel.test")


@pytest.fixture
def app(panel: Any) -> Iterator[Any]:
    """The panel app with its context pushed, for calling services directly."""
    with panel.app_context():
        yield panel


def applicants() -> list[dict[str, Any]]:
    """The CSV's records as score requests carry them (no account: null)."""
    import pandas as pd

    frame = pd.read_csv(CSV)
    fields = ("Age", "Sex", "Job", "Housing", "Saving accounts", "Checking account",
              "Credit amount", "Duration", "Purpose")
    out = []
    for record in frame.to_dict("records"):
        out.append({name: None if isinstance(record[name], float) and math.isnan(record[name])
                    else record[name] for name in fields})
    return out


def shifted(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The same applicants 30 years older asking for four times the credit."""
    return [{**r, "Age": min(int(r["Age"]) + 30, 120),
             "Credit amount": min(int(r["Credit amount"]) * 4, 1_000_000)} for r in records]


def store_samples(home: Path, redis_url: str, environment: str,
                  records: Sequence[Mapping[str, Any]], version: str = "1",
                  labelled: str | None = None) -> int:
    """Score records with the version's package and store every one, as a replica sampling at
    100 % does (app.serving.sampling); return how many were stored. ``labelled`` records them
    under another version number (one the registry does not know)."""
    from app.serving.model import load_model
    from app.serving.sampling import Sampler, SamplingSettings
    from app.serving.validation import RecordValidator

    model = load_model(home / "models" / "german-credit" / version)
    rows = RecordValidator(model.signature).validate_body({"data": list(records)})
    sampler = Sampler(SamplingSettings(environment, 1.0, 10_000, redis_url,
                                       buffer_limit=100_000))
    signature = model.signature if labelled is None else model.signature.with_version(labelled)
    sampler.offer(signature, rows, model.predictions(rows))

    async def flush() -> int:
        stored = await sampler.flush()
        await sampler.close()
        return stored

    # A thread of its own: the caller's thread may already run an event loop (Playwright's).
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(flush())).result()
