"""Worker and beat entry point: `celery -A workers.main worker` (what `modelgate worker` runs)."""

from app import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]

import workers.tasks  # noqa: E402,F401  (registers every task with celery_app)
