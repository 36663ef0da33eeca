"""Drift checks: each period's sample of scored records against the model's training baseline.

Scoring replicas append sampled records to one bounded Redis list per environment
(app.serving.sampling). The beat task ``modelgate.drift.check`` (every
``MODELGATE_DRIFT_CHECK_SECONDS``, an hour by default) takes each environment's list at once
when it holds at least ``drift.min_samples`` records (fewer wait for the next check), groups the
records by model version, and for every version with enough of them computes the population
stability index of each input field and of the predicted P(bad) against that version's
baseline (app.ml.drift). Each comparison is a DriftCheck row. A field whose band rose since the
previous check of that version in that environment is a drift event: one ``model.drift``
audit event (on the timeline) and one ``model.drift`` webhook per check that has any.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import select

from app.db import DriftBaseline, DriftCheck, utcnow
from app.errors import AppError
from app.extensions import db
from app.ml.drift import SCORE_FIELD, Band, Bands, Baseline, FieldDrift, compare
from app.serving.sampling import store_key

logger = logging.getLogger(__name__)

EVENT = "model.drift"
ACTOR = "modelgate"
HISTORY_LIMIT = 48  # checks per environment the Drift page charts
MAX_HISTORY = 1000  # at most this many in one answer of the REST API

# Take the whole list in one step when it holds at least ARGV[1] records; else leave it.
_TAKE = """
local n = redis.call('LLEN', KEYS[1])
if n < tonumber(ARGV[1]) then return {} end
local items = redis.call('LRANGE', KEYS[1], 0, n - 1)
redis.call('LTRIM', KEYS[1], n, -1)
return items
"""
# Put records back in front (a version whose baseline is unavailable right now), keeping the
# list's bound: the oldest records go first.
_RESTORE = """
for i = #ARGV, 2, -1 do redis.call('LPUSH', KEYS[1], ARGV[i]) end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
return redis.call('LLEN', KEYS[1])
"""


class DriftError(AppError):
    """A drift check cannot run (no baseline for a version, the sample store is down)."""

    status = 503


@dataclass(frozen=True)
class Sample:
    """One sampled record as read from the store."""

    raw: bytes
    fields: Mapping[str, Any]
    p_bad: float
    model: str
    version: str
    hour: str


# --------------------------------------------------------------------------- the store


def _redis() -> Any:
    return current_app.extensions["redis"]


def take_samples(environment: str, min_samples: int) -> list[Sample]:
    """Everything in the environment's store, removed from it, once it holds ``min_samples``
    (else nothing, and the records wait). Malformed entries are skipped and logged."""
    import redis

    try:
        raw = _redis().eval(_TAKE, 1, store_key(environment), int(min_samples))
    except redis.RedisError as exc:
        raise DriftError(f"the drift sample store is unreachable ({type(exc).__name__})"
                         ) from None
    out, bad = [], 0
    for item in raw or ():
        try:
            data = json.loads(item)
            out.append(Sample(item, dict(data["fields"]), float(data["p_bad"]),
                              str(data["model"]), str(data["version"]), str(data["hour"])))
        except (ValueError, KeyError, TypeError):
            bad += 1
    if bad:
        logger.warning("drift: %d malformed sample(s) in %s's store skipped", bad, environment)
    return out


def restore_samples(environment: str, samples: Sequence[Sample], max_samples: int) -> None:
    """Put samples back at the front of the store (bounded by ``max_samples``)."""
    import redis

    if not samples:
        return
    try:
        _redis().eval(_RESTORE, 1, store_key(environment), int(max_samples),
                      *[s.raw for s in samples])
    except redis.RedisError as exc:
        logger.warning("drift: %d sample(s) of %s lost: %s", len(samples), environment,
                       type(exc).__name__)


def stored_samples(environment: str) -> list[dict[str, Any]]:
    """The records in an environment's store now, oldest first (read only)."""
    return [json.loads(item) for item in _redis().lrange(store_key(environment), 0, -1)]


# --------------------------------------------------------------------------- baselines


def baseline_for(name: str, version: str) -> Baseline:
    """A version's training baseline: kept in the database once read from its package's
    baseline.json, or computed from its registered data for versions trained before
    baselines were stored.

    Raises:
        DriftError: the package or the registered data is unavailable.
    """
    row = db.session.get(DriftBaseline, (name, version))
    if row is not None:
        try:
            return Baseline.from_dict(row.baseline)
        except ValueError as exc:  # a format this code does not read: read it again
            logger.warning("drift: stored baseline of %s v%s unreadable (%s); reading it again",
                           name, version, exc)
    baseline = _read_or_compute(name, version)
    db.session.merge(DriftBaseline(model_name=name, model_version=version,
                                   source=baseline.source, baseline=baseline.to_dict(),
                                   created_at=utcnow()))
    db.session.commit()
    logger.info("drift: baseline of %s v%s from %s", name, version, baseline.source)
    return baseline


def _read_or_compute(name: str, version: str) -> Baseline:
    from app.ml.dataset import DatasetError, get_version
    from app.ml.drift import baseline_from_dataset
    from app.ml.package import BASELINE_FILE, METRICS_FILE, PackageError, load_package
    from app.ml.registry import RegistryError
    from app.services import models

    package = models.package_dir(name, version)
    try:
        if not (package / METRICS_FILE).is_file():
            models.registry().download_package(name, version, package)
        if (package / BASELINE_FILE).is_file():
            return Baseline.from_dict(json.loads((package / BASELINE_FILE).read_text("utf-8")))
        pkg = load_package(package)
        lineage = pkg.metrics.get("dataset") or {}
        if lineage.get("name") is None or lineage.get("version") is None:
            raise DriftError(f"{name} v{version} was trained on an unregistered file; its "
                             "baseline cannot be computed")
        dataset = get_version(Path(current_app.config["HOME"]), int(lineage["version"]),
                              str(lineage["name"]))
        if dataset.sha256 != lineage.get("sha256"):
            raise DriftError(f"the registered data of {name} v{version} changed since it was "
                             "trained")
        return baseline_from_dataset(pkg.pipeline, pkg.signature, dataset.data_path,
                                     seed=int(pkg.metrics["seed"]),
                                     test_size=float(pkg.metrics["test_size"]),
                                     target=pkg.signature.target)
    except (RegistryError, PackageError, DatasetError, OSError, ValueError, KeyError) as exc:
        raise DriftError(f"no drift baseline for {name} v{version}: {exc}") from None


# --------------------------------------------------------------------------- checks


def settings() -> Any:
    """The pipeline file's drift section (DriftSettings)."""
    from app.services import models

    return models.pipeline().drift


def run_checks() -> dict[str, list[int]]:
    """Check every environment once (the beat task); return the new check ids by environment.

    An environment whose check fails is logged and skipped; the others still run.
    """
    from app.services import deployments

    done: dict[str, list[int]] = {}
    for environment in deployments.environments():
        try:
            done[environment] = [row.id for row in check_environment(environment)]
        except DriftError as exc:
            logger.warning("drift check of %s skipped: %s", environment, exc.message)
    return done


def check_environment(environment: str) -> list[DriftCheck]:
    """Take the environment's sample and compare each model version's share of it.

    Raises:
        DriftError: the store is unreachable, or a version's baseline is unavailable (raised
            after the other versions were checked; that version's records wait in the store).
    """
    config = settings()
    samples = take_samples(environment, config.min_samples)
    groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[(sample.model, sample.version)].append(sample)
    bands = Bands(config.watch, config.act)
    rows, failed = [], []
    for (name, version), group in sorted(groups.items()):
        if len(group) < config.min_samples:
            # The tail of a version that stopped serving: too few to say anything.
            logger.info("drift: %d sample(s) of %s v%s in %s are too few; dropped", len(group),
                        name, version, environment)
            continue
        try:
            baseline = baseline_for(name, version)
        except DriftError as exc:
            # Its records wait for the next check; the other versions are checked now.
            restore_samples(environment, group, config.max_samples)
            failed.append(exc)
            continue
        rows.append(_record(environment, name, version, group, baseline, bands))
    if failed:
        raise failed[0]
    return rows


def _record(environment: str, name: str, version: str, samples: Sequence[Sample],
            baseline: Baseline, bands: Bands) -> DriftCheck:
    fields, score = compare(baseline, [s.fields for s in samples], [s.p_bad for s in samples],
                            bands)
    previous = _previous_bands(environment, name, version)
    crossed = [{"field": d.field, "psi": d.psi, "band": d.band.value,
                "from": previous.get(d.field, Band.STABLE).value}
               for d in (*fields, score)
               if d.band.rank > previous.get(d.field, Band.STABLE).rank]
    hours = sorted(s.hour for s in samples)
    row = DriftCheck(environment=environment, model_name=name, model_version=version,
                     checked_at=utcnow(), first_hour=hours[0], last_hour=hours[-1],
                     samples=len(samples), band=_worst((*fields, score)).value,
                     score_psi=score.psi, score_band=score.band.value,
                     fields=[d.to_dict() for d in fields], score=score.to_dict(),
                     crossed=crossed)
    db.session.add(row)
    db.session.commit()
    logger.info("drift check %d of %s v%s in %s: %d samples, %s", row.id, name, version,
                environment, len(samples), row.band)
    if crossed:
        _announce(row)
    return row


def _worst(drifts: Sequence[FieldDrift]) -> Band:
    return max((d.band for d in drifts), key=lambda b: b.rank, default=Band.STABLE)


def _previous_bands(environment: str, name: str, version: str) -> dict[str, Band]:
    row = db.session.scalar(
        select(DriftCheck).where(DriftCheck.environment == environment,
                                 DriftCheck.model_name == name,
                                 DriftCheck.model_version == version)
        .order_by(DriftCheck.id.desc()).limit(1))
    if row is None:
        return {}
    out = {str(f["field"]): Band(f["band"]) for f in row.fields}
    out[SCORE_FIELD] = Band(row.score_band)
    return out


def event_data(row: DriftCheck) -> dict[str, Any]:
    """The ``model.drift`` webhook's data (docs/audit-and-webhooks.md)."""
    return {
        "environment": row.environment,
        "model": {"name": row.model_name, "version": row.model_version},
        "check_id": row.id,
        "checked_at": row.checked_at.isoformat(),
        "hours": [row.first_hour, row.last_hour],
        "samples": row.samples,
        "band": row.band,
        "crossed": list(row.crossed),
        "fields": {f["field"]: {"psi": f["psi"], "band": f["band"]} for f in row.fields},
        "score": {"psi": row.score_psi, "band": row.score_band},
        "url": f"{current_app.config['PANEL_URL'].rstrip('/')}/drift/{row.environment}",
    }


def _announce(row: DriftCheck) -> None:
    """The drift event: on the audit trail (so on the timeline) and to the webhook."""
    from app.services import audit, notifications
    from app.services.audit import AuditAction

    audit.record(ACTOR, AuditAction.MODEL_DRIFT, f"environment:{row.environment}",
                 {"model": row.model_name, "model_version": row.model_version,
                  "check_id": row.id, "samples": row.samples, "band": row.band,
                  "crossed": list(row.crossed)})
    notifications.notify(EVENT, event_data(row))


# --------------------------------------------------------------------------- reading


def history(environment: str, limit: int = HISTORY_LIMIT) -> list[DriftCheck]:
    """An environment's latest checks, oldest first."""
    rows = list(db.session.scalars(
        select(DriftCheck).where(DriftCheck.environment == environment)
        .order_by(DriftCheck.id.desc()).limit(limit)))
    rows.reverse()
    return rows


def check_to_dict(row: DriftCheck) -> dict[str, Any]:
    """A check as the REST API and tests read it."""
    return {**event_data(row), "fields": list(row.fields), "score": dict(row.score)}


@dataclass(frozen=True)
class FieldSeries:
    """One field's (or the score's) PSI over an environment's checks, and its current band."""

    field: str
    points: tuple[tuple[DriftCheck, float, str], ...]  # (check, psi, band), oldest first

    @property
    def band(self) -> str:
        """The band of the latest check that had this field."""
        return self.points[-1][2]

    @property
    def psi(self) -> float:
        """The PSI of the latest check that had this field."""
        return self.points[-1][1]


@dataclass(frozen=True)
class Overview:
    """What the Drift page shows for an environment."""

    environment: str
    checks: tuple[DriftCheck, ...]  # oldest first
    series: tuple[FieldSeries, ...]  # input fields in signature order, then P(bad)
    pending: int | None  # records waiting in the sample store (None: store unreachable)

    @property
    def latest(self) -> DriftCheck | None:
        """The newest check, if any."""
        return self.checks[-1] if self.checks else None

    @property
    def alert(self) -> DriftCheck | None:
        """The newest check when it is not stable: what the alert (and Retrain) is about."""
        latest = self.latest
        return latest if latest is not None and latest.band != Band.STABLE.value else None

    @property
    def alerting(self) -> tuple[FieldSeries, ...]:
        """The fields of the alert's check outside the stable band, worst first."""
        alert = self.alert
        if alert is None:
            return ()
        chosen = [s for s in self.series
                  if s.points[-1][0] is alert and s.band != Band.STABLE.value]
        return tuple(sorted(chosen, key=lambda s: (-Band(s.band).rank, -s.psi)))


def overview(environment: str, limit: int = HISTORY_LIMIT) -> Overview:
    """The environment's recent checks arranged per field, and its store's fill."""
    import redis

    checks = history(environment, limit)
    points: dict[str, list[tuple[DriftCheck, float, str]]] = {}
    for row in checks:
        for item in row.fields:
            points.setdefault(str(item["field"]), []).append(
                (row, float(item["psi"]), str(item["band"])))
    series = [FieldSeries(name, tuple(values)) for name, values in points.items()]
    if checks:
        series.append(FieldSeries(SCORE_FIELD, tuple((row, row.score_psi, row.score_band)
                                                     for row in checks)))
    try:
        pending: int | None = int(_redis().llen(store_key(environment)))
    except redis.RedisError:
        pending = None
    return Overview(environment, tuple(checks), tuple(series), pending)
