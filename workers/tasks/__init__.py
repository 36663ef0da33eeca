"""Import every task module so a worker registers all tasks."""

from workers.tasks import apis, deployments, infra, jobs, pipeline, promotions, training  # noqa: F401
