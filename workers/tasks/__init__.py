"""Import every task module so a worker registers all tasks."""

from workers.tasks import apis, deployments, infra, jobs, pipeline, training  # noqa: F401
