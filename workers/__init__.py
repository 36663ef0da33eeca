"""Celery workers: the Celery app wiring and the thin tasks that run jobs by id."""
