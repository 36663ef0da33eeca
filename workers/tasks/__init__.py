"""Import every task module so a worker registers all tasks."""

from workers.tasks import infra, jobs, training  # noqa: F401
