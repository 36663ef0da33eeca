"""Reason codes: exact per-field contributions to the log-odds of the positive class.

Each explained prediction carries ``{"base": b, "factors": [{"field", "value", "direction",
"contribution"}, ...]}`` with ``b + sum(contributions)`` equal to the model's log-odds of the
signature's positive class ("bad") for that record (checked to 1e-9 at load on the self-test
records). Contributions are computed on the encoded features of the compiled model the replica
serves, then summed per input field (a one-hot field's columns add up).

* Logistic regression: ``w_j * (x_j - mean_j)`` with ``mean`` the encoded training mean from
  the package's explain.json (:mod:`app.ml.reasons`), so ``base = intercept + w . mean``: the
  linear SHAP values of an interventional explainer with that background mean.
* Gradient boosting: path-dependent TreeSHAP (Lundberg et al. 2020, the algorithm of
  ``shap.TreeExplainer(feature_perturbation="tree_path_dependent")``), with the trees' covers
  (``weighted_n_node_samples``) as the background, on the float32-rounded features the trees
  compare. It is computed per leaf: for a leaf reached under conditions on the unique features
  U of its path, with ``o_j`` = whether x meets the conditions on feature j and ``z_j`` = the
  share of training cover that does, feature i receives
  ``v * (o_i - z_i) * sum_k w(k, |U|) e_k``, where ``e_k`` is the coefficient of ``t^k`` in
  ``prod_{j in U, j != i} (z_j + o_j t)`` and ``w(k, d) = k! (d-k-1)! / d!``. All leaves of all
  trees are evaluated at once with numpy; leaves with fewer unique features are padded with
  null players (o = z = 1), which leaves Shapley values unchanged.

Nothing here runs unless a request asks for ``explain``; the explainer is built once at load.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from app.ml.reasons import read_baseline
from app.serving.errors import FieldError, ProblemError
from app.serving.fastpath import BoostingModel, Encoder, LogisticModel, Tree
from app.serving.model import ScoringModel, probe_rows
from app.serving.validation import RecordValidator, Row

log = logging.getLogger(__name__)

SUM_TOLERANCE = 1e-9
# Bound the (rows x leaves x depth) work arrays of TreeSHAP to about this many floats.
_TREE_CHUNK_FLOATS = 1_000_000
# Precompute each leaf's shares for every pattern of met conditions up to this many floats
# (100 trees of depth 3: 19,200); deeper forests compute them per request instead.
_TABLE_MAX_FLOATS = 4_000_000
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})

Matrix = np.ndarray[Any, Any]


class ExplainUnavailable(Exception):
    """This model cannot be explained; the message says why (shown in a 422 and in /health)."""


def requested(payload: Any, query_string: str) -> bool:
    """Whether the request asks for reasons (``"explain": true`` or ``?explain=true``).

    Removes ``explain`` from a dict payload so the record validator sees only ``data``.

    Raises:
        ProblemError: 422 when either form of ``explain`` is not a boolean.
    """
    wanted = False
    if query_string:
        from urllib.parse import parse_qsl

        for name, value in parse_qsl(query_string, keep_blank_values=True):
            if name != "explain":
                continue
            if value.lower() in _TRUE:
                wanted = True
            elif value.lower() not in _FALSE:
                raise ProblemError(422, "The explain parameter must be true or false.",
                                   (FieldError("explain", "must be true or false"),))
    if isinstance(payload, dict) and "explain" in payload:
        flag = payload.pop("explain")
        if type(flag) is not bool:
            raise ProblemError(422, "The explain option must be true or false.",
                               (FieldError("explain", "must be a boolean"),))
        wanted = wanted or flag
    return wanted


@dataclass(frozen=True)
class Explainer:
    """Per-field contributions of a compiled binary model, in log-odds of the positive class."""

    fields: tuple[str, ...]  # signature order
    groups: Matrix  # (n_encoded, n_fields): 1 where an encoded column belongs to a field
    base: float
    linear: _Linear | None
    trees: _Trees | None
    encoder: Encoder

    def encoded(self, rows: Sequence[Row]) -> Matrix:
        """Contributions per encoded feature, shape (rows, n_encoded)."""
        dense = np.asarray([self.encoder.dense(row) for row in rows], dtype=np.float64)
        if self.linear is not None:
            return self.linear.contributions(dense)
        assert self.trees is not None
        # The trees compare float32-rounded features, as scikit-learn and the fast path do.
        return self.trees.contributions(dense.astype(np.float32).astype(np.float64))

    def by_field(self, rows: Sequence[Row]) -> Matrix:
        """Contributions per input field, shape (rows, n_fields), in signature order."""
        contributions: Matrix = self.encoded(rows) @ self.groups
        return contributions

    def reasons(self, rows: Sequence[Row]) -> list[dict[str, object]]:
        """The ``reasons`` object of each row, factors by decreasing |contribution|."""
        out: list[dict[str, object]] = []
        fields = self.fields
        for row, values in zip(rows, self.by_field(rows).tolist(), strict=True):
            order = sorted(range(len(fields)), key=lambda i: -abs(values[i]))
            factors = [
                {
                    "field": fields[i],
                    "value": row[i],
                    "direction": _direction(values[i]),
                    "contribution": values[i],
                }
                for i in order
            ]
            out.append({"base": self.base, "factors": factors})
        return out


def _direction(contribution: float) -> str:
    """'raises' / 'lowers' the risk of the positive class; 'neutral' for exactly zero."""
    if contribution > 0.0:
        return "raises"
    if contribution < 0.0:
        return "lowers"
    return "neutral"


@dataclass(frozen=True)
class _Linear:
    """w_j (x_j - mean_j), w the positive class's decision weights."""

    weights: Matrix
    mean: Matrix

    def contributions(self, dense: Matrix) -> Matrix:
        result: Matrix = (dense - self.mean) * self.weights
        return result


@dataclass(frozen=True)
class _Trees:
    """Every leaf of every tree as padded per-path tables (see the module docstring)."""

    value: Matrix  # (L,) leaf value, learning rate and sign applied
    feature: Matrix  # (L, D) encoded feature of each path slot (padding: 0)
    low: Matrix  # (L, D) x must be > low ...
    high: Matrix  # (L, D) ... and <= high to follow the path (padding: -inf, +inf)
    zero: Matrix  # (L, D) share of the cover that follows the path (padding: 1)
    weights: Matrix  # (D,) Shapley weights w(k, D)
    order: Matrix  # slot indices sorted by feature, for the per-feature sums
    starts: Matrix  # first position of each present feature in `order`
    present: Matrix  # encoded features that appear in some path
    n_features: int
    # (L, 2^D, D): each leaf's shares for every pattern of met conditions, when small enough
    table: Matrix | None = None

    def with_table(self) -> _Trees:
        """A copy that looks shares up by pattern instead of computing them (same numbers)."""
        leaves, depth = self.feature.shape
        if leaves * depth << depth > _TABLE_MAX_FLOATS:
            return self
        patterns = np.arange(1 << depth)
        met = ((patterns[:, None] >> np.arange(depth)) & 1).astype(np.float64)  # (2^D, D)
        one = np.broadcast_to(met[:, None, :], (len(patterns), leaves, depth))
        table = np.ascontiguousarray(self._shares(one).transpose(1, 0, 2))
        return replace(self, table=table)

    def contributions(self, dense: Matrix) -> Matrix:
        n_rows = dense.shape[0]
        leaves, depth = self.feature.shape
        out = np.zeros((n_rows, self.n_features))
        chunk = max(1, _TREE_CHUNK_FLOATS // max(1, leaves * depth))
        bits = 1 << np.arange(depth)
        every_leaf = np.arange(leaves)
        for start in range(0, n_rows, chunk):
            part = dense[start:start + chunk]
            x = part[:, self.feature]
            met = (x > self.low) & (x <= self.high)  # (rows, L, D): the path's conditions hold
            if self.table is not None:
                shares = self.table[every_leaf, met @ bits]
            else:
                shares = self._shares(met.astype(np.float64))
            slots = shares.reshape(part.shape[0], leaves * depth)
            out[start:start + chunk, self.present] = np.add.reduceat(
                slots[:, self.order], self.starts, axis=1)
        return out

    def _shares(self, one: Matrix) -> Matrix:
        """Each leaf's share for each of its path features, shape (rows, L, D)."""
        zero = self.zero
        depth = zero.shape[1]
        out = np.empty(one.shape)
        for i in range(depth):
            # coefficients of prod_{j != i} (z_j + o_j t), lowest degree first
            poly = [np.ones(one.shape[:2])]
            for j in range(depth):
                if j == i:
                    continue
                z, o = zero[:, j], one[:, :, j]
                grown = [poly[0] * z]
                for k in range(1, len(poly)):
                    grown.append(poly[k] * z + poly[k - 1] * o)
                grown.append(poly[-1] * o)
                poly = grown
            total = sum(w * p for w, p in zip(self.weights.tolist(), poly, strict=True))
            out[:, :, i] = self.value * (one[:, :, i] - zero[:, i]) * total
        return out


def _field_groups(encoder: Encoder, n_fields: int) -> Matrix:
    """(n_encoded, n_fields) indicator: which input field each encoded column comes from."""
    groups = np.zeros((encoder.n_features, n_fields))
    for numeric in encoder.numeric:
        groups[numeric.out_index, numeric.row_index] = 1.0
    for categorical in encoder.categorical:
        for position in categorical.positions.values():
            groups[position, categorical.row_index] = 1.0
    return groups


def _sign(model: ScoringModel) -> float:
    """+1 when the decision function is the positive class's log-odds, -1 when the other's."""
    classes, positive = model.classes, model.signature.positive_class
    if len(classes) != 2:
        raise ExplainUnavailable("reason codes are defined for two classes only")
    return 1.0 if classes[1] == positive else -1.0


def _linear(model: ScoringModel, compiled: LogisticModel, model_dir: Path) -> tuple[float, _Linear]:
    """Weights and base of a binary logistic regression, from explain.json's training mean."""
    try:
        mean = read_baseline(model_dir)
    except (OSError, ValueError) as exc:
        raise ExplainUnavailable(f"the package's explain.json is unreadable: {exc}") from None
    if mean is None:
        raise ExplainUnavailable("the package has no explain.json (trained before reason codes)")
    if len(mean) != compiled.encoder.n_features:
        raise ExplainUnavailable("explain.json does not match the model's encoded features")
    sign = _sign(model)
    weights = sign * np.asarray(compiled.hot_coef[0], dtype=np.float64)
    baseline = np.asarray(mean, dtype=np.float64)
    base = sign * compiled.intercept[0] + float(weights @ baseline)
    return base, _Linear(weights, baseline)


def _leaf_paths(tree: Tree) -> list[tuple[float, dict[int, list[float]]]]:
    """(leaf value, {feature: [low, high, cover share]}) of every leaf of one tree."""
    if len(tree.cover) != len(tree.left):
        raise ExplainUnavailable("the compiled trees carry no node covers")
    leaves: list[tuple[float, dict[int, list[float]]]] = []
    stack: list[tuple[int, dict[int, list[float]]]] = [(0, {})]
    while stack:
        node, conditions = stack.pop()
        left, right = tree.left[node], tree.right[node]
        if left == -1:
            leaves.append((tree.value[node], conditions))
            continue
        feature, threshold, cover = tree.feature[node], tree.threshold[node], tree.cover[node]
        for child, goes_left in ((left, True), (right, False)):
            low, high, share = conditions.get(feature, [-math.inf, math.inf, 1.0])
            if goes_left:
                high = min(high, threshold)
            else:
                low = max(low, threshold)
            stack.append((child, {**conditions,
                                  feature: [low, high, share * tree.cover[child] / cover]}))
    return leaves


def _trees(model: ScoringModel, compiled: BoostingModel) -> tuple[float, _Trees]:
    """Leaf tables and base (init score + expected tree output) of a binary GB model."""
    if len(compiled.init_raw) != 1:
        raise ExplainUnavailable("reason codes are defined for two classes only")
    sign = _sign(model)
    rate = compiled.learning_rate
    leaves = [leaf for stage in compiled.stages for leaf in _leaf_paths(stage[0])]
    depth = max([1, *(len(conditions) for _, conditions in leaves)])
    count = len(leaves)
    value = np.empty(count)
    feature = np.zeros((count, depth), dtype=np.intp)
    low = np.full((count, depth), -math.inf)
    high = np.full((count, depth), math.inf)
    zero = np.ones((count, depth))
    slot_feature = np.full((count, depth), compiled.encoder.n_features, dtype=np.intp)
    base = sign * compiled.init_raw[0]
    for index, (leaf_value, conditions) in enumerate(leaves):
        value[index] = sign * rate * leaf_value
        for slot, (feat, (lo, hi, share)) in enumerate(sorted(conditions.items())):
            feature[index, slot], slot_feature[index, slot] = feat, feat
            low[index, slot], high[index, slot], zero[index, slot] = lo, hi, share
        base += value[index] * float(np.prod(zero[index]))
    weights = np.asarray([math.factorial(k) * math.factorial(depth - k - 1)
                          / math.factorial(depth) for k in range(depth)])
    flat = slot_feature.ravel()
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    real = ordered < compiled.encoder.n_features  # padding slots sort last and are dropped
    order = order[real]
    ordered = ordered[real]
    present, starts = np.unique(ordered, return_index=True)
    trees = _Trees(value, feature, low, high, zero, weights, order, starts, present,
                   compiled.encoder.n_features)
    return float(base), trees.with_table()


def build_explainer(model: ScoringModel, model_dir: Path) -> Explainer:
    """Build the explainer of a loaded model and check its sums on the self-test records.

    Raises:
        ExplainUnavailable: the model is not a compiled binary LR or GB, lacks its baseline,
            or its contributions do not sum to its log-odds.
    """
    compiled = model.compiled
    if compiled is None:
        raise ExplainUnavailable(f"the model is served by scikit-learn ({model.fallback_reason})")
    fields = model.signature.feature_names
    groups = _field_groups(compiled.encoder, len(fields))
    if isinstance(compiled, LogisticModel):
        if len(compiled.intercept) != 1:
            raise ExplainUnavailable("reason codes are defined for two classes only")
        base, linear = _linear(model, compiled, model_dir)
        explainer = Explainer(fields, groups, base, linear, None, compiled.encoder)
    else:
        base, trees = _trees(model, compiled)
        explainer = Explainer(fields, groups, base, None, trees, compiled.encoder)
    _check_sums(model, explainer)
    return explainer


def _check_sums(model: ScoringModel, explainer: Explainer) -> None:
    """base + sum of contributions must equal the served model's log-odds on the probes."""
    signature = model.signature
    assert model.compiled is not None
    example = RecordValidator(signature).validate_body({"data": [dict(signature.example)]})[0]
    rows = probe_rows(signature, example)
    sign = _sign(model)
    expected = np.asarray([sign * raw[0] for raw in model.compiled.raw_scores(rows)])
    got = explainer.base + explainer.by_field(rows).sum(axis=1)
    worst = float(np.max(np.abs(got - expected)))
    if not worst <= SUM_TOLERANCE:
        raise ExplainUnavailable(f"contributions miss the log-odds by {worst:.3g}")


def explainer_for(model: ScoringModel, model_dir: Path) -> tuple[Explainer | None, str | None]:
    """The model's explainer, or None and why not (logged; serving goes on without reasons)."""
    try:
        return build_explainer(model, model_dir), None
    except ExplainUnavailable as exc:
        log.warning("reason codes unavailable: %s", exc)
        return None, str(exc)
    except Exception as exc:  # an unexpected layout must not stop the replica from scoring
        log.exception("reason codes unavailable")
        return None, f"{type(exc).__name__}: {exc}"


def add_reasons(
    predictions: list[dict[str, object]], rows: Sequence[Row],
    explainer: Explainer | None, unavailable: str | None,
) -> None:
    """Attach ``reasons`` to each prediction, or refuse with 422 when the model cannot explain.

    Raises:
        ProblemError: 422 naming ``explain`` when this model version has no explainer.
    """
    if explainer is None:
        raise ProblemError(422, f"This model version cannot explain its predictions "
                                f"({unavailable or 'unknown reason'}).",
                           (FieldError("explain", "not available for this model version"),))
    for prediction, reasons in zip(predictions, explainer.reasons(rows), strict=True):
        prediction["reasons"] = reasons
