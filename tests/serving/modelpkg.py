"""Build a model package (model.joblib + signature.json) like the training job's, for tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from app.ml.reasons import EXPLAIN_FILE, encoded_baseline

ROOT = Path(__file__).resolve().parents[2]
DATA_CSV = ROOT / "data" / "german_credit_data.csv"
NUMERIC = ["Age", "Job", "Credit amount", "Duration"]
CATEGORICAL = ["Sex", "Housing", "Saving accounts", "Checking account", "Purpose"]
FEATURES = [
    "Age",
    "Sex",
    "Job",
    "Housing",
    "Saving accounts",
    "Checking account",
    "Credit amount",
    "Duration",
    "Purpose",
]
EXAMPLE = {
    "Age": 20,
    "Sex": "male",
    "Job": 0,
    "Housing": "own",
    "Saving accounts": "little",
    "Checking account": "little",
    "Credit amount": 100,
    "Duration": 48,
    "Purpose": "radio/TV",
}
RANGES = {"Age": (18, 120), "Job": (0, 3), "Credit amount": (1, 1_000_000), "Duration": (1, 120)}
CATEGORIES = {
    "Sex": ["female", "male"],
    "Housing": ["free", "own", "rent"],
    "Saving accounts": ["little", "moderate", "quite rich", "rich"],
    "Checking account": ["little", "moderate", "rich"],
    "Purpose": [
        "business",
        "car",
        "domestic appliances",
        "education",
        "furniture/equipment",
        "radio/TV",
        "repairs",
        "vacation/others",
    ],
}
NULLABLE = {"Saving accounts", "Checking account"}


def load_frame() -> tuple[pd.DataFrame, pd.Series]:
    """Features (missing accounts as NaN, object dtype) and the string target."""
    frame = pd.read_csv(DATA_CSV)
    features = frame[FEATURES].copy()
    for name in CATEGORICAL:
        features[name] = features[name].astype(object)
    return features, frame["Risk"].astype(object)


def make_pipeline(kind: str) -> Pipeline:
    """The canonical pipeline shape of docs/internal-contracts.md."""
    classifier: Any
    if kind == "lr":
        classifier = LogisticRegression(max_iter=1000)
    elif kind == "gb":
        classifier = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0)
    elif kind == "rf":  # not compiled by the fast path: served by scikit-learn itself
        classifier = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1)
    else:
        raise ValueError(kind)
    preprocess = ColumnTransformer(
        [
            (
                "numeric",
                Pipeline(
                    [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
                ),
                NUMERIC,
            ),
            (
                "categorical",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore")),
                    ]
                ),
                CATEGORICAL,
            ),
        ]
    )
    return Pipeline([("preprocess", preprocess), ("classifier", classifier)])


def signature_dict(version: str = "3", name: str = "german-credit") -> dict[str, Any]:
    """signature.json content with the sanity ranges and the seed's example record."""
    fields: list[dict[str, Any]] = []
    for field in FEATURES:
        if field in RANGES:
            low, high = RANGES[field]
            fields.append(
                {
                    "name": field,
                    "type": "integer",
                    "minimum": low,
                    "maximum": high,
                    "nullable": False,
                }
            )
        else:
            fields.append(
                {
                    "name": field,
                    "type": "category",
                    "categories": CATEGORIES[field],
                    "nullable": field in NULLABLE,
                }
            )
    return {
        "name": name,
        "version": version,
        "target": "Risk",
        "classes": ["bad", "good"],
        "positive_class": "bad",
        "threshold": 0.42,
        "max_rows": 1000,
        "fields": fields,
        "example": dict(EXAMPLE),
    }


def build_model_package(directory: Path, kind: str = "lr", version: str = "3") -> Path:
    """Fit the pipeline on the real CSV and write the package into directory."""
    features, target = load_frame()
    pipeline = make_pipeline(kind).fit(features, target)
    directory.mkdir(parents=True, exist_ok=True)
    joblib.dump(pipeline, directory / "model.joblib")
    (directory / "signature.json").write_text(json.dumps(signature_dict(version)), "utf-8")
    (directory / "metrics.json").write_text(json.dumps({"kind": kind}), "utf-8")
    # the baseline of linear reason codes, as training writes it
    baseline = encoded_baseline(pipeline, features)
    (directory / EXPLAIN_FILE).write_text(json.dumps(baseline), "utf-8")
    return directory
