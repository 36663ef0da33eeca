"""The pipeline file's drift section: defaults, a user's values, bad values named."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.pipeline_config import (
    DEFAULT_PATH,
    DriftSettings,
    PipelineConfigError,
    load_pipeline_config,
    parse_pipeline_config,
)


def test_shipped_defaults() -> None:
    drift = load_pipeline_config(DEFAULT_PATH).drift
    assert drift == DriftSettings(sample_rate=0.1, max_samples=10_000, min_samples=100,
                                  watch=0.1, act=0.25)


def test_a_users_values_and_missing_keys(tmp_path: Path) -> None:
    own = tmp_path / "pipeline.yml"
    own.write_text("drift: {sample_rate: 0.5, min_samples: 20}\n")
    drift = load_pipeline_config(own).drift
    assert (drift.sample_rate, drift.min_samples, drift.max_samples) == (0.5, 20, 10_000)
    # A mapping without the section (as older provision jobs recorded it) takes the defaults.
    data = load_pipeline_config(DEFAULT_PATH).to_dict()
    del data["drift"]
    assert parse_pipeline_config(data).drift == DriftSettings()


@pytest.mark.parametrize(("text", "key", "message"), [
    ("drift: {sample_rate: 1.5}\n", "drift.sample_rate", "0..1"),
    ("drift: {sample_rate: yes}\n", "drift.sample_rate", "number"),
    ("drift: {max_samples: 10}\n", "drift.max_samples", "100..1000000"),
    ("drift: {min_samples: 500, max_samples: 200}\n", "drift.min_samples", "max_samples"),
    ("drift: {watch: 0.3, act: 0.2}\n", "drift.act", "above drift.watch"),
    ("drift: {rate: 0.1}\n", "drift.rate", "unknown key"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    own = tmp_path / "pipeline.yml"
    own.write_text(text)
    with pytest.raises(PipelineConfigError) as caught:
        load_pipeline_config(own)
    assert caught.value.key == key and message in str(caught.value)


def test_beat_runs_the_drift_check_every_configured_period(tmp_path: Path) -> None:
    from app.config import celery_settings, load_config

    config = load_config({"TESTING": True, "HOME": str(tmp_path)})
    entry = celery_settings(config)["beat_schedule"]["check-drift"]
    assert entry == {"task": "modelgate.drift.check", "schedule": 3600.0}
    config = load_config({"TESTING": True, "HOME": str(tmp_path), "DRIFT_CHECK_SECONDS": 5})
    assert celery_settings(config)["beat_schedule"]["check-drift"]["schedule"] == 5.0
