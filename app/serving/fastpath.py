"""Compile a fitted scikit-learn scoring pipeline into plain Python/numpy arithmetic.

Supported shape (docs/internal-contracts.md): a Pipeline of a ColumnTransformer whose
transformers are Pipelines of SimpleImputer → StandardScaler (numeric columns) and
SimpleImputer → OneHotEncoder(handle_unknown="ignore") (categorical columns), followed by a
binary or multiclass LogisticRegression or a log-loss GradientBoostingClassifier. Every
fitted attribute is read generically (statistics_, mean_, scale_, categories_, coef_,
intercept_, the trees' arrays); anything else raises NotCompilableError so the caller can
fall back to scikit-learn. The operations mirror scikit-learn's order (impute, subtract the
mean, divide by the scale; trees compare float32-rounded features, as sklearn casts X to
float32) so results agree to ~1e-15, far inside the 1e-9 the tests demand.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Row = tuple[object, ...]
Proba = tuple[float, ...]

# Below this many rows a per-row Python loop beats numpy's per-call overhead for trees.
_GB_BATCH_THRESHOLD = 16


class NotCompilableError(Exception):
    """The pipeline uses something the fast path cannot reproduce exactly."""


@dataclass(frozen=True)
class NumericColumn:
    """A numeric input: its row index, imputation value, and scaler mean/scale (identity ok)."""

    row_index: int
    out_index: int
    fill: float
    mean: float
    scale: float


@dataclass(frozen=True)
class CategoricalColumn:
    """A categorical input: its row index, fill value, and output position of each category."""

    row_index: int
    fill: object
    positions: Mapping[object, int]


@dataclass(frozen=True)
class Encoder:
    """Turns validated rows (signature order, None = missing) into model feature vectors."""

    n_features: int
    numeric: tuple[NumericColumn, ...]
    categorical: tuple[CategoricalColumn, ...]

    def numeric_values(self, row: Row) -> list[float]:
        """Imputed and scaled numeric features, in self.numeric order."""
        out: list[float] = []
        for col in self.numeric:
            raw = row[col.row_index]
            x = col.fill if raw is None else float(raw)  # type: ignore[arg-type]
            out.append((x - col.mean) / col.scale)
        return out

    def hot_positions(self, row: Row) -> list[int]:
        """Output positions set to 1.0 by the one-hot encoders (unknown categories: none)."""
        hot: list[int] = []
        for col in self.categorical:
            value = row[col.row_index]
            position = col.positions.get(col.fill if value is None else value)
            if position is not None:
                hot.append(position)
        return hot

    def dense(self, row: Row) -> list[float]:
        """The full feature vector as sklearn's ColumnTransformer would produce it."""
        vector = [0.0] * self.n_features
        for col, value in zip(self.numeric, self.numeric_values(row), strict=True):
            vector[col.out_index] = value
        for position in self.hot_positions(row):
            vector[position] = 1.0
        return vector


def _expit(x: float) -> float:
    """Numerically stable logistic function."""
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _softmax(values: Sequence[float]) -> Proba:
    """Softmax with max-subtraction, as scipy/sklearn compute it."""
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return tuple(e / total for e in exps)


@dataclass(frozen=True)
class LogisticModel:
    """Linear decision functions over the encoded features; expit (binary) or softmax."""

    encoder: Encoder
    numeric_coef: tuple[tuple[float, ...], ...]  # per class row: one weight per numeric col
    hot_coef: tuple[tuple[float, ...], ...]  # per class row: weight of every output position
    intercept: tuple[float, ...]

    def predict_proba(self, rows: Sequence[Row]) -> list[Proba]:
        """Class probabilities in classes_ order, one tuple per row."""
        encoder = self.encoder
        out: list[Proba] = []
        for row in rows:
            numeric = encoder.numeric_values(row)
            hot = encoder.hot_positions(row)
            decisions = []
            for k, intercept in enumerate(self.intercept):
                weights = self.hot_coef[k]
                total = sum(w * x for w, x in zip(self.numeric_coef[k], numeric, strict=True))
                total += sum(weights[p] for p in hot)
                decisions.append(total + intercept)
            if len(decisions) == 1:
                p = _expit(decisions[0])
                out.append((1.0 - p, p))
            else:
                out.append(_softmax(decisions))
        return out

    def raw_scores(self, rows: Sequence[Row]) -> list[list[float]]:
        """Decision function values (binary: the log-odds of classes_[1]), one list per row."""
        encoder = self.encoder
        out: list[list[float]] = []
        for row in rows:
            numeric = encoder.numeric_values(row)
            hot = encoder.hot_positions(row)
            out.append([
                sum(w * x for w, x in zip(self.numeric_coef[k], numeric, strict=True))
                + sum(self.hot_coef[k][p] for p in hot) + intercept
                for k, intercept in enumerate(self.intercept)
            ])
        return out


@dataclass(frozen=True)
class Tree:
    """One fitted regression tree as flat Python lists (leaf: left == -1)."""

    left: tuple[int, ...]
    right: tuple[int, ...]
    feature: tuple[int, ...]
    threshold: tuple[float, ...]
    value: tuple[float, ...]
    cover: tuple[float, ...] = ()  # weighted training samples per node (TreeSHAP's baseline)


@dataclass(frozen=True)
class BoostingModel:
    """Sum of regression trees per class on float32-rounded features, then expit/softmax."""

    encoder: Encoder
    init_raw: tuple[float, ...]
    learning_rate: float
    stages: tuple[tuple[Tree, ...], ...]  # stages[i][k]: tree of stage i for class column k
    arrays: tuple[tuple[np.ndarray[Any, Any], ...], ...]  # per (stage, k) numpy node arrays

    def predict_proba(self, rows: Sequence[Row]) -> list[Proba]:
        """Class probabilities in classes_ order, one tuple per row."""
        if len(rows) >= _GB_BATCH_THRESHOLD:
            raws = self._raw_batch(rows)
        else:
            raws = [self._raw_one(row) for row in rows]
        if len(self.init_raw) == 1:
            return [(1.0 - p, p) for p in (_expit(raw[0]) for raw in raws)]
        return [_softmax(raw) for raw in raws]

    def raw_scores(self, rows: Sequence[Row]) -> list[list[float]]:
        """Raw scores (binary: the log-odds of classes_[1]), one list per row."""
        return [self._raw_one(row) for row in rows]

    def _raw_one(self, row: Row) -> list[float]:
        """Raw scores of one row by walking each tree in Python."""
        # sklearn casts X to float32 before the tree comparisons; array('f') rounds the same.
        x = array("f", self.encoder.dense(row)).tolist()
        raw = list(self.init_raw)
        rate = self.learning_rate
        for stage in self.stages:
            for k, tree in enumerate(stage):
                left, right, feature, threshold = (
                    tree.left,
                    tree.right,
                    tree.feature,
                    tree.threshold,
                )
                node = 0
                while left[node] != -1:
                    node = left[node] if x[feature[node]] <= threshold[node] else right[node]
                raw[k] += rate * tree.value[node]
        return raw

    def _raw_batch(self, rows: Sequence[Row]) -> list[list[float]]:
        """Raw scores of many rows with numpy, level by level, same comparisons and sum order."""
        matrix = np.asarray([self.encoder.dense(row) for row in rows], dtype=np.float32)
        n = matrix.shape[0]
        ids = np.arange(n)
        raw = np.tile(np.asarray(self.init_raw, dtype=np.float64), (n, 1))
        for stage in self.arrays:
            for k, (left, right, feature, threshold, value, depth) in enumerate(_groups(stage)):
                node = np.zeros(n, dtype=np.intp)
                for _ in range(depth):
                    go_left = matrix[ids, feature[node]] <= threshold[node]
                    node = np.where(go_left, left[node], right[node])
                raw[:, k] += self.learning_rate * value[node]
        return [list(r) for r in raw.tolist()]


def _groups(
    stage: tuple[np.ndarray[Any, Any], ...],
) -> list[tuple[Any, Any, Any, Any, Any, int]]:
    """Unpack a stage's packed arrays: six entries per class column."""
    return [
        (stage[i], stage[i + 1], stage[i + 2], stage[i + 3], stage[i + 4], int(stage[i + 5]))
        for i in range(0, len(stage), 6)
    ]


CompiledModel = LogisticModel | BoostingModel


def _step_list(transformer: Any) -> list[Any]:
    """The estimators of a transformer, unwrapping a Pipeline."""
    steps = getattr(transformer, "steps", None)
    if steps is None:
        return [transformer]
    return [est for _, est in steps]


def _is(obj: Any, *names: str) -> bool:
    """Class-name check, so sklearn need not be imported at module import time."""
    return type(obj).__name__ in names


def _numeric_columns(
    steps: list[Any], columns: list[str], row_index: Mapping[str, int], start: int
) -> list[NumericColumn]:
    """Compile [SimpleImputer] → [StandardScaler] over numeric columns."""
    imputer = steps.pop(0) if steps and _is(steps[0], "SimpleImputer") else None
    scaler = steps.pop(0) if steps and _is(steps[0], "StandardScaler") else None
    if steps:
        raise NotCompilableError(f"unsupported numeric step {type(steps[0]).__name__}")
    if imputer is not None and (imputer.add_indicator or len(imputer.statistics_) != len(columns)):
        raise NotCompilableError("numeric imputer with indicator or dropped columns")
    result = []
    for j, name in enumerate(columns):
        fill = float(imputer.statistics_[j]) if imputer is not None else math.nan
        mean, scale = 0.0, 1.0
        if scaler is not None:
            if scaler.mean_ is not None and scaler.with_mean:
                mean = float(scaler.mean_[j])
            if scaler.scale_ is not None and scaler.with_std:
                scale = float(scaler.scale_[j])
        if math.isnan(fill):
            raise NotCompilableError(f"column {name!r} has no finite imputation value")
        result.append(NumericColumn(row_index[name], start + j, fill, mean, scale))
    return result


def _categorical_columns(
    steps: list[Any], columns: list[str], row_index: Mapping[str, int], start: int
) -> list[CategoricalColumn]:
    """Compile SimpleImputer → OneHotEncoder(handle_unknown='ignore') over categorical columns."""
    if len(steps) != 2 or not _is(steps[0], "SimpleImputer") or not _is(steps[1], "OneHotEncoder"):
        raise NotCompilableError("categorical transformer is not SimpleImputer → OneHotEncoder")
    imputer, encoder = steps
    if imputer.add_indicator or len(imputer.statistics_) != len(columns):
        raise NotCompilableError("categorical imputer with indicator or dropped columns")
    if encoder.handle_unknown != "ignore" or getattr(encoder, "drop_idx_", None) is not None:
        raise NotCompilableError("OneHotEncoder must use handle_unknown='ignore' and no drop")
    if getattr(encoder, "_infrequent_enabled", False):
        raise NotCompilableError("OneHotEncoder infrequent categories are not supported")
    result = []
    offset = start
    for j, name in enumerate(columns):
        categories = list(encoder.categories_[j])
        if any(isinstance(c, float) and math.isnan(c) for c in categories):
            raise NotCompilableError(f"column {name!r} has NaN as a category")
        positions = {c: offset + i for i, c in enumerate(categories)}
        offset += len(categories)
        result.append(CategoricalColumn(row_index[name], imputer.statistics_[j], positions))
    return result


def compile_encoder(preprocess: Any, field_names: Sequence[str]) -> Encoder:
    """Compile a fitted ColumnTransformer into an Encoder over rows in field_names order."""
    if not _is(preprocess, "ColumnTransformer"):
        raise NotCompilableError("the first step is not a ColumnTransformer")
    row_index = {name: i for i, name in enumerate(field_names)}
    numeric: list[NumericColumn] = []
    categorical: list[CategoricalColumn] = []
    n_features = 0
    for name, transformer, columns in preprocess.transformers_:
        out = preprocess.output_indices_[name]
        if transformer == "drop" or out.stop == out.start:
            continue
        if transformer == "passthrough" or not isinstance(columns, list | tuple):
            raise NotCompilableError(f"transformer {name!r} is passthrough or not by column name")
        if not all(isinstance(c, str) and c in row_index for c in columns):
            raise NotCompilableError(f"transformer {name!r} uses columns outside the signature")
        steps = _step_list(transformer)
        if _is(steps[-1], "OneHotEncoder"):
            categorical += _categorical_columns(steps, list(columns), row_index, out.start)
        else:
            numeric += _numeric_columns(steps, list(columns), row_index, out.start)
        n_features = max(n_features, out.stop)
    return Encoder(n_features, tuple(numeric), tuple(categorical))


def _compile_logistic(classifier: Any, encoder: Encoder) -> LogisticModel:
    """Split coef_ into numeric weights and a per-position lookup for one-hot features."""
    coef = np.asarray(classifier.coef_, dtype=np.float64)
    if coef.shape[1] != encoder.n_features:
        raise NotCompilableError("coef_ width does not match the encoded features")
    if len(classifier.classes_) > 2 and coef.shape[0] != len(classifier.classes_):
        raise NotCompilableError("unexpected coef_ shape for a multiclass model")
    numeric_idx = [c.out_index for c in encoder.numeric]
    return LogisticModel(
        encoder=encoder,
        numeric_coef=tuple(tuple(float(w) for w in row[numeric_idx]) for row in coef),
        hot_coef=tuple(tuple(float(w) for w in row) for row in coef),
        intercept=tuple(float(b) for b in np.asarray(classifier.intercept_).ravel()),
    )


def _compile_tree(estimator: Any) -> tuple[Tree, tuple[np.ndarray[Any, Any], ...]]:
    """Flatten one DecisionTreeRegressor to lists (row loop) and arrays (batch loop)."""
    t = estimator.tree_
    if t.n_outputs != 1 or t.value.shape[2] != 1:
        raise NotCompilableError("multi-output trees are not supported")
    left = np.asarray(t.children_left, dtype=np.intp)
    right = np.asarray(t.children_right, dtype=np.intp)
    value = np.asarray(t.value[:, 0, 0], dtype=np.float64)
    tree = Tree(
        tuple(left.tolist()),
        tuple(right.tolist()),
        tuple(int(f) for f in t.feature),
        tuple(float(v) for v in t.threshold),
        tuple(value.tolist()),
        tuple(float(c) for c in t.weighted_n_node_samples),
    )
    # For the level-by-level batch walk, leaves point to themselves and compare feature 0.
    leaves = left == -1
    nodes = np.arange(len(left))
    arrays = (
        np.where(leaves, nodes, left),
        np.where(leaves, nodes, right),
        np.where(leaves, 0, np.asarray(t.feature, dtype=np.intp)),
        np.asarray(t.threshold, dtype=np.float64),
        value,
        np.asarray(int(t.max_depth)),
    )
    return tree, arrays


def _compile_boosting(classifier: Any, encoder: Encoder) -> BoostingModel:
    """Read the trees, the constant init score and the learning rate of a GB classifier."""
    if type(classifier._loss).__name__ not in ("HalfBinomialLoss", "HalfMultinomialLoss"):
        raise NotCompilableError("only log-loss gradient boosting is supported")
    if classifier.n_features_in_ != encoder.n_features:
        raise NotCompilableError("tree feature count does not match the encoded features")
    init = classifier.init_
    if not (init == "zero" or (_is(init, "DummyClassifier") and init.strategy == "prior")):
        raise NotCompilableError("only a constant (prior or zero) init estimator is supported")
    # The prior init score does not depend on X, so one all-zero row yields the constant.
    probe = np.zeros((1, encoder.n_features), dtype=np.float32)
    init_raw = tuple(float(v) for v in classifier._raw_predict_init(probe)[0])
    stages: list[tuple[Tree, ...]] = []
    stage_arrays: list[tuple[np.ndarray[Any, Any], ...]] = []
    for stage in classifier.estimators_:
        compiled = [_compile_tree(est) for est in stage]
        stages.append(tuple(tree for tree, _ in compiled))
        stage_arrays.append(tuple(a for _, arrays in compiled for a in arrays))
    return BoostingModel(
        encoder=encoder,
        init_raw=init_raw,
        learning_rate=float(classifier.learning_rate),
        stages=tuple(stages),
        arrays=tuple(stage_arrays),
    )


def compile_pipeline(pipeline: Any, field_names: Sequence[str]) -> CompiledModel:
    """Compile a fitted Pipeline(preprocess, classifier) over rows in field_names order.

    Raises:
        NotCompilableError: any part the fast path cannot reproduce exactly.
    """
    steps = _step_list(pipeline)
    if len(steps) != 2:
        raise NotCompilableError("expected Pipeline([preprocess, classifier])")
    preprocess, classifier = steps
    encoder = compile_encoder(preprocess, field_names)
    if _is(classifier, "LogisticRegression"):
        return _compile_logistic(classifier, encoder)
    if _is(classifier, "GradientBoostingClassifier"):
        return _compile_boosting(classifier, encoder)
    raise NotCompilableError(f"classifier {type(classifier).__name__} is not supported")
