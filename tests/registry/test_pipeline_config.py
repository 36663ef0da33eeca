"""The pipeline configuration file: defaults, merging a user's file, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.ml.config import TrainingConfig
from app.pipeline_config import (
    DEFAULT_PATH,
    PROJECT_ROOT,
    PipelineConfigError,
    config_path,
    load_pipeline_config,
    parse_pipeline_config,
)


def test_shipped_default_is_valid_and_complete() -> None:
    config = load_pipeline_config(DEFAULT_PATH)
    assert config.workspace.name == "modelgate-local"
    assert config.data.path == PROJECT_ROOT / "data" / "german_credit_data.csv"
    assert config.data.path.is_file()
    assert config.environment_names == ("staging", "prod")
    assert config.environment("prod").replicas == 2
    assert config.model.name == "german-credit"
    assert [c.family for c in config.model.candidates] == ["logistic_regression",
                                                           "gradient_boosting"]
    assert config.model.seed == 42 and config.model.test_size == 0.2
    assert config.gateway.path_for("prod") == "credit-risk"
    assert config.gateway.path_for("staging") == "staging/credit-risk"
    assert config.keys.rotation_days == 30
    # The mapping form round-trips (it is what the provision job hands a backend).
    assert parse_pipeline_config(config.to_dict()).to_dict() == config.to_dict()


def test_users_file_is_merged_over_the_default(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my.csv").write_text("x\n")
    own = tmp_path / "pipeline.yml"
    own.write_text("workspace: {name: team-a}\n"
                   "data: {path: my.csv}\n"
                   "environments:\n  prod: {replicas: 3}\n  canary: {replicas: 1, cpu: 0.5, "
                   "memory_mb: 128}\n"
                   "model: {cv_folds: 3, candidates: [{family: random_forest}]}\n")
    monkeypatch.setenv("MODELGATE_PIPELINE_CONFIG", str(own))
    assert config_path() == own
    config = load_pipeline_config()
    assert config.source == str(own)
    assert config.workspace.name == "team-a"
    assert config.workspace.region == "westeurope"  # from the default
    assert config.data.path == tmp_path / "my.csv"  # relative to the user's file
    prod = config.environment("prod")
    assert (prod.replicas, prod.cpu, prod.memory_mb) == (3, 0.25, 256)
    assert config.environment_names == ("staging", "prod", "canary")
    assert config.model.cv_folds == 3
    assert [c.family for c in config.model.candidates] == ["random_forest"]  # lists replace


def test_default_data_path_stays_in_the_project_for_a_users_file(tmp_path: Path) -> None:
    own = tmp_path / "pipeline.yml"
    own.write_text("keys: {rotation_days: 7}\n")
    config = load_pipeline_config(own)
    assert config.data.path == PROJECT_ROOT / "data" / "german_credit_data.csv"
    assert config.keys.rotation_days == 7
    assert config.model == TrainingConfig.from_dict(load_pipeline_config(DEFAULT_PATH)
                                                    .model.to_dict())


@pytest.mark.parametrize("text,key,message", [
    ("environments:\n  staging: {replicas: 0}\n", "environments.staging.replicas",
     "must be an integer 1..10"),
    ("environments:\n  staging: {replicas: two}\n", "environments.staging.replicas",
     "must be an integer 1..10"),
    ("environments:\n  prod: {replicas: 2.5}\n", "environments.prod.replicas",
     "must be an integer 1..10"),
    ("environments:\n  staging: {cpus: 1}\n", "environments.staging.cpus", "unknown key"),
    ("environments:\n  prod: null\n", "environments.prod", "must be a mapping"),
    ("environments:\n  Big_Env: {replicas: 1, cpu: 1, memory_mb: 512}\n",
     "environments.Big_Env", "lower-case"),
    ("workspce: {name: x}\n", "workspce", "unknown key"),
    ("workspace: {name: 'has space'}\n", "workspace.name", "letters, digits"),
    ("gateway: {rate_limit: 5}\n", "gateway.rate_limit", "unknown key"),
    ("gateway: {api_path: '/Credit Risk'}\n", "gateway.api_path", "path segments"),
    ("keys: {rotation_days: true}\n", "keys.rotation_days", "must be an integer 1..365"),
    ("runtime: {host: localhost}\n", "runtime.host", "IP address"),
    ("data: {path: 42}\n", "data.path", "string"),
    ("model: {cv_folds: 1}\n", "model.cv_folds", "between 2 and 20"),
    ("model: {skip_identical: 'yes'}\n", "model.skip_identical", "must be true or false"),
    ("model: {candidates: [{family: svm}]}\n", "model.candidates[0].family", "unknown family"),
    ("model: {candidates: [{family: gradient_boosting, params: {depth: 3}}]}\n",
     "model.candidates[0].params.depth", ""),
    ("azure: {service_cidr: 10.123.0.0/16, dns_service_ip: 10.123.0.10}\n",
     "azure.service_cidr", "must not overlap"),
    ("azure: {vnet_address_range: 10.0.0.0/33}\n", "azure.vnet_address_range", "CIDR"),
    ("mlflow: {experiment: ''}\n", "mlflow.experiment", "non-empty"),
    ("model: []\n", "model", "must be a mapping"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, text: str, key: str,
                                               message: str) -> None:
    own = tmp_path / "pipeline.yml"
    own.write_text(text)
    with pytest.raises(PipelineConfigError) as caught:
        load_pipeline_config(own)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")
    assert message in str(caught.value)


def test_missing_required_environment_is_named() -> None:
    data = load_pipeline_config(DEFAULT_PATH).to_dict()
    del data["environments"]["prod"]
    with pytest.raises(PipelineConfigError, match=r"^environments\.prod: is required"):
        parse_pipeline_config(data)


@pytest.mark.parametrize("text,message", [
    ("environments:\n  staging: {replicas: 1\n", "not valid YAML (line"),
    ("- a\n- b\n", "top level must be a mapping"),
])
def test_unparseable_files_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    own = tmp_path / "pipeline.yml"
    own.write_text(text)
    with pytest.raises(PipelineConfigError, match="not valid YAML|top level") as caught:
        load_pipeline_config(own)
    assert caught.value.key == str(own) and message in str(caught.value)


def test_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(PipelineConfigError, match="cannot read the file") as caught:
        load_pipeline_config(tmp_path / "nope.yml")
    assert caught.value.key.endswith("nope.yml")
