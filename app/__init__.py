"""modelgate's panel: the application factory (other processes have factories of their own)."""

from __future__ import annotations

from typing import Any

from flask import Flask, send_from_directory

from app.assets import asset_dir


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the panel app: config, extensions, blueprints, error handlers, Celery."""
    app = Flask(__name__, template_folder=str(asset_dir("templates")),
                static_folder=str(asset_dir("static")))
    register_config(app, overrides)
    register_extensions(app)
    register_security(app)
    register_converters(app)
    register_labels(app)
    register_blueprints(app)
    register_favicon(app)
    register_error_handlers(app)
    register_celery(app)
    return app


def register_config(app: Flask, overrides: dict[str, Any] | None) -> None:
    """Load layered configuration (defaults → MODELGATE_* → overrides) and fail fast."""
    from app.config import celery_settings, load_config

    app.config.from_mapping(load_config(overrides))
    app.config["CELERY"] = {**celery_settings(app.config), **app.config.get("CELERY", {})}


def register_extensions(app: Flask) -> None:
    """Bind the database, login manager, CSRF protection and Redis client."""
    from app.auth.sessions import init_login
    from app.extensions import csrf, db
    from app.services.events import make_redis
    from app.services.streams import StreamSlots

    db.init_app(app)
    csrf.init_app(app)
    init_login(app)
    app.extensions["redis"] = make_redis(app.config["REDIS_URL"])
    app.extensions["stream_slots"] = StreamSlots(
        int(app.config["PANEL_THREADS"]) - int(app.config["SSE_RESERVED_THREADS"]))


def register_security(app: Flask) -> None:
    """Security headers on every response (reliability-security.md 3.4)."""
    from app.security import init_security

    init_security(app)


def register_converters(app: Flask) -> None:
    """URL converters shared by the blueprints (`<id:…>`: bounded integer ids)."""
    from app.params import register_converters as register

    register(app)


def register_labels(app: Flask) -> None:
    """The one label table for metrics and states, as Jinja filters."""
    from app.labels import register

    register(app)


def register_blueprints(app: Flask) -> None:
    """Register one blueprint per feature."""
    from app.api.routes import bp as api_bp
    from app.approvals.routes import bp as approvals_bp
    from app.audit.routes import bp as audit_bp
    from app.auth.routes import bp as auth_bp
    from app.dashboard.routes import bp as dashboard_bp
    from app.deployments.routes import bp as deployments_bp
    from app.drift.routes import bp as drift_bp
    from app.jobs.routes import bp as jobs_bp
    from app.publishing.routes import bp as publishing_bp
    from app.registry.routes import bp as registry_bp
    from app.tester.routes import bp as tester_bp

    app.register_blueprint(dashboard_bp)
    app.register_blueprint(auth_bp)
    app.register_blueprint(jobs_bp)
    app.register_blueprint(api_bp)
    app.register_blueprint(registry_bp)
    app.register_blueprint(publishing_bp)
    app.register_blueprint(tester_bp)
    app.register_blueprint(deployments_bp)
    app.register_blueprint(approvals_bp)
    app.register_blueprint(audit_bp)
    app.register_blueprint(drift_bp)


def register_favicon(app: Flask) -> None:
    """Serve /favicon.ico from static/: browsers ask for it with every first page load.

    Without it each page load also rendered a 404 page, a response that could write the
    session cookie concurrently with the page's own.
    """
    def favicon() -> Any:
        return send_from_directory(str(asset_dir("static")), "favicon.ico",
                                   mimetype="image/vnd.microsoft.icon", max_age=86400)

    app.add_url_rule("/favicon.ico", endpoint="favicon", view_func=favicon)


def register_error_handlers(app: Flask) -> None:
    """Render every error in one place."""
    from app.errors import register_error_handlers as register

    register(app)


def register_celery(app: Flask) -> None:
    """Create the Celery app bound to this Flask app."""
    from workers.celery_app import celery_init_app

    celery_init_app(app)
