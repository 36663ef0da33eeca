"""MLflow tracking and model registry: the only module that talks to MLflow.

MLflow is imported lazily (``import mlflow`` costs over a second).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from app.ml.package import (
    PACKAGE_FILES,
    ModelPackage,
    _swap_in,
    load_package,
    write_package,
)
from app.ml.signature import FieldType, Signature

if TYPE_CHECKING:
    from app.ml.training import TrainingOutcome

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "german-credit"
DEFAULT_EXPERIMENT = "german-credit"
PACKAGE_ARTIFACT_PATH = "package"
MODEL_ARTIFACT_NAME = "model"

# mlflow.sklearn.log_model and load_model read the process-wide tracking URI; this lock keeps
# two registries in one process (tests, threads) from switching it under each other.
_URI_LOCK = threading.RLock()


class RegistryError(Exception):
    """A tracking or registry operation failed (wraps MLflow's exceptions)."""


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered model version with its run's metrics and params."""

    name: str
    version: str
    run_id: str | None
    status: str
    created_at: datetime
    source: str
    aliases: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    metrics: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def training_identity(self) -> tuple[str, tuple[tuple[str, str], ...]] | None:
        """What makes a retraining reproduce this version: the dataset's hash and every run
        parameter (the seed among them); None when the run recorded neither."""
        sha = self.tags.get("dataset_sha256")
        if not sha or not self.params:
            return None
        return sha, tuple(sorted(self.params.items()))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready form (for ``GET /api/v1/models/<name>/versions``)."""
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "source": self.source,
            "aliases": list(self.aliases),
            "tags": dict(self.tags),
            "metrics": dict(self.metrics),
            "params": dict(self.params),
        }


def code_version() -> str | None:
    """Return MODELGATE_CODE_VERSION, else the git commit of this checkout, else None."""
    env = os.environ.get("MODELGATE_CODE_VERSION")
    if env:
        return env
    repo = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
            timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def _import_mlflow() -> Any:
    """Import mlflow with the sklearn flavour and artifact helpers."""
    # MLflow 3 sends usage telemetry by default; a local, offline control panel should not
    # phone home. An operator can still opt in by setting the variable to "false".
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with warnings.catch_warnings():
        # MLflow 3 warns about its own type hints while importing mlflow.pyfunc; nothing a
        # caller can fix, and it would fail every test run with -W error.
        warnings.filterwarnings("ignore", message=r".*Any type hint is inferred as AnyType",
                                category=UserWarning)
        import mlflow
        import mlflow.artifacts
        import mlflow.models
        import mlflow.pyfunc  # lazily loaded by the sklearn flavour otherwise: import it here
        import mlflow.sklearn
    return mlflow


def _mlflow_signature(signature: Signature) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    kinds = {FieldType.INTEGER: "long", FieldType.NUMBER: "double", FieldType.CATEGORY: "string"}
    inputs = Schema([
        ColSpec(kinds[f.type], f.name, required=not f.nullable) for f in signature.fields
    ])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec("string")]))


def _input_example(signature: Signature) -> Any:
    import pandas as pd

    row = {f.name: signature.example.get(f.name) for f in signature.fields}
    frame = pd.DataFrame([row])
    for f in signature.fields:
        if f.type is FieldType.INTEGER:
            frame[f.name] = frame[f.name].astype("int64")
        elif f.type is FieldType.NUMBER:
            frame[f.name] = frame[f.name].astype("float64")
        else:
            frame[f.name] = frame[f.name].astype(object)
    return frame


def _requirements() -> list[str]:
    # Pinned explicitly: otherwise MLflow infers them by loading the model in a subprocess,
    # which takes seconds and warns.
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("scikit-learn", "pandas", "numpy", "cloudpickle"):
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:  # pragma: no cover - these come with scikit-learn/mlflow
            out.append(dist)
    return out


class ModelRegistry:
    """Runs, model versions and aliases in one MLflow tracking server/registry.

    Args:
        tracking_uri: any MLflow tracking URI (``sqlite:///…`` locally, the Azure ML
            workspace's MLflow endpoint in the cloud).
        artifact_root: where a newly created experiment keeps artifacts (local folder or URI);
            None leaves it to the tracking server.
        registry_uri: the model registry URI; defaults to the tracking URI.
        experiment: the experiment runs are logged to.
    """

    def __init__(
        self,
        tracking_uri: str,
        artifact_root: str | os.PathLike[str] | None = None,
        *,
        registry_uri: str | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.experiment = experiment
        if artifact_root is None or "://" in str(artifact_root):
            self.artifact_location = None if artifact_root is None else str(artifact_root)
        else:
            self.artifact_location = Path(artifact_root).resolve().as_uri()
        self._client: Any = None

    @classmethod
    def for_home(cls, home: str | os.PathLike[str], tracking_uri: str | None = None
                 ) -> ModelRegistry:
        """Return the registry of an instance folder (SQLite store + artifacts in home/mlflow)."""
        root = Path(home).resolve() / "mlflow"
        root.mkdir(parents=True, exist_ok=True)
        (root / "artifacts").mkdir(exist_ok=True)
        return cls(tracking_uri or f"sqlite:///{root / 'mlflow.db'}", root / "artifacts")

    @property
    def client(self) -> Any:
        """The MlflowClient bound to this registry's URIs (created on first use)."""
        if self._client is None:
            mlflow = _import_mlflow()
            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri,
                                        registry_uri=self.registry_uri)
        return self._client

    @contextlib.contextmanager
    def _fluent(self) -> Iterator[Any]:
        """Point MLflow's process-wide URIs at this registry for the duration."""
        mlflow = _import_mlflow()

        with _URI_LOCK:
            previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.registry_uri)
            try:
                yield mlflow
            finally:
                mlflow.set_tracking_uri(previous[0])
                mlflow.set_registry_uri(previous[1])

    def ensure_experiment(self) -> tuple[str, bool]:
        """Create the experiment if needed; return (experiment id, created)."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is not None:
                if found.lifecycle_stage == "deleted":
                    # A deleted experiment keeps its name; runs cannot be logged until restored.
                    self.client.restore_experiment(found.experiment_id)
                return found.experiment_id, False
            exp_id = self.client.create_experiment(
                self.experiment, artifact_location=self.artifact_location
            )
        except MlflowException as exc:
            raise RegistryError(f"cannot create experiment {self.experiment!r}: {exc}") from exc
        logger.info("created MLflow experiment %s (%s)", self.experiment, exp_id)
        return exp_id, True

    def log_and_register(
        self,
        outcome: TrainingOutcome,
        *,
        job_id: str | None = None,
        model_name: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> ModelVersionInfo:
        """Log a training run and register its model as a new version.

        The run holds params, metrics, lineage tags, the MLflow sklearn model (with signature
        and input example) and the model package under ``package/``; the package's
        signature.json carries the new version number.

        Args:
            outcome: the result of :func:`app.ml.training.train`.
            job_id: the panel job that trained it (tagged on run and version).
            model_name: registered model name; defaults to the signature's name.
            tags: extra tags for the run and the version.

        Returns:
            The new model version.

        Raises:
            RegistryError: logging or registration failed (the run is marked FAILED).
        """
        from mlflow.exceptions import MlflowException

        name = model_name or outcome.signature.name or DEFAULT_MODEL_NAME
        exp_id, _ = self.ensure_experiment()
        commit = code_version()
        lineage = {
            "dataset_name": outcome.dataset.name or "",
            "dataset_version": "" if outcome.dataset.version is None
            else str(outcome.dataset.version),
            "dataset_sha256": outcome.dataset.sha256,
            "job_id": job_id or "",
            "family": outcome.family,
            "code_version": commit or "",
            **(tags or {}),
        }
        held = outcome.heldout
        version_tags = {
            **lineage,
            "roc_auc": f"{held['roc_auc']:.4f}",
            "cv_roc_auc": f"{outcome.metrics['cv']['roc_auc_mean']:.4f}",
            "expected_cost": f"{held['expected_cost']:.4f}",
            "threshold": f"{outcome.threshold:.6f}",
        }
        registered = None
        try:
            with self._fluent() as mlflow:
                run_tags = dict(lineage)
                if commit:
                    run_tags["mlflow.source.git.commit"] = commit
                with mlflow.start_run(experiment_id=exp_id, tags=run_tags) as run:
                    mlflow.log_params(outcome.params())
                    mlflow.log_metrics(outcome.flat_metrics())
                    info = mlflow.sklearn.log_model(
                        outcome.pipeline,
                        name=MODEL_ARTIFACT_NAME,
                        serialization_format="cloudpickle",
                        signature=_mlflow_signature(outcome.signature),
                        input_example=_input_example(outcome.signature),
                        pip_requirements=_requirements(),
                    )
                    registered = mlflow.register_model(info.model_uri, name, tags=version_tags)
                    with tempfile.TemporaryDirectory(prefix="modelgate-pkg-") as tmp:
                        pkg = write_package(outcome, Path(tmp) / "package", registered.version)
                        mlflow.log_artifacts(str(pkg), artifact_path=PACKAGE_ARTIFACT_PATH)
                    run_id = run.info.run_id
        except Exception as exc:
            if registered is not None:
                # A version whose package never arrived must not be deployable.
                with contextlib.suppress(MlflowException):
                    self.client.delete_model_version(name, registered.version)
            if isinstance(exc, MlflowException | OSError):
                raise RegistryError(f"cannot log or register model {name!r}: {exc}") from exc
            raise
        logger.info("registered %s version %s from run %s", name, registered.version, run_id)
        return self.get_version(name, registered.version)

    def _info(self, mv: Any) -> ModelVersionInfo:
        metrics: dict[str, float] = {}
        params: dict[str, str] = {}
        if mv.run_id:
            data = self.client.get_run(mv.run_id).data
            metrics, params = dict(data.metrics), dict(data.params)
        return ModelVersionInfo(
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id,
            status=str(mv.status),
            created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC),
            source=str(mv.source),
            aliases=tuple(sorted(getattr(mv, "aliases", []) or [])),
            tags=MappingProxyType(dict(mv.tags or {})),
            metrics=MappingProxyType(metrics),
            params=MappingProxyType(params),
        )

    def get_version(self, name: str, version: str | int) -> ModelVersionInfo:
        """Return one model version (RegistryError if unknown)."""
        from mlflow.exceptions import MlflowException

        try:
            return self._info(self.client.get_model_version(name, str(version)))
        except MlflowException as exc:
            raise RegistryError(f"model {name!r} has no version {version}: {exc}") from exc

    def list_versions(self, name: str = DEFAULT_MODEL_NAME) -> list[ModelVersionInfo]:
        """Return every version of ``name``, newest first (empty if the model is unknown)."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{_quote(name)}'")
        except MlflowException as exc:
            raise RegistryError(f"cannot list versions of {name!r}: {exc}") from exc
        # search_model_versions omits aliases in some stores; fetch each version for them.
        infos = [self.get_version(name, mv.version) for mv in found]
        return sorted(infos, key=lambda i: int(i.version), reverse=True)

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        """Point ``alias`` (e.g. ``staging``, ``prod``) at a version, moving it if set."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.set_registered_model_alias(name, alias, str(version))
        except MlflowException as exc:
            raise RegistryError(f"cannot set alias {alias!r} of {name!r}: {exc}") from exc

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias (no error if it is not set)."""
        from mlflow.exceptions import MlflowException

        if self.get_alias(name, alias) is None:
            return
        try:
            self.client.delete_registered_model_alias(name, alias)
        except MlflowException as exc:
            raise RegistryError(f"cannot delete alias {alias!r} of {name!r}: {exc}") from exc

    def get_alias(self, name: str, alias: str) -> ModelVersionInfo | None:
        """Return the version an alias points at, or None when the alias is not set."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            # An unknown model or unset alias is "no version"; anything else is a failure.
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise RegistryError(f"cannot read alias {alias!r} of {name!r}: {exc}") from exc
        return self._info(mv)

    def download_package(
        self, name: str, version: str | int, dest: str | os.PathLike[str]
    ) -> Path:
        """Download a version's model package into ``dest`` (replaced atomically).

        Raises:
            RegistryError: the version or its package is missing.
        """
        from mlflow.exceptions import MlflowException

        info = self.get_version(name, version)
        if not info.run_id:
            raise RegistryError(f"{name} version {version} has no run to take a package from")
        target = Path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.dl-", dir=target.parent))
        try:
            mlflow = _import_mlflow()
            local = mlflow.artifacts.download_artifacts(
                run_id=info.run_id, artifact_path=PACKAGE_ARTIFACT_PATH, dst_path=str(tmp),
                tracking_uri=self.tracking_uri,
            )
            missing = [f for f in PACKAGE_FILES if not (Path(local) / f).is_file()]
            if missing:
                # Never replace a working package with an incomplete one.
                raise RegistryError(
                    f"package of {name} v{version} lacks {', '.join(missing)}")
            os.chmod(local, 0o755)
            _swap_in(Path(local), target)
        except (MlflowException, OSError) as exc:
            raise RegistryError(f"cannot download package of {name} v{version}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def package_json(self, name: str, version: str | int, filename: str) -> Any | None:
        """Read one JSON file of a version's package without downloading the rest of it.

        Returns None when the package has no such file (e.g. fairness.json of a version
        trained before the fairness report existed).

        Raises:
            RegistryError: the version is unknown or the store cannot be read.
        """
        import json

        from mlflow.exceptions import MlflowException

        info = self.get_version(name, version)
        if not info.run_id:
            return None
        try:
            listed = self.client.list_artifacts(info.run_id, PACKAGE_ARTIFACT_PATH)
        except (MlflowException, OSError) as exc:
            raise RegistryError(f"cannot list the package of {name} v{version}: {exc}") from exc
        wanted = f"{PACKAGE_ARTIFACT_PATH}/{filename}"
        if not any(item.path == wanted for item in listed):
            return None
        with tempfile.TemporaryDirectory(prefix="modelgate-json-") as tmp:
            try:
                mlflow = _import_mlflow()
                local = mlflow.artifacts.download_artifacts(
                    run_id=info.run_id, artifact_path=wanted, dst_path=tmp,
                    tracking_uri=self.tracking_uri)
                return json.loads(Path(local).read_text(encoding="utf-8"))
            except (MlflowException, OSError, ValueError) as exc:
                raise RegistryError(f"cannot read {filename} of {name} v{version}: {exc}"
                                    ) from exc

    def load_package(self, name: str, version: str | int, dest: str | os.PathLike[str]
                     ) -> ModelPackage:
        """Download a version's package to ``dest`` and load it."""
        return load_package(self.download_package(name, version, dest))

    def load_pipeline(self, name: str, version_or_alias: str | int) -> Any:
        """Load the MLflow-logged sklearn model of a version (``"3"``) or alias (``"prod"``)."""
        ref = str(version_or_alias)
        uri = f"models:/{name}/{ref}" if ref.isdigit() else f"models:/{name}@{ref}"
        from mlflow.exceptions import MlflowException

        try:
            with self._fluent() as mlflow:
                return mlflow.sklearn.load_model(uri)
        except MlflowException as exc:
            raise RegistryError(f"cannot load {uri}: {exc}") from exc


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def save_model_dir(outcome: TrainingOutcome, dest: str | os.PathLike[str],
                   version: str | int | None = None) -> Path:
    """Write an MLflow-format model directory that also holds modelgate's serving package.

    ``dest`` gets MLflow's sklearn flavour (``MLmodel``, the pickled pipeline, signature,
    input example, pinned requirements) and, under ``package/``, the model package the
    scoring service loads (signature.json, model.joblib, metrics…). This is what an Azure ML
    training job writes as its ``model`` output and Azure ML registers as an ``mlflow_model``;
    the package's signature carries ``version`` (None: the registry assigns it later, and the
    scoring container takes it from where Azure ML mounts the model).

    ``dest`` must not exist or be empty (MLflow refuses to write over files).
    """
    mlflow = _import_mlflow()
    target = Path(dest)
    mlflow.sklearn.save_model(
        outcome.pipeline,
        str(target),
        serialization_format="cloudpickle",
        signature=_mlflow_signature(outcome.signature),
        input_example=_input_example(outcome.signature),
        pip_requirements=_requirements(),
    )
    write_package(outcome, target / PACKAGE_ARTIFACT_PATH, version)
    return target


def log_to_environment_run(outcome: TrainingOutcome, tags: Mapping[str, str], *,
                           tracking_uri: str, run_id: str) -> str:
    """Log a training run's params, metrics and tags to an existing run (inside an Azure ML
    job: its own run, named by ``MLFLOW_TRACKING_URI`` and ``MLFLOW_RUN_ID`` as the job
    started, read before MLflow's ``set_tracking_uri`` rewrites the former); returns the id."""
    mlflow = _import_mlflow()
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.log_batch(
        run_id,
        metrics=[mlflow.entities.Metric(k, float(v), int(time.time() * 1000), 0)
                 for k, v in outcome.flat_metrics().items()],
        params=[mlflow.entities.Param(k, str(v)) for k, v in outcome.params().items()],
        tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()])
    return run_id
