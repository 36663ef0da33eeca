"""Layered configuration: class defaults, then MODELGATE_* environment variables, then overrides.

A production start (not TESTING, not DEBUG) with a missing, default or short SECRET_KEY refuses
to run; `modelgate up` generates a strong one into the instance folder instead.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from app.errors import ConfigError

WEAK_SECRET_KEYS = frozenset({"", "dev", "change-me", "changeme", "secret", "development"})
MIN_SECRET_KEY_LENGTH = 32


class BaseConfig:
    """Defaults for every environment; each can be overridden by MODELGATE_<NAME>."""

    TESTING = False
    DEBUG = False
    SECRET_KEY = ""
    HOME = "./instance"
    DATABASE_URL = ""  # default: sqlite:///<HOME>/modelgate.db
    REDIS_URL = "redis://127.0.0.1:6379/0"
    BACKEND = "local"
    IDENTITY = "local"  # or "entra"
    ISSUER_URL = "https://127.0.0.1:8443/local"
    PANEL_URL = "http://127.0.0.1:5000"
    # The panel's own app registration; for the local issuer the secret is read from
    # MODELGATE_HOME/dev-credentials.json when not given.
    CLIENT_ID = "modelgate-panel"
    CLIENT_SECRET = ""
    TENANT_ID = ""  # Entra ID tenant (MODELGATE_IDENTITY=entra)
    API_CLIENT_ID = ""  # Entra ID app id of the scoring API (scope api://<id>/Score.Invoke)
    GATEWAY_URL = "https://127.0.0.1:8000"
    CA_BUNDLE = ""  # default: <HOME>/tls/ca.pem when it exists
    RATE_LIMIT = 6000
    # Jobs: attempts before a job that keeps losing its worker is failed, heartbeat cadence.
    JOB_MAX_ATTEMPTS = 3
    JOB_HEARTBEAT_SECONDS = 5.0
    JOB_STALE_AFTER_SECONDS = 60.0
    JOB_QUEUED_TIMEOUT_SECONDS = 6 * 3600.0
    JOB_TIME_LIMIT_SECONDS = 3600
    # Soft time limits of the kinds that wait longer on the azure backend (app.services.kinds):
    # provisioning waits 30-75 min for API Management alone (an attempt stops waiting after
    # 80 min; a retry resumes it). Training follows an Azure ML job that Azure ML stops after
    # 2 h, plus the wait for a node and the registration (an attempt stops following after
    # 2 h 40 min; a retry follows on). A deploy waits azure.ready_timeout_seconds (30 min by
    # default) for the new deployment, plus its creation, the smoke test and the drain. A key
    # rotation waits azure.key_grace_seconds (10 min) for API Management. The pipeline
    # follows its stages one after the other.
    AZURE_PROVISION_TIME_LIMIT_SECONDS = 2 * 3600
    AZURE_TRAIN_TIME_LIMIT_SECONDS = 3 * 3600
    AZURE_DEPLOY_TIME_LIMIT_SECONDS = 3600
    AZURE_ROTATE_KEYS_TIME_LIMIT_SECONDS = 1800
    AZURE_PIPELINE_TIME_LIMIT_SECONDS = 8 * 3600
    RECONCILE_EVERY_SECONDS = 15.0
    # Visibility timeout must exceed the longest job, or Redis redelivers it while it runs.
    BROKER_VISIBILITY_TIMEOUT = 2 * 3600
    BROKER_RESTORE_INTERVAL = 10
    # The panel under gunicorn: request threads per worker process. Live-update streams each
    # hold one for up to SSE_MAX_SECONDS, so a process admits at most PANEL_THREADS -
    # SSE_RESERVED_THREADS of them, and a user at most SSE_STREAMS_PER_USER over all processes.
    PANEL_THREADS = 8
    SSE_RESERVED_THREADS = 2
    SSE_STREAMS_PER_USER = 2
    SSE_MAX_SECONDS = 30.0
    # Deployments: how long a replaced slot keeps serving after the switch (in-flight requests
    # and the gateway's reload, which takes up to a second), how long a key change is given to
    # reach the gateway before the next step, and how often beat looks for keys due rotation.
    DEPLOY_DRAIN_SECONDS = 30.0
    KEY_SWITCH_GRACE_SECONDS = 2.0
    KEY_ROTATION_CHECK_SECONDS = 3600.0
    # Drift: how often beat compares the sampled scoring records with the training baseline.
    DRIFT_CHECK_SECONDS = 3600.0
    # Fault injection for crash tests (docs/internal-contracts.md): empty = inert.
    FAULT_AT = ""
    # Promotions: how long a request waits for a decision; webhooks per event type (JSON object
    # {"promotion.requested": "https://…"}), the HMAC secret that signs them, retry backoff base.
    PROMOTION_TTL_HOURS = 72.0
    PROMOTION_EXPIRE_CHECK_SECONDS = 300.0
    WEBHOOKS: dict[str, str] = {}
    WEBHOOK_SECRET = ""
    WEBHOOK_RETRY_BASE_SECONDS = 1.0

    # Flask/session hardening (see reliability-security.md 3.4).
    SESSION_COOKIE_NAME = "__Host-session"
    SESSION_COOKIE_SECURE = True
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    PERMANENT_SESSION_LIFETIME = 10 * 3600
    # How old a panel session's roles may get before they are re-read from a renewed ID token.
    SESSION_ROLE_TTL_SECONDS = 300
    MAX_CONTENT_LENGTH = 1024 * 1024
    WTF_CSRF_TIME_LIMIT = None
    WTF_CSRF_SSL_STRICT = False


class TestingConfig(BaseConfig):
    """Used by the test suite; the session cookie works over plain http test clients."""

    TESTING = True
    SECRET_KEY = "test-" + "x" * 40
    SESSION_COOKIE_NAME = "session"
    SESSION_COOKIE_SECURE = False


def _parse_env_value(raw: str) -> Any:
    """Interpret an environment value as JSON when it parses, else as the plain string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def load_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge defaults, MODELGATE_* environment variables and overrides; validate the result."""
    overrides = dict(overrides or {})
    base = TestingConfig if overrides.get("TESTING") else BaseConfig
    config: dict[str, Any] = {k: getattr(base, k) for k in dir(base) if k.isupper()}
    for name, raw in os.environ.items():
        if name.startswith("MODELGATE_") and name[len("MODELGATE_"):] in config:
            key = name[len("MODELGATE_"):]
            value = _parse_env_value(raw)
            config[key] = raw if isinstance(config[key], str) else value
    config.update(overrides)

    home = Path(config["HOME"]).expanduser().resolve()
    config["HOME"] = str(home)
    if not config["DATABASE_URL"]:
        config["DATABASE_URL"] = f"sqlite:///{home / 'modelgate.db'}"
    if not config["CA_BUNDLE"] and (home / "tls" / "ca.pem").exists():
        config["CA_BUNDLE"] = str(home / "tls" / "ca.pem")
    if not config["SECRET_KEY"]:
        config["SECRET_KEY"] = _instance_secret_key(home)
    _check_secret_key(config)
    return config


def _instance_secret_key(home: Path) -> str:
    """Read the instance's generated secret key, if `modelgate up` or `init` wrote one."""
    path = home / "secret_key"
    return path.read_text().strip() if path.exists() else ""


def ensure_instance_secret_key(home: Path) -> None:
    """Generate MODELGATE_HOME/secret_key (0600) once, so a local stack never runs on a default."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "secret_key"
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(48))


def _check_secret_key(config: dict[str, Any]) -> None:
    """Refuse a missing, well-known or short secret key outside testing."""
    if config["TESTING"] or config["DEBUG"]:
        return
    key = str(config["SECRET_KEY"])
    if key.lower() in WEAK_SECRET_KEYS or len(key) < MIN_SECRET_KEY_LENGTH:
        raise ConfigError(
            "SECRET_KEY is missing or weak: set MODELGATE_SECRET_KEY to at least "
            f"{MIN_SECRET_KEY_LENGTH} random characters "
            "(or run `modelgate up`, which generates one)"
        )


def celery_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Celery settings for at-least-once delivery with bounded redelivery (reliability 2.2)."""
    from app.services.kinds import longest_time_limit

    limit = int(config["JOB_TIME_LIMIT_SECONDS"])
    # Redis hands an unacknowledged task to another worker after the visibility timeout: keep
    # it longer than the longest job the configured backend runs.
    visibility = max(int(config["BROKER_VISIBILITY_TIMEOUT"]), longest_time_limit(config) + 600)
    return {
        "broker_url": config["REDIS_URL"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": limit + 60,
        "task_soft_time_limit": limit,
        "task_default_queue": "modelgate",
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        # Fail an enqueue quickly when Redis is down instead of hanging the request.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5,
        },
        "broker_transport_options": {
            "visibility_timeout": visibility,
            "unacked_restore_interval": int(config["BROKER_RESTORE_INTERVAL"]),
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
        },
        "beat_schedule": {
            "reconcile-jobs": {
                "task": "modelgate.jobs.reconcile",
                "schedule": float(config["RECONCILE_EVERY_SECONDS"]),
            },
            "expire-promotions": {
                "task": "modelgate.promotions.expire",
                "schedule": float(config["PROMOTION_EXPIRE_CHECK_SECONDS"]),
            },
            "rotate-due-keys": {
                "task": "modelgate.deployments.rotate_due",
                "schedule": float(config["KEY_ROTATION_CHECK_SECONDS"]),
            },
            "check-drift": {
                "task": "modelgate.drift.check",
                "schedule": float(config["DRIFT_CHECK_SECONDS"]),
            },
        },
    }
