"""Model package directories: contents, atomic replacement, loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from app.ml.package import (
    BASELINE_FILE,
    FAIRNESS_FILE,
    OPTIONAL_FILES,
    PACKAGE_FILES,
    PackageError,
    load_package,
    write_package,
    write_package_parts,
)
from app.ml.predict import features_frame, predict_records
from app.ml.reasons import read_baseline
from app.ml.signature import DESIGN_EXAMPLE, Signature
from app.ml.training import CATEGORICAL, NUMERIC, TrainingOutcome
from app.ml.validation import validate_records


def test_write_and_load_round_trip(tmp_path: Path, outcome: TrainingOutcome) -> None:
    dest = write_package(outcome, tmp_path / "models" / "german-credit" / "3", version=3)
    assert sorted(p.name for p in dest.iterdir()) == sorted(PACKAGE_FILES + OPTIONAL_FILES)
    assert BASELINE_FILE in OPTIONAL_FILES
    assert json.loads((dest / BASELINE_FILE).read_text()) == json.loads(
        json.dumps(outcome.baseline))
    sig = json.loads((dest / "signature.json").read_text())
    assert sig["version"] == "3" and sig["threshold"] == outcome.threshold
    pkg = load_package(dest)
    assert pkg.signature == outcome.signature.with_version("3")
    assert pkg.metrics == json.loads(json.dumps(outcome.metrics))
    assert pkg.fairness == json.loads(json.dumps(outcome.fairness))
    assert [a["name"] for a in pkg.fairness["attributes"]] == ["sex", "age"]
    assert pkg.importance["features"][0]["feature"] == outcome.importance["features"][0][
        "feature"]
    frame = features_frame([DESIGN_EXAMPLE], NUMERIC, CATEGORICAL)
    np.testing.assert_array_equal(pkg.pipeline.predict_proba(frame),
                                  outcome.pipeline.predict_proba(frame))
    records = validate_records(pkg.signature, [dict(DESIGN_EXAMPLE)])
    assert predict_records(pkg.pipeline, pkg.signature, records) == predict_records(
        outcome.pipeline, outcome.signature, records)


def test_the_package_holds_the_encoded_training_mean(tmp_path: Path,
                                                     outcome: TrainingOutcome) -> None:
    """explain.json: the baseline of linear reason codes, one mean per encoded feature."""
    from app.ml.dataset import read_csv
    from app.ml.predict import frame_from_dataframe

    dest = write_package(outcome, tmp_path / "pkg", version=1)
    mean = np.asarray(read_baseline(dest))
    preprocess = outcome.pipeline.named_steps["preprocess"]
    names = list(preprocess.get_feature_names_out())
    assert len(mean) == len(names)
    # scaled numeric columns average 0 on the training part; one-hot columns are frequencies
    numeric = [i for i, n in enumerate(names) if n.startswith("numeric__")]
    onehot = [i for i, n in enumerate(names) if n.startswith("categorical__")]
    assert np.allclose(mean[numeric], 0.0, atol=1e-12)
    assert np.all((mean[onehot] > 0.0) & (mean[onehot] < 1.0))
    assert math.isclose(mean[onehot].sum(), len(CATEGORICAL))  # one category per field
    # it is the training part's mean, not the whole dataset's
    whole = frame_from_dataframe(read_csv(outcome.dataset.path), NUMERIC, CATEGORICAL)
    assert outcome.explain["n_train"] == outcome.metrics["n_train"] < len(whole)
    assert not np.allclose(np.asarray(preprocess.transform(whole)).mean(axis=0), mean)


def test_a_package_without_a_fairness_report_still_loads(tmp_path: Path,
                                                        outcome: TrainingOutcome) -> None:
    """Versions trained before the report existed stay deployable."""
    dest = write_package(outcome, tmp_path / "pkg", version=1)
    (dest / FAIRNESS_FILE).unlink()
    pkg = load_package(dest)
    assert pkg.fairness == {} and pkg.signature.version == "1"


def test_rewrite_replaces_whole_package(tmp_path: Path, outcome: TrainingOutcome) -> None:
    dest = tmp_path / "pkg"
    write_package(outcome, dest, version=1)
    (dest / "stray.txt").write_text("from the old package")
    write_package(outcome, dest, version=2)
    assert load_package(dest).signature.version == "2"
    assert not (dest / "stray.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]  # no temp or old dirs left


def test_failed_write_leaves_old_package(tmp_path: Path, outcome: TrainingOutcome) -> None:
    dest = write_package(outcome, tmp_path / "pkg", version=1)
    with pytest.raises(ValueError):
        write_package_parts(dest, pipeline=outcome.pipeline,
                            signature=outcome.signature.with_version("2"),
                            metrics={"roc_auc": math.nan}, importance={}, calibration={},
                            roc={})
    assert load_package(dest).signature.version == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_incomplete_package_is_refused(tmp_path: Path, outcome: TrainingOutcome) -> None:
    dest = write_package(outcome, tmp_path / "pkg")
    (dest / "roc.json").unlink()
    with pytest.raises(PackageError, match="missing roc.json"):
        load_package(dest)


def test_classes_must_match_signature(tmp_path: Path, outcome: TrainingOutcome) -> None:
    wrong = Signature.from_dict({**outcome.signature.to_dict(), "classes": ["no", "yes"],
                                 "positive_class": "yes"})
    dest = write_package_parts(tmp_path / "pkg", pipeline=outcome.pipeline, signature=wrong,
                               metrics={}, importance={}, calibration={}, roc={})
    with pytest.raises(PackageError, match="do not match"):
        load_package(dest)
