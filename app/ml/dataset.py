"""Dataset versions keyed by content hash: ``<home>/datasets/<name>/<version>/``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.ml.signature import (
    DEFAULT_BOUNDS,
    DEFAULT_MAX_ROWS,
    DESIGN_EXAMPLE,
    FieldSpec,
    FieldType,
    Record,
    Signature,
)
from app.ml.validation import SignatureError, validate_records

logger = logging.getLogger(__name__)

DEFAULT_DATASET_NAME = "german-credit"
DATA_FILE = "data.csv"
SCHEMA_FILE = "schema.json"
META_FILE = "meta.json"
_CHUNK = 1 << 20


class DatasetError(Exception):
    """A dataset cannot be registered or read."""


@dataclass(frozen=True)
class ColumnSchema:
    """One column as observed in a dataset version."""

    name: str
    type: str  # "integer", "number" or "category"
    nullable: bool
    null_count: int
    categories: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form stored in schema.json."""
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "nullable": self.nullable,
            "null_count": self.null_count,
        }
        if self.categories is not None:
            out["categories"] = list(self.categories)
        if self.minimum is not None:
            out["minimum"] = self.minimum
            out["maximum"] = self.maximum
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColumnSchema:
        """Read the JSON form stored in schema.json."""
        cats = data.get("categories")
        return cls(
            name=data["name"],
            type=data["type"],
            nullable=bool(data["nullable"]),
            null_count=int(data["null_count"]),
            categories=tuple(cats) if cats is not None else None,
            minimum=data.get("minimum"),
            maximum=data.get("maximum"),
        )


@dataclass(frozen=True)
class DatasetSchema:
    """Columns of a dataset version, in file order."""

    columns: tuple[ColumnSchema, ...]
    rows: int

    def column(self, name: str) -> ColumnSchema:
        """Return the column called ``name`` (KeyError if absent)."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        """Column names in file order."""
        return tuple(c.name for c in self.columns)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form stored in schema.json."""
        return {"rows": self.rows, "columns": [c.to_dict() for c in self.columns]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSchema:
        """Read the JSON form stored in schema.json."""
        return cls(
            columns=tuple(ColumnSchema.from_dict(c) for c in data["columns"]),
            rows=int(data["rows"]),
        )


@dataclass(frozen=True)
class DatasetVersion:
    """A registered, immutable dataset version."""

    name: str
    version: int
    path: Path  # the version directory
    sha256: str
    rows: int
    size_bytes: int
    registered_at: str  # ISO 8601, UTC
    source: str
    schema: DatasetSchema

    @property
    def data_path(self) -> Path:
        """The registered copy of the CSV."""
        return self.path / DATA_FILE


@dataclass(frozen=True)
class Registration:
    """Result of :func:`register_dataset`: the version and whether this call created it."""

    dataset: DatasetVersion
    created: bool


def datasets_root(home: str | os.PathLike[str], name: str = DEFAULT_DATASET_NAME) -> Path:
    """Return ``<home>/datasets/<name>``."""
    if not name or "/" in name or name.startswith("."):
        raise DatasetError(f"invalid dataset name {name!r}")
    return Path(home) / "datasets" / name


def read_csv(path: str | os.PathLike[str]) -> Any:
    """Read a dataset CSV into a DataFrame (the literal ``NA`` and empty cells are missing)."""
    import pandas as pd  # lazy: pandas costs ~0.5 s to import

    return pd.read_csv(path)


def infer_schema(path: str | os.PathLike[str]) -> DatasetSchema:
    """Infer column types, categories, observed ranges and null counts of a CSV."""
    from pandas.api import types as ptypes

    frame = read_csv(path)
    columns = []
    for name in frame.columns:
        series = frame[name]
        nulls = int(series.isna().sum())
        present = series.dropna()
        if ptypes.is_bool_dtype(series) or not ptypes.is_numeric_dtype(series):
            cats = tuple(sorted({str(v) for v in present}))
            columns.append(ColumnSchema(str(name), "category", nulls > 0, nulls, categories=cats))
            continue
        values = present.astype("float64")
        # A column of whole numbers is read as float when it has gaps; it is still an integer.
        integral = bool(((values % 1) == 0).all())
        lo = float(values.min()) if len(values) else None
        hi = float(values.max()) if len(values) else None
        if integral and lo is not None and hi is not None:
            lo, hi = int(lo), int(hi)
        columns.append(
            ColumnSchema(
                str(name),
                "integer" if integral else "number",
                nulls > 0,
                nulls,
                minimum=lo,
                maximum=hi,
            )
        )
    return DatasetSchema(columns=tuple(columns), rows=int(len(frame)))


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root/.lock`` (serialises registrations across processes)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: atomic rename still prevents corruption
        yield
        return
    with open(root / ".lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _version_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.is_dir() and child.name.isdigit() and (child / META_FILE).is_file():
            found.append((int(child.name), child))
    return sorted(found)


def load_version(path: str | os.PathLike[str]) -> DatasetVersion:
    """Read a dataset version directory.

    Raises:
        DatasetError: the directory is not a complete dataset version.
    """
    vdir = Path(path)
    try:
        meta = json.loads((vdir / META_FILE).read_text(encoding="utf-8"))
        schema = DatasetSchema.from_dict(
            json.loads((vdir / SCHEMA_FILE).read_text(encoding="utf-8"))
        )
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"{vdir} is not a dataset version: {exc}") from exc
    return DatasetVersion(
        name=meta["name"],
        version=int(meta["version"]),
        path=vdir,
        sha256=meta["sha256"],
        rows=int(meta["rows"]),
        size_bytes=int(meta["size_bytes"]),
        registered_at=meta["registered_at"],
        source=meta.get("source", ""),
        schema=schema,
    )


def list_versions(
    home: str | os.PathLike[str], name: str = DEFAULT_DATASET_NAME
) -> list[DatasetVersion]:
    """Return every registered version of ``name``, oldest first."""
    return [load_version(p) for _, p in _version_dirs(datasets_root(home, name))]


def get_version(
    home: str | os.PathLike[str], version: int, name: str = DEFAULT_DATASET_NAME
) -> DatasetVersion:
    """Return one registered version (DatasetError if it does not exist)."""
    vdir = datasets_root(home, name) / str(int(version))
    if not (vdir / META_FILE).is_file():
        raise DatasetError(f"dataset {name!r} has no version {version}")
    return load_version(vdir)


def latest_version(
    home: str | os.PathLike[str], name: str = DEFAULT_DATASET_NAME
) -> DatasetVersion | None:
    """Return the newest registered version of ``name``, or None when there is none."""
    dirs = _version_dirs(datasets_root(home, name))
    return load_version(dirs[-1][1]) if dirs else None


def _copy_hashing(src: Path, dst: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest(), size


def register_dataset(
    home: str | os.PathLike[str],
    csv_path: str | os.PathLike[str],
    name: str = DEFAULT_DATASET_NAME,
) -> Registration:
    """Register a CSV as a dataset version, keyed by its SHA-256.

    Re-registering bytes that are already registered changes nothing and returns the
    existing version; new bytes become version ``max + 1``.

    Args:
        home: the MODELGATE_HOME folder.
        csv_path: the CSV to register (copied; the original is not kept).
        name: the dataset name (a single path segment).

    Returns:
        The registration: the dataset version and whether this call created it.

    Raises:
        DatasetError: the file cannot be read or parsed as a CSV.
    """
    src = Path(csv_path)
    if not src.is_file():
        raise DatasetError(f"dataset file not found: {src}")
    root = datasets_root(home, name)
    root.mkdir(parents=True, exist_ok=True)
    # Copy first, hashing the bytes actually copied, so a file changing underneath cannot
    # give a copy that differs from its recorded hash.
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
    try:
        sha, size = _copy_hashing(src, staging / DATA_FILE)
        with _locked(root):
            for _, vdir in _version_dirs(root):
                existing = load_version(vdir)
                if existing.sha256 == sha:
                    logger.info("dataset %s: %s already registered as v%d",
                                name, sha[:12], existing.version)
                    return Registration(existing, created=False)
            try:
                schema = infer_schema(staging / DATA_FILE)
            except Exception as exc:  # pandas raises several unrelated types for bad CSVs
                raise DatasetError(f"cannot parse {src} as CSV: {exc}") from exc
            dirs = _version_dirs(root)
            version = dirs[-1][0] + 1 if dirs else 1
            meta = {
                "name": name,
                "version": version,
                "sha256": sha,
                "rows": schema.rows,
                "size_bytes": size,
                "registered_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "source": str(src.resolve()),
            }
            (staging / SCHEMA_FILE).write_text(
                json.dumps(schema.to_dict(), indent=2, allow_nan=False), encoding="utf-8"
            )
            (staging / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
            # The version directory appears complete or not at all.
            os.rename(staging, root / str(version))
            logger.info("dataset %s: registered %s as v%d", name, sha[:12], version)
            return Registration(load_version(root / str(version)), created=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- signature


def build_signature(
    schema: DatasetSchema,
    features: Sequence[str],
    *,
    name: str,
    target: str = "Risk",
    classes: Sequence[str] = ("bad", "good"),
    positive_class: str = "bad",
    threshold: float = 0.5,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    example: Mapping[str, Any] | None = None,
) -> Signature:
    """Build a signature from a dataset schema.

    Categories are the observed ones; numeric ranges come from ``bounds`` (default
    DEFAULT_BOUNDS) and fall back to the observed range for columns without a bound. A column
    with gaps in the data is nullable. The example is the seed's record when it fits,
    else one built from the schema.

    Raises:
        KeyError: a feature is not a column of the schema.
        ValueError: a bound is inverted or excludes every observed value.
    """
    limits = dict(DEFAULT_BOUNDS if bounds is None else bounds)
    specs = []
    for fname in features:
        col = schema.column(fname)
        if col.type == "category":
            specs.append(
                FieldSpec(fname, FieldType.CATEGORY, col.nullable, categories=col.categories or ())
            )
            continue
        lo, hi = limits.get(fname, (col.minimum, col.maximum))
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"bounds for {fname!r} are inverted: {lo} > {hi}")
        observed = (col.minimum, col.maximum)
        if None not in observed and lo is not None and hi is not None and (
            observed[1] < lo or observed[0] > hi  # type: ignore[operator]
        ):
            raise ValueError(f"bounds {lo}-{hi} for {fname!r} exclude all observed values "
                             f"{observed[0]}-{observed[1]}")
        specs.append(FieldSpec(fname, FieldType(col.type), col.nullable, minimum=lo, maximum=hi))
    sig = Signature(
        name=name,
        fields=tuple(specs),
        classes=tuple(classes),
        positive_class=positive_class,
        threshold=float(threshold),
        target=target,
        max_rows=max_rows,
    )
    candidates = [example] if example is not None else [DESIGN_EXAMPLE, _synthetic_example(sig)]
    for candidate in candidates:
        try:
            validate_records(sig, [dict(candidate)])
        except SignatureError:
            continue
        return replace(sig, example={k: candidate.get(k) for k in sig.feature_names})
    raise ValueError("example record does not fit the signature")


def _synthetic_example(sig: Signature) -> Record:
    out: Record = {}
    for spec in sig.fields:
        if spec.type is FieldType.CATEGORY:
            out[spec.name] = spec.categories[0] if spec.categories else None
        else:
            lo = spec.minimum if spec.minimum is not None else 0
            hi = spec.maximum if spec.maximum is not None else lo
            mid = (lo + hi) / 2
            out[spec.name] = int(mid) if spec.type is FieldType.INTEGER else float(mid)
    return out
