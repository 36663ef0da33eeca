"""SQLAlchemy tables of the panel. Schema changes go through Alembic (app/migrations)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    """Return the current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    """Return a new short random id (48 bits, hex), readable in URLs and terminals."""
    return uuid.uuid4().hex[:12]


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored as UTC and always returned timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime stored; use app.db.utcnow()")
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        # SQLite forgets the zone; PostgreSQL answers in the session's zone: both become UTC.
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""


class JobStatus(enum.StrEnum):
    """Life cycle of a job; SUCCEEDED, FAILED and CANCELLED are final."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Job(Base):
    """A queued unit of background work; its state changes only in app.services.jobs."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED, index=True)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[str] = mapped_column(String(200), default="queued")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    requested_by: Mapped[str] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    celery_task_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Continuation tokens of the job's long-running cloud operations, by operation key
    # (app.services.operations.JobOperationStore); never shown on pages or in the REST API.
    operations: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    parent_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="SET NULL"), nullable=True, index=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)

    logs: Mapped[list[JobLog]] = relationship(
        back_populates="job", order_by="JobLog.seq", cascade="all, delete-orphan",
        passive_deletes=True,
    )

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        return (end - self.started_at).total_seconds()


class JobLog(Base):
    """One line of a job's log, in order."""

    __tablename__ = "job_logs"
    __table_args__ = (Index("ix_job_logs_job_seq", "job_id", "seq", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    time: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    level: Mapped[str] = mapped_column(String(10), default="INFO")
    message: Mapped[str] = mapped_column(Text)
    # Time the line was written by the job, kept apart from insert order for display.
    elapsed: Mapped[float | None] = mapped_column(Float, nullable=True)

    job: Mapped[Job] = relationship(back_populates="logs")


class Environment(Base):
    """A scoring environment (staging, prod) recorded by the provision job."""

    __tablename__ = "environments"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    workspace: Mapped[str] = mapped_column(String(128), index=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class AuditEvent(Base):
    """One entry of the tamper-evident audit trail; `hash` covers it and the previous hash."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    time: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(300), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The single row that serialises appends to the audit chain (its row lock is the mutex)."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_id: Mapped[int] = mapped_column(Integer)
    last_hash: Mapped[str] = mapped_column(String(64))


class ApiRevision(Base):
    """One published revision of a gateway API; exactly one per API is current."""

    __tablename__ = "api_revisions"
    __table_args__ = (Index("ix_api_revisions_api_revision", "api_name", "revision",
                            unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    api_name: Mapped[str] = mapped_column(String(100), index=True)
    path: Mapped[str] = mapped_column(String(200))
    environment: Mapped[str] = mapped_column(String(64), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    policy_xml: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    is_current: Mapped[bool] = mapped_column(Boolean, default=False)
    # The publish job that made it; unique so a redelivered job reuses its revision.
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, unique=True)


class DeploymentState(enum.StrEnum):
    """Desired state of a deployment slot; the runtime keeps STARTING/ACTIVE/DRAINING running."""

    STARTING = "STARTING"
    ACTIVE = "ACTIVE"
    DRAINING = "DRAINING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"

    @property
    def should_run(self) -> bool:
        return self in (DeploymentState.STARTING, DeploymentState.ACTIVE,
                        DeploymentState.DRAINING)


class Deployment(Base):
    """One slot (blue/green) of an environment's endpoint running one model version, on any
    backend; rows change only in app.services.deployments (the local runtime records the port
    it chose, and keeps STARTING/ACTIVE/DRAINING rows running)."""

    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    environment: Mapped[str] = mapped_column(String(64), index=True)
    slot: Mapped[str] = mapped_column(String(8))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(32))
    replicas: Mapped[int] = mapped_column(Integer, default=1)
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default=DeploymentState.STARTING, index=True)
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # What the backend reports: its name, the endpoint the slot belongs to, its scoring URI.
    backend: Mapped[str] = mapped_column(String(32), default="local")
    endpoint: Mapped[str | None] = mapped_column(String(128), nullable=True)
    scoring_uri: Mapped[str | None] = mapped_column(String(512), nullable=True)
    traffic: Mapped[int] = mapped_column(Integer, default=0)
    # The deploy job that created it; unique so a redelivered job resumes its own slot.
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, unique=True)
    # Keys of slots deployed before the backend kept them (read by the local backend only).
    primary_key_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    secondary_key_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    keys_rotated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    rotation_job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    activated_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    stopped_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)

    @property
    def deployment_state(self) -> DeploymentState:
        return DeploymentState(self.state)


class Promotion(Base):
    """A request to promote a model version to an environment (four-eyes); its state changes
    only in app.services.promotions."""

    __tablename__ = "promotions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # "model": deploy model_version; "api-revision": publish policy_xml (model_name holds the
    # API name, model_version is empty).
    kind: Mapped[str] = mapped_column(String(16), default="model", server_default="model")
    environment: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)
    requested_by: Mapped[str] = mapped_column(String(200), index=True)
    requested_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    # What the approver decides on, frozen at request time: metrics vs prod, staging smoke.
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    decided_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    decided_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime, nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    policy_xml: Mapped[str | None] = mapped_column(Text, nullable=True)
    deploy_job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    superseded_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The approver's reason for approving a version that failed the promotion gate.
    gate_override: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class DriftBaseline(Base):
    """A model version's training baseline for drift checks (app.ml.drift), kept once read
    from its package (baseline.json) or computed from its registered data."""

    __tablename__ = "drift_baselines"

    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(32), primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    baseline: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)


class DriftCheck(Base):
    """One drift check of one model version's sample in one environment: PSI and band per
    field and of P(bad); written only by app.services.drift."""

    __tablename__ = "drift_checks"
    __table_args__ = (Index("ix_drift_checks_environment_checked", "environment",
                            "checked_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    environment: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(32))
    checked_at: Mapped[dt.datetime] = mapped_column(UtcDateTime, default=utcnow)
    # The UTC hours the sample's records were scored in (first and last).
    first_hour: Mapped[str] = mapped_column(String(20))
    last_hour: Mapped[str] = mapped_column(String(20))
    samples: Mapped[int] = mapped_column(Integer)
    band: Mapped[str] = mapped_column(String(8))  # the worst band of the fields and the score
    score_psi: Mapped[float] = mapped_column(Float)
    score_band: Mapped[str] = mapped_column(String(8))
    # [{"field", "psi", "band", "bins": [{"label", "expected", "actual"}]}], then the score's
    fields: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    score: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Fields (and "P(bad)") whose band rose since the previous check of this version here.
    crossed: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
