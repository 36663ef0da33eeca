"""Training configuration: the ``model:`` section of the YAML config, validated."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from app.ml.evaluation import CostMatrix
from app.ml.fairness import FairnessConfig, FairnessConfigError
from app.ml.signature import DEFAULT_BOUNDS, DEFAULT_MAX_ROWS

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "german-credit"

# family name -> (module, class, default params). random_state is added from the seed.
FAMILIES: Mapping[str, tuple[str, str, Mapping[str, Any]]] = MappingProxyType({
    "logistic_regression": ("sklearn.linear_model", "LogisticRegression", {"max_iter": 1000}),
    "gradient_boosting": ("sklearn.ensemble", "GradientBoostingClassifier", {}),
    "hist_gradient_boosting": ("sklearn.ensemble", "HistGradientBoostingClassifier", {}),
    "random_forest": ("sklearn.ensemble", "RandomForestClassifier", {"n_estimators": 300}),
})


class ConfigError(ValueError):
    """The ``model:`` configuration is invalid; ``key`` names the offending entry."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


@dataclass(frozen=True)
class CandidateSpec:
    """One model family to try, with its hyper-parameters."""

    family: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def estimator(self, seed: int) -> Any:
        """Build an unfitted estimator (random_state = seed unless set in params)."""
        import importlib

        module, cls_name, defaults = FAMILIES[self.family]
        cls = getattr(importlib.import_module(module), cls_name)
        kwargs = {**defaults, **self.params}
        if "random_state" in cls().get_params() and "random_state" not in kwargs:
            kwargs["random_state"] = seed
        return cls(**kwargs)


def _default_candidates() -> tuple[CandidateSpec, ...]:
    return (CandidateSpec("logistic_regression"), CandidateSpec("gradient_boosting"))


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that decides a training run besides the data."""

    name: str = DEFAULT_MODEL_NAME
    seed: int = 42
    test_size: float = 0.2
    cv_folds: int = 5
    candidates: tuple[CandidateSpec, ...] = field(default_factory=_default_candidates)
    cost: CostMatrix = field(default_factory=CostMatrix)
    bounds: Mapping[str, tuple[float, float]] = field(
        default_factory=lambda: MappingProxyType(dict(DEFAULT_BOUNDS))
    )
    max_rows: int = DEFAULT_MAX_ROWS
    importance_repeats: int = 10
    calibration_bins: int = 10
    # Reuse a registered version trained on the same data with the same parameters and seed
    # instead of registering an identical one.
    skip_identical: bool = False
    # Input columns the model is trained without (protected attributes): still accepted at
    # scoring and ignored, still used by the fairness report.
    exclude: tuple[str, ...] = ()
    # The fairness report's groups (the pipeline file's top-level ``fairness:`` section).
    fairness: FairnessConfig = field(default_factory=FairnessConfig)

    def to_dict(self) -> dict[str, Any]:
        """Return the YAML/JSON form accepted by :meth:`from_dict`."""
        return {
            "name": self.name,
            "seed": self.seed,
            "test_size": self.test_size,
            "cv_folds": self.cv_folds,
            "candidates": [{"family": c.family, "params": dict(c.params)} for c in self.candidates],
            "cost": {"bad_as_good": self.cost.bad_as_good, "good_as_bad": self.cost.good_as_bad},
            "bounds": {k: list(v) for k, v in self.bounds.items()},
            "max_rows": self.max_rows,
            "importance_repeats": self.importance_repeats,
            "calibration_bins": self.calibration_bins,
            "skip_identical": self.skip_identical,
            "exclude": list(self.exclude),
            "fairness": self.fairness.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, prefix: str = "model") -> TrainingConfig:
        """Build a config from the ``model:`` section of a YAML file (missing keys default).

        Raises:
            ConfigError: naming the bad key, e.g. ``model.candidates[1].params.max_depth``.
        """
        return _parse_config(data or {}, prefix)


def _number(data: Mapping[str, Any], key: str, where: str, kind: type, lo: float, hi: float,
            default: Any) -> Any:
    if key not in data:
        return default
    value = data[key]
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        expected = "an integer" if kind is int else "a number"
        raise ConfigError(f"{where}.{key}", f"must be {expected}")
    if not lo <= value <= hi:
        raise ConfigError(f"{where}.{key}", f"must be between {lo} and {hi}, got {value}")
    return kind(value)


def _parse_candidate(item: Any, where: str) -> CandidateSpec:
    if not isinstance(item, Mapping):
        raise ConfigError(where, "must be a mapping with 'family' and optional 'params'")
    unknown = set(item) - {"family", "params"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}", "unknown key")
    family = item.get("family")
    if not isinstance(family, str) or family not in FAMILIES:
        raise ConfigError(f"{where}.family",
                          f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    params = item.get("params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{where}.params", "must be a mapping")
    spec = CandidateSpec(family, MappingProxyType(dict(params)))
    try:
        est = spec.estimator(0)
        accepted = est.get_params()
    except TypeError as exc:  # an unknown keyword argument
        bad = next((k for k in params if k not in _accepted_params(family)), None)
        raise ConfigError(f"{where}.params" + (f".{bad}" if bad else ""), str(exc)) from exc
    for key in params:
        if key not in accepted:
            raise ConfigError(f"{where}.params.{key}", f"not a parameter of {family}")
    # scikit-learn validates values at fit time; check them now so a typo fails early
    # (_validate_params is private, so tolerate its absence in other versions).
    validate = getattr(est, "_validate_params", None)
    try:
        if validate is not None:
            validate()
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}.params", str(exc)) from exc
    return spec


def _accepted_params(family: str) -> set[str]:
    import importlib

    module, cls_name, _ = FAMILIES[family]
    return set(getattr(importlib.import_module(module), cls_name)().get_params())


def _parse_config(data: Mapping[str, Any], where: str) -> TrainingConfig:
    if not isinstance(data, Mapping):
        raise ConfigError(where, "must be a mapping")
    known = {"name", "seed", "test_size", "cv_folds", "candidates", "cost", "bounds",
             "max_rows", "importance_repeats", "calibration_bins", "skip_identical", "exclude",
             "fairness"}
    for key in data:
        if key not in known:
            # fairness comes from the pipeline file's own top-level section
            raise ConfigError(f"{where}.{key}", "unknown key; expected one of "
                                                f"{sorted(known - {'fairness'})}")
    base = TrainingConfig()
    name = data.get("name", base.name)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name", "must be a non-empty string")
    candidates = base.candidates
    if "candidates" in data:
        items = data["candidates"]
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{where}.candidates", "must be a non-empty list")
        candidates = tuple(
            _parse_candidate(item, f"{where}.candidates[{i}]") for i, item in enumerate(items)
        )
    cost = base.cost
    if "cost" in data:
        raw = data["cost"]
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}.cost", "must be a mapping")
        for key in raw:
            if key not in ("bad_as_good", "good_as_bad"):
                raise ConfigError(f"{where}.cost.{key}", "unknown key")
        cost = CostMatrix(
            bad_as_good=_number(raw, "bad_as_good", f"{where}.cost", float, 0, 1e9,
                                base.cost.bad_as_good),
            good_as_bad=_number(raw, "good_as_bad", f"{where}.cost", float, 0, 1e9,
                                base.cost.good_as_bad),
        )
    bounds = dict(base.bounds)
    if "bounds" in data:
        raw = data["bounds"]
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}.bounds", "must be a mapping of column: [min, max]")
        for col, pair in raw.items():
            ok = (isinstance(pair, list | tuple) and len(pair) == 2
                  and all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair))
            if not ok or pair[0] > pair[1]:
                raise ConfigError(f"{where}.bounds.{col}", "must be [min, max] with min <= max")
            bounds[str(col)] = (pair[0], pair[1])
    return TrainingConfig(
        name=name,
        seed=_number(data, "seed", where, int, 0, 2**32 - 1, base.seed),
        test_size=_number(data, "test_size", where, float, 0.05, 0.5, base.test_size),
        cv_folds=_number(data, "cv_folds", where, int, 2, 20, base.cv_folds),
        candidates=candidates,
        cost=cost,
        bounds=MappingProxyType(bounds),
        max_rows=_number(data, "max_rows", where, int, 1, 100_000, base.max_rows),
        importance_repeats=_number(data, "importance_repeats", where, int, 1, 100,
                                   base.importance_repeats),
        calibration_bins=_number(data, "calibration_bins", where, int, 2, 50,
                                 base.calibration_bins),
        skip_identical=_flag(data, "skip_identical", where, base.skip_identical),
        exclude=_exclude(data.get("exclude"), f"{where}.exclude"),
        fairness=_fairness(data.get("fairness"), f"{where}.fairness"),
    )


def _input_columns() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The model's (numeric, categorical) input columns (late import: training imports us)."""
    from app.ml.training import CATEGORICAL, NUMERIC

    return NUMERIC, CATEGORICAL


def _exclude(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    numeric, categorical = _input_columns()
    columns = (*numeric, *categorical)
    if not isinstance(raw, list | tuple):
        raise ConfigError(where, f"must be a list of input columns ({', '.join(columns)})")
    for index, item in enumerate(raw):
        if item not in columns:
            raise ConfigError(f"{where}[{index}]", f"{item!r} is not an input column; choose "
                                                   f"from {', '.join(columns)}")
    if len(set(raw)) == len(columns):
        raise ConfigError(where, "cannot exclude every input column")
    # Input order, duplicates dropped: the same choice always gives the same run parameters.
    return tuple(c for c in columns if c in raw)


def _fairness(raw: Any, where: str) -> FairnessConfig:
    numeric, categorical = _input_columns()
    try:
        return FairnessConfig.from_dict(raw, where, numeric=numeric, categorical=categorical)
    except FairnessConfigError as exc:
        raise ConfigError(exc.key, str(exc).split(": ", 1)[-1]) from None


def _flag(data: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}", "must be true or false")
    return value
