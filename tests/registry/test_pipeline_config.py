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


def test_fairness_and_gate_sections_default_and_merge(tmp_path: Path) -> None:
    default = load_pipeline_config(DEFAULT_PATH)
    assert [(g.name, g.column, g.bands) for g in default.fairness.groups] == [
        ("sex", "Sex", ()), ("age", "Age", (25.0, 35.0, 50.0))]
    assert default.fairness.min_group_size == 30
    assert default.model.fairness == default.fairness  # the train job carries it
    assert default.model.exclude == ()
    assert (default.gate.min_heldout_auc, default.gate.min_selection_rate_ratio,
            default.gate.max_equalized_odds_gap) == (0.7, None, None)
    own = tmp_path / "pipeline.yml"
    own.write_text("fairness:\n  groups:\n    band: {column: Duration, bands: [12, 24]}\n"
                   "gate: {min_selection_rate_ratio: 0.8}\n"
                   "model: {exclude: [Sex, Age]}\n")
    config = load_pipeline_config(own)
    # A user's groups replace the default's (no age left over); gate keys merge.
    assert [(g.name, g.column, g.bands) for g in config.fairness.groups] == [
        ("band", "Duration", (12.0, 24.0))]
    assert config.fairness.groups[0].labels() == ["under 12", "12–23", "24+"]
    assert (config.gate.min_heldout_auc, config.gate.min_selection_rate_ratio) == (0.7, 0.8)
    assert config.model.exclude == ("Age", "Sex")  # input order
    assert parse_pipeline_config(config.to_dict()).to_dict() == config.to_dict()
    assert "fairness" not in config.to_dict()["model"]


@pytest.mark.parametrize("text,key,message", [
    ("fairness: {grups: {}}\n", "fairness.grups", "unknown key; expected one of groups"),
    ("fairness: {groups: {sex: {column: Gender}}}\n", "fairness.groups.sex.column",
     "must be one of the model's input columns: Age, Job"),
    ("fairness: {groups: {sex: {column: Sex, bands: [1]}}}\n", "fairness.groups.sex.bands",
     "categorical"),
    ("fairness: {groups: {age: {column: Age}}}\n", "fairness.groups.age.bands",
     "a numeric column needs 1-10 band edges"),
    ("fairness: {groups: {age: {column: Age, bands: [40, 30]}}}\n",
     "fairness.groups.age.bands", "must increase"),
    ("fairness: {groups: {age: {column: Age, edges: [30]}}}\n", "fairness.groups.age.edges",
     "unknown key"),
    ("fairness: {groups: []}\n", "fairness.groups", "must be a mapping"),
    ("fairness: {min_group_size: 0}\n", "fairness.min_group_size", "integer 1..10000"),
    ("fairness: {confidence_level: 95}\n", "fairness.confidence_level", "number 0.5..0.999"),
    ("fairness: [sex]\n", "fairness", "must be a mapping"),
    ("gate: {min_auc: 0.7}\n", "gate.min_auc",
     "unknown key; expected one of min_heldout_auc, min_selection_rate_ratio, "
     "max_equalized_odds_gap"),
    ("gate: {min_heldout_auc: 1.5}\n", "gate.min_heldout_auc", "must be a number 0..1"),
    ("gate: {max_equalized_odds_gap: 'low'}\n", "gate.max_equalized_odds_gap",
     "must be a number 0..1"),
    ("gate: {min_selection_rate_ratio: true}\n", "gate.min_selection_rate_ratio",
     "must be a number 0..1"),
    ("model: {fairness: {groups: {}}}\n", "model.fairness", "top-level fairness section"),
    ("model: {exclude: [Gender]}\n", "model.exclude[0]", "'Gender' is not an input column"),
    ("model: {exclude: Sex}\n", "model.exclude", "must be a list"),
    ("model: {exclude: [Age, Job, Credit amount, Duration, Sex, Housing, Saving accounts, "
     "Checking account, Purpose]}\n", "model.exclude", "cannot exclude every input column"),
])
def test_bad_fairness_and_gate_keys_are_named(tmp_path: Path, text: str, key: str,
                                              message: str) -> None:
    own = tmp_path / "pipeline.yml"
    own.write_text(text)
    with pytest.raises(PipelineConfigError) as caught:
        load_pipeline_config(own)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")
    assert message in str(caught.value)
