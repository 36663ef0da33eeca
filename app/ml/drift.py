"""Population stability: the training baseline's bins, and the PSI of a sample against them.

The baseline holds, per input field, the bins of the training data and the share of training
rows in each (numeric fields: the deciles of the training values, or one bin per value when a
field has no more distinct values than bins; categorical fields: one bin per category of the
signature, plus one for "no value" when the field is nullable), and the same for the model's
predicted P(bad) on the held-out rows (records it never saw, as production records are).

The population stability index of a sample against a baseline is

    PSI = Σ_i (a_i − e_i) · ln(a_i / e_i)

over the bins, e_i the baseline's share and a_i the sample's share of bin i, each floored at
EPSILON (an empty bin would make the logarithm infinite). The usual bands: below 0.1 stable,
0.1 to 0.25 watch, above 0.25 act.

numpy only; pandas and scikit-learn are imported by :func:`baseline_from_dataset` alone.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.ml.signature import FieldType, Signature

BASELINE_FORMAT = 1
EPSILON = 1e-4
DEFAULT_BINS = 10
SCORE_FIELD = "P(bad)"  # the name the score's bins go by in baselines and check results


class Band(enum.StrEnum):
    """How far a population moved from the baseline."""

    STABLE = "stable"
    WATCH = "watch"
    ACT = "act"

    @property
    def rank(self) -> int:
        """0, 1, 2: larger is worse."""
        return _RANKS[self]


_RANKS = {Band.STABLE: 0, Band.WATCH: 1, Band.ACT: 2}


@dataclass(frozen=True)
class Bands:
    """PSI thresholds: below ``watch`` stable, up to ``act`` watch, above ``act`` act."""

    watch: float = 0.1
    act: float = 0.25

    def of(self, psi_value: float) -> Band:
        """The band of a PSI value (0.1 and 0.25 themselves are 'watch')."""
        if psi_value > self.act:
            return Band.ACT
        if psi_value >= self.watch:
            return Band.WATCH
        return Band.STABLE


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """The population stability index of two share vectors over the same bins.

    Raises:
        ValueError: the vectors differ in length or are empty.
    """
    if len(expected) != len(actual) or not expected:
        raise ValueError("PSI needs two share vectors over the same, non-empty bins")
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(float(e), EPSILON), max(float(a), EPSILON)
        total += (a - e) * math.log(a / e)
    return total


def shares(counts: Sequence[int]) -> list[float]:
    """Counts as shares of their total (all zero when there is nothing)."""
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def _fmt(value: float) -> str:
    return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"


@dataclass(frozen=True)
class FieldBins:
    """The bins of one field and the baseline's share of each.

    Numeric: ``edges`` are the upper bounds (inclusive) of every bin but the last, which is
    open-ended; a nullable numeric field has one more bin for "no value". Categorical:
    ``categories`` name the bins (None is "no value").
    """

    field: str
    kind: str  # "numeric" or "categorical"
    proportions: tuple[float, ...]
    edges: tuple[float, ...] = ()
    categories: tuple[str | None, ...] = ()
    nullable: bool = False

    @property
    def labels(self) -> list[str]:
        """Bin names as people read them ("≤ 25", "25–33", "> 60", "little", "none")."""
        if self.kind == "categorical":
            return ["none" if c is None else c for c in self.categories]
        if not self.edges:
            out = ["all"]
        else:
            out = [f"≤ {_fmt(self.edges[0])}"]
            out += [f"{_fmt(lo)}–{_fmt(hi)}" for lo, hi in zip(self.edges, self.edges[1:],
                                                              strict=False)]
            out.append(f"> {_fmt(self.edges[-1])}")
        return out + (["none"] if self.nullable else [])

    def index(self, value: Any) -> int | None:
        """The bin of a value, or None for a value no bin holds (an unknown category)."""
        if self.kind == "categorical":
            key = None if value is None else str(value)
            try:
                return self.categories.index(key)
            except ValueError:
                return None
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return len(self.edges) + 1 if self.nullable else None
        import bisect

        return bisect.bisect_left(self.edges, float(value))

    def counts(self, values: Iterable[Any]) -> list[int]:
        """How many values fall in each bin (values no bin holds are left out)."""
        out = [0] * len(self.proportions)
        for value in values:
            i = self.index(value)
            if i is not None:
                out[i] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """The baseline.json form."""
        out: dict[str, Any] = {"field": self.field, "kind": self.kind,
                               "proportions": list(self.proportions)}
        if self.kind == "categorical":
            out["categories"] = list(self.categories)
        else:
            out["edges"] = list(self.edges)
            out["nullable"] = self.nullable
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FieldBins:
        """Read the baseline.json form (KeyError/TypeError/ValueError when malformed)."""
        kind = str(data["kind"])
        if kind not in ("numeric", "categorical"):
            raise ValueError(f"unknown bin kind {kind!r}")
        bins = cls(field=str(data["field"]), kind=kind,
                   proportions=tuple(float(p) for p in data["proportions"]),
                   edges=tuple(float(e) for e in data.get("edges", ())),
                   categories=tuple(None if c is None else str(c)
                                    for c in data.get("categories", ())),
                   nullable=bool(data.get("nullable", False)))
        if len(bins.proportions) != len(bins.labels):
            raise ValueError(f"{bins.field}: {len(bins.proportions)} shares for "
                             f"{len(bins.labels)} bins")
        return bins


def numeric_bins(field: str, values: Sequence[float | None], *, bins: int = DEFAULT_BINS,
                 nullable: bool = False) -> FieldBins:
    """Bins at the quantiles of the values (one bin per value when there are few of them)."""
    import numpy as np

    present = np.array([v for v in values if v is not None and not math.isnan(float(v))],
                       dtype="float64")
    if present.size == 0:
        edges: list[float] = []
    else:
        distinct = np.unique(present)
        if distinct.size <= bins:
            edges = [float(v) for v in distinct[:-1]]
        else:
            cuts = np.quantile(present, [i / bins for i in range(1, bins)])
            edges = [float(v) for v in np.unique(cuts) if v < distinct[-1]]
    size = len(edges) + 1 + (1 if nullable else 0)
    placeholder = FieldBins(field, "numeric", (0.0,) * size, tuple(edges), nullable=nullable)
    return FieldBins(field, "numeric", tuple(shares(placeholder.counts(values))), tuple(edges),
                     nullable=nullable)


def categorical_bins(field: str, values: Sequence[str | None], categories: Sequence[str], *,
                     nullable: bool = False) -> FieldBins:
    """One bin per category (and one for "no value" when nullable)."""
    names: tuple[str | None, ...] = (*categories, None) if nullable else tuple(categories)
    placeholder = FieldBins(field, "categorical", (0.0,) * len(names), categories=names)
    return FieldBins(field, "categorical", tuple(shares(placeholder.counts(values))),
                     categories=names)


@dataclass(frozen=True)
class Baseline:
    """Training-time distributions of every input field and of the predicted P(bad)."""

    fields: tuple[FieldBins, ...]
    score: FieldBins
    rows: int
    score_rows: int
    source: str = "training"  # or "registered data" when computed on first use

    def field(self, name: str) -> FieldBins:
        """The bins of one field (KeyError if the baseline lacks it)."""
        for bins in self.fields:
            if bins.field == name:
                return bins
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The baseline.json form."""
        return {"format": BASELINE_FORMAT, "source": self.source, "rows": self.rows,
                "score_rows": self.score_rows, "fields": [b.to_dict() for b in self.fields],
                "score": self.score.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Baseline:
        """Read the baseline.json form.

        Raises:
            ValueError: an unknown format or malformed content.
        """
        try:
            if int(data["format"]) != BASELINE_FORMAT:
                raise ValueError(f"unknown baseline format {data['format']!r}")
            return cls(fields=tuple(FieldBins.from_dict(b) for b in data["fields"]),
                       score=FieldBins.from_dict(data["score"]), rows=int(data["rows"]),
                       score_rows=int(data["score_rows"]), source=str(data.get("source", "")))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed baseline: {exc!r}") from None


def build_baseline(signature: Signature, features: Any, p_bad: Sequence[float], *,
                   bins: int = DEFAULT_BINS, source: str = "training") -> Baseline:
    """The baseline of a model: its training features and its held-out P(bad).

    Args:
        signature: the model's signature (field order, types, categories).
        features: a DataFrame with one column per signature field (the training part).
        p_bad: predicted P(bad) of the held-out part.
        bins: numeric bins per field (deciles by default).
        source: where the data came from, for the record.
    """
    out = []
    for spec in signature.fields:
        column = features[spec.name].tolist()
        values = [None if _missing(v) else v for v in column]
        if spec.type is FieldType.CATEGORY:
            out.append(categorical_bins(spec.name, [None if v is None else str(v)
                                                    for v in values],
                                        spec.categories, nullable=spec.nullable))
        else:
            out.append(numeric_bins(spec.name, values, bins=bins, nullable=spec.nullable))
    scores = [float(p) for p in p_bad]
    return Baseline(tuple(out), numeric_bins(SCORE_FIELD, scores, bins=bins), rows=len(features),
                    score_rows=len(scores), source=source)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def baseline_from_dataset(pipeline: Any, signature: Signature, csv: str | Path, *, seed: int,
                          test_size: float, target: str = "Risk",
                          bins: int = DEFAULT_BINS) -> Baseline:
    """Recompute a version's baseline from its registered data (versions trained before
    baselines were stored): the same split as training (``app.ml.training.train``: stratified,
    ``test_size``, ``seed``), the training part's fields and the held-out part's P(bad)."""
    from sklearn.model_selection import train_test_split

    from app.ml.dataset import read_csv
    from app.ml.predict import frame_from_dataframe, signature_columns

    df = read_csv(csv)
    df = df[df[target].notna()]
    numeric, categorical = signature_columns(signature)
    # The column order training used (numeric, then categorical): the split depends on rows
    # only, but the pipeline reads columns by name either way.
    X = frame_from_dataframe(df, numeric, categorical)
    y = df[target].astype(str).astype(object)
    X_train, X_test, _y_train, _y_test = train_test_split(
        X, y, test_size=test_size, stratify=y, random_state=seed)
    column = list(pipeline.classes_).index(signature.positive_class)
    p_bad = pipeline.predict_proba(X_test)[:, column]
    return build_baseline(signature, X_train, p_bad, bins=bins, source="registered data")


@dataclass(frozen=True)
class FieldDrift:
    """One field's (or the score's) PSI in a sample, with the bins it was computed over."""

    field: str
    psi: float
    band: Band
    labels: tuple[str, ...]
    expected: tuple[float, ...]
    actual: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """The stored form (drift check results)."""
        return {"field": self.field, "psi": self.psi, "band": self.band.value,
                "bins": [{"label": label, "expected": e, "actual": a}
                         for label, e, a in zip(self.labels, self.expected, self.actual,
                                                strict=True)]}


def field_drift(bins: FieldBins, values: Iterable[Any], bands: Bands) -> FieldDrift:
    """The PSI of the values against one field's baseline bins."""
    actual = shares(bins.counts(values))
    value = psi(bins.proportions, actual)
    return FieldDrift(bins.field, value, bands.of(value), tuple(bins.labels),
                      bins.proportions, tuple(actual))


def compare(baseline: Baseline, records: Sequence[Mapping[str, Any]],
            p_bad: Sequence[float], bands: Bands | None = None
            ) -> tuple[list[FieldDrift], FieldDrift]:
    """Each field's and the score's PSI of a sample against the baseline.

    Args:
        baseline: the model version's baseline.
        records: the sampled records (field name → value; a missing field is no value).
        p_bad: the predicted P(bad) of each record.
        bands: the PSI bands (the usual 0.1 / 0.25 by default).
    """
    bands = bands or Bands()
    fields = [field_drift(b, (r.get(b.field) for r in records), bands) for b in baseline.fields]
    return fields, field_drift(baseline.score, p_bad, bands)
