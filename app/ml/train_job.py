"""Training as a batch job: ``python -m app.ml.train_job --data PATH --out DIR --config FILE``.

What an Azure ML command job runs (app/backends/azure/training.py uploads this package as the
job's code): the same training as the local backend (:func:`app.ml.training.train` with the
pipeline file's ``model:`` settings), written as an MLflow-format model directory that also
holds modelgate's serving package (:func:`app.ml.registry.save_model_dir`).

- ``--data``: the dataset CSV, or a folder holding it (``data.csv``, else its only ``*.csv``):
  Azure ML mounts a ``uri_file`` data asset as a file and a ``uri_folder`` one as a folder.
- ``--out``: the output folder (absent or empty).
- ``--config``: a JSON file with the ``model:`` settings (``TrainingConfig.to_dict()``).
- ``--dataset-name`` / ``--dataset-version``: lineage recorded in the summary.

When ``MLFLOW_RUN_ID`` and ``MLFLOW_TRACKING_URI`` are both set as the job starts (Azure ML
sets them in every job; MLflow's own ``set_tracking_uri`` exports the second, so it alone says
nothing), params and metrics are logged to that run, with the summary as the tag
``modelgate.summary`` (JSON: family, threshold, metrics, dataset) and the package's
signature.json as the tag ``modelgate.signature`` (compact JSON, its version empty), which the
backend reads back from
the run's details: it registers the signature with the model version, where the smoke test
reads the example and the classes.
The summary is also printed as the last line, prefixed ``modelgate-summary: ``.

Exit status: 0 trained, 2 bad arguments, data or settings (the message names which).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("app.ml.train_job")

SUMMARY_TAG = "modelgate.summary"
SIGNATURE_TAG = "modelgate.signature"
SUMMARY_PREFIX = "modelgate-summary: "
# The metrics a train job's result carries (app/backends/local/training.py RESULT_METRICS).
SUMMARY_METRICS: tuple[str, ...] = ("cv_roc_auc", "roc_auc", "accuracy", "f1_bad", "brier",
                                    "expected_cost")


class JobInputError(Exception):
    """The job's arguments, data or settings are unusable."""


def find_csv(data: Path) -> Path:
    """The dataset CSV: ``data`` itself, or the CSV inside a mounted folder.

    Raises:
        JobInputError: nothing, or more than one candidate, is found.
    """
    if data.is_file():
        return data
    if not data.is_dir():
        raise JobInputError(f"--data {data}: no such file or folder")
    if (data / "data.csv").is_file():
        return data / "data.csv"
    found = sorted(p for p in data.rglob("*.csv") if p.is_file())
    if len(found) != 1:
        raise JobInputError(f"--data {data}: expected one CSV file, found {len(found)}")
    return found[0]


def summary(outcome: Any, dataset_name: str | None, dataset_version: int | str | None
            ) -> dict[str, Any]:
    """What the backend reports as the train job's result (besides the model version)."""
    flat = outcome.flat_metrics()
    return {
        "family": outcome.family,
        "threshold": outcome.threshold,
        "metrics": {key: flat[key] for key in SUMMARY_METRICS},
        "dataset": {"name": dataset_name, "version": dataset_version,
                    "sha256": outcome.dataset.sha256},
    }


def signature_text(outcome: Any) -> str:
    """The package's signature.json as one compact line (a run tag holds up to 8000
    characters; the German credit signature takes about 1500)."""
    return json.dumps(outcome.signature.to_dict(), sort_keys=True, separators=(",", ":"))


def run(data: Path, out: Path, config_file: Path, *, dataset_name: str | None = None,
        dataset_version: int | str | None = None) -> dict[str, Any]:
    """Train on ``data`` with the settings in ``config_file`` and write the model to ``out``.

    Raises:
        JobInputError: bad data or settings.
    """
    from app.ml.config import ConfigError, TrainingConfig
    from app.ml.registry import log_to_environment_run, save_model_dir
    from app.ml.training import TrainingError, train

    # Read before training: MLflow's set_tracking_uri (used while saving) rewrites the variable.
    environment_run = (os.environ.get("MLFLOW_TRACKING_URI", ""),
                       os.environ.get("MLFLOW_RUN_ID", ""))
    if out.exists() and any(out.iterdir()):
        raise JobInputError(f"--out {out} is not empty")
    try:
        settings = json.loads(config_file.read_text(encoding="utf-8"))
        config = TrainingConfig.from_dict(settings)
        csv = find_csv(data)
        outcome = train(csv, config, progress=lambda pct, step: log.info("%3d%% %s", pct, step))
    except (OSError, ValueError, ConfigError, TrainingError) as exc:
        raise JobInputError(str(exc)) from exc
    save_model_dir(outcome, out)
    log.info("wrote the MLflow model and the serving package to %s", out)
    result = summary(outcome, dataset_name, dataset_version)
    if all(environment_run):
        run_id = log_to_environment_run(outcome, {
            SUMMARY_TAG: json.dumps(result, sort_keys=True),
            SIGNATURE_TAG: signature_text(outcome),
            "dataset_name": dataset_name or "",
            "dataset_version": "" if dataset_version is None else str(dataset_version),
            "dataset_sha256": outcome.dataset.sha256,
            "family": outcome.family,
        }, tracking_uri=environment_run[0], run_id=environment_run[1])
        log.info("logged params, metrics and the summary to MLflow run %s", run_id)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The job's command-line options."""
    parser = argparse.ArgumentParser(prog="python -m app.ml.train_job",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--dataset-name", default=None)
    parser.add_argument("--dataset-version", default=None,
                        help="the data asset's version (a number, or Azure ML's version text)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; the summary is the last line printed."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    version = args.dataset_version
    try:
        result = run(args.data, args.out, args.config, dataset_name=args.dataset_name,
                     dataset_version=int(version) if version and version.isdigit() else version)
    except JobInputError as exc:
        print(f"modelgate training failed: {exc}", file=sys.stderr)
        return 2
    print(SUMMARY_PREFIX + json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
