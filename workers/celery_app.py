"""Celery wired with Flask's pattern: every task runs inside the panel app's context."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task


def celery_init_app(app: Any) -> Celery:
    """Create the Celery app for a Flask app, configured from app.config["CELERY"]."""

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            from flask import has_app_context

            # A nested context would give the task a second session that cannot see the
            # caller's uncommitted work (Superset's lesson); reuse an active one.
            if has_app_context():
                return self.run(*args, **kwargs)
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app
